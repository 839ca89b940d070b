"""Putting the pieces together: a DataDaemon, a worker (started or reached) and the ArchiveDaemon.

`running` is the one place that wires them, for `archivist run`, `archive`, `daemon` and `demo`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from archivist.config import Config
from archivist.daemon.service import ArchiveDaemon, DaemonOptions
from archivist.daemon.supervisor import WorkerProcess
from archivist.daemon.tracker import TaskRecord
from archivist.data import DataDaemon
from archivist.errors import ArchivistError
from archivist.worker.paths import default_socket_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Launch:
    """How to reach the worker: an existing socket, or a child process we start."""

    socket: Path | None = None
    """A worker that runs already; None starts one as a child process."""
    private_socket: bool = False
    """Start the child on a fresh private socket (one-shot commands) instead of the config's."""
    quiet_worker: bool = False
    watch: bool = True
    """Check the policies every ``check_interval``; off for one-shot commands."""


@contextlib.asynccontextmanager
async def running(
    config: Config,
    launch: Launch,
    *,
    on_update: Callable[[TaskRecord], None] | None = None,
) -> AsyncIterator[ArchiveDaemon]:
    """Start everything, yield the ArchiveDaemon, and stop everything cleanly on exit."""
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
            concurrency=config.worker.concurrency,
            quiet=launch.quiet_worker,
            extra_args=tuple(config.worker.command_line()),
        )
        supervisor.check_free()
    data = DataDaemon(config)
    await data.start()
    options = DaemonOptions(
        socket_path=socket,
        check_interval=config.daemon.check_interval,
        health_interval=config.daemon.health_interval,
    )
    daemon = ArchiveDaemon(
        data, data.policies(), options, supervisor=supervisor, on_update=on_update
    )
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
        await data.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


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


async def archive_now(
    daemon: ArchiveDaemon, collection: str, rows: int, batch_size: int | None = None
) -> TaskRecord:
    """Queue one task and wait until it has completed (through reconnects)."""
    record = await daemon.submit(collection, rows, batch_size=batch_size)
    await record.done.wait()
    if record.state == "error":
        raise ArchivistError(f"archiving {collection} failed: {record.error}")
    return record
