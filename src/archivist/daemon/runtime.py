"""Putting the pieces together: a DataDaemon, a worker (started or reached) and the ArchiveDaemon.

`running` is the one place that wires them, for `archivist run`, `archive`, `daemon` and `demo`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from archivist import logs
from archivist.config import Config
from archivist.daemon.control import ControlServer, control_path, pauses_path
from archivist.daemon.metrics import Observer
from archivist.daemon.operator import Operator
from archivist.daemon.pauses import Pauses
from archivist.daemon.service import ArchiveDaemon, DaemonOptions
from archivist.daemon.supervisor import WorkerProcess
from archivist.daemon.tracker import TaskRecord
from archivist.errors import ArchivistError, MoverBusy
from archivist.worker.paths import default_socket_path

if TYPE_CHECKING:
    from archivist.data import DataDaemon

log = logging.getLogger(__name__)

WAIT_INTERVAL = 1.0
"""Seconds between two tries at a collection's mover lock (``archivist archive --wait``)."""


def _import_data_layer() -> type[DataDaemon]:
    """The data layer's `DataDaemon`, imported with the cyclic garbage collector off: the
    imports allocate SQLAlchemy's many objects, none of them garbage, and the collector
    would otherwise walk them again and again while they load (about a tenth of the
    imports' time). What they made is frozen: later collections skip it too."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        from archivist.data import DataDaemon
    finally:
        if enabled:
            gc.freeze()
            gc.enable()
    return DataDaemon


class Launch(msgspec.Struct, frozen=True):
    """How to reach the worker: an existing socket, or a child process we start."""

    socket: Path | None = None
    """A worker that runs already; None starts one as a child process."""
    private_socket: bool = False
    """Start the child on a fresh private socket (one-shot commands) instead of the config's."""
    quiet_worker: bool = False
    watch: bool = True
    """Check the policies every ``check_interval``; off for one-shot commands."""
    control: bool = False
    """Serve the control socket (``[daemon] control_socket``, else beside the worker's
    socket) and keep pauses across restarts: for the long-running daemons (``run``,
    ``daemon``, an embedding application)."""


@contextlib.asynccontextmanager
async def running(
    config: Config,
    launch: Launch,
    *,
    on_update: Callable[[TaskRecord], None] | None = None,
    observer: Observer | None = None,
) -> AsyncIterator[ArchiveDaemon]:
    """Start everything, yield the ArchiveDaemon, and stop everything cleanly on exit;
    ``observer`` is told what the metrics count."""
    scratch: Path | None = None
    supervisor: WorkerProcess | None = None
    socket = launch.socket
    if socket is None:
        if launch.private_socket:
            scratch = Path(tempfile.mkdtemp(prefix="archivist-"))
            socket = scratch / "worker.sock"
        else:
            socket = Path(config.worker.socket) if config.worker.socket else default_socket_path()
        supervisor = WorkerProcess(
            socket,
            quiet=launch.quiet_worker,
            # The child logs as this process does (format and level).
            extra_args=(*logs.child_arguments(), *config.worker.command_line()),
            shutdown_timeout=config.worker.shutdown_timeout,
        )
        supervisor.check_free()
        await supervisor.spawn()  # the worker's start-up overlaps the data daemon's
    try:
        # Imported here, not above: the data layer's imports (SQLAlchemy's) then run while the
        # worker starts.
        data = _import_data_layer()(config)
        from archivist.cold.retention import expire

        await data.start()
    except BaseException:
        if supervisor is not None:
            await supervisor.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    options = DaemonOptions(
        socket_path=socket,
        check_interval=config.daemon.check_interval,
        health_interval=config.daemon.health_interval,
        health_timeout=config.daemon.health_timeout,
        frame_limit=config.worker.frame_limit,
    )
    policies = data.policies()
    control: ControlServer | None = None
    pauses = Pauses()
    if launch.control:
        path = control_path(socket, config.daemon.control_socket)
        state = config.daemon.pause_state
        pauses = Pauses(Path(state) if state else pauses_path(path))
        pauses.load({policy.collection for policy in policies})
    daemon = ArchiveDaemon(
        data,
        policies,
        options,
        supervisor=supervisor,
        on_update=on_update,
        reclaim=data.reclaim,
        expire=lambda collection: expire(data, collection),
        observer=observer,
        pauses=pauses,
    )
    if launch.control:
        control = ControlServer(path, Operator(daemon))
        try:
            await control.start()
        except BaseException:
            await data.close()
            if supervisor is not None:
                await supervisor.stop()
            raise
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(daemon.run(stop, watch=launch.watch), name="archive-daemon")
            try:
                yield daemon
            finally:
                stop.set()
    except BaseExceptionGroup as group:
        raise _sole_error(group) from None
    finally:
        if control is not None:
            await control.close()
        await data.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


async def until_done(
    daemon: ArchiveDaemon, record: TaskRecord, interrupt: asyncio.Event | None = None
) -> None:
    """Wait for ``record`` to end; if ``interrupt`` is set first, stop it after its batch."""
    if interrupt is None:
        await record.done.wait()
        return
    await _first(record.done.wait(), interrupt.wait())
    if not record.done.is_set():
        log.info("interrupted: stopping %s after its current batch", record.task_id)
        await daemon.cancel(record)


def interrupt_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (for commands that stop cleanly when asked)."""
    interrupt = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, interrupt.set)
    return interrupt


async def _first(*waits: Coroutine[object, object, object]) -> None:
    """Wait until the first of ``waits`` finishes; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside a task group's group, so callers see an ArchivistError as is."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        else:
            leaves.append(error)

    collect(group)
    return leaves[0] if len(leaves) == 1 else group


async def take_mover(
    daemon: ArchiveDaemon,
    collection: str,
    *,
    wait: bool,
    say: Callable[[str], None],
) -> None:
    """Hold ``collection``'s mover lock. Held elsewhere: MoverBusy naming the holder, or,
    with ``wait``, say so (and again when the holder changes) and try again every
    `WAIT_INTERVAL` seconds until it is ours."""
    shown: str | None = None
    while True:
        try:
            await daemon.movers.take(collection)
        except MoverBusy as exc:
            if not wait:
                busy = MoverBusy(f"{exc.message}; try again later, or pass --wait to wait for it")
                busy.holder = exc.holder
                raise busy from None
            if exc.holder != shown:
                say(f"waiting: {exc.message}")
                shown = exc.holder
            await asyncio.sleep(WAIT_INTERVAL)
            continue
        if shown is not None:
            say(f"{collection}: the other archivist is done; archiving now")
        return


async def archive_now(
    daemon: ArchiveDaemon,
    collection: str,
    rows: int,
    batch_size: int | None = None,
    *,
    interrupt: asyncio.Event | None = None,
    filter_: dict[str, object] | None = None,
    source_rows: int | None = None,
) -> TaskRecord:
    """Queue one task and wait until it has completed (through reconnects).

    When ``interrupt`` is set first, the task is asked to stop after its current batch and
    the record comes back ``cancelled`` with the rows moved so far.
    """
    record = await daemon.submit(
        collection, rows, batch_size=batch_size, filter_=filter_, source_rows=source_rows
    )
    await until_done(daemon, record, interrupt)
    if record.state == "error":
        raise ArchivistError(f"archiving {collection} failed: {record.error}")
    return record
