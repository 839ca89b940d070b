"""Rows whose values the destination cannot store: kept in the source, named, the rest
moved, and the task ends in error with its own code (never retried as a passing fault)."""

from __future__ import annotations

import asyncio

import pytest

from archivist.protocol import Archive, JSONObject
from archivist.testing import InMemoryDaemon
from archivist.worker import kept
from archivist.worker.executor import Executor, Outcome, Settings
from archivist.worker.queue import Task
from archivist.worker.throttle import ThrottleSettings

COLLECTION = "readings"
QUIET = ThrottleSettings(max_latency_ms=None, max_active=None, yield_ratio=0)


def _rows(count: int, bad: set[int]) -> list[JSONObject]:
    return [{"id": i, "created_at": i, "value": "NaN" if i in bad else i / 2} for i in range(count)]


def _run(
    rows: list[JSONObject], max_rows: int, batch_size: int, *, prefetch: bool = True
) -> tuple[Outcome, InMemoryDaemon]:
    daemon = InMemoryDaemon(copy="unsupported", unstorable=frozenset({"NaN"}))
    daemon.add_rows("primary", COLLECTION, rows)
    spec = Archive(
        task_id="t-1",
        collection=COLLECTION,
        source_handle="primary",
        dest_handle="archive",
        max_rows=max_rows,
        batch_size=batch_size,
    )
    task = Task(spec=spec, owner=None)
    settings = Settings(retry_for=30, batch_time=0, min_batch=1, prefetch=prefetch, throttle=QUIET)
    outcome = asyncio.run(Executor(settings).run(task, daemon))
    return outcome, daemon


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 10, 100])
def test_unstorable_rows_stay_in_the_source_and_the_rest_move(
    batch_size: int, prefetch: bool
) -> None:
    bad = {0, 4, 5, 6, 17, 29}  # the first row, a run longer than a small batch, the last
    rows = _rows(30, bad)

    outcome, daemon = _run(rows, 30, batch_size, prefetch=prefetch)

    assert (outcome.status, outcome.code, outcome.archived) == ("error", "unstorable_value", 24)
    assert outcome.error is not None
    assert outcome.error.startswith("moved 24 row(s); kept 6 in primary")
    assert "id=0: value = NaN" in outcome.error and "and 1 more" in outcome.error
    assert set(daemon.table("primary", COLLECTION)) == bad
    assert daemon.table("archive", COLLECTION) == {
        row["id"]: row for row in rows if row["id"] not in bad
    }
    # Asked to skip them, the daemon never refused a whole batch: nothing was retried.
    assert all(call["onUnstorable"] == "skip" for call in daemon.called("data/create"))
    assert not any(bad & set(call["ids"]) for call in daemon.called("data/delete"))  # type: ignore[arg-type]


def test_unstorable_rows_count_against_the_tasks_rows() -> None:
    rows = _rows(30, {1, 2})

    outcome, daemon = _run(rows, 10, 4)

    assert (outcome.status, outcome.archived) == ("error", 8)
    assert sorted(daemon.table("archive", COLLECTION)) == [0, 3, 4, 5, 6, 7, 8, 9]


def test_a_task_whose_rows_all_store_succeeds() -> None:
    outcome, _daemon = _run(_rows(12, set()), 12, 5)
    assert (outcome.status, outcome.code, outcome.archived) == ("success", None, 12)


def test_a_task_stops_once_it_has_kept_too_many_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kept, "MAX_UNSTORABLE", 3)
    bad = set(range(0, 40, 2))
    rows = _rows(40, bad)

    outcome, daemon = _run(rows, 40, 4)

    assert (outcome.status, outcome.code) == ("error", "unstorable_value")
    assert outcome.error is not None and outcome.error.endswith("; stopped there")
    assert bad <= set(daemon.table("primary", COLLECTION))
    assert set(daemon.table("primary", COLLECTION)) | set(daemon.table("archive", COLLECTION)) == {
        row["id"] for row in rows
    }


def test_rows_left_out_for_an_unstorable_value_keep_the_tasks_filter() -> None:
    """A task's ``filter`` (its ``where``, its age cutoff) still chooses its rows once an
    unstorable row is left out of its listings: before, the left-out keys replaced the
    filter, and the task moved rows its policy keeps."""
    rows = [{**row, "room": 1 if row["id"] % 2 == 0 else 2} for row in _rows(30, {0})]
    daemon = InMemoryDaemon(copy="unsupported", unstorable=frozenset({"NaN"}))
    daemon.add_rows("primary", COLLECTION, rows)
    spec = Archive(
        task_id="t-1",
        collection=COLLECTION,
        source_handle="primary",
        dest_handle="archive",
        max_rows=15,
        batch_size=4,
        filter={"room": {"$in": [1]}},
    )
    settings = Settings(retry_for=30, batch_time=0, min_batch=1, throttle=QUIET)
    outcome = asyncio.run(Executor(settings).run(Task(spec=spec, owner=None), daemon))

    assert (outcome.status, outcome.archived) == ("error", 14)
    assert sorted(daemon.table("archive", COLLECTION)) == list(range(2, 30, 2))


def test_the_left_out_keys_join_a_filter_on_the_key_itself() -> None:
    """A task limited to keys (one that settles rows left in both) keeps its ``$in``."""
    spec = Archive(
        task_id="t-1",
        collection=COLLECTION,
        source_handle="primary",
        dest_handle="archive",
        max_rows=3,
        batch_size=3,
        filter={"id": {"$in": [1, 2, 3]}, "room": 1},
    )
    rows = kept.KeptRows(Task(spec=spec, owner=None))
    assert rows.listing_filter() is None
    rows.unstorable[2] = "id=2: value = NaN"
    assert rows.listing_filter() == {"id": {"$in": [1, 2, 3], "$nin": [2]}, "room": 1}
