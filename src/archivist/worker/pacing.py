"""The pace of one task's batches: the rest between them (yielding to the application),
the wait before a failed batch is retried, and why the task is shown as throttled."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Final

from archivist.errors import TRANSIENT_CODES, RemoteError, RequestTimeout
from archivist.worker.queue import Task
from archivist.worker.throttle import Execute, Throttle, ThrottleSettings

# Logged as the executor, as before this module was split from it.
log = logging.getLogger("archivist.worker.executor")

RETRY_DELAYS: Final = (0.5, 1.0, 2.0, 4.0, 8.0)


class Pacer:
    """When one task's next batch may start; the task's `Throttle` is shared by the worker."""

    def __init__(
        self,
        task: Task,
        throttle: Throttle,
        settings: ThrottleSettings,
        retry_for: float,
        execute: Execute,
    ) -> None:
        self.task = task
        self.throttle = throttle
        self.settings = settings
        self.retry_for = retry_for
        self.execute = execute
        self.held_by: str | None = None
        """Why batches wait for the database's load (pause file, load limits), or None."""
        self.yielding: str | None = None
        """Why the task rests longer after its batches (the application), or None."""
        self.rested = False
        """The last rest between batches slept (yielding, a pause, a nice ratio): the next
        pages are not moved ahead then, since nobody would ask for them in time."""
        self._held_at: float | None = None
        """When `held_by` was last reported (its seconds count into the task's totals)."""
        self.deleted_at: float | None = None
        """When the task's last delete ended: on SQLite a delete is what notices the
        application, so whether to yield is read from a reading taken after it."""

    def stopped(self) -> bool:
        return self.task.stop_reason is not None

    def throttled(self, reason: str | None) -> None:
        """The throttle's verdict before a batch, at each of its looks: the time since its
        last look counts as waited for the reason it gave then."""
        now = time.monotonic()
        if self.held_by is not None and self._held_at is not None:
            self.task.waited(self.throttle.kind(self.held_by), now - self._held_at)
        self._held_at = now if reason is not None else None
        self.held_by = reason
        self.report()

    def report(self) -> None:
        """Show (and log, when it changes) why the task is slowed, in `archivist status`."""
        reason = self.held_by or self.yielding
        if _shape(reason) != _shape(self.task.throttled):
            if reason is None:
                log.info("task %s: resumed", self.task.task_id)
            else:
                log.info("task %s: throttled: %s", self.task.task_id, reason)
        self.task.throttled = reason

    async def pause_between_batches(self, took: float, rows: int) -> None:
        """Rest after a batch of ``rows`` rows that took ``took``: ``yield_ratio`` times as
        long while the application uses the source database (at most what keeps the task at
        the daemon's ``minRate``), else the plain pause.

        A yielding rest can be long (200 times a 0.5 s batch is 100 s), so the load is read
        again every ``load_interval`` while it lasts (one shared, cached reading per
        database): once the application has gone quiet, only what is left of the plain
        pause is slept, and the task goes on at full speed.
        """
        database = self.task.spec.source_handle
        throttle = self.settings
        ended = time.monotonic()
        self.yielding = await self.throttle.yielding(database, self.execute, since=self.deleted_at)
        self.report()
        self.rested = self.yielding is not None
        if self.yielding is not None:
            resting = time.monotonic()
            try:
                while self.yielding is not None and not self.stopped():
                    # Again at each look: the daemon may raise the task's rate meanwhile.
                    until = ended + throttle.rest_after(
                        took, yielding=True, batch_rows=rows, min_rate=self.task.min_rate
                    )
                    now = time.monotonic()
                    if now >= until:
                        return
                    await self.sleep(min(until - now, self.throttle.interval()))
                    if time.monotonic() < until and not self.stopped():
                        self.yielding = await self.throttle.yielding(database, self.execute)
            finally:
                self.task.waited("yielding", time.monotonic() - resting)
            self.report()
        rest = ended + throttle.rest_after(took) - time.monotonic()
        if rest > 0:
            self.rested = True
            await self.sleep(rest)

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake early when the task is asked to stop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stopped():  # noqa: ASYNC110
            await asyncio.sleep(min(0.1, deadline - time.monotonic()))

    async def retry_pause(
        self, exc: RemoteError | RequestTimeout, streak: int, failing_for: float
    ) -> None:
        """Wait before retrying a failed batch, or re-raise when retrying is pointless or over.

        Retrying is safe at any step: the next attempt lists the source again, its create is
        idempotent, and only rows verified in the archive are deleted.
        """
        if exc.code not in TRANSIENT_CODES:
            raise exc
        delay = retry_delay(streak, failing_for, self.retry_for)
        if delay is None:
            message = f"{exc.message} (gave up after retrying for {failing_for:.0f} s)"
            if isinstance(exc, RemoteError):
                raise RemoteError.rebuild(message, exc.code) from None
            raise RequestTimeout(message) from None
        self.task.retries += 1
        log.warning(
            "task %s: batch failed (%s); retrying in %.1f s", self.task.task_id, exc.message, delay
        )
        await self.sleep(delay)


def _shape(reason: str | None) -> str | None:
    """A reason without its figures: "replica1 lags 12 s" and "... 13 s" are one state,
    logged once (status shows the figure of the moment)."""
    return _FIGURES.sub("#", reason) if reason is not None else None


_FIGURES: Final = re.compile(r"\d+(?:\.\d+)?")


def retry_delay(streak: int, failing_for: float, retry_for: float) -> float | None:
    """Seconds to wait before the ``streak``-th retry in a row of a batch failing for
    ``failing_for`` seconds, backing off; None when ``retry_for`` is spent (give up).
    Never past the end of ``retry_for``, so the last attempt comes before giving up."""
    if failing_for >= retry_for:
        return None
    delay = RETRY_DELAYS[min(streak - 1, len(RETRY_DELAYS) - 1)]
    return min(delay, max(0.1, retry_for - failing_for))
