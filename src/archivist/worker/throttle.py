"""Gentleness shared by all of a worker's tasks: a pause between batches, a pause file,
the databases' load signals, and one batch budget per database.

Concurrency 3 must not mean three times the load on one primary: every batch holds its
source database's budget (one batch at a time by default) while it writes, so tasks on
the same database take turns and tasks on different databases run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from archivist.errors import TRANSIENT_CODES, ArchivistError
from archivist.protocol import JSONObject
from archivist.worker.settings import DEFAULTS

log = logging.getLogger(__name__)

POLL: Final = 0.2
"""Seconds between looks at the pause file while it exists."""
REREAD_AFTER: Final = 0.1
"""Seconds a reading is kept at least, even when asked for one newer: a task asks whether
to yield with a reading newer than its last delete (on SQLite, a delete is what notices the
application), which would otherwise be one ``data/load`` per batch."""


@dataclass(frozen=True)
class ThrottleSettings:
    pause: float = DEFAULTS.pause
    """Seconds each task sleeps between its batches."""
    nice_ratio: float = DEFAULTS.nice_ratio
    """After each batch, a task also rests this many times as long as the batch took
    (gh-ost's --nice-ratio): 1 about halves the load a task puts on its database."""
    pause_file: Path | None = None
    """While this file exists, no batch starts."""
    max_latency_ms: float | None = DEFAULTS.max_latency_ms
    """Pause while the database's probe query takes longer than this (None: ignore)."""
    max_active: int | None = DEFAULTS.max_active
    """Pause while the database reports more busy connections than this: PostgreSQL's
    active backends, MariaDB's Threads_running (None: ignore)."""
    yield_ratio: float = DEFAULTS.yield_ratio
    """While other sessions are using a task's source database (the application: the
    ``others`` of ``data/load``), the task rests at least this many times as long as each
    batch took (0: never yield)."""
    load_interval: float = DEFAULTS.load_interval
    """Seconds a load reading is reused, by every task on that database."""
    per_database: int = DEFAULTS.per_database
    """Batches that may run at once on one source database."""

    def rest_after(
        self,
        batch_seconds: float,
        *,
        yielding: bool = False,
        batch_rows: int = 0,
        min_rate: float | None = None,
    ) -> float:
        """Seconds a task rests after a batch of ``batch_rows`` rows that took
        ``batch_seconds``, ``yielding`` to an application that is using its database or not;
        the yielding part no longer than keeps the task at ``min_rate`` rows/s."""
        took = max(0.0, batch_seconds)
        rest = self.pause + self.nice_ratio * took
        if not yielding:
            return rest
        return max(rest, capped_rest(batch_rows, took, self.yield_ratio * took, min_rate))


def capped_rest(
    batch_rows: int, batch_seconds: float, rest: float, min_rate: float | None
) -> float:
    """``rest``, shortened so that a batch of ``batch_rows`` rows that took ``batch_seconds``
    plus its rest still moves at least ``min_rate`` rows/s (None or 0: no floor).

    The daemon asks for a rate when the table outgrows archivist (docs/configuration.md,
    "Keeping up"): yielding then rests as much as that rate allows, and no more. A batch
    that alone took longer than the rate allows gets no rest (nothing to cap further).
    """
    rest = max(0.0, rest)
    if min_rate is None or min_rate <= 0 or batch_rows <= 0:
        return rest
    allowed = batch_rows / min_rate - max(0.0, batch_seconds)
    return max(0.0, min(rest, allowed))


Execute = Callable[[str, JSONObject], Awaitable[JSONObject]]

PAUSE_FILE: Final = "pause file"
YIELDING: Final = "yielding to"
SLOW_PROBE: Final = "probe took"


def reason_kind(reason: str) -> str:
    """The kind of a throttle reason this module gave, for the daemon's metrics:
    ``pause_file``, ``yielding`` (to the application), ``latency`` (a slow probe query),
    or ``load`` (too many busy connections)."""
    if reason.startswith(PAUSE_FILE):
        return "pause_file"
    if reason.startswith(YIELDING):
        return "yielding"
    if SLOW_PROBE in reason:
        return "latency"
    return "load"


@dataclass
class _Reading:
    at: float
    reason: str | None
    """Why the database is over its load limits or held by the daemon, or None."""
    others: int
    """Sessions besides archivist's using the database (0 where the daemon does not say)."""


class Throttle:
    """One per worker; every task asks it before each batch."""

    def __init__(self, settings: ThrottleSettings) -> None:
        self.settings = settings
        self._budgets: dict[str, asyncio.Semaphore] = {}
        self._readings: dict[str, _Reading] = {}
        self._no_signal: set[str] = set()
        self._holds: dict[str, str] = {}
        """Per database, the daemon's last ``hold`` (its own words, so `kind` knows it)."""

    def kind(self, reason: str) -> str:
        """`reason_kind`, and ``replica_lag`` for a hold the daemon gave (a replica lags)."""
        if reason in self._holds.values():
            return "replica_lag"
        return reason_kind(reason)

    @contextlib.asynccontextmanager
    async def budget(self, database: str) -> AsyncIterator[None]:
        """Hold one of ``database``'s batch slots for the duration of a batch's writes."""
        semaphore = self._budgets.get(database)
        if semaphore is None:
            semaphore = self._budgets[database] = asyncio.Semaphore(self.settings.per_database)
        async with semaphore:
            yield

    async def wait_turn(
        self,
        database: str,
        execute: Execute,
        report: Callable[[str | None], None],
        stopped: Callable[[], bool],
    ) -> None:
        """Wait while the pause file exists, ``database`` is over its load limits, or the
        daemon holds its batches (``hold`` in ``data/load``: a replica lags).

        ``report`` receives the reason while throttled and None once it clears.
        """
        while not stopped():
            reason = self._paused_by_file() or await self._overloaded(database, execute)
            report(reason)
            if reason is None:
                return
            await asyncio.sleep(POLL if reason.startswith(PAUSE_FILE) else self.interval())

    def interval(self) -> float:
        """Seconds between two looks at a database's load."""
        return max(POLL, self.settings.load_interval)

    def _paused_by_file(self) -> str | None:
        path = self.settings.pause_file
        if path is not None and path.exists():
            return f"{PAUSE_FILE} {path} exists"
        return None

    async def yielding(
        self, database: str, execute: Execute, *, since: float | None = None
    ) -> str | None:
        """Why a task should yield to the application after its batch (other sessions are
        using ``database``), or None; from a reading taken after ``since`` (monotonic)."""
        if self.settings.yield_ratio <= 0:
            return None
        reading = await self._reading(database, execute, since=since)
        if reading is None or reading.others <= 0:
            return None
        sessions = "session" if reading.others == 1 else "sessions"
        return f"{YIELDING} {reading.others} other {sessions} using {database}"

    async def _overloaded(self, database: str, execute: Execute) -> str | None:
        # Read even without load limits: the daemon may hold batches (a replica lags).
        reading = await self._reading(database, execute)
        return reading.reason if reading is not None else None

    async def _reading(
        self, database: str, execute: Execute, *, since: float | None = None
    ) -> _Reading | None:
        """``database``'s load, read at most once per ``load_interval`` for all tasks, and
        again (at most once per `REREAD_AFTER`) if the last reading is older than ``since``."""
        if database in self._no_signal:
            return None
        reading = self._readings.get(database)
        if reading is not None:
            age = time.monotonic() - reading.at
            outdated = since is not None and reading.at < since and age >= REREAD_AFTER
            if age < self.settings.load_interval and not outdated:
                return reading
        try:
            load = await execute("data/load", {"dbHandle": database})
        except ArchivistError as exc:
            if exc.code in TRANSIENT_CODES:
                # The database failed the probe (restarting, say): no reading this time, and
                # the next asks again (the daemon's holds, a lagging replica, come with it).
                log.debug("no load reading for %s this time: %s", database, exc.message)
                return None
            # A daemon written from the design alone has no data/load: go without it.
            log.info("no load signal for %s (%s); not throttling on load", database, exc.message)
            self._no_signal.add(database)
            return None
        others = load.get("others")
        reading = _Reading(
            time.monotonic(),
            self._judge(database, load),
            others if isinstance(others, int) and not isinstance(others, bool) else 0,
        )
        self._readings[database] = reading
        return reading

    def _judge(self, database: str, load: JSONObject) -> str | None:
        hold = load.get("hold")
        if isinstance(hold, str) and hold:
            self._holds[database] = hold
            return hold  # the daemon's reason, e.g. "replica1 lags 12 s"
        latency = load.get("latencyMs")
        active = load.get("active")
        limit_ms = self.settings.max_latency_ms
        if limit_ms is not None and isinstance(latency, int | float) and latency > limit_ms:
            return f"{database} {SLOW_PROBE} {latency:.0f} ms (limit {limit_ms:.0f} ms)"
        limit_active = self.settings.max_active
        if limit_active is not None and isinstance(active, int) and active > limit_active:
            metric = load.get("metric", "busy connections")
            return f"{database} has {active} {metric} (limit {limit_active})"
        return None
