"""The ArchiveDaemon: watches archivable tables, queues archive tasks, keeps the worker reachable.

It owns the policy loop (count, compare with ``max_rows``, ensure the archive table, queue
a task), the tasks sent to the worker (queued again when a connection is lost), and it
answers the worker's ``execute`` callbacks through the DataDaemon's command bus with the
worker's allowlist. What a check finds due, and the protocols it sees policies and the
DataDaemon through, are in `archivist.daemon.policies`; why a policy waits, in
`archivist.daemon.holds`; connecting to the worker, in `archivist.daemon.link`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import msgspec

from archivist import logs, protocol
from archivist.daemon.connection import WorkerConnection
from archivist.daemon.expiry import Expirer
from archivist.daemon.holds import Holds
from archivist.daemon.keepup import KeepUp, write_state
from archivist.daemon.link import WorkerLink
from archivist.daemon.metrics import Observer
from archivist.daemon.movers import Movers
from archivist.daemon.pauses import Pauses
from archivist.daemon.policies import (
    DataService,
    Policy,
    TaskAware,
    count_rows,
    due,
    keep_up,
    measure,
)
from archivist.daemon.settling import Looks, find_in_both, look_depth
from archivist.daemon.supervisor import WorkerProcess
from archivist.daemon.tracker import TaskRecord, Tracker
from archivist.errors import ArchivistError, FrameLimitLost, MoverBusy, PeerError
from archivist.policy import Decision, task_filter, utc_now
from archivist.protocol import Archive, Child, Complete, JSONObject, Progress
from archivist.sizing import Size

log = logging.getLogger(__name__)

STOP_TIMEOUT: Final = 30.0
"""Seconds tasks get to reach a safe point when the daemon stops."""
DELETING_COMMANDS: Final = frozenset({"data/copy", "data/delete", "data/relay"})
"""The worker's commands whose answer's ``deleted`` counts rows a job moved off its source."""


class DaemonOptions(msgspec.Struct, frozen=True):
    socket_path: Path
    check_interval: float = 60.0
    health_interval: float = 30.0
    health_timeout: float = 10.0
    request_timeout: float = 30.0
    frame_limit: int = protocol.DEFAULT_FRAME_LIMIT
    """The worker connection's frame limit (``[worker] frame_limit``): rows listed for the
    worker are bounded by it (`within_frame`)."""


class _Stopped(Exception):
    """Ends the daemon's task group."""


