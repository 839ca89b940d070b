"""The daemon's supervisor restarts a real `archivist worker` child: crashes in a row wait
longer, and a healthy run starts the delays over (`RestartBackoff`)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal

from archivist.daemon.supervisor import RESTART_DELAYS, RestartBackoff, WorkerProcess
from support import short_socket_dir

HEALTHY_AFTER = 2.0


async def next_pid(worker: WorkerProcess, old: int | None) -> int:
    """The pid of the worker started after ``old``."""
    async with asyncio.timeout(30):
        while worker.pid is None or worker.pid == old:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert worker.pid is not None
    return worker.pid


def test_a_worker_killed_after_a_healthy_run_is_restarted_at_once_not_after_backing_off() -> None:
    directory = short_socket_dir()

    async def scenario() -> list[tuple[int, float]]:
        backoff = RestartBackoff(healthy_after=HEALTHY_AFTER)
        worker = WorkerProcess(directory / "w.sock", quiet=True, backoff=backoff)
        runner = asyncio.create_task(worker.run())
        seen: list[tuple[int, float]] = []
        try:
            pid = await next_pid(worker, None)
            for healthy in (False, False, True):
                if healthy:
                    await asyncio.sleep(HEALTHY_AFTER + 0.5)
                os.kill(pid, signal.SIGKILL)  # crashes at once, or after a healthy run
                pid = await next_pid(worker, pid)
                seen.append((backoff.failures, backoff.delays[backoff.failures - 1]))
        finally:
            await worker.stop()
            runner.cancel()
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    # Two crashes in a row back off (0.2 s, then 0.5 s); after a healthy run, 0.2 s again.
    assert seen == [(1, RESTART_DELAYS[0]), (2, RESTART_DELAYS[1]), (1, RESTART_DELAYS[0])]
