"""When the daemon expires archived rows (a policy's ``retention``): at its first policy
check, then once every `RETENTION_INTERVAL`, each run in the background so policy checks go
on meanwhile.

Retention is measured in days or years, so a daily run deletes what passed it within a day;
deleting from the archive costs the source nothing, so it ignores windows. A run that fails
or finds the collection's mover lock held is tried again at the next check.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from archivist.errors import ArchivistError, MoverBusy

log = logging.getLogger(__name__)

RETENTION_INTERVAL: Final = 86_400.0
"""Seconds between two expiry runs of one policy."""


class ExpirySchedule:
    """Which policies' archives are due for expiry: pure, on a monotonic clock."""

    def __init__(self, collections: Iterable[str], interval: float = RETENTION_INTERVAL) -> None:
        self.interval = interval
        self._next: dict[str, float] = dict.fromkeys(collections, float("-inf"))

    def __bool__(self) -> bool:
        return bool(self._next)

    def due(self, now: float) -> list[str]:
        return [collection for collection, at in self._next.items() if at <= now]

    def ran(self, collection: str, now: float) -> None:
        """``collection`` expired at ``now``: next in one interval."""
        self._next[collection] = now + self.interval


class Expirer:
    """Runs the due expiries in the background (`start`), one at a time per collection."""

    def __init__(
        self,
        run: Callable[[str], Awaitable[object]] | None,
        collections: Iterable[str],
        *,
        interval: float = RETENTION_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self.schedule = ExpirySchedule(collections if run is not None else (), interval)
        self._clock = clock
        self._running: dict[str, asyncio.Task[None]] = {}

    def start(self, busy: Callable[[str], bool]) -> None:
        """Start each due expiry whose collection is not ``busy`` (a task of it runs)."""
        for collection in self.schedule.due(self._clock()):
            if collection in self._running or busy(collection):
                continue
            task = asyncio.get_running_loop().create_task(
                self._expire(collection), name=f"expire-{collection}"
            )
            self._running[collection] = task
            task.add_done_callback(functools.partial(self._ended, collection))

    def _ended(self, collection: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(collection, None)

    async def _expire(self, collection: str) -> None:
        assert self._run is not None
        try:
            await self._run(collection)
        except MoverBusy as exc:
            log.info("%s: retention skipped this cycle: %s", collection, exc.message)
            return
        except ArchivistError as exc:
            log.warning("%s: retention failed: %s", collection, exc.message)
            return
        self.schedule.ran(collection, self._clock())

    async def wait(self) -> None:
        """Until every expiry under way has ended."""
        while self._running:
            await asyncio.wait(list(self._running.values()))

    async def close(self) -> None:
        """Stop the expiries under way (between two batches: each batch is its own
        transaction) and wait for them."""
        for task in list(self._running.values()):
            task.cancel()
        for task in list(self._running.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