class ArchiveDaemon:
    """Queues archive tasks by policy and serves the worker's callbacks."""

    def __init__(
        self,
        data: DataService,
        policies: Sequence[Policy],
        options: DaemonOptions,
        *,
        supervisor: WorkerProcess | None = None,
        on_update: Callable[[TaskRecord], None] | None = None,
        reclaim: Callable[[str], Awaitable[object]] | None = None,
        expire: Callable[[str], Awaitable[object]] | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        observer: Observer | None = None,
        pauses: Pauses | None = None,
    ) -> None:
        self.data = data
        self.expiry = Expirer(expire, [p.collection for p in policies if p.rules.retention])
        """Each policy's retention, started by the checks (`archivist.daemon.expiry`)."""
        self.observer = observer if observer is not None else Observer()
        """Told of each event the metrics count (`archivist.daemon.metrics`)."""
        self.pauses = pauses if pauses is not None else Pauses()
        """What is paused (`archivist pause`), asked before each task and batch."""
        self.started_at = time.time()
        self.last_check: float | None = None
        """When the policy loop last checked every policy (seconds since the epoch)."""
        self.watching = False
        self.wake = asyncio.Event()
        """Set to check the policies now rather than at the end of ``check_interval``."""
        self._reclaim = reclaim
        """Run after a task that moved rows: the policy's space reclaim (`DataDaemon.reclaim`)."""
        self._reclaims: set[asyncio.Task[None]] = set()
        self.clock = clock
        """The daemon's clock (aware, UTC): age cutoffs and windows read it."""
        self.policies = {p.collection: p for p in policies}
        self.holds = Holds(self.policies, self.pauses, self.cancel)
        """Why each policy waits now, and its tasks stopped for it (`archivist.daemon.holds`)."""
        self.options = options
        self.supervisor = supervisor
        self.tracker = Tracker()
        self.keeping = {p.collection: KeepUp(p.max_rows, p.min_rate) for p in policies}
        """Per collection: its size at each check, growth, and the rate asked of its tasks."""
        self.movers = Movers(data.take_mover, self.policies)
        self.looks = Looks(p.collection for p in policies if p.rules.mode == "move")
        """Which policies are due a look for rows an interrupted task left in both databases
        (`archivist.daemon.settling`): each at start, and after a task that did not succeed."""
        self._on_update = on_update
        self.link = WorkerLink(
            options.socket_path,
            execute=self._serve_execute,
            notify=self._notified,
            opened=self._dispatch_pending,
            lost=self._lost,
            observer=self.observer,
            request_timeout=options.request_timeout,
            frame_limit=options.frame_limit,
            health_interval=options.health_interval,
            health_timeout=options.health_timeout,
        )
        """The connection to the worker, open again after each loss (`archivist.daemon.link`)."""

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, watch: bool = True) -> None:
        """Serve until ``stop`` is set; with ``watch``, check the policies periodically."""
        try:
            async with asyncio.TaskGroup() as group:
                if self.supervisor is not None:
                    group.create_task(self.supervisor.run(), name="worker-process")
                group.create_task(self.link.run(), name="worker-connection")
                if watch:
                    self.watching = True
                    group.create_task(self._watch_loop(), name="policy-checks")
                await stop.wait()
                # From here on a worker that goes away (it may be stopping on the same
                # signal, sent to the process group) is not waited for or reconnected to.
                self.link.stopping = True
                await self._stop_tasks()
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            # A reclaim under way ends before the handles it uses are closed.
            if self._reclaims:
                await asyncio.wait(self._reclaims)
            await self.expiry.close()
            await self.movers.release_all()
            if self.supervisor is not None:
                await self.supervisor.stop()
        log.info("daemon stopped")

    async def cancel(self, record: TaskRecord) -> None:
        """Stop one record's task after its current batch and wait until it has ended."""
        connection = self.link.current
        if connection is not None and record.state in ("queued", "running"):
            try:
                await connection.cancel(record.task_id)
            except PeerError as exc:
                log.debug("cancel %s: %s", record.task_id, exc.message)
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await record.done.wait()
                return
            except TimeoutError:
                log.warning("task %s did not stop in %.0f s", record.task_id, STOP_TIMEOUT)
        self.tracker.finish(record, "cancelled", "interrupted")
        self._updated(record)

    async def _stop_tasks(self) -> None:
        """Ask the worker to stop our tasks at their next safe point, wait, then disconnect.

        Closing the connection first would also be safe (rows of an interrupted batch stay
        in both databases and the next run converges) but leaves more to redo.
        """
        connection = self.link.current
        if connection is None:
            return
        unfinished = [r for r in self.tracker.records() if r.state in ("queued", "running")]
        await asyncio.gather(*(self.cancel(record) for record in unfinished))
        await connection.close()

    def live_connection(self) -> WorkerConnection | None:
        """The current connection to the worker, if there is one now."""
        return self.link.live()

    async def connection(self) -> WorkerConnection:
        """The current connection to the worker, waiting for one if needed."""
        return await self.link.wait()

    @property
    def worker_connected(self) -> bool:
        return self.link.live() is not None

    @property
    def connections(self) -> int:
        """How many connections to the worker have been opened."""
        return self.link.connections

    # --- the worker connection ---------------------------------------------------------

    def _lost(self, connection: WorkerConnection) -> None:
        """A connection has gone: its tasks are queued again on the next one."""
        if isinstance(connection.peer.lost_to, FrameLimitLost):
            self._fail_running(connection.peer.lost_to)
        lost = self.tracker.mark_lost()
        if lost:
            log.warning(
                "lost the connection to the worker; %d unfinished task(s) will be queued again",
                len(lost),
            )
        else:
            log.info("disconnected from the worker")

    def _fail_running(self, cause: FrameLimitLost) -> None:
        """A connection lost to the frame limit is not a transient fault: queued again, the
        tasks on it would send the same frame and lose it again (the worker's and this
        daemon's frame limits differ), for ever. Which task's frame it was is not known, so
        every task sent on it ends in error, saying so (the policy loop queues new ones)."""
        for record in self.tracker.records():
            if record.state in ("queued", "running"):
                log.error("task %s ended: %s", record.task_id, cause.message)
                self.tracker.finish(record, "error", f"{cause.message} ({cause.code})")
                self._updated(record)

    async def _dispatch_pending(self, connection: WorkerConnection) -> None:
        """Queue every record not yet (or no longer) known to the worker."""
        for record in self.tracker.records():
            if record.state == "lost":
                # What the lost attempt deleted counts once its commands have ended.
                await asyncio.gather(*record.serving, return_exceptions=True)
                self.tracker.recount(record)
            if record.state in ("pending", "lost"):
                await self._send(connection, record)

    async def _send(self, connection: WorkerConnection, record: TaskRecord) -> None:
        if record.remaining == 0:
            self.tracker.finish(record, "success")
            self._updated(record)
            return
        if record.attempts > 0:
            self.tracker.rename(record, self.tracker.new_task_id(record.collection))
        record.attempts += 1
        task = Archive(
            task_id=record.task_id,
            collection=record.collection,
            source_handle=record.source_handle,
            dest_handle=record.dest_handle,
            max_rows=record.remaining,
            batch_size=record.batch_size,
            order_by=record.order_by,
            min_rate=record.min_rate,
            filter=record.filter,
            mode=record.mode,
            children=record.children or None,
        )
        record.state = "queued"  # before the await: nobody else may send it meanwhile
        if isinstance(self.data, TaskAware):
            self.data.task_started(record.collection, record.task_id)
        try:
            queued = await connection.archive(task)
        except PeerError as exc:
            if connection.peer.closed:
                record.state = "lost"
                return
            self.tracker.finish(record, "error", f"the worker refused the task: {exc.message}")
            self._updated(record)
            return
        log.info(
            "queued task %s: %d row(s) of %s (position %d%s)",
            record.task_id,
            record.remaining,
            record.collection,
            queued.queue_position,
            f", attempt {record.attempts}" if record.attempts > 1 else "",
            extra=_task_fields(record, rows=record.remaining, status="queued"),
        )
        self._updated(record)

    # --- callbacks from the worker -------------------------------------------------------

    async def _serve_execute(
        self, target: str, params: JSONObject, task_id: str | None
    ) -> JSONObject:
        params = within_frame(target, params, self.options.frame_limit)
        record = self.tracker.get(task_id) if task_id is not None else None
        collection = params.get("collection")
        if record is None and isinstance(collection, str):  # a design-only worker's
            record = self.tracker.unfinished(collection)
        started = time.monotonic()
        # What the data layer logs while serving it is about the task (JSON lines say so).
        with logs.task_context(**(_task_fields(record) if record is not None else {})):
            served = asyncio.ensure_future(
                self.movers.guard(
                    target, params, lambda: self.data.execute(target, params, caller="worker")
                )
            )
        if record is not None:
            # Served to the end even if the connection drops meanwhile: what it deleted
            # counts into the job's rows before the job is queued again.
            record.serving.add(served)
            served.add_done_callback(lambda done: count_deleted(record, target, params, done))
        answer = await asyncio.shield(served)
        self.observer.executed(record, target, params, answer, time.monotonic() - started)
        return answer

    def _notified(self, message: Progress | Complete) -> None:
        if isinstance(message, Progress):
            record = self.tracker.on_progress(message)
        else:
            record = self.tracker.on_complete(message)
            if record is not None:
                log.info(
                    "task %s %s: %d row(s) of %s archived%s",
                    message.task_id,
                    message.status,
                    record.archived,
                    record.collection,
                    f" ({message.error})" if message.error else "",
                    extra=_task_fields(
                        record,
                        rows=record.archived,
                        status=message.status,
                        duration_ms=record.duration_ms,
                        code=message.code,
                    ),
                )
                if record.archived > 0 and self._reclaim is not None:
                    task = asyncio.create_task(self._reclaim_after(record.collection))
                    self._reclaims.add(task)
                    task.add_done_callback(self._reclaims.discard)
        if record is not None:
            self.observer.notified(record, message)
            self._updated(record)
            if isinstance(message, Progress) and record in self.holds.runs:
                self.holds.stop_if_held(record, self.clock())
            elif record.finished:
                self.holds.runs.pop(record, None)

    async def _reclaim_after(self, collection: str) -> None:
        """The policy's space reclaim after a task that moved rows; a failure is logged (the
        rows have moved; the next task reclaims again)."""
        assert self._reclaim is not None
        try:
            await self._reclaim(collection)
        except ArchivistError as exc:
            log.warning("%s: space reclaim failed: %s", collection, exc.message)

    def _updated(self, record: TaskRecord) -> None:
        if record.finished:
            self.observer.finished(record)
            self.looks.ended(record.collection, record.state, settled=record.settles)
            if record.settles and record.state == "success" and record.archived:
                log.info(
                    "%s: settled %d row(s) left in both %s and %s by an interrupted task",
                    record.collection,
                    record.archived,
                    record.source_handle,
                    record.dest_handle,
                    extra=_task_fields(record, rows=record.archived, status="settled"),
                )
        if self._on_update is not None:
            self._on_update(record)

    # --- policy --------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        while True:
            self.wake.clear()
            await self.check_once()
            self.last_check = time.time()
            self._write_keepup()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.check_interval):
                    await self.wake.wait()

    async def check_once(self) -> list[TaskRecord]:
        """Count every policy's source and queue a task where it is over its limit."""
        queued: list[TaskRecord] = []
        for policy in self.policies.values():
            unfinished = self.tracker.unfinished(policy.collection)
            if unfinished is not None and unfinished in self.holds.runs:
                self.holds.stop_if_held(unfinished, self.clock())
            reason = self.holds.reason(policy, self.clock()) if unfinished is None else None
            paused = reason is not None and self.pauses.reason(policy.collection) is not None
            self.observer.held(
                policy.collection, None if reason is None else "paused" if paused else "window"
            )
            if reason is not None:
                if self.holds.holding.get(policy.collection) != reason:
                    log.info("%s: %s", policy.collection, reason)
                self.holds.holding[policy.collection] = reason
                continue
            self.holds.holding.pop(policy.collection, None)
            if unfinished is not None:
                log.debug("%s: a task is still unfinished; not checking", policy.collection)
                await self._measure_only(policy)
                continue
            try:
                record = await self._check(policy)
            except MoverBusy as exc:
                log.info("%s: skipped this cycle: %s", policy.collection, exc.message)
                continue
            except ArchivistError as exc:
                log.error("%s: size check failed: %s", policy.collection, exc.message)
                continue
            if record is not None:
                if not record.finished:
                    self.holds.runs[record] = self.clock()
                queued.append(record)
        # A paused collection's retention waits too: a pause stops all that its policy does.
        self.expiry.start(
            busy=lambda collection: (
                self.tracker.unfinished(collection) is not None
                or self.pauses.reason(collection) is not None
            )
        )
        return queued

    async def _measure_only(self, policy: Policy) -> None:
        """Measure a table whose task still runs, for its growth: a long task is when a table
        outgrows archivist."""
        try:
            size = await self.measure(policy)
        except ArchivistError as exc:
            log.debug("%s: size for keeping up failed: %s", policy.collection, exc.message)
            return
        self._keep_up(policy, size)
        record = self.tracker.unfinished(policy.collection)
        rate = self.keeping[policy.collection].rate
        if record is None or rate == record.min_rate:
            return
        record.min_rate = rate  # an attempt sent again (connection lost) carries it too
        connection = self.link.current
        if record.state in ("queued", "running") and connection is not None:
            try:
                await connection.rate(record.task_id, rate or 0.0)
            except PeerError as exc:
                # A worker without the extension (or a task that just ended): the next
                # task gets the rate with its archive message.
                log.debug("%s: rate not changed: %s", record.task_id, exc.message)

    def _write_keepup(self) -> None:
        """Leave the policies' keep-up state beside the worker's socket for `archivist status`."""
        try:
            write_state(self.options.socket_path, self.keeping)
        except OSError as exc:
            log.debug("cannot write the keep-up state: %s", exc.strerror or exc)

    async def _check(self, policy: Policy) -> TaskRecord | None:
        size = await self.measure(policy)
        self._keep_up(policy, size)
        decision, filter_ = await self.due(policy, size)
        if decision.rows == 0:
            log.debug("%s: within its policy", policy.collection)
            self.observer.checked(policy.collection, within=True)
            return await self.settle(policy)
        # The lock, then the count again: another mover may have been moving rows meanwhile,
        # and a count from before would move rows the policy keeps.
        await self.movers.take(policy.collection)
        try:
            decision, filter_ = await self.due(policy)
            if decision.rows == 0:
                await self.movers.release(policy.collection)
                self.observer.checked(policy.collection, within=True)
                return None
            reasons = {
                "age": f"rows older than {policy.rules.older_than}",
                "count": f"over max_rows {policy.max_rows}",
            }
            log.info(
                "%s: %s; %s %d",
                policy.collection,
                reasons.get(decision.basis, "rows not copied yet"),
                {"move": "archiving", "copy": "copying", "purge": "purging"}[policy.rules.mode],
                decision.rows,
            )
            return await self.submit(
                policy.collection, decision.rows, filter_=filter_, source_rows=decision.source
            )
        except BaseException:
            if self.tracker.unfinished(policy.collection) is None:
                await self.movers.release(policy.collection)
            raise

    async def settle(self, policy: Policy) -> TaskRecord | None:
        """Where a look is due, find the rows an interrupted task left in both databases
        and queue a task that settles those identical to their archived copy; report the
        others (`archivist.daemon.settling`). Under the mover lock: another process's
        batch in flight is not one left behind."""
        collection = policy.collection
        if not self.looks.due(collection):
            return None
        try:
            await self.movers.take(collection)
        except MoverBusy:
            return None  # another process moves it now; look on a later check
        try:
            found = await find_in_both(
                self.data.execute,
                collection=collection,
                source=policy.source_handle,
                dest=policy.dest_handle,
                order_by=policy.order_by,
                filter_=task_filter(policy.rules.where, None, None),
                depth=look_depth(policy.batch_size),
                max_bytes=protocol.row_budget(self.options.frame_limit),
            )
            if found.differing:
                log.warning(
                    "%s: %d row(s) in both %s and %s differ from their archived copy (changed "
                    "since copied); kept in %s, not settled: %s",
                    collection,
                    len(found.differing),
                    policy.source_handle,
                    policy.dest_handle,
                    policy.source_handle,
                    found.named(found.differing),
                )
            if not found.identical:
                self.looks.done(collection)
                await self.movers.release(collection)
                return None
            log.info(
                "%s: %d row(s) left in both %s and %s by an interrupted task (%s); settling them",
                collection,
                len(found.identical),
                policy.source_handle,
                policy.dest_handle,
                found.named(found.identical),
            )
            # Done before the task is queued: a task cut short, even at once, is looked
            # into again.
            self.looks.done(collection)
            return await self.submit(
                collection,
                len(found.identical),
                filter_=found.settle_filter,
                source_rows=len(found.identical),
                settles=True,
            )
        except BaseException:
            self.looks.ended(collection, "error")  # not queued: look again next time
            if self.tracker.unfinished(collection) is None:
                await self.movers.release(collection)
            raise

    async def due(
        self, policy: Policy, size: Size | None = None
    ) -> tuple[Decision, dict[str, object] | None]:
        """What the policy asks for now (`policies.due`), by this daemon's clock."""
        return await due(self.data, policy, self.clock(), size)

    async def measure(self, policy: Policy) -> Size:
        """The policy's rows (its ``where``), exact wherever over its ``max_rows``, without
        reading the whole table where it can (`policies.measure`)."""
        return await measure(self.data, policy, task_filter(policy.rules.where, None, None))

    async def count(
        self,
        collection: str,
        handle: str,
        filter_: dict[str, object] | None = None,
        *,
        limit: int | None = None,
    ) -> int:
        return await count_rows(self.data, collection, handle, filter_, limit=limit)

    def _keep_up(self, policy: Policy, size: Size) -> None:
        if size.rows is None:
            return  # no cheap figure to be had (SQLite, policy without max_rows)
        state = self.keeping[policy.collection]
        moved = self.tracker.take_moved(policy.collection)
        keep_up(policy, state, size.rows, moved, exact=size.exact)

    async def submit(
        self,
        collection: str,
        rows: int,
        *,
        batch_size: int | None = None,
        filter_: dict[str, object] | None = None,
        source_rows: int | None = None,
        settles: bool = False,
    ) -> TaskRecord:
        """Ensure the archive table, then queue ``rows`` rows of ``collection`` for the worker:
        the oldest of those ``filter_`` matches (default: the policy's ``where``).
        ``source_rows``: how many rows ``filter_`` selects, when the caller just counted them
        exactly (under the mover lock); else they are counted here. ``settles``: the task
        finishes rows an interrupted task left in both databases."""
        policy = self.policies[collection]
        rules = policy.rules
        if filter_ is None:
            filter_ = task_filter(rules.where, None, None)
        held = self.movers.holds(collection)
        await self.movers.take(collection)  # MoverBusy: another process moves it now
        children: list[Child] | None = None
        try:
            if rules.mode != "purge":  # purge with children is refused when policies load
                children = await self.data.ensure_archive_table(collection)
            if source_rows is None:
                # Bounded: the rows this task moves are read, not the table.
                source_rows = await self.count(
                    collection, policy.source_handle, filter_, limit=rows
                )
        except BaseException:
            if not held:
                await self.movers.release(collection)
            raise
        rows = min(rows, source_rows)
        record = TaskRecord(
            collection=collection,
            source_handle=policy.source_handle,
            dest_handle=policy.dest_handle,
            max_rows=rows,
            batch_size=batch_size or policy.batch_size,
            order_by=None,
            task_id=self.tracker.new_task_id(collection),
            min_rate=self.keeping[collection].rate if collection in self.keeping else None,
            filter=filter_,
            mode=rules.mode if rules.mode != "move" else None,
            children=children or [],
            settles=settles,
        )
        self.tracker.add(record)
        self.movers.release_when(collection, record.done)
        connection = self.link.current
        if connection is not None and not connection.peer.closed:
            await self._send(connection, record)
        return record


