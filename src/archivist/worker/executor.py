"""Moves one task's rows, batch by batch: copy, verify, delete, through the daemon's commands.

The executor never touches a database: every step is an ``execute`` callback on the task's
connection. A batch is deleted from the source only after its copy read back identical
from the destination, so a failure at any step leaves every row in the source, the
destination, or both, and a rerun converges (creates are idempotent by primary key).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from archivist.errors import (
    ArchivistError,
    ConnectionClosed,
    RemoteError,
    RequestTimeout,
    VerifyMismatch,
)
from archivist.protocol import JSONObject
from archivist.worker.queue import Task

log = logging.getLogger(__name__)

DEFAULT_PRIMARY_KEY: Final = "id"
STALLED_BATCHES: Final = 3
"""Consecutive batches that delete nothing (every row changed under us) before giving up."""


TRANSIENT_CODES: Final = frozenset({"db_error", "timeout"})
"""Wire codes of failures worth retrying: the database or the daemon may come back."""
RETRY_DELAYS: Final = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Settings:
    """How the executor behaves; one instance per worker."""

    retry_for: float = 60.0
    """Seconds a batch that keeps failing with a transient error is retried before the task
    fails (0: fail at once)."""


class Callbacks(Protocol):
    """What the executor may do: call the daemon's commands and report progress."""

    async def execute(self, target: str, params: JSONObject) -> JSONObject: ...

    async def progress(self, archived: int, total: int) -> None: ...


@dataclass(frozen=True)
class Outcome:
    status: Literal["success", "error", "cancelled"]
    archived: int
    error: str | None = None
    code: str | None = None
    delivered: bool = True
    """False when the task's connection is gone, so no ``complete`` can be sent."""


class BadAnswer(ArchivistError):
    code = "bad_answer"


async def run_task(task: Task, calls: Callbacks, settings: Settings | None = None) -> Outcome:
    """Run one task to its end and say how it ended; never raises for a task's failure."""
    try:
        finished = await _archive(task, calls, settings or Settings())
    except ConnectionClosed as exc:
        log.warning("task %s: connection lost (%s); dropped", task.task_id, exc.message)
        return Outcome("cancelled", task.archived, exc.message, exc.code, delivered=False)
    except ArchivistError as exc:
        log.error("task %s failed after %d rows: %s", task.task_id, task.archived, exc.message)
        return Outcome("error", task.archived, exc.message, exc.code)
    except Exception as exc:
        # A bug must fail this task, not end the runner (and with it the whole worker).
        log.exception("task %s: internal error after %d rows", task.task_id, task.archived)
        return Outcome("error", task.archived, f"internal error: {exc}", "internal")
    if not finished and task.stop_reason is not None:
        return Outcome("cancelled", task.archived, task.stop_reason, "cancelled")
    return Outcome("success", task.archived)


async def _archive(task: Task, calls: Callbacks, settings: Settings) -> bool:
    """Move the task's rows; True when all are moved (or the source ran out)."""
    spec = task.spec
    # One round trip before touching data proves the callback path (the design's Test 3).
    await calls.execute("ping", {})
    counted = await calls.execute(
        "data/count", {"collection": spec.collection, "dbHandle": spec.source_handle}
    )
    task.total = min(spec.max_rows, _int_field(counted, "count", "data/count"))
    stalled = 0
    failing_since: float | None = None
    streak = 0
    while task.archived < spec.max_rows:
        if task.stop_reason is not None:
            return False
        limit = min(spec.batch_size, spec.max_rows - task.archived)
        try:
            moved, listed = await _move_batch(task, calls, limit)
        except (RemoteError, RequestTimeout) as exc:
            failing_since = failing_since or time.monotonic()
            streak += 1
            await _retry_pause(task, exc, streak, time.monotonic() - failing_since, settings)
            continue
        failing_since, streak = None, 0
        if listed == 0:
            return True
        task.archived += moved
        stalled = stalled + 1 if moved == 0 else 0
        if stalled >= STALLED_BATCHES:
            raise VerifyMismatch(
                f"{stalled} batches in a row found every row changed since it was copied; "
                "the source is being rewritten faster than it can be archived"
            )
        await calls.progress(task.archived, max(task.total, task.archived))
        if listed < limit and moved == listed:
            return True  # the source ran out: no need to ask again
    return True


