"""The worker process: its socket, its connections, its runners and its lifecycle.

One `serve()` with an explicit start-up, main loop and shutdown (as uvicorn does): signals
only set an event; shutdown stops accepting, lets running tasks reach a safe point within
a time bound, tells each task's owner how it ended, and removes the socket file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import archivist
from archivist import logs, protocol
from archivist.errors import ArchivistError, Forbidden, RemoteError, ShuttingDown, UnknownTask
from archivist.protocol import (
    Answer,
    Archive,
    Cancel,
    Cancelled,
    Complete,
    Execute,
    JSONObject,
    Ping,
    Pong,
    Progress,
    Queued,
    Rate,
    Rated,
    Request,
    Status,
    StatusResult,
)
from archivist.transport import Peer
from archivist.worker import paths
from archivist.worker.executor import Executor, Outcome, Settings
from archivist.worker.queue import Task, TaskQueue
from archivist.worker.settings import DEFAULTS, WorkerSettings
from archivist.worker.throttle import ThrottleSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    """What one worker process runs with; made from `WorkerSettings` by `from_settings`
    (help and defaults are declared there)."""

    socket_path: Path = field(default_factory=paths.default_socket_path)
    concurrency: int = DEFAULTS.concurrency
    frame_limit: int = DEFAULTS.frame_limit
    request_timeout: float = DEFAULTS.request_timeout
    """Seconds to wait for the daemon's answer to one ``execute``."""
    idle_timeout: float | None = DEFAULTS.idle_timeout
    """Seconds a connection may stay silent before it is closed (None: never)."""
    shutdown_timeout: float = DEFAULTS.shutdown_timeout
    """Seconds running tasks get to reach a safe point on SIGTERM before they are cut."""
    write_timeout: float = DEFAULTS.write_timeout
    """Seconds a client may leave answers unread before its connection is dropped."""
    max_queue: int = DEFAULTS.max_queue
    """Queued tasks the worker holds at most; more are refused with ``queue_full``."""
    executor: Settings = field(default_factory=Settings)
    """Retries, batch sizing and throttling of the tasks' batches."""
    parent: int | None = None
    """Stop when this process, our parent (the daemon that started us), ends."""
    allowed_uids: frozenset[int] = frozenset()
    """Users besides the worker's own that may connect (checked with SO_PEERCRED).

    Non-empty, it opens the socket (0666) and its directory (0711) to other users so they
    can reach the socket at all; the credential check is then what refuses the others."""

    @classmethod
    def from_settings(cls, settings: WorkerSettings, *, parent: int | None = None) -> WorkerOptions:
        """The options of a worker with these settings (``parent``: see the field)."""
        throttle = ThrottleSettings(
            pause=settings.pause,
            nice_ratio=settings.nice_ratio,
            pause_file=Path(settings.pause_file) if settings.pause_file else None,
            max_latency_ms=settings.max_latency_ms,
            max_active=settings.max_active,
            yield_ratio=settings.yield_ratio,
            load_interval=settings.load_interval,
            per_database=settings.per_database,
        )
        executor = Settings(
            retry_for=settings.retry_for,
            batch_time=settings.batch_time,
            min_batch=settings.min_batch,
            prefetch=settings.prefetch,
            in_database=settings.in_database,
            frame_limit=settings.frame_limit,
            throttle=throttle,
        )
        return cls(
            socket_path=Path(settings.socket) if settings.socket else paths.default_socket_path(),
            concurrency=settings.concurrency,
            frame_limit=settings.frame_limit,
            request_timeout=settings.request_timeout,
            idle_timeout=settings.idle_timeout,
            shutdown_timeout=settings.shutdown_timeout,
            write_timeout=settings.write_timeout,
            max_queue=settings.max_queue,
            executor=executor,
            parent=parent,
            allowed_uids=frozenset(settings.allow_uid),
        )


class _TaskCalls:
    """The executor's view of its task's connection."""

    def __init__(self, peer: Peer, task: Task) -> None:
        self._peer = peer
        self._task = task

    async def execute(self, target: str, params: JSONObject) -> JSONObject:
        request = Execute(
            request_id=self._peer.next_request_id(),
            target_command=target,
            params=params,
            task_id=self._task.task_id,
        )
        try:
            answer = await self._peer.request(request)
        except RemoteError as exc:
            raise RemoteError.rebuild(
                f"{target} on {params.get('dbHandle', 'daemon')}: {exc.message}", exc.code
            ) from None
        result = answer.get("result")
        return result if isinstance(result, dict) else {}

    async def progress(self, archived: int, total: int) -> None:
        message = Progress(
            task_id=self._task.task_id,
            archived=archived,
            total=total,
            status="in_progress",
            throttled_seconds=self._task.throttle_totals(),
        )
        await self._peer.notify(message)


