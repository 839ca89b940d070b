"""`Daemon`: archivist's daemon inside an asyncio application that runs already.

What ``archivist run`` does, as an object: ``await daemon.start()`` starts a worker (a
child process by default, or in this process with ``worker="inline"``, for tests), the
data daemon and the policy checks in the background of the caller's event loop, and
``await daemon.stop()`` stops them cleanly (running tasks stop after their batch). In
between, ``status()``, ``pause()``, ``resume()`` and ``cancel()`` do what the commands of
the same names do, and the control socket serves those commands too (``control=False``
turns it off). The whole daemon lives in one background task of its own, so that it may be
started and stopped from different tasks of the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from archivist.config import Config, load_config

if TYPE_CHECKING:
    from archivist.daemon.service import ArchiveDaemon

log = logging.getLogger(__name__)

WORKER_STOP_TIMEOUT: Final = 60.0
"""Seconds an in-process worker gets to stop after the daemon has (its tasks have ended)."""


class Daemon:
    """archivist's daemon in the caller's event loop (see the module's docstring).

    ``config``: a `Config` (`make_config`, `load_config`) or the path of a TOML file.
    ``worker``: ``"process"`` (a child process, restarted if it dies, as ``archivist run``
    does) or ``"inline"`` (a worker in this process, on a private socket: for tests).
    ``watch``: check the policies every ``check_interval`` (False: only when asked with
    `check`). ``control``: serve the control socket (``archivist pause`` and the others).
    """

    def __init__(
        self,
        config: Config | str | os.PathLike[str],
        *,
        worker: Literal["process", "inline"] = "process",
        watch: bool = True,
        control: bool = True,
    ) -> None:
        self.config = config if isinstance(config, Config) else load_config(Path(config))
        self.worker = worker
        self.watch = watch
        self.control = control
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._daemon: ArchiveDaemon | None = None

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._daemon is not None and self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the worker, the data daemon and the policy checks; return once they run.
        A start-up error (a handle that does not connect, a socket in use) is raised here."""
        if self._task is not None:
            raise RuntimeError("this Daemon has been started already")
        self._stop.clear()
        ready: asyncio.Future[ArchiveDaemon] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._main(ready), name="archivist-daemon")
        first: list[asyncio.Future[Any]] = [ready, self._task]
        try:
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The caller gave up on starting (a timeout, say): nothing may go on running.
            starting, self._task = self._task, None
            self._stop.set()
            if not ready.done():
                starting.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await starting
            raise
        if not ready.done():
            failed, self._task = self._task, None  # start() may be tried again
            failed.result()  # the start-up error
            raise RuntimeError("the archivist daemon ended while starting")  # pragma: no cover
        self._daemon = ready.result()

    async def stop(self) -> None:
        """Stop cleanly: running tasks stop after their current batch, then the worker.
        An error the daemon ended with in the background is raised here."""
        task = self._task
        if task is None:
            return
        self._stop.set()
        try:
            await task
        finally:
            self._task = None
            self._daemon = None

    async def _main(self, ready: asyncio.Future[ArchiveDaemon]) -> None:
        from archivist.daemon.runtime import Launch, running

        async with contextlib.AsyncExitStack() as stack:
            socket = None
            if self.worker == "inline":
                socket = await _inline_worker(self.config, stack)
            launch = Launch(socket=socket, watch=self.watch, control=self.control)
            daemon = await stack.enter_async_context(running(self.config, launch))
            ready.set_result(daemon)
            await self._stop.wait()

    def _running(self) -> ArchiveDaemon:
        if self._daemon is None or not self.running:
            raise RuntimeError("the archivist daemon is not running; await start() first")
        return self._daemon

    # --- what the commands do ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``archivist status --json`` shows of the daemon (the worker's own task list
        aside): ``daemon``, ``paused``, ``policies`` (each with ``rows``, ``maxRows``,
        ``growth``, ``state``, ``reason``, ``task``, ``lastRun``, ``nextRun``) and
        ``tasks``."""
        from archivist.daemon.operator import report

        return report(self._running())

    async def pause(self, collection: str | None = None, *, by: str | None = None) -> None:
        """Pause one collection's policy (None: every policy), as ``archivist pause``: its
        task stops after its current batch (awaited) and none starts until `resume`.
        ``by``: who pauses, for `status` (default: ``user@host/pid`` of this process)."""
        from archivist.daemon.operator import Operator
        from archivist.daemon.pauses import who

        await Operator(self._running()).pause(collection, by or who())

    async def resume(self, collection: str | None = None) -> None:
        """Undo `pause` (None: every pause); the policies are checked at once."""
        from archivist.daemon.operator import Operator

        await Operator(self._running()).resume(collection)

    async def cancel(self, task_id: str) -> None:
        """Stop one task after its current batch (as ``archivist cancel``), awaited."""
        from archivist.daemon.operator import Operator

        await Operator(self._running()).cancel_task(task_id)

    async def check(self, *, wait: bool = True) -> list[dict[str, Any]]:
        """Check every policy now and queue what is due (for a daemon made with
        ``watch=False``); with ``wait``, return once those tasks have ended. The tasks, as
        `status` lists them."""
        from archivist.daemon.operator import record_json

        daemon = self._running()
        records = await daemon.check_once()
        if wait:
            await asyncio.gather(*(record.done.wait() for record in records))
        return [record_json(record) for record in records]


async def _inline_worker(config: Config, stack: contextlib.AsyncExitStack) -> Path:
    """A worker in this process on a private socket, stopped when ``stack`` closes; its
    socket."""
    from archivist.worker.server import Worker, WorkerOptions

    scratch = Path(tempfile.mkdtemp(prefix="archivist-"))
    stack.callback(shutil.rmtree, scratch, True)
    socket = scratch / "worker.sock"
    settings = msgspec.structs.replace(config.worker, socket=str(socket))
    worker = Worker(WorkerOptions.from_settings(settings))
    listening = asyncio.Event()
    task = asyncio.create_task(worker.run(listening.set), name="archivist-inline-worker")

    async def stop() -> None:
        worker.stop()
        try:
            async with asyncio.timeout(WORKER_STOP_TIMEOUT):
                await task
        except TimeoutError:
            log.warning("the in-process worker did not stop in %.0f s", WORKER_STOP_TIMEOUT)
            task.cancel()

    stack.push_async_callback(stop)
    started = asyncio.create_task(listening.wait())
    await asyncio.wait([started, task], return_when=asyncio.FIRST_COMPLETED)
    if not listening.is_set():
        started.cancel()
        task.result()  # its start-up error (a socket in use, say)
    return socket
