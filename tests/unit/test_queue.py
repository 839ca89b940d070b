"""The task table: FIFO order, queue positions, duplicates, free-collection scheduling, cancel."""

from __future__ import annotations

import pytest

from archivist.errors import DuplicateTask, QueueFull, UnknownTask
from archivist.protocol import Archive
from archivist.worker.queue import Task, TaskQueue

OWNER = object()


def task(task_id: str, collection: str = "chat_messages", source: str = "primary") -> Task:
    spec = Archive(
        task_id=task_id,
        collection=collection,
        source_handle=source,
        dest_handle="archive",
        max_rows=100,
        batch_size=10,
    )
    return Task(spec=spec, owner=OWNER)


def test_queue_positions_count_unfinished_tasks_including_the_new_one() -> None:
    queue = TaskQueue()
    assert [queue.add(task(f"t{i}", f"c{i}")) for i in (1, 2, 3)] == [1, 2, 3]


def test_running_tasks_count_towards_the_queue_position() -> None:
    queue = TaskQueue()
    queue.add(task("t1", "a"))
    queue.take()
    assert queue.add(task("t2", "b")) == 2


def test_finished_tasks_no_longer_count_towards_the_queue_position() -> None:
    queue = TaskQueue()
    queue.add(task("t1", "a"))
    started = queue.take()
    assert started is not None
    queue.finish(started, "success")
    assert queue.add(task("t2", "b")) == 1


def test_take_is_fifo() -> None:
    queue = TaskQueue()
    for name in ("t1", "t2", "t3"):
        queue.add(task(name, f"c-{name}"))
    taken = [queue.take(), queue.take(), queue.take()]
    assert [t.task_id for t in taken if t is not None] == ["t1", "t2", "t3"]
    assert queue.take() is None


def test_take_marks_the_task_running_with_a_start_time() -> None:
    queue = TaskQueue()
    queue.add(task("t1"))
    started = queue.take()
    assert started is not None
    assert started.state == "running"
    assert started.started_at is not None
    assert queue.running == [started]
    assert queue.queued == []


def test_duplicate_unfinished_task_id_is_refused_and_not_queued() -> None:
    queue = TaskQueue()
    queue.add(task("t1", "a"))
    with pytest.raises(DuplicateTask):
        queue.add(task("t1", "b"))
    assert [t.spec.collection for t in queue.queued] == ["a"]


def test_duplicate_of_a_running_task_id_is_refused() -> None:
    queue = TaskQueue()
    queue.add(task("t1"))
    queue.take()
    with pytest.raises(DuplicateTask):
        queue.add(task("t1"))
    assert queue.unfinished == 1


def test_a_finished_task_id_may_be_queued_again() -> None:
    queue = TaskQueue()
    queue.add(task("t1"))
    started = queue.take()
    assert started is not None
    queue.finish(started, "error", "boom")
    assert queue.add(task("t1")) == 1


def test_take_skips_a_task_whose_collection_is_running_and_takes_the_next_free_one() -> None:
    queue = TaskQueue()
    queue.add(task("t1", "chat_messages"))
    queue.add(task("t2", "chat_messages"))
    queue.add(task("t3", "audit_log"))
    first = queue.take()
    second = queue.take()
    assert first is not None and second is not None
    assert (first.task_id, second.task_id) == ("t1", "t3")
    assert queue.take() is None
    assert [t.task_id for t in queue.queued] == ["t2"]


def test_a_waiting_task_starts_once_its_collection_is_free() -> None:
    queue = TaskQueue()
    queue.add(task("t1", "chat_messages"))
    queue.add(task("t2", "chat_messages"))
    first = queue.take()
    assert first is not None
    assert queue.take() is None
    queue.finish(first, "success")
    second = queue.take()
    assert second is not None and second.task_id == "t2"


def test_same_collection_on_another_source_handle_is_not_busy() -> None:
    queue = TaskQueue()
    queue.add(task("t1", "chat_messages", source="primary"))
    queue.add(task("t2", "chat_messages", source="replica"))
    assert queue.take() is not None
    second = queue.take()
    assert second is not None and second.task_id == "t2"


def test_cancel_of_a_queued_task_finishes_it_as_cancelled_at_once() -> None:
    queue = TaskQueue()
    queue.add(task("t1"))
    cancelled = queue.cancel("t1", "cancelled on request")
    assert cancelled.state == "cancelled"
    assert cancelled.error == "cancelled on request"
    assert queue.queued == []
    assert queue.finished == [cancelled]
    assert queue.take() is None


def test_cancel_of_a_running_task_only_asks_it_to_stop() -> None:
    queue = TaskQueue()
    queue.add(task("t1"))
    running = queue.take()
    assert running is not None
    queue.cancel("t1", "stop please")
    assert running.state == "running"
    assert running.stop_reason == "stop please"
    assert queue.running == [running]


def test_cancel_of_an_unknown_or_finished_task_raises_unknown_task() -> None:
    queue = TaskQueue()
    with pytest.raises(UnknownTask):
        queue.cancel("nope", "x")
    queue.add(task("t1"))
    started = queue.take()
    assert started is not None
    queue.finish(started, "success")
    with pytest.raises(UnknownTask):
        queue.cancel("t1", "x")


def test_counts_cover_every_state() -> None:
    queue = TaskQueue()
    for name, collection in [("a", "c1"), ("b", "c2"), ("c", "c3"), ("d", "c4"), ("e", "c5")]:
        queue.add(task(name, collection))
    first, second, third = queue.take(), queue.take(), queue.take()
    assert first is not None and second is not None and third is not None
    queue.finish(first, "success")
    queue.finish(second, "error", "boom")
    queue.cancel("d", "no")
    assert queue.counts() == {
        "queued": 1,
        "running": 1,
        "success": 1,
        "error": 1,
        "cancelled": 1,
    }
    assert queue.unfinished == 2


def test_get_finds_only_unfinished_tasks() -> None:
    queue = TaskQueue()
    queue.add(task("t1", "a"))
    queue.add(task("t2", "b"))
    running = queue.take()
    assert queue.get("t1") is running
    queued = queue.get("t2")
    assert queued is not None and queued.state == "queued"
    assert running is not None
    queue.finish(running, "success")
    assert queue.get("t1") is None


def test_history_is_bounded() -> None:
    queue = TaskQueue(history=2)
    for name in ("a", "b", "c"):
        queue.add(task(name))
        queue.cancel(name, "x")
    assert [t.task_id for t in queue.finished] == ["b", "c"]


def test_task_info_reports_wire_fields() -> None:
    queue = TaskQueue()
    queue.add(task("t1"))
    started = queue.take()
    assert started is not None
    started.archived = 5
    info = started.info()
    assert (info.task_id, info.state, info.archived, info.collection) == (
        "t1",
        "running",
        5,
        "chat_messages",
    )
    assert info.duration is not None and info.duration >= 0


def test_a_full_queue_refuses_more_tasks_without_queueing_them() -> None:
    queue = TaskQueue(limit=2)
    queue.add(task("t1"))
    queue.add(task("t2", collection="other"))
    with pytest.raises(QueueFull):
        queue.add(task("t3", collection="third"))
    assert [t.task_id for t in queue.queued] == ["t1", "t2"]
