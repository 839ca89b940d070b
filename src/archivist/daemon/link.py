"""The ArchiveDaemon's link to its worker: connecting (with backoff), health pings, and the
current connection, open again after each loss until the daemon stops.

What a connection carries (tasks sent, callbacks served, tasks lost with it) is the
daemon's: `WorkerLink` calls it back when a connection opens and when it is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from archivist.daemon.connection import ExecuteFn, NotifyFn, WorkerConnection
from archivist.daemon.metrics import Observer
from archivist.errors import PeerError

# Logged as the daemon, as before this module was split from it.
log = logging.getLogger("archivist.daemon.service")

RECONNECT_DELAYS: Final = (0.025,) * 10 + (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
"""Seconds between attempts to reach the worker. A worker just started listens after
~0.15-0.2 s (its interpreter and imports), so the first quarter second is polled finely:
every one-shot ``archivist archive`` waits for it."""


class _ConnectionGone(Exception):
    """Ends one connection's task group."""


class WorkerLink:
    """Keeps a connection to the worker at ``socket_path`` open while the daemon runs."""

    def __init__(
        self,
        socket_path: Path,
        *,
        execute: ExecuteFn,
        notify: NotifyFn,
        opened: Callable[[WorkerConnection], Awaitable[None]],
        lost: Callable[[WorkerConnection], None],
        observer: Observer,
        request_timeout: float,
        frame_limit: int,
        health_interval: float,
        health_timeout: float,
    ) -> None:
        self.socket_path = socket_path
        self._execute = execute
        self._notify = notify
        self._opened = opened
        """Called with each new connection once it serves: the daemon sends its tasks."""
        self._lost = lost
        """Called when a connection has gone: the daemon marks its tasks lost."""
        self._observer = observer
        self._request_timeout = request_timeout
        self._frame_limit = frame_limit
        self._health_interval = health_interval
        self._health_timeout = health_timeout
        self.current: WorkerConnection | None = None
        """The connection being served, if any (it may have closed a moment ago)."""
        self._connected = asyncio.Event()
        self.stopping = False
        """Set when the daemon stops: a worker that goes away is not reconnected to."""
        self.connections = 0
        """How many connections have been opened."""

    def live(self) -> WorkerConnection | None:
        """The current connection to the worker, if there is one now."""
        connection = self.current
        return connection if connection is not None and not connection.peer.closed else None

    async def wait(self) -> WorkerConnection:
        """The current connection to the worker, waiting for one if needed."""
        while True:
            await self._connected.wait()
            if self.current is not None and not self.current.peer.closed:
                return self.current

    async def run(self) -> None:
        """Connect, serve the connection until it closes, and connect again, until stopping."""
        failures = 0
        while not self.stopping:
            try:
                connection = await WorkerConnection.open(
                    self.socket_path,
                    execute=self._execute,
                    notify=self._notify,
                    request_timeout=self._request_timeout,
                    frame_limit=self._frame_limit,
                )
            except OSError as exc:
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                if failures % 20 == 0:
                    log.info(
                        "worker not reachable at %s (%s); retrying",
                        self.socket_path,
                        exc.strerror or exc,
                    )
                failures += 1
                await asyncio.sleep(delay)
                continue
            failures = 0
            await self._serve(connection)
            _raise_if_cancelled()

    async def _serve(self, connection: WorkerConnection) -> None:
        self.connections += 1
        log.info("connected to the worker at %s", self.socket_path)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(connection.peer.run(), name="worker-peer")
                self.current = connection
                self._connected.set()
                group.create_task(self._health_loop(connection), name="health")
                await self._opened(connection)
                await connection.peer.wait_closed()
                raise _ConnectionGone
        except* _ConnectionGone:
            pass
        finally:
            self._connected.clear()
            self.current = None
            self._lost(connection)

    async def _health_loop(self, connection: WorkerConnection) -> None:
        while not connection.peer.closed:
            await asyncio.sleep(self._health_interval)
            try:
                sent = time.monotonic()
                await connection.ping(timeout=self._health_timeout)
                self._observer.pinged(time.monotonic() - sent)
            except PeerError as exc:
                log.warning("worker health check failed (%s); reconnecting", exc.message)
                await connection.close()
                return


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation a task group swallowed.

    On Python 3.11 a task cancelled while its `asyncio.TaskGroup` is ending on an exception
    of its own (the connection closing, here, as the worker stops on the SIGTERM systemd
    sends to the whole process group) gets that exception instead of CancelledError, which
    ``except*`` then swallows (CPython gh-116720, fixed in 3.13): the loop around it would
    reconnect for ever and the daemon never exit."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
