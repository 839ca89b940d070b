"""The worker's task table: a FIFO of queued tasks, the running ones, and recent history.

A runner takes the oldest queued task whose (sourceHandle, collection) is not running.
Pure bookkeeping, no I/O: the server and the runners drive it.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Literal

from archivist.errors import DuplicateTask, QueueFull, UnknownTask
from archivist.protocol import Archive, TaskInfo

TaskState = Literal["queued", "running", "success", "error", "cancelled"]


@dataclass(eq=False)
class Task:
    """One archive task and what has happened to it so far."""

    spec: Archive
    owner: object
    """The connection that queued the task: its callbacks and notifications go there."""
    state: TaskState = "queued"
    archived: int = 0
    total: int = 0
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    stop_reason: str | None = None
    """Set to ask the executor to stop at its next safe point."""
    throttled: str | None = None
    throttled_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds the task has waited, by reason (`archivist.worker.throttle.reason_kind`):
    sent with its progress and completion for the daemon's metrics."""
    retries: int = 0
    """Batches retried after a transient failure."""
    min_rate: float | None = None
    """Rows/s the task keeps to at least while yielding: the ``archive`` message's
    ``minRate``, or the latest ``rate`` request's."""

    def __post_init__(self) -> None:
        if self.min_rate is None:
            self.min_rate = self.spec.min_rate

    def log_fields(self) -> dict[str, object]:
        """The task's fields on a JSON log line (`archivist.logs.TASK_FIELDS`)."""
        spec = self.spec
        return {
            "task_id": spec.task_id,
            "collection": spec.collection,
            "source_handle": spec.source_handle,
            "dest_handle": spec.dest_handle,
        }

    def waited(self, reason: str, seconds: float) -> None:
        """Count ``seconds`` the task waited for ``reason`` (`reason_kind`'s names)."""
        if seconds > 0:
            self.throttled_seconds[reason] = self.throttled_seconds.get(reason, 0.0) + seconds

    def throttle_totals(self) -> dict[str, float] | None:
        """What `throttled_seconds` holds, to the millisecond, for the wire (None: nothing)."""
        return {k: round(v, 3) for k, v in self.throttled_seconds.items()} or None

    @property
    def task_id(self) -> str:
        return self.spec.task_id

    @property
    def key(self) -> tuple[str, str]:
        return (self.spec.source_handle, self.spec.collection)

    @property
    def duration_ms(self) -> int:
        if self.started_at is None:
            return 0
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0, round((end - self.started_at) * 1000))

    def info(self) -> TaskInfo:
        spec = self.spec
        return TaskInfo(
            task_id=spec.task_id,
            collection=spec.collection,
            source_handle=spec.source_handle,
            dest_handle=spec.dest_handle,
            max_rows=spec.max_rows,
            batch_size=spec.batch_size,
            state=self.state,
            archived=self.archived,
            total=self.total,
            queued_at=self.queued_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            duration=self.duration_ms if self.started_at is not None else None,
            error=self.error,
            throttled=self.throttled,
        )


class TaskQueue:
    """Queued, running and recently finished tasks, keyed by taskId."""

    def __init__(self, history: int = 100, limit: int = 10_000) -> None:
        self.limit = limit
        self._queued: list[Task] = []
        self._running: dict[str, Task] = {}
        self._finished: collections.deque[Task] = collections.deque(maxlen=history)

    @property
    def queued(self) -> list[Task]:
        return list(self._queued)

    @property
    def running(self) -> list[Task]:
        return list(self._running.values())

    @property
    def finished(self) -> list[Task]:
        return list(self._finished)

    @property
    def unfinished(self) -> int:
        return len(self._queued) + len(self._running)

    def get(self, task_id: str) -> Task | None:
        """The unfinished task with this id, if any."""
        if task_id in self._running:
            return self._running[task_id]
        return next((t for t in self._queued if t.task_id == task_id), None)

    def add(self, task: Task) -> int:
        """Queue a task; returns its queuePosition (unfinished tasks, this one included)."""
        if self.get(task.task_id) is not None:
            raise DuplicateTask(f"task {task.task_id!r} is already queued or running")
        if len(self._queued) >= self.limit:
            raise QueueFull(f"the queue holds {self.limit} tasks already; try again later")
        self._queued.append(task)
        return self.unfinished

    def take(self) -> Task | None:
        """Start the oldest queued task whose (sourceHandle, collection) is free."""
        busy = {t.key for t in self._running.values()}
        for index, task in enumerate(self._queued):
            if task.key not in busy:
                del self._queued[index]
                task.state = "running"
                task.started_at = time.time()
                self._running[task.task_id] = task
                return task
        return None

    def finish(self, task: Task, state: TaskState, error: str | None = None) -> None:
        """Record the end of a task, running or still queued."""
        if self._running.pop(task.task_id, None) is None and task in self._queued:
            self._queued.remove(task)
        task.state = state
        task.error = error
        task.finished_at = time.time()
        self._finished.append(task)

    def cancel(self, task_id: str, reason: str) -> Task:
        """Ask an unfinished task to stop; a queued one is finished at once."""
        task = self.get(task_id)
        if task is None:
            raise UnknownTask(f"no queued or running task {task_id!r}")
        task.stop_reason = reason
        if task.state == "queued":
            self.finish(task, "cancelled", reason)
        return task

    def counts(self) -> dict[str, int]:
        counts = {"queued": len(self._queued), "running": len(self._running)}
        for state in ("success", "error", "cancelled"):
            counts[state] = sum(1 for t in self._finished if t.state == state)
        return counts