async def _retry_pause(
    task: Task,
    exc: RemoteError | RequestTimeout,
    streak: int,
    failing_for: float,
    settings: Settings,
) -> None:
    """Wait before retrying a failed batch, or re-raise when retrying is pointless or over.

    Retrying is safe at any step: the next attempt lists the source again, its create is
    idempotent, and only rows verified in the archive are deleted.
    """
    if exc.code not in TRANSIENT_CODES:
        raise exc
    if failing_for >= settings.retry_for:
        raise type(exc)(
            f"{exc.message} (gave up after retrying for {failing_for:.0f} s)", *_code_arg(exc)
        ) from None
    task.retries += 1
    delay = RETRY_DELAYS[min(streak - 1, len(RETRY_DELAYS) - 1)]
    delay = min(delay, max(0.1, settings.retry_for - failing_for))
    log.warning("task %s: batch failed (%s); retrying in %.1f s", task.task_id, exc.message, delay)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and task.stop_reason is None:  # noqa: ASYNC110
        await asyncio.sleep(min(0.1, deadline - time.monotonic()))


def _code_arg(exc: RemoteError | RequestTimeout) -> tuple[str, ...]:
    return (exc.code,) if isinstance(exc, RemoteError) else ()


async def _move_batch(task: Task, calls: Callbacks, limit: int) -> tuple[int, int]:
    """Copy, verify and delete the oldest ``limit`` rows; returns (deleted, listed)."""
    spec = task.spec
    source = {"collection": spec.collection, "dbHandle": spec.source_handle}
    dest = {"collection": spec.collection, "dbHandle": spec.dest_handle}
    listing: JSONObject = {**source, "limit": limit}
    if spec.order_by is not None:
        listing["orderBy"] = [{"field": spec.order_by, "direction": "asc"}]
    listed = await calls.execute("data/list", listing)
    items = _items(listed, "data/list")
    if not items:
        return 0, 0
    primary_key = _primary_key(listed)
    ids = [_key_of(item, primary_key) for item in items]

    # The source is authoritative for rows it still holds: a copy left by an earlier,
    # interrupted run is overwritten rather than reported as a conflict.
    await calls.execute("data/create", {**dest, "items": items, "onConflict": "replace"})
    copies = await calls.execute(
        "data/list", {**dest, "filter": {primary_key: {"$in": ids}}, "limit": len(ids)}
    )
    _verify(items, _items(copies, "data/list"), primary_key, spec.dest_handle)

    # Delete only rows still equal to what was copied: a row updated since is kept and
    # moved again, updated, by a later batch.
    deleted = await calls.execute("data/delete", {**source, "ids": ids, "expected": items})
    return _int_field(deleted, "deleted", "data/delete"), len(items)


def _verify(
    originals: Sequence[JSONObject], copies: Sequence[JSONObject], primary_key: str, dest: str
) -> None:
    by_key = {_key_of(copy, primary_key): copy for copy in copies}
    for original in originals:
        key = _key_of(original, primary_key)
        copy = by_key.get(key)
        if copy is None:
            raise VerifyMismatch(f"row {primary_key}={key!r} is missing from {dest} after copy")
        if any(copy.get(field) != value for field, value in original.items()):
            changed = sorted(f for f, v in original.items() if copy.get(f) != v)
            raise VerifyMismatch(
                f"row {primary_key}={key!r} differs in {dest} after copy "
                f"(fields: {', '.join(changed)}); nothing was deleted"
            )


def _items(result: JSONObject, command: str) -> list[JSONObject]:
    items = result.get("items")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadAnswer(f"{command} answered without a list of items")
    return items


def _primary_key(result: JSONObject) -> str:
    primary_key = result.get("primaryKey", DEFAULT_PRIMARY_KEY)
    return primary_key if isinstance(primary_key, str) else DEFAULT_PRIMARY_KEY


def _key_of(item: JSONObject, primary_key: str) -> object:
    if primary_key not in item:
        raise BadAnswer(f"an item has no primary key field {primary_key!r}")
    key = item[primary_key]
    if key is None or isinstance(key, list | dict):
        raise BadAnswer(f"an item's primary key {primary_key!r} is not a scalar: {key!r:.100}")
    return key


def _int_field(result: JSONObject, name: str, command: str) -> int:
    value = result.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadAnswer(f"{command} answered without an integer {name!r}")
    return value
