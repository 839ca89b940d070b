"""`Holds`: why a policy waits (its pause, its window, its used-up ``max_runtime``) and
stopping its task once, decided in process on a given clock."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from archivist.daemon.holds import Holds
from archivist.daemon.pauses import Pauses
from archivist.daemon.tracker import TaskRecord
from archivist.policy import Rules, Window

NIGHT = Window(start=dt.time(1, 0), end=dt.time(5, 0), text="01:00-05:00")
DAY = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class _Policy:
    collection: str
    rules: Rules


def _holds(rules: Rules, cancelled: list[str] | None = None) -> tuple[Holds, _Policy]:
    policy = _Policy("events", rules)

    async def cancel(record: TaskRecord) -> None:
        assert cancelled is not None
        cancelled.append(record.task_id)

    return Holds({"events": policy}, Pauses(), cancel), policy  # type: ignore[dict-item]


def _record() -> TaskRecord:
    return TaskRecord(
        collection="events",
        source_handle="primary",
        dest_handle="archive",
        max_rows=10,
        batch_size=5,
        order_by=None,
        task_id="events-1",
    )


def test_a_pause_holds_a_policy_even_inside_its_window() -> None:
    holds, policy = _holds(Rules(window=NIGHT))
    holds.pauses.pause("events", by="ops", at=0.0)
    reason = holds.reason(policy, DAY.replace(hour=2))
    assert reason is not None and reason.startswith("paused by ops")


def test_a_policy_waits_outside_its_window_and_not_inside_it() -> None:
    holds, policy = _holds(Rules(window=NIGHT))
    assert holds.reason(policy, DAY.replace(hour=12)) == "waiting for window 01:00-05:00"
    assert holds.reason(policy, DAY.replace(hour=2)) is None


def test_a_run_over_max_runtime_holds_the_rest_of_its_window_and_not_the_next() -> None:
    holds, policy = _holds(Rules(window=NIGHT, max_runtime=3600))
    started = DAY.replace(hour=1, minute=10)
    over = holds.reason(policy, DAY.replace(hour=2, minute=30), started)
    assert over is not None and over.startswith("max_runtime used up")
    assert holds.spent["events"] == DAY.replace(hour=1)
    # A new check later that night, with no run under way, still waits...
    assert holds.reason(policy, DAY.replace(hour=3)) is not None
    # ...and the next night's window is the policy's again.
    assert holds.reason(policy, DAY.replace(hour=1, minute=10) + dt.timedelta(days=1)) is None


def test_a_held_task_is_asked_to_stop_once_however_often_it_is_seen() -> None:
    cancelled: list[str] = []
    holds, _ = _holds(Rules(window=NIGHT), cancelled)
    record = _record()

    async def scenario() -> None:
        holds.runs[record] = DAY.replace(hour=1, minute=30)
        assert holds.stop_if_held(record, DAY.replace(hour=4)) is False
        assert holds.stop_if_held(record, DAY.replace(hour=5, minute=5)) is True
        first = holds.stop_after_batch(record, "again")
        assert first is not None and holds.stop_after_batch(record, "again") is first
        await first

    asyncio.run(scenario())
    assert cancelled == ["events-1"]
