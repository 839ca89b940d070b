"""The size check's decisions (`archivist.sizing`): when the cheap figures settle that a table
is within ``max_rows``."""

from __future__ import annotations

import io

import msgspec
import pytest
from rich.console import Console

from archivist.check import CheckReport, HandleCheck, PolicyCheck, render
from archivist.data import ArchivePlan
from archivist.data.bus import WORKER_ALLOWLIST
from archivist.errors import BadAnswer
from archivist.sizing import ESTIMATE_MARGIN, Size, closer_look, settled_size
from archivist.ui import print_keepup, print_plan

LIMIT = 1_000_000


@pytest.mark.parametrize(
    ("bound", "estimate", "look"),
    [
        (None, None, True),  # nothing known (SQLite without an integer key): count
        (LIMIT, None, False),  # the key's range fits: cannot be over, whatever the gaps
        (LIMIT + 1, None, True),
        (None, 10_000, False),  # far below the limit
        (None, int(LIMIT * ESTIMATE_MARGIN) - 1, False),
        (None, int(LIMIT * ESTIMATE_MARGIN), True),  # near enough that the estimate may err
        (None, 5 * LIMIT, True),  # over: counted exactly
        (50 * LIMIT, 10_000, False),  # a sparse key's range says nothing; the estimate does
        (None, 0, True),  # 0: never analysed, or statistics reset, not "empty"
        (None, -1, True),
    ],
)
def test_the_cheap_figures_settle_only_a_table_surely_within_its_limit(
    bound: int | None, estimate: int | None, look: bool
) -> None:
    assert closer_look(LIMIT, bound=bound, estimate=estimate) is look


def test_an_estimate_is_never_reported_above_the_bound() -> None:
    assert settled_size(400, 900) == Size(400, False, "estimate")
    assert settled_size(None, 900) == Size(900, False, "estimate")
    assert settled_size(400, None) == Size(400, False, "bound")
    assert settled_size(None, None) == Size(None, False, "bound")


def test_a_size_answer_is_checked() -> None:
    size = Size(12, True, "count")
    assert Size.from_wire(size.wire(), "t") == size
    assert Size.from_wire({"rows": None, "exact": False, "method": "bound"}, "t").rows is None
    for bad in (
        {},
        {"rows": "12", "exact": True, "method": "count"},
        {"rows": True, "exact": True, "method": "count"},
        {"rows": 12, "exact": 1, "method": "count"},
        {"rows": 12, "exact": True, "method": "guess"},
    ):
        with pytest.raises(BadAnswer, match="data/size of t"):
            Size.from_wire(bad, "t")


def test_the_size_command_is_the_daemons_own_not_the_workers() -> None:
    assert "data/size" not in WORKER_ALLOWLIST


def _keepup_text(rows: int, exact: bool, limit: int | None) -> str:
    console = Console(file=io.StringIO(), width=100)
    state = {"rows": rows, "exact": exact, "maxRows": limit, "state": "within"}
    print_keepup(console, {"policies": {"events": state}})
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


def test_status_marks_an_estimated_size() -> None:
    assert "~1,000/5,000" in _keepup_text(1000, False, 5000)
    assert " 1,000/5,000" in _keepup_text(1000, True, 5000)
    assert "~1,000 " in _keepup_text(1000, False, None)  # an age policy: its estimate


def test_check_marks_an_estimated_size() -> None:
    policy = PolicyCheck("events", "primary", "archive", "created_at", 5000, 500, rows=1000)
    report = CheckReport("archivist.toml", [HandleCheck("primary", "sqlite", True)], [policy])
    assert any("rows: 1,000 (max_rows" in line for line in render(report))
    policy.rows_exact = False
    assert any("rows: ~1,000 (estimated; max_rows 5,000" in line for line in render(report))


def test_a_dry_run_marks_an_estimated_size() -> None:
    plan = ArchivePlan("events", "primary", "archive", 1000, 5000, 500, 100, 0, "exists")
    for exact, shown in ((True, "events on primary: 1,000 rows"), (False, "primary: ~1,000 rows")):
        console = Console(file=io.StringIO(), width=120)
        print_plan(console, msgspec.structs.replace(plan, rows_exact=exact))
        assert shown in console.file.getvalue()  # type: ignore[attr-defined]