def within_frame(target: str, params: JSONObject, frame_limit: int) -> JSONObject:
    """A worker's ``data/list`` params, bounded to the rows one frame of its connection
    carries (``maxBytes``, `archivist.protocol.row_budget`): the worker's own bound where it
    sent a smaller one, else this connection's. Invalid values are left to be refused."""
    if target != "data/list":
        return params
    budget = protocol.row_budget(frame_limit)
    given = params.get("maxBytes")
    if given is not None and (not isinstance(given, int) or isinstance(given, bool)):
        return params
    if given is not None and given <= budget:
        return params
    return {**params, "maxBytes": budget}


def _task_fields(record: TaskRecord, **fields: object) -> dict[str, object]:
    """A log line's ``extra=`` about a task (JSON logs carry them: `archivist.logs`)."""
    return {
        "task_id": record.task_id,
        "collection": record.collection,
        "source_handle": record.source_handle,
        "dest_handle": record.dest_handle,
        **fields,
    }


def count_deleted(
    record: TaskRecord, target: str, params: JSONObject, served: asyncio.Future[JSONObject]
) -> None:
    """Count into ``record`` the rows a served command deleted from the job's source (its
    children's deletes, and deletes elsewhere, are not the job's rows)."""
    record.serving.discard(served)
    if (
        served.cancelled()
        or served.exception() is not None
        or target not in DELETING_COMMANDS
        or params.get("collection") != record.collection
        or params.get("dbHandle") != record.source_handle
    ):
        return
    deleted = served.result().get("deleted")
    if isinstance(deleted, int) and not isinstance(deleted, bool):
        record.deleted += deleted
