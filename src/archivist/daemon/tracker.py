"""The daemon's record of the tasks it queued: progress, outcome, and what to queue again.

Pure bookkeeping, no I/O. A task whose connection dropped before it completed is "lost"
and is queued again, for the rows it had left, once the worker is reachable again.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from dataclasses import dataclass, field
from typing import Literal

from archivist.protocol import Child, Complete, JSONObject, Progress

RecordState = Literal["pending", "queued", "running", "success", "error", "cancelled", "lost"]
UNFINISHED: frozenset[RecordState] = frozenset({"pending", "queued", "running", "lost"})


@dataclass(eq=False)
class TaskRecord:
    """One archive job as the daemon sees it; it may span several worker tasks (attempts)."""

    collection: str
    source_handle: str
    dest_handle: str
    max_rows: int
    batch_size: int
    order_by: str | None
    task_id: str
    min_rate: float | None = None
    """Rows/s the task keeps to at least while yielding (keeping up; None: no floor)."""
    deleted: int = 0
    """Rows of this job deleted from its source, from the answers to the worker's
    ``data/copy``, ``data/delete`` and ``data/relay`` there (the daemon runs them): what an
    interrupted job moved, exactly, where its last progress report may be a batch behind,
    and without counting the table."""
    serving: set[asyncio.Future[JSONObject]] = field(default_factory=set)
    """The job's commands still running here, which ``deleted`` waits for."""
    filter: dict[str, object] | None = None
    """Which source rows are the job's (its ``where``, its age cutoff), fixed when queued."""
    mode: Literal["copy", "purge"] | None = None
    """None: move (copy, then delete)."""
    state: RecordState = "pending"
    archived: int = 0
    """Rows moved by earlier, lost attempts plus the current one."""
    carried: int = 0
    """Rows moved by earlier attempts."""
    total: int = 0
    attempts: int = 0
    error: str | None = None
    children: list[Child] = field(default_factory=list)
    """The policy's named children, moved with its rows (the ``archive`` extension)."""
    code: str | None = None
    """The wire code of the worker's ``complete`` (why it ended in error or was cancelled)."""
    settles: bool = False
    """The job finishes rows an interrupted task left in both databases (`archivist.daemon.
    settling`), not rows its policy's limits ask for."""
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def remaining(self) -> int:
        return max(0, self.max_rows - self.archived)

    @property
    def finished(self) -> bool:
        return self.state not in UNFINISHED

    @property
    def duration_ms(self) -> int:
        end = self.finished_at if self.finished_at is not None else time.time()
        return round((end - self.created_at) * 1000)


class Tracker:
    """Task records by id, at most one unfinished per collection, and recent history."""

    _serial = itertools.count(1)

    def __init__(self, history: int = 100) -> None:
        self._by_task: dict[str, TaskRecord] = {}
        self._history: collections.deque[TaskRecord] = collections.deque(maxlen=history)
        self._prefix = f"t{int(time.time()) % 100000:05d}"
        self._moved: collections.Counter[str] = collections.Counter()

    def new_task_id(self, collection: str) -> str:
        return f"{collection}-{self._prefix}-{next(self._serial)}"

    def get(self, task_id: str) -> TaskRecord | None:
        """The unfinished record whose current attempt runs under ``task_id``."""
        return self._by_task.get(task_id)

    def unfinished(self, collection: str) -> TaskRecord | None:
        return next(
            (r for r in self._by_task.values() if r.collection == collection and not r.finished),
            None,
        )

    def find(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id``: unfinished, or among the recently finished."""
        record = self._by_task.get(task_id)
        if record is not None:
            return record
        return next((r for r in reversed(self._history) if r.task_id == task_id), None)

    def last_finished(self, collection: str) -> TaskRecord | None:
        """The latest record of ``collection`` that has ended (its last run)."""
        return next((r for r in reversed(self._history) if r.collection == collection), None)

    def records(self) -> list[TaskRecord]:
        live = [r for r in self._by_task.values() if not r.finished]
        return live + list(reversed(self._history))

    def add(self, record: TaskRecord) -> None:
        self._by_task[record.task_id] = record

    def rename(self, record: TaskRecord, task_id: str) -> None:
        """A new attempt of the same record runs under a new task id."""
        self._by_task.pop(record.task_id, None)
        record.task_id = task_id
        self._by_task[task_id] = record

    def take_moved(self, collection: str) -> int:
        """Rows of ``collection`` reported moved since the last call (keeping up's measure)."""
        return self._moved.pop(collection, 0)

    def _count_moved(self, record: TaskRecord, archived: int) -> None:
        self._moved[record.collection] += max(0, archived - record.archived)

    def on_progress(self, message: Progress) -> TaskRecord | None:
        record = self._by_task.get(message.task_id)
        if record is None:
            return None
        record.state = "running"
        self._count_moved(record, record.carried + message.archived)
        record.archived = record.carried + message.archived
        record.total = max(record.total, record.carried + message.total)
        return record

    def on_complete(self, message: Complete) -> TaskRecord | None:
        record = self._by_task.pop(message.task_id, None)
        if record is None:
            return None
        self._count_moved(record, record.carried + message.archived)
        record.archived = record.carried + message.archived
        record.state = message.status
        record.error = message.error
        record.code = message.code
        record.finished_at = time.time()
        self._history.append(record)
        record.done.set()
        return record

    def recount(self, record: TaskRecord) -> None:
        """Before queueing a lost record again (its commands served to the end): what it
        moved is what was deleted from its source for it."""
        record.archived = record.carried = min(record.max_rows, record.deleted)

    def mark_lost(self) -> list[TaskRecord]:
        """The connection dropped: every unfinished record must be queued again."""
        lost = [r for r in self._by_task.values() if not r.finished]
        for record in lost:
            record.state = "lost"
            record.carried = record.archived
        return lost

    def finish(self, record: TaskRecord, state: RecordState, error: str | None = None) -> None:
        """End a record the worker never completed (refused, or nothing left to move)."""
        self._by_task.pop(record.task_id, None)
        record.state = state
        record.error = error
        record.finished_at = time.time()
        self._history.append(record)
        record.done.set()
