"""Moves one task's rows, batch by batch: copy, verify, delete, through the daemon's commands.

The executor never touches a database: every step is an ``execute`` callback on the task's
connection. A batch is deleted from the source only after its copy read back identical
from the destination, so a failure at any step leaves every row in the source, the
destination, or both, and a rerun converges (creates are idempotent by primary key).

Where the daemon can copy rows itself (``data/copy``: inside one database server, or
streamed between two servers or engines), a batch is listed and copied in one call that
answers only the rows' keys, and deleted with ``matching``: the daemon deletes only rows
whose copy is identical, which is the verification.
Where it can also delete them in the copy's transaction (``move``: two databases of one
MariaDB/MySQL server), that one call moves the batch: the source rows are locked from
their copy to the commit, so the rows deleted are the rows copied, as copied.
Where it cannot (``unsupported``, or a daemon without the command), rows travel through
the worker as above.

While one batch is written, the next one is already being listed (keyset cursor after the
batch's last row), and a batch's delete runs beside the next batch's copy. Batch sizes
follow a target time per batch, and the worker's `Throttle` decides when a batch may start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from archivist.errors import (
    ROWS_PATH_CODES,
    ArchivistError,
    ConnectionClosed,
    RemoteError,
    RequestTimeout,
    RowTooLarge,
    TaskCancelled,
    VerifyMismatch,
)
from archivist.protocol import DEFAULT_FRAME_LIMIT, JSONObject, row_budget
from archivist.worker.batch import (
    Batch,
    cursor_of,
    int_field,
    items_of,
    key_of,
    primary_key_of,
    verify,
)
from archivist.worker.batching import BatchSizer
from archivist.worker.children import ChildMover
from archivist.worker.kept import KeptRows
from archivist.worker.pacing import Pacer
from archivist.worker.queue import Task
from archivist.worker.settings import DEFAULTS
from archivist.worker.throttle import Throttle, ThrottleSettings

log = logging.getLogger(__name__)

STALLED_BATCHES: Final = 3
"""Consecutive batches that delete nothing (every row changed under us) before giving up."""


@dataclass(frozen=True)
class Settings:
    """How the executor behaves; one instance per worker."""

    retry_for: float = DEFAULTS.retry_for
    """Seconds a batch that keeps failing with a transient error is retried before the task
    fails (0: fail at once)."""
    batch_time: float = DEFAULTS.batch_time
    """Seconds each batch should take: sizes adapt to it, up to the task's batchSize
    (0: always the task's batchSize)."""
    min_batch: int = DEFAULTS.min_batch
    prefetch: bool = DEFAULTS.prefetch
    """List the next batch while the current one is written."""
    in_database: bool = DEFAULTS.in_database
    """Let the daemon copy rows inside the database where it can (``data/copy``)."""
    frame_limit: int = DEFAULT_FRAME_LIMIT
    """The connection's frame limit (the worker sets it from its own): the rows of a
    batch, through the worker, fit in one frame (`archivist.protocol.row_budget`)."""
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)


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

    @classmethod
    def stopped(cls, archived: int, reason: str) -> Outcome:
        """A task cancelled (by request, shutdown or its connection) after `archived` rows."""
        return cls("cancelled", archived, reason, TaskCancelled.code)


class Executor:
    """Runs tasks; one per worker, so all tasks share its throttle."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.throttle = Throttle(self.settings.throttle)

    async def run(self, task: Task, calls: Callbacks) -> Outcome:
        """Run one task to its end and say how it ended; never raises for a task's failure."""
        run = _TaskRun(self, task, calls)
        try:
            finished = await run.archive()
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
            return Outcome.stopped(task.archived, task.stop_reason)
        ending = run.kept.ending()
        if ending is not None:
            if run.kept.unstorable:
                log.error("task %s: %s", task.task_id, ending.message)
            else:
                log.warning("task %s: %s", task.task_id, ending.message)
            return Outcome("error", task.archived, ending.message, ending.code)
        return Outcome("success", task.archived)


