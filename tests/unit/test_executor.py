"""The executor's copy-verify-delete loop, run in process on `InMemoryDaemon`.

Each test drives the real `Executor` over in-memory tables and checks a decision of its
loop: what moves, what stays, which calls it makes, when it retries, stops or gives up.
Every test also checks the promise: each row is in the source, the archive, or both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from archivist.protocol import Archive, JSONObject
from archivist.testing import CopyMode, InMemoryDaemon
from archivist.worker import pacing
from archivist.worker.executor import (
    STALLED_BATCHES,
    Executor,
    Outcome,
    Settings,
)
from archivist.worker.pacing import RETRY_DELAYS, Pacer, retry_delay
from archivist.worker.queue import Task
from archivist.worker.throttle import ThrottleSettings

COLLECTION = "chat_messages"
QUIET = ThrottleSettings(max_latency_ms=None, max_active=None, yield_ratio=0)
"""No load limits and no yielding: the loop's own decisions alone."""


def _rows(count: int, *, same_time: int = 1) -> list[JSONObject]:
    """``count`` rows; ``same_time`` consecutive rows share one ``created_at``."""
    return [{"id": i, "created_at": i // same_time, "note": f"row {i}"} for i in range(count)]


def _daemon(rows: list[JSONObject], copy: CopyMode = "unsupported") -> InMemoryDaemon:
    daemon = InMemoryDaemon(copy=copy)
    daemon.add_rows("primary", COLLECTION, rows)
    return daemon


def _task(max_rows: int, batch_size: int) -> Task:
    spec = Archive(
        task_id="t-1",
        collection=COLLECTION,
        source_handle="primary",
        dest_handle="archive",
        max_rows=max_rows,
        batch_size=batch_size,
    )
    return Task(spec=spec, owner=None)


def _run(
    daemon: InMemoryDaemon,
    task: Task,
    *,
    retry_for: float = 0.3,
    prefetch: bool = True,
    throttle: ThrottleSettings = QUIET,
) -> Outcome:
    settings = Settings(
        retry_for=retry_for, batch_time=0, min_batch=1, prefetch=prefetch, throttle=throttle
    )
    return asyncio.run(Executor(settings).run(task, daemon))


def _source(daemon: InMemoryDaemon) -> dict[object, JSONObject]:
    return daemon.table("primary", COLLECTION)


def _archive(daemon: InMemoryDaemon) -> dict[object, JSONObject]:
    return daemon.table("archive", COLLECTION)


def _assert_nothing_lost(daemon: InMemoryDaemon, rows: list[JSONObject]) -> None:
    kept = set(_source(daemon)) | set(_archive(daemon))
    assert kept == {row["id"] for row in rows}


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry at once: the backoff's figures are `retry_delay`'s test, not these."""
    monkeypatch.setattr(pacing, "RETRY_DELAYS", (0.0,))


def _deleted_ids(daemon: InMemoryDaemon) -> list[object]:
    return [key for call in daemon.called("data/delete") for key in call["ids"]]  # type: ignore[attr-defined]


# --- what moves ------------------------------------------------------------------------------


@pytest.mark.parametrize("copy", ["unsupported", "copy", "move"])
def test_every_row_moves_once_and_arrives_identical(copy: CopyMode) -> None:
    rows = _rows(250)
    daemon = _daemon(rows, copy)
    outcome = _run(daemon, _task(250, 100))
    assert outcome == Outcome("success", 250)
    assert _source(daemon) == {}
    assert _archive(daemon) == {row["id"]: row for row in rows}
    if copy == "move":
        assert daemon.called("data/delete") == []
    else:
        assert sorted(_deleted_ids(daemon)) == list(range(250))  # each row deleted once


def test_only_the_oldest_max_rows_move() -> None:
    rows = _rows(100, same_time=7)
    daemon = _daemon(rows)
    outcome = _run(daemon, _task(55, 10))
    assert outcome == Outcome("success", 55)
    assert sorted(_archive(daemon)) == list(range(55))
    assert sorted(_source(daemon)) == list(range(55, 100))


def test_a_daemon_that_cannot_copy_in_the_database_gets_rows_through_the_worker() -> None:
    daemon = _daemon(_rows(30), copy="unsupported")
    assert _run(daemon, _task(30, 10)) == Outcome("success", 30)
    assert len(daemon.called("data/copy")) == 1  # asked once, then never again
    assert daemon.called("data/create")
    assert all("expected" in call for call in daemon.called("data/delete"))


def test_in_database_copies_are_verified_by_the_delete_guard() -> None:
    daemon = _daemon(_rows(30), copy="copy")
    assert _run(daemon, _task(30, 10)) == Outcome("success", 30)
    assert daemon.called("data/create") == []
    assert all(call.get("matching") == "archive" for call in daemon.called("data/delete"))


@pytest.mark.usefixtures("fast_retries")
def test_a_forbidden_copy_falls_back_but_a_database_error_does_not() -> None:
    daemon = _daemon(_rows(30), copy="copy")
    daemon.fail("data/copy", "forbidden")
    assert _run(daemon, _task(30, 10)) == Outcome("success", 30)
    assert len(daemon.called("data/copy")) == 1
    assert daemon.called("data/create")

    daemon = _daemon(_rows(30), copy="copy")
    daemon.fail("data/copy", "db_error")
    task = _task(30, 10)
    assert _run(daemon, task) == Outcome("success", 30)
    assert task.retries == 1
    assert daemon.called("data/create") == []  # retried in the database


# --- cursors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [True, False])
def test_cursors_never_skip_a_row_that_shares_its_order_value(prefetch: bool) -> None:
    # 7 rows per created_at and batches of 10: every batch ends inside a run of equal values.
    rows = _rows(200, same_time=7)
    daemon = _daemon(rows)
    assert _run(daemon, _task(200, 10), prefetch=prefetch) == Outcome("success", 200)
    assert _archive(daemon) == {row["id"]: row for row in rows}
    listed = [c for c in daemon.called("data/list") if c["dbHandle"] == "primary"]
    cursors = [c["cursor"] for c in listed if "cursor" in c]
    if prefetch:
        assert cursors, "the next batch is listed past the current one"
        assert all(isinstance(c, dict) and c.get("id") is not None for c in cursors)
    else:
        assert cursors == []


def test_prefetch_lists_the_next_batch_before_the_current_one_is_deleted() -> None:
    daemon = _daemon(_rows(40))
    assert _run(daemon, _task(40, 10)) == Outcome("success", 40)
    names = [
        (name, "cursor" in params) for name, params in daemon.calls if name.startswith("data/")
    ]
    first_delete = names.index(("data/delete", False))
    assert ("data/list", True) in names[:first_delete]


# --- rows that change under the task ------------------------------------------------------------


def _change_row(daemon: InMemoryDaemon, key: int, *, times: int = 1) -> Callable[..., None]:
    """A hook that changes row ``key`` in the source before the next ``times`` deletes."""
    left = [times]

    def change(params: JSONObject) -> None:
        if left[0] > 0 and key in _source(daemon):
            left[0] -= 1
            _source(daemon)[key] = {**_source(daemon)[key], "note": "changed"}

    return change


@pytest.mark.parametrize("copy", ["unsupported", "copy"])
def test_a_row_changed_after_its_copy_stays_and_moves_next_updated(copy: CopyMode) -> None:
    rows = _rows(40)
    daemon = _daemon(rows, copy)
    daemon.before("data/delete", _change_row(daemon, 3))
    assert _run(daemon, _task(40, 10)) == Outcome("success", 40)
    assert _source(daemon) == {}
    assert _archive(daemon)[3]["note"] == "changed"
    # Row 3 was deleted twice over: skipped first, then moved again, updated.
    assert _deleted_ids(daemon).count(3) == 2


def test_rows_left_behind_are_listed_again_from_the_start() -> None:
    daemon = _daemon(_rows(40))
    daemon.before("data/delete", _change_row(daemon, 3))
    assert _run(daemon, _task(40, 10)) == Outcome("success", 40)
    # After the delete that skipped row 3, the next listing has no cursor: it starts
    # from the oldest row (3), never past it.
    after_skip = daemon.calls[
        next(i for i, (name, _) in enumerate(daemon.calls) if name == "data/delete") + 1 :
    ]
    source_lists = [p for n, p in after_skip if n == "data/list" and p["dbHandle"] == "primary"]
    assert source_lists[0].get("cursor") is None


@pytest.mark.parametrize("copy", ["unsupported", "copy"])
def test_batches_that_delete_nothing_stop_the_task_after_a_few(copy: CopyMode) -> None:
    rows = _rows(100)
    daemon = _daemon(rows, copy)

    def change_everything(params: JSONObject) -> None:
        for key in params["ids"]:  # type: ignore[union-attr]
            source = _source(daemon)
            source[key] = {**source[key], "note": f"edited {len(daemon.calls)}"}

    daemon.before("data/delete", change_everything)
    outcome = _run(daemon, _task(100, 10))
    assert outcome.status == "error"
    assert outcome.code == "verify_mismatch"
    assert outcome.archived == 0
    assert len(daemon.called("data/delete")) == STALLED_BATCHES
    assert len(_source(daemon)) == 100  # nothing deleted
    _assert_nothing_lost(daemon, rows)


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("fast_retries")
def test_transient_failures_are_retried_and_nothing_is_lost() -> None:
    rows = _rows(50)
    daemon = _daemon(rows)
    daemon.fail("data/create", "db_error", nth=2, times=2)
    daemon.fail("data/list", "timeout", nth=2, handle="archive")
    task = _task(50, 10)
    assert _run(daemon, task) == Outcome("success", 50)
    assert task.retries == 3
    assert _archive(daemon) == {row["id"]: row for row in rows}


@pytest.mark.parametrize("code", ["conflict", "schema_error", "invalid_params"])
def test_other_failures_fail_the_task_at_once(code: str) -> None:
    rows = _rows(50)
    daemon = _daemon(rows)
    daemon.fail("data/create", code, nth=2)
    task = _task(50, 10)
    outcome = _run(daemon, task)
    assert (outcome.status, outcome.code) == ("error", code)
    assert task.retries == 0
    assert len(daemon.called("data/create")) == 2
    assert outcome.archived == 50 - len(_source(daemon))
    _assert_nothing_lost(daemon, rows)


@pytest.mark.usefixtures("fast_retries")
def test_a_task_gives_up_once_retry_for_is_spent() -> None:
    rows = _rows(50)
    daemon = _daemon(rows)
    daemon.fail("data/list", "db_error", nth=3, times=None)
    task = _task(50, 10)
    outcome = _run(daemon, task, retry_for=0.25)
    assert (outcome.status, outcome.code) == ("error", "db_error")
    assert outcome.error is not None and "gave up after retrying" in outcome.error
    assert task.retries >= 1
    assert outcome.archived == 50 - len(_source(daemon))
    _assert_nothing_lost(daemon, rows)


def test_a_lost_connection_ends_the_task_without_a_complete() -> None:
    daemon = _daemon(_rows(30))
    daemon.fail("data/create", "connection_closed", nth=2)
    outcome = _run(daemon, _task(30, 10))
    assert (outcome.status, outcome.delivered) == ("cancelled", False)


@pytest.mark.parametrize(
    ("streak", "failing_for", "expected"),
    [
        (1, 0.0, RETRY_DELAYS[0]),
        (2, 1.0, RETRY_DELAYS[1]),
        (50, 10.0, RETRY_DELAYS[-1]),  # backs off no further than the last delay
        (3, 59.5, 0.5),  # never past the end of retry_for
        (3, 59.99, 0.1),  # but a last attempt is always made
        (3, 60.0, None),  # spent: give up
    ],
)
def test_retry_delay_backs_off_within_retry_for(
    streak: int, failing_for: float, expected: float | None
) -> None:
    assert retry_delay(streak, failing_for, retry_for=60.0) == expected


# --- stopping and pacing ----------------------------------------------------------------------


@pytest.mark.parametrize("copy", ["unsupported", "copy"])
def test_a_cancelled_task_stops_at_a_safe_point(copy: CopyMode) -> None:
    rows = _rows(100)
    daemon = _daemon(rows, copy)
    task = _task(100, 10)
    command = "data/create" if copy == "unsupported" else "data/copy"
    calls = [0]

    def cancel_on_third(params: JSONObject) -> None:
        if params["dbHandle"] == "archive" or command == "data/copy":
            calls[0] += 1
            if calls[0] == 3:
                task.stop_reason = "cancelled by the test"

    daemon.before(command, cancel_on_third)
    outcome = _run(daemon, task)
    assert outcome == Outcome("cancelled", task.archived, "cancelled by the test", "cancelled")
    assert 0 < outcome.archived < 100
    assert outcome.archived == 100 - len(_source(daemon))
    # The batches copied before the stop were deleted too: no row waits in both databases.
    assert set(_archive(daemon)) == set(range(100)) - set(_source(daemon))
    _assert_nothing_lost(daemon, rows)


def test_the_task_rests_between_batches_and_not_after_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rests: list[float] = []
    sleep = Pacer.sleep

    async def recorded(self: Pacer, seconds: float) -> None:
        rests.append(seconds)
        await sleep(self, 0)

    monkeypatch.setattr(Pacer, "sleep", recorded)
    daemon = _daemon(_rows(35))
    throttle = ThrottleSettings(pause=0.05, max_latency_ms=None, max_active=None, yield_ratio=0)
    assert _run(daemon, _task(35, 10), throttle=throttle) == Outcome("success", 35)
    assert len(rests) == 3  # batches of 10, 10, 10 and 5: no rest after the last
    assert all(0 < rest <= 0.05 for rest in rests)


def test_progress_is_reported_as_rows_go() -> None:
    daemon = _daemon(_rows(30))
    assert _run(daemon, _task(30, 10)) == Outcome("success", 30)
    assert [archived for archived, _ in daemon.progress_reports] == [10, 20, 30]
    assert {total for _, total in daemon.progress_reports} == {30}


def test_the_next_page_is_moved_ahead_only_while_the_task_does_not_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ahead`` tells the daemon how many rows will be asked for at once after this page:
    the task's rows after it while no rest comes between batches; after a rest (a pause,
    or yielding to the application) none, since the daemon would hold pages nobody asks
    for in time."""
    daemon = _daemon(_rows(50), copy="move")
    assert _run(daemon, _task(45, 10)) == Outcome("success", 45)
    aheads = [call.get("ahead") for call in daemon.called("data/copy")]
    # The last page is of 5 rows: nothing follows it, and no full page of 10 the fourth.
    assert aheads == [35, 25, 15, 5, 0]

    async def no_sleep(self: Pacer, seconds: float) -> None:
        await asyncio.sleep(0)

    monkeypatch.setattr(Pacer, "sleep", no_sleep)
    daemon = _daemon(_rows(50), copy="move")
    throttle = ThrottleSettings(pause=0.05, max_latency_ms=None, max_active=None, yield_ratio=0)
    assert _run(daemon, _task(50, 10), throttle=throttle) == Outcome("success", 50)
    aheads = [call.get("ahead") for call in daemon.called("data/copy")]
    # The first two are asked before the first rest (the second as soon as the first is
    # answered); every one after it, no longer.
    assert aheads == [40, 30, 0, 0, 0]
