"""Runs the worker as a child process of the daemon and restarts it when it dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from archivist.worker import paths
from archivist.worker.settings import DEFAULTS

log = logging.getLogger(__name__)

RESTART_DELAYS: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
STOP_MARGIN: Final = 5.0
"""Seconds a stopping worker gets past its ``shutdown_timeout`` (its tasks' time to reach a
safe point) to tell its clients and exit, before it is killed."""
# A worker that ran this long before it died was healthy: its death starts the delays over,
# so that a few crashes spread over a week do not make every later restart wait 5 s.
HEALTHY_RUN: Final = 60.0


@dataclass
class RestartBackoff:
    """Decides how long to wait before restarting a worker that exited: each exit in a row
    waits longer (`delays`), and a run of `healthy_after` seconds or more resets the row."""

    delays: tuple[float, ...] = RESTART_DELAYS
    healthy_after: float = HEALTHY_RUN
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    _started: float | None = field(default=None, repr=False)

    def started(self) -> None:
        """The worker was (re)started now."""
        self._started = self.clock()

    def delay_after_exit(self) -> float:
        """The worker exited now: the seconds to wait before starting it again."""
        if self._started is not None and self.clock() - self._started >= self.healthy_after:
            self.failures = 0
        self._started = None
        delay = self.delays[min(self.failures, len(self.delays) - 1)]
        self.failures += 1
        return delay


class WorkerProcess:
    """A supervised ``archivist worker`` child; `run` restarts it until `stop`.

    ``extra_args`` are its settings as options (`WorkerSettings.command_line`), and
    ``shutdown_timeout`` the one among them that says how long it may take to stop."""

    def __init__(
        self,
        socket_path: Path,
        *,
        quiet: bool = False,
        extra_args: tuple[str, ...] = (),
        shutdown_timeout: float = DEFAULTS.shutdown_timeout,
        backoff: RestartBackoff | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.quiet = quiet
        self.extra_args = extra_args
        self.stop_timeout = shutdown_timeout + STOP_MARGIN
        self.restarts = 0
        self.backoff = backoff if backoff is not None else RestartBackoff()
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def check_free(self) -> None:
        """Fail early if another worker already listens on our socket path."""
        paths.prepare(self.socket_path)

    async def spawn(self) -> None:
        """Start the worker now, ahead of `run` (which then watches this process first), so
        that its start-up overlaps the daemon's own."""
        if self._process is None and not self._stopping:
            await self._start()

    async def run(self) -> None:
        process = self._process  # started early by `spawn`, if it was
        while not self._stopping:
            if process is None:
                process = await self._start()
            code = await process.wait()
            process = None
            if self._stopping:
                return
            delay = self.backoff.delay_after_exit()
            self.restarts += 1
            log.warning("worker exited with code %s; restarting in %.1f s", code, delay)
            await asyncio.sleep(delay)

    async def _start(self) -> asyncio.subprocess.Process:
        self._process = await asyncio.create_subprocess_exec(*self._command())
        self.backoff.started()
        log.info("worker started (pid %d) on %s", self._process.pid, self.socket_path)
        return self._process

    def _command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "archivist",
            "worker",
            "--socket",
            os.fspath(self.socket_path),
            "--parent",
            str(os.getpid()),
        ]
        if self.quiet:
            command.append("--quiet")
        return [*command, *self.extra_args]

    async def stop(self) -> None:
        """SIGTERM the worker and wait for its graceful exit (then kill it)."""
        self._stopping = True
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(self.stop_timeout):
                await process.wait()
        except TimeoutError:
            log.warning("worker did not stop in %.0f s; killing it", self.stop_timeout)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
