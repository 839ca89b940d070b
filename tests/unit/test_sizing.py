"""The size check's decisions (`archivist.sizing`): when the cheap figures settle that a table
is within ``max_rows``, and the exact total an index walk gives."""

from __future__ import annotations

import pytest

from archivist.data.bus import WORKER_ALLOWLIST
from archivist.errors import BadAnswer
from archivist.sizing import (
    ESTIMATE_MARGIN,
    Size,
    closer_look,
    exact_way,
    settled_size,
    total_from_walk,
)

LIMIT = 1_000_000


@pytest.mark.parametrize(
    ("bound", "estimate", "look"),
    [
        (None, None, True),  # nothing known (SQLite without an integer key): walk
        (LIMIT, None, False),  # the key's range fits: cannot be over, whatever the gaps
        (LIMIT + 1, None, True),
        (None, 10_000, False),  # far below the limit
        (None, int(LIMIT * ESTIMATE_MARGIN) - 1, False),
        (None, int(LIMIT * ESTIMATE_MARGIN), True),  # near enough that the estimate may err
        (None, 5 * LIMIT, True),  # over: the walk counts exactly what is over
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


def test_the_walk_total_is_the_limit_plus_the_rows_at_or_below_the_value_past_it() -> None:
    # values at positions limit-1 and limit differ: exactly `limit` rows lie above the second
    assert total_from_walk(100, [50, 49], at_or_below=49, above=-1) == 149


def test_rows_sharing_the_value_at_the_limit_are_counted_on_both_sides() -> None:
    # ties straddle the limit: the caller counted the rows above the value (97 of them)
    assert total_from_walk(100, [7, 7], at_or_below=20, above=97) == 117


def test_the_walk_total_needs_both_values() -> None:
    with pytest.raises(ValueError, match="two values"):
        total_from_walk(100, [7], at_or_below=1, above=0)


def test_a_size_answer_is_checked() -> None:
    size = Size(12, True, "index")
    assert Size.from_wire(size.wire(), "t") == size
    assert Size.from_wire({"rows": None, "exact": False, "method": "bound"}, "t").rows is None
    for bad in (
        {},
        {"rows": "12", "exact": True, "method": "index"},
        {"rows": True, "exact": True, "method": "index"},
        {"rows": 12, "exact": 1, "method": "index"},
        {"rows": 12, "exact": True, "method": "guess"},
    ):
        with pytest.raises(BadAnswer, match="data/size of t"):
            Size.from_wire(bad, "t")


def test_the_size_command_is_the_daemons_own_not_the_workers() -> None:
    assert "data/size" not in WORKER_ALLOWLIST


def test_a_table_the_estimate_puts_over_its_limit_is_counted_not_walked() -> None:
    # Over the limit the walk reads every row too (max_rows, then the rest), one at a time.
    assert exact_way(100, estimate=150, indexed=True) == "count"
    assert exact_way(100, estimate=100, indexed=True) == "walk"  # at it: the walk decides
    assert exact_way(100, estimate=None, indexed=True) == "walk"  # SQLite: no estimate
    assert exact_way(100, estimate=10, indexed=False) == "count"  # nothing to walk
    assert exact_way(0, estimate=None, indexed=True) == "count"  # every row moves