class _TaskRun:
    """The state of one task while it runs."""

    def __init__(self, executor: Executor, task: Task, calls: Callbacks) -> None:
        spec = task.spec
        settings = executor.settings
        self.settings = settings
        self.throttle = executor.throttle
        self.task = task
        self.calls = calls
        self.source: JSONObject = {"collection": spec.collection, "dbHandle": spec.source_handle}
        self.filtering: JSONObject = {"filter": spec.filter} if spec.filter is not None else {}
        """Which source rows are the task's (``filter``): added to every listing, count and
        copy of the source; never to a delete, whose guards decide alone."""
        self.mode = spec.mode or "move"
        self.resume: JSONObject | None = None
        """In mode "copy", where the next listing starts: nothing is deleted, so the
        source's first rows are the ones copied already."""
        self.dest: JSONObject = {"collection": spec.collection, "dbHandle": spec.dest_handle}
        self.budget = row_budget(settings.frame_limit)
        """Bytes of rows one frame carries: a listing's ``maxBytes``."""
        self.sizer = BatchSizer.for_task(
            spec.batch_size, settings.batch_time, settings.min_batch, budget=self.budget
        )
        self.stalled = 0
        self.pending: Batch | None = None
        """The batch copied and verified last, whose delete runs beside the next copy."""
        self.in_database = settings.in_database and self.mode != "purge"
        """Batches are copied inside the database (until the daemon says it cannot); a
        purge lists rows and deletes them as listed."""
        self.pacer = Pacer(
            task, executor.throttle, settings.throttle, settings.retry_for, calls.execute
        )
        """The rests between batches and before retries, and why the task is throttled."""
        self.moving = False
        """The daemon moved the last batch (``data/copy`` with ``move``): its copies write
        the source, and hold the database's budget as a delete does."""
        self.children = (
            ChildMover(
                calls.execute,
                spec.source_handle,
                spec.dest_handle,
                task.task_id,
                budget=self.budget,
                delete=self.mode == "move",
            )
            if spec.children and self.mode != "purge"
            else None
        )
        """Moves the rows of the task's named children before each batch's delete."""
        self.kept = KeptRows(task)
        """Rows left in the source: referenced by other rows, or unstorable."""

    @property
    def remaining(self) -> int:
        return self.task.spec.max_rows - self.task.archived - self.kept.count

    def stopped(self) -> bool:
        return self.task.stop_reason is not None

    async def archive(self) -> bool:
        """Move the task's rows; True when all are moved (or the source ran out)."""
        task = self.task
        # One round trip before touching data proves the callback path (the design's Test 3).
        await self.calls.execute("ping", {})
        # Counted up to the task's rows (an extension a daemon may ignore): the rows the
        # task moves are read, not the whole table.
        counted = await self.calls.execute(
            "data/count", {**self.source, **self.filtering, "limit": task.spec.max_rows}
        )
        task.total = min(task.spec.max_rows, int_field(counted, "count", "data/count"))
        ahead: asyncio.Task[Batch] | None = None
        failing_since: float | None = None
        streak = 0
        try:
            while self.remaining - self.unsettled > 0:
                if self.stopped():
                    return await self._settle_on_stop(ahead)
                await self.throttle.wait_turn(
                    task.spec.source_handle, self.calls.execute, self.pacer.throttled, self.stopped
                )
                if self.stopped():
                    return await self._settle_on_stop(ahead)
                started = time.monotonic()
                try:
                    batch = await ahead if ahead is not None else await self._list(None)
                    ahead = None
                    if self.mode == "copy" and batch.items:
                        self.resume = batch.cursor_after()
                    if batch.oversized is not None:
                        async with self.throttle.budget(task.spec.source_handle):
                            await self._settle_pending()
                            await self._relay(batch, batch.oversized)
                        left_behind = True  # nothing was listed past it: start again
                    elif not batch.items:
                        if await self._settle_pending():
                            return True  # the source ran out
                        continue  # the last delete left rows behind: list from the start
                    else:
                        ahead = self._list_ahead(batch)
                        if batch.moved is not None:
                            left_behind = not await self._settle_pending()
                            await self._moved(batch.moved)
                        else:
                            async with self.throttle.budget(task.spec.source_handle):
                                left_behind = await self._write(batch, defer=ahead is not None)
                    if left_behind:
                        # Rows changed since they were listed stay in the source. They are
                        # the oldest there now: list from the start again, not past them,
                        # so they move next (updated) and the cursor never skips a row.
                        await _cancelled(ahead)
                        ahead = None
                except (RemoteError, RequestTimeout) as exc:
                    await _cancelled(ahead)
                    ahead = None
                    await self._settle_after_failure()
                    failing_since = failing_since or time.monotonic()
                    streak += 1
                    await self.pacer.retry_pause(exc, streak, time.monotonic() - failing_since)
                    continue
                failing_since, streak = None, 0
                took = time.monotonic() - started
                self.sizer.record(len(batch.items), took)
                if batch.last_page and not left_behind and self.pending is None:
                    return True  # the source has nothing after this batch
                if self.remaining - self.unsettled <= 0:
                    return True  # all moved: no rest after the last batch
                await self.pacer.pause_between_batches(took, len(batch.items))
            return True  # a batch is kept pending only while more rows are to be listed
        finally:
            await _cancelled(ahead)

    @property
    def unsettled(self) -> int:
        """Rows copied and verified whose delete has not run yet."""
        return len(self.pending.to_move) if self.pending is not None else 0

    async def _moved(self, moved: int) -> None:
        """Count rows a delete removed, and report the task's progress."""
        if not moved:
            return
        self.task.archived += moved
        await self.calls.progress(self.task.archived, max(self.task.total, self.task.archived))

    async def _settle_on_stop(self, ahead: asyncio.Task[Batch] | None) -> bool:
        """Finish the batch copied last before stopping; False (the task did not finish).

        A batch listed ahead by ``data/copy`` is already copied, or being copied: it is
        deleted too, rather than left in both databases until the next run.
        """
        try:
            await self._settle_pending()
            if ahead is not None and self.in_database:
                batch = await ahead
                if batch.moved is not None:
                    await self._moved(batch.moved)
                elif batch.copied and batch.items:
                    await self._delete_now(batch)
        except (RemoteError, RequestTimeout) as exc:
            # Its rows are in both databases; the next run deletes them.
            log.warning("task %s: last delete failed on stopping: %s", self.task.task_id, exc)
        return False

    async def _settle_after_failure(self) -> None:
        """After a failed step, delete the batch copied and verified last if it is still
        pending (the failure was the next batch's listing or copy), so its rows do not stay
        in both databases while the task retries or fails; if that delete fails too, they
        are listed again from the start."""
        try:
            await self._settle_pending()
        except (RemoteError, RequestTimeout) as exc:
            log.warning("task %s: delete after a failure failed too: %s", self.task.task_id, exc)
        self.pending = None

    async def _settle_pending(self) -> bool:
        """Delete the batch copied last, if its delete is still to run; True if none was left
        behind by it."""
        if self.pending is None:
            return True
        batch, self.pending = self.pending, None
        return not await self._delete_now(batch)

    # --- one batch -------------------------------------------------------------------------

    def _limit(self, in_flight: int = 0) -> int:
        """The size of the next batch; ``in_flight`` rows are being written meanwhile and
        count against the task's remaining rows."""
        return max(1, min(self.sizer.size, self.remaining - in_flight))

    async def _list(
        self, cursor: JSONObject | None, limit: int | None = None, following: int | None = None
    ) -> Batch:
        """The oldest rows still to move (``limit`` of them, by default `_limit`), or those
        just past ``cursor``."""
        limit = self._limit() if limit is None else limit
        params: JSONObject = {**self.source, **self.filtering, "limit": limit}
        order_by = self.task.spec.order_by
        if order_by is not None:
            params["orderBy"] = [{"field": order_by, "direction": "asc"}]
        if cursor is None and self.mode == "copy":
            cursor = self.resume
        if cursor is not None:
            params["cursor"] = cursor
        if (leave_out := self.kept.listing_filter()) is not None:
            params["filter"] = leave_out
        command = "data/list"
        if following is None:
            following = self._following(self.unsettled, limit)
        if (
            self.in_database
            and (listed := await self._copy_in_database(params, following)) is not None
        ):
            command = "data/copy"
        else:
            listed = await self.calls.execute(command, {**params, "maxBytes": self.budget})
        order_field = order_by or listed.get("orderBy")
        moved = None
        if command == "data/copy" and "deleted" in listed:
            moved = int_field(listed, "deleted", command)
            self.pacer.deleted_at = time.monotonic()
        self.moving = moved is not None
        items = items_of(listed, command)
        size = listed.get("bytes")
        if isinstance(size, int) and not isinstance(size, bool):
            # Before the next listing is sized (it may start at once, ahead).
            self.sizer.learn_width(len(items), size)
        oversized = listed.get("oversized")
        return Batch(
            items=items,
            limit=limit,
            primary_key=primary_key_of(listed),
            order_field=order_field if isinstance(order_field, str) else None,
            after_cursor=cursor is not None,
            copied=command == "data/copy",
            next_cursor=cursor_of(listed) if command == "data/copy" else None,
            moved=moved,
            truncated=listed.get("truncated") is True,
            oversized=oversized if isinstance(oversized, dict) and not items else None,
        )

    async def _relay(self, batch: Batch, oversized: JSONObject) -> None:
        """Have the daemon move one row too wide for any frame itself (``data/relay``: it
        holds both connections); a daemon that cannot fails the task at once, naming it."""
        key, size = oversized.get("id"), oversized.get("bytes")
        spec = self.task.spec
        params: JSONObject = {**self.source, "destHandle": spec.dest_handle, "ids": [key]}
        if self.children is not None and key is not None:
            # Its children first, as for any batch: else the relay's guarded delete keeps
            # the row (still referenced), and the task lists it again and again.
            await self.children.move(spec.children or [], [key])
        try:
            moved = await self.calls.execute("data/relay", params)
        except RemoteError as exc:
            if exc.code not in ROWS_PATH_CODES:
                raise
            raise RowTooLarge(
                f"row {batch.primary_key}={key!r} of {spec.collection} is {size} bytes as "
                f"JSON, more than the {self.budget} bytes of rows a frame carries, and the "
                f"daemon cannot move it itself ({exc.message})"
            ) from None
        deleted = int_field(moved, "deleted", "data/relay")
        log.info(
            "task %s: row %s=%r of %s bytes moved by the daemon (wider than a frame)",
            self.task.task_id,
            batch.primary_key,
            key,
            size,
        )
        self.pacer.deleted_at = time.monotonic()
        self._count_skips(1 - deleted, 1)
        await self._moved(deleted)

    async def _copy_in_database(self, params: JSONObject, following: int) -> JSONObject | None:
        """List and copy the next rows in one call, inside the database, and delete them
        in the same transaction where the daemon can (``move``: the answer says how many
        went); None when the daemon cannot copy for this task's handles (then rows go
        through the worker)."""
        # Not with children: they must go before their parents, which a move deletes at once.
        move = self.mode == "move" and not self.task.spec.children
        params = {**params, "destHandle": self.task.spec.dest_handle, "move": move}
        if move and self.settings.prefetch:
            # The next page is asked for as soon as this one is answered (`_list_ahead`):
            # the daemon may move it meanwhile, held until asked for.
            params["ahead"] = following
        try:
            if not self.moving:
                return await self.calls.execute("data/copy", params)
            async with self.throttle.budget(self.task.spec.source_handle):
                return await self.calls.execute("data/copy", params)
        except RemoteError as exc:
            if exc.code not in ROWS_PATH_CODES:
                raise
            if self.in_database:
                log.info("task %s: rows go through the worker: %s", self.task.task_id, exc.message)
            self.in_database = False
            return None

    def _list_ahead(self, batch: Batch) -> asyncio.Task[Batch] | None:
        """Start listing the batch after this one, if there will be one and we can find it.

        A cursor past this batch is sound because every row before it has moved: a batch
        that leaves rows behind drops the listing made ahead of it (see `archive`).
        """
        in_flight = self.unsettled + len(batch.items)
        if not self.settings.prefetch or self.remaining - in_flight <= 0:
            return None
        if batch.last_page:
            return None  # the source has nothing after this batch
        cursor = batch.cursor_after()
        if cursor is None:
            return None
        # The size is fixed now: the rows in flight are counted as moved while it runs.
        limit = self._limit(in_flight)
        return asyncio.create_task(self._list(cursor, limit, self._following(in_flight, limit)))

    def _following(self, in_flight: int, limit: int) -> int:
        """How many rows will follow a page of ``limit`` rows, asked for as soon as it is
        answered (``in_flight`` rows are being moved meanwhile): unless the task rests
        between its batches, the daemon may move up to as many meanwhile (``ahead``), and
        none past the task's end."""
        if self.pacer.rested:
            return 0
        return max(0, self.remaining - in_flight - limit)

    async def _write(self, batch: Batch, *, defer: bool) -> bool:
        """Copy and verify one listed batch and delete the one copied before it, at once;
        returns whether a delete left rows behind. Rows deleted are counted as they go.

        The delete of a batch overlaps the copy of the next: the two touch different rows
        and, mostly, different databases. Each batch is still deleted only after its own
        copy read back identical. With ``defer`` false (the next batch is not being listed
        past this one: the source ends here, or the order is unknown) or when a delete left
        rows behind, this batch is deleted at once instead.
        """
        previous, self.pending = self.pending, None
        left_behind = False
        if previous is None:
            await self._copy(batch)
        else:
            copying = asyncio.ensure_future(self._copy(batch))
            deleting = asyncio.ensure_future(self._delete(previous))
            copied, deleted = await asyncio.gather(copying, deleting, return_exceptions=True)
            if isinstance(deleted, tuple):  # what went is counted, whatever the copy did
                moved, kept = deleted
                await self._moved(moved)
                left_behind = moved + kept < len(previous.to_move)
            for outcome in (copied, deleted):
                if isinstance(outcome, BaseException):
                    raise outcome
        if left_behind or not defer:
            return await self._delete_now(batch) or left_behind
        self.pending = batch
        return False

    async def _delete_now(self, batch: Batch) -> bool:
        """Delete a batch and count what went; whether it left rows behind (rows kept for
        their references are not: they stay, and the task goes on past them)."""
        moved, kept = await self._delete(batch)
        await self._moved(moved)
        return moved + kept < len(batch.to_move)

    async def _copy(self, batch: Batch) -> None:
        """Copy one batch to the destination and check it reads back identical; then move
        the rows of the task's named children that reference it (`ChildMover`), so that
        they are gone before the batch's delete (in mode "copy", copied only)."""
        if self.mode == "purge":
            return  # nothing to copy (a purge policy with children is refused at start-up)
        if not batch.copied:  # else done by data/copy; the delete checks each copy
            await self._copy_rows(batch)
        if self.children is not None and batch.to_move:
            # Not the children of rows kept for an unstorable value: they stay with them.
            keys = [key_of(item, batch.primary_key) for item in batch.to_move]
            await self.children.move(self.task.spec.children or [], keys)

    async def _copy_rows(self, batch: Batch) -> None:
        items, primary_key = batch.items, batch.primary_key
        # The source is authoritative for rows it still holds: a copy left by an earlier,
        # interrupted run is overwritten rather than reported as a conflict. A row the
        # destination cannot store is named in the answer, not written: it stays.
        created = await self.calls.execute(
            "data/create",
            {**self.dest, "items": items, "onConflict": "replace", "onUnstorable": "skip"},
        )
        self.kept.keep_unstorable(batch, created)
        items = batch.to_move
        if not items:
            return
        ids = [key_of(item, primary_key) for item in items]
        copies = await self._read_copies(ids, primary_key)
        verify(items, copies, primary_key, self.task.spec.dest_handle)

    async def _read_copies(self, ids: list[object], primary_key: str) -> list[JSONObject]:
        """The destination's rows under ``ids``, in as many listings as their frames need."""
        copies: list[JSONObject] = []
        wanted = ids
        while wanted:
            params: JSONObject = {
                **self.dest,
                "filter": {primary_key: {"$in": wanted}},
                "limit": len(wanted),
                "maxBytes": self.budget,
            }
            answer = await self.calls.execute("data/list", params)
            found = items_of(answer, "data/list")
            copies += found
            if answer.get("truncated") is not True:
                break
            if not found:
                raise RowTooLarge(
                    f"the copy of row {primary_key}={wanted[0]!r} of "
                    f"{self.task.spec.collection} in {self.task.spec.dest_handle} is too wide "
                    "to be read back in one frame; nothing was deleted"
                )
            seen = {key_of(copy, primary_key) for copy in found}
            wanted = [key for key in wanted if key not in seen]
        return copies

    async def _delete(self, batch: Batch) -> tuple[int, int]:
        """Delete a copied and verified batch from the source; returns the rows deleted and
        those the daemon kept because other rows still reference them (``kept``).

        Only rows still equal to what was copied go: a row updated since is left and moved
        again, updated, by a later batch.
        """
        items, primary_key = batch.to_move, batch.primary_key
        if not items:
            return 0, 0  # every row of it was unstorable, and stays
        if self.mode == "copy":
            return len(items), 0  # copied and verified: done, the source keeps them
        ids = [key_of(item, primary_key) for item in items]
        guard: JSONObject = (
            {"matching": self.task.spec.dest_handle} if batch.copied else {"expected": items}
        )
        deleted = await self.calls.execute("data/delete", {**self.source, "ids": ids, **guard})
        moved = int_field(deleted, "deleted", "data/delete")
        kept = int_field(deleted, "kept", "data/delete") if "kept" in deleted else 0
        self.pacer.deleted_at = time.monotonic()
        if kept:
            self.kept.keep_referenced(kept, deleted.get("keptReason"))
        self._count_skips(len(items) - moved - kept, len(items))
        return moved, kept

    def _count_skips(self, skipped: int, listed: int) -> None:
        self.stalled = self.stalled + 1 if skipped == listed else 0
        if skipped:
            log.info(
                "task %s: %d changed row(s) left for a later batch", self.task.task_id, skipped
            )
        if self.stalled >= STALLED_BATCHES:
            raise VerifyMismatch(
                f"{self.stalled} batches in a row deleted no row: each had changed since it "
                f"was copied, or its copy in {self.task.spec.dest_handle} differs; the source "
                "is rewritten faster than it can be archived, or the copies are altered"
            )


async def _cancelled(task: asyncio.Task[Batch] | None) -> None:
    """Cancel a listing that is no longer wanted and wait for it to end."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ArchivistError):
        await task