class Worker:
    """Owns the queue, the runners and the connections of one worker process."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.queue = TaskQueue(limit=options.max_queue)
        # The executor sizes batches to the frames of this worker's connections.
        self.executor = Executor(replace(options.executor, frame_limit=options.frame_limit))
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._peers: set[Peer] = set()
        self._started = time.monotonic()
        self._connections = 0

    # --- lifecycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler)."""
        self._stopping.set()

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        path = self.options.socket_path
        shared = bool(self.options.allowed_uids)
        paths.prepare(path, shared=shared)
        old_umask = os.umask(0o177)  # the socket file is born 0600
        try:
            server = await asyncio.start_unix_server(
                self._accept, path=os.fspath(path), limit=self.options.frame_limit + 1
            )
        finally:
            os.umask(old_umask)
        path.chmod(paths.SOCKET_MODE_SHARED if shared else paths.SOCKET_MODE)
        log.info(
            "worker %s listening on %s (concurrency %d, pid %d)",
            archivist.__version__,
            path,
            self.options.concurrency,
            os.getpid(),
        )
        try:
            async with asyncio.TaskGroup() as runners:
                for number in range(1, self.options.concurrency + 1):
                    runners.create_task(self._runner(number), name=f"runner-{number}")
                if ready is not None:
                    ready()
                await self._stopping.wait()
                log.info("shutting down: no new connections or tasks")
                server.close()
                await self._drain()
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            server.close()
            for peer in list(self._peers):
                await peer.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            log.info("worker stopped; socket %s removed", path)

    async def _drain(self) -> None:
        """Finish queued tasks as cancelled and give running ones time to reach a safe point."""
        for task in self.queue.queued:
            self.queue.finish(task, "cancelled", "worker shutting down")
            await self._complete(task, Outcome.stopped(0, "worker shutting down"))
        for task in self.queue.running:
            task.stop_reason = "worker shutting down"
        try:
            async with asyncio.timeout(self.options.shutdown_timeout):
                while self.queue.running:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            log.warning(
                "%d task(s) did not reach a safe point in %g s; cutting them",
                len(self.queue.running),
                self.options.shutdown_timeout,
            )
            # Their runners are cancelled next and send nothing: tell each owner here.
            reason = "worker shut down before the task reached a safe point"
            for task in self.queue.running:
                self.queue.finish(task, "cancelled", reason)
                await self._complete(task, Outcome.stopped(task.archived, reason))

    # --- runners -------------------------------------------------------------------------

    async def _runner(self, number: int) -> None:
        while True:
            task = self.queue.take()
            if task is None:
                self._changed.clear()
                await self._changed.wait()
                continue
            with logs.task_context(**task.log_fields()):
                log.info(
                    "runner %d: task %s started (%s: %s -> %s, up to %d rows, batches of %d)",
                    number,
                    task.task_id,
                    task.spec.collection,
                    task.spec.source_handle,
                    task.spec.dest_handle,
                    task.spec.max_rows,
                    task.spec.batch_size,
                )
                assert isinstance(task.owner, Peer)
                outcome = await self.executor.run(task, _TaskCalls(task.owner, task))
            self.queue.finish(task, outcome.status, outcome.error)
            log.info(
                "runner %d: task %s finished: %s, %d rows in %d ms%s",
                number,
                task.task_id,
                outcome.status,
                outcome.archived,
                task.duration_ms,
                f" ({outcome.error})" if outcome.error else "",
                extra={
                    **task.log_fields(),
                    "rows": outcome.archived,
                    "status": outcome.status,
                    "duration_ms": task.duration_ms,
                    "code": outcome.code,
                },
            )
            if outcome.delivered:
                await self._complete(task, outcome)
            self._changed.set()

    async def _complete(self, task: Task, outcome: Outcome) -> None:
        message = Complete(
            task_id=task.task_id,
            archived=outcome.archived,
            duration=task.duration_ms,
            status=outcome.status,
            error=outcome.error,
            code=outcome.code,
            throttled_seconds=task.throttle_totals(),
        )
        assert isinstance(task.owner, Peer)
        try:
            await task.owner.notify(message)
        except ArchivistError as exc:
            log.warning("task %s: could not send complete: %s", task.task_id, exc.message)

    # --- connections -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        name = f"client-{self._connections}"
        peer = Peer(
            reader,
            writer,
            accepted=protocol.WORKER_COMMANDS,
            handler=self._handle,
            name=name,
            frame_limit=self.options.frame_limit,
            request_timeout=self.options.request_timeout,
            idle_timeout=self.options.idle_timeout,
            write_timeout=self.options.write_timeout,
        )
        refusal = self._check_credentials(writer)
        if refusal is not None:
            log.warning("%s refused: %s", name, refusal)
            with contextlib.suppress(ArchivistError):
                await peer.send(protocol.error_answer(Forbidden(refusal)))
            await peer.close()
            return
        if self._stopping.is_set():
            with contextlib.suppress(ArchivistError):
                await peer.send(protocol.error_answer(ShuttingDown("worker is shutting down")))
            await peer.close()
            return
        log.info("%s connected", name)
        self._peers.add(peer)
        peer.on_close(self._connection_lost)
        try:
            await peer.run()
        finally:
            self._peers.discard(peer)
            log.info("%s disconnected", name)

    def _check_credentials(self, writer: asyncio.StreamWriter) -> str | None:
        sock = writer.get_extra_info("socket")
        if sock is None or not hasattr(socket, "SO_PEERCRED"):
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        if uid == os.getuid() or uid in self.options.allowed_uids:
            return None
        return f"process {pid} of uid {uid} is not allowed to use this worker"

    def _connection_lost(self, peer: Peer) -> None:
        """Tasks of a closed connection stop at their next safe point and are dropped."""
        for task in self.queue.queued:
            if task.owner is peer:
                self.queue.finish(task, "cancelled", "connection closed before the task ran")
        for task in self.queue.running:
            if task.owner is peer:
                task.stop_reason = "connection closed"
        self._changed.set()

    # --- requests ------------------------------------------------------------------------

    async def _handle(self, peer: Peer, message: Request) -> Answer | None:
        match message:
            case Ping():
                return Pong(
                    status="success",
                    message="pong",
                    request_id=message.request_id,
                    uptime_ms=self._uptime_ms(),
                    queued=len(self.queue.queued),
                    running=len(self.queue.running),
                    version=archivist.__version__,
                )
            case Archive():
                return self._enqueue(peer, message)
            case Status():
                return self._status(message)
            case Cancel():
                return await self._cancel(message)
            case Rate():
                return self._rate(message)
            case _:  # pragma: no cover - decode_frame admits only the commands above
                raise ArchivistError(f"unexpected message {type(message).__name__}")

    def _enqueue(self, peer: Peer, spec: Archive) -> Queued:
        if self._stopping.is_set():
            raise ShuttingDown("worker is shutting down; not accepting tasks")
        task = Task(spec=spec, owner=peer)
        position = self.queue.add(task)
        log.info(
            "task %s queued from %s: %s (%s -> %s), position %d%s",
            spec.task_id,
            peer.name,
            spec.collection,
            spec.source_handle,
            spec.dest_handle,
            position,
            f", yielding down to {spec.min_rate:,.0f} rows/s at least" if spec.min_rate else "",
            extra={**task.log_fields(), "rows": spec.max_rows, "status": "queued"},
        )
        self._changed.set()
        return Queued(
            status="queued",
            task_id=spec.task_id,
            queue_position=position,
            request_id=spec.request_id,
        )

    def _status(self, message: Status) -> StatusResult:
        return StatusResult(
            status="success",
            queued=[t.info() for t in self.queue.queued],
            running=[t.info() for t in self.queue.running],
            finished=[t.info() for t in reversed(self.queue.finished)],
            counts=self.queue.counts(),
            concurrency=self.options.concurrency,
            uptime_ms=self._uptime_ms(),
            request_id=message.request_id,
        )

    async def _cancel(self, message: Cancel) -> Cancelled:
        task = self.queue.cancel(message.task_id, "cancelled on request")
        log.info("task %s: cancel requested (%s)", task.task_id, task.state)
        if task.state == "cancelled":
            await self._complete(task, Outcome.stopped(0, "cancelled on request"))
        return Cancelled(status="success", task_id=task.task_id, request_id=message.request_id)

    def _rate(self, message: Rate) -> Rated:
        task = self.queue.get(message.task_id)
        if task is None:
            raise UnknownTask(f"no queued or running task {message.task_id!r}")
        task.min_rate = message.min_rate or None
        log.info(
            "task %s: %s",
            task.task_id,
            f"yielding down to {message.min_rate:,.0f} rows/s at least"
            if message.min_rate
            else "yielding fully again",
        )
        return Rated(
            status="success",
            task_id=task.task_id,
            min_rate=message.min_rate,
            request_id=message.request_id,
        )

    def _uptime_ms(self) -> int:
        return round((time.monotonic() - self._started) * 1000)


class _Stopped(Exception):
    """Ends the runners' task group when shutdown has drained."""


PR_SET_PDEATHSIG = 1


def end_with_parent(parent: int) -> bool:
    """Ask Linux to SIGTERM this process when ``parent`` (its parent) dies; False if it has
    died already. A worker whose daemon was killed would otherwise live on, orphaned."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.info("cannot ask to end with the parent here; relying on the idle timeout")
    return os.getppid() == parent


async def serve(options: WorkerOptions, ready: Callable[[], None] | None = None) -> None:
    """Run a worker until SIGTERM or SIGINT, then shut it down gracefully."""
    if options.parent is not None and not end_with_parent(options.parent):
        log.warning("parent process %d is gone; not starting", options.parent)
        return
    worker = Worker(options)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    try:
        await worker.run(ready)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
            # The process is ending: a repeated signal must not turn a clean exit into a kill.
            signal.signal(signum, signal.SIG_IGN)
