"""Runs the worker as a child process of the daemon and restarts it when it dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Final

from archivist.worker import paths

log = logging.getLogger(__name__)

RESTART_DELAYS: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
STOP_TIMEOUT: Final = 35.0


class WorkerProcess:
    """A supervised ``archivist worker`` child; `run` restarts it until `stop`."""

    def __init__(
        self,
        socket_path: Path,
        *,
        concurrency: int = 3,
        quiet: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.socket_path = socket_path
        self.concurrency = concurrency
        self.quiet = quiet
        self.extra_args = extra_args
        self.restarts = 0
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
        failures = 0
        process = self._process  # started early by `spawn`, if it was
        while not self._stopping:
            if process is None:
                process = await self._start()
            code = await process.wait()
            process = None
            if self._stopping:
                return
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            failures += 1
            self.restarts += 1
            log.warning("worker exited with code %s; restarting in %.1f s", code, delay)
            await asyncio.sleep(delay)

    async def _start(self) -> asyncio.subprocess.Process:
        self._process = await asyncio.create_subprocess_exec(*self._command())
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
            "--concurrency",
            str(self.concurrency),
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
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            log.warning("worker did not stop in %.0f s; killing it", STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
