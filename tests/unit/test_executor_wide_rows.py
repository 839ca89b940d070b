"""Wide rows in the executor's loop, in process on `InMemoryDaemon`: batches through the
worker fit one frame, a listing cut short is not the end of the source, a row wider than
any frame is moved by the daemon (``data/relay``) or fails the task at once."""

from __future__ import annotations

import asyncio

from archivist.protocol import Archive, JSONObject, row_budget
from archivist.testing import InMemoryDaemon
from archivist.worker.executor import Executor, Outcome, Settings
from archivist.worker.queue import Task
from archivist.worker.throttle import ThrottleSettings

COLLECTION = "attachments"
QUIET = ThrottleSettings(max_latency_ms=None, max_active=None, yield_ratio=0)
FRAME = 200_000
"""A small frame limit, so that rows of a few KB are wide."""


def _rows(widths: list[int]) -> list[JSONObject]:
    return [{"id": i, "created_at": i, "body": "x" * width} for i, width in enumerate(widths)]


def _run(rows: list[JSONObject], batch_size: int = 1000) -> tuple[InMemoryDaemon, Outcome]:
    daemon = InMemoryDaemon(copy="unsupported")
    daemon.add_rows("primary", COLLECTION, rows)
    spec = Archive(
        task_id="t-1",
        collection=COLLECTION,
        source_handle="primary",
        dest_handle="archive",
        max_rows=len(rows),
        batch_size=batch_size,
    )
    settings = Settings(
        retry_for=0.3, batch_time=0, min_batch=100, frame_limit=FRAME, throttle=QUIET
    )
    outcome = asyncio.run(Executor(settings).run(Task(spec=spec, owner=None), daemon))
    return daemon, outcome


def test_wide_rows_move_in_batches_that_fit_the_frame_and_all_arrive() -> None:
    rows = _rows([10_000] * 60)  # ~10 KB each: 10 fit what 200 KB frames carry for rows
    daemon, outcome = _run(rows)
    assert outcome == Outcome("success", 60)
    assert daemon.table("primary", COLLECTION) == {}
    assert daemon.table("archive", COLLECTION) == {row["id"]: row for row in rows}
    creates = daemon.called("data/create")
    assert all(len(call["items"]) <= row_budget(FRAME) // 10_000 for call in creates)  # type: ignore[arg-type]
    # Only the first listing, of every row, is cut short: then the sizer asks
    # for what fits (a listing cut short was not taken for the end of the source).
    listings = [p for p in daemon.called("data/list") if p["dbHandle"] == "primary"]
    assert listings[0]["limit"] == 60  # all the task moves
    assert all(p["limit"] <= row_budget(FRAME) // 10_000 for p in listings[1:])


def test_a_row_wider_than_any_frame_is_moved_by_the_daemon() -> None:
    rows = _rows([100] * 5 + [500_000] + [100] * 5)
    daemon, outcome = _run(rows)
    assert outcome == Outcome("success", 11)
    assert [p["ids"] for p in daemon.called("data/relay")] == [[5]]
    assert daemon.table("archive", COLLECTION) == {row["id"]: row for row in rows}
    assert daemon.table("primary", COLLECTION) == {}


def test_a_row_wider_than_any_frame_fails_the_task_at_once_without_data_relay() -> None:
    rows = _rows([100] * 5 + [500_000] + [100] * 5)
    daemon = InMemoryDaemon(copy="unsupported")
    daemon.fail("data/relay", "unknown_command", times=None)
    daemon.add_rows("primary", COLLECTION, rows)
    spec = Archive(
        task_id="t-1",
        collection=COLLECTION,
        source_handle="primary",
        dest_handle="archive",
        max_rows=11,
        batch_size=1000,
    )
    settings = Settings(retry_for=30, batch_time=0, frame_limit=FRAME, throttle=QUIET)
    outcome = asyncio.run(Executor(settings).run(Task(spec=spec, owner=None), daemon))
    assert outcome.status == "error" and outcome.code == "row_too_large"
    assert outcome.error is not None
    assert "row id=5 of attachments is 500" in outcome.error
    assert len(daemon.called("data/relay")) == 1  # no retry
    assert sorted(daemon.table("archive", COLLECTION)) == [0, 1, 2, 3, 4]
    assert sorted(daemon.table("primary", COLLECTION)) == list(range(5, 11))
