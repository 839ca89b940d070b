"""Replica lag: how far behind its source each replica of a source handle is, read on the
replica itself, and whether that holds back every batch on the source (a handle's
``replicas`` and ``max_replica_lag``).

Deleting many rows on a primary makes its replicas replay as many deletes; like
pt-archiver's ``--check-slave-lag`` and gh-ost's ``--max-lag-millis``, no batch starts
while a replica is further behind than the limit. The judgement (`standby_lag`,
`mariadb_lag`, `lag_hold`) is pure; `ReplicaWatch` does the reading.

- PostgreSQL standby: nothing left to replay (the WAL received is replayed:
  ``pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn()``) is no lag, however long ago
  the last transaction was: a standby of an idle primary is not behind. Otherwise the lag
  is the time since the last replayed transaction committed on the primary
  (``clock_timestamp() - pg_last_xact_replay_timestamp()``, by the standby's clock).
- MariaDB/MySQL replica: ``Seconds_Behind_Master`` of ``SHOW REPLICA STATUS``; NULL (the
  SQL or IO thread is stopped) counts as lagging.
- A replica that cannot be reached, or is no replica, counts as lagging.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import msgspec
from sqlalchemy.engine import Connection

from archivist.data.handles import Handle
from archivist.errors import ArchivistError

log = logging.getLogger(__name__)

PROBE_TIMEOUT: Final = 5.0
"""Seconds a replica has to answer before it counts as unreachable (its probe goes on in
its thread; the next reading waits for that one rather than starting another)."""
REUSE_FOR: Final = 0.5
"""Seconds a replica's reading is reused: every task and every ``data/load`` on a source
asks, and one probe per replica per half second is enough."""
REPLICA_DIALECTS: Final = ("postgresql", "mysql", "mariadb")
SETTLE: Final = 0.5
"""Seconds a PostgreSQL standby with WAL to replay has to replay it before its reading
counts as a lag (see `standby_lag`)."""


class Lag(msgspec.Struct, frozen=True):
    """One replica's reading: ``seconds`` behind its source, or a ``problem`` that makes it
    count as lagging without a figure (unreachable, not replaying, not a replica)."""

    replica: str
    seconds: float | None = None
    problem: str | None = None
    note: str | None = None
    """Said after the lag when it holds batches ("its replay is paused")."""


def lag_hold(lags: Iterable[Lag], max_lag: float) -> str | None:
    """Why no batch may start on the source: every replica that lags more than
    ``max_lag`` seconds or has a problem ("replica1 lags 12 s"), or None when none does."""
    reasons = []
    for lag in lags:
        if lag.problem is not None:
            reasons.append(f"{lag.replica} {lag.problem}")
        elif lag.seconds is None:
            reasons.append(f"{lag.replica} lags (by an unknown time)")
        elif lag.seconds > max_lag:
            note = f" ({lag.note})" if lag.note else ""
            reasons.append(f"{lag.replica} lags {seconds_text(lag.seconds)}{note}")
    return "; ".join(reasons) or None


def describe(lag: Lag) -> str:
    """One replica's reading for people: ``"replica1: 0.4 s behind"`` or its problem."""
    if lag.problem is not None:
        return f"{lag.replica} {lag.problem}"
    if lag.seconds is None:
        return f"{lag.replica} lags (by an unknown time)"
    note = f" ({lag.note})" if lag.note else ""
    return f"{lag.replica} {seconds_text(lag.seconds)} behind{note}"


def seconds_text(seconds: float) -> str:
    """``12 s``, or ``1.4 s`` under 10 s (limits below a few seconds are common)."""
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def standby_lag(
    replica: str,
    *,
    in_recovery: bool,
    unreplayed_bytes: float | None,
    since_replay: float | None,
    paused: bool = False,
    replayed_soon: bool = False,
) -> Lag:
    """A PostgreSQL standby's lag from what it says of itself: ``pg_is_in_recovery()``,
    the WAL received but not replayed yet (bytes; None when it does not stream, e.g. it
    restores from an archive), and the seconds since the last replayed transaction
    committed on the primary (None when it has replayed none since it started).

    ``replayed_soon``: the WAL received at the first look was replayed within a moment
    (`SETTLE`). WAL that is no transaction (an idle primary logs some every 15 s) would
    otherwise read, for that moment, as a lag as long as the primary has been idle."""
    if not in_recovery:
        return Lag(replica, problem="is not a standby (pg_is_in_recovery() is false)")
    if (unreplayed_bytes is not None and unreplayed_bytes <= 0) or replayed_soon:
        return Lag(replica, seconds=0.0)  # caught up: an idle primary leaves nothing to replay
    if since_replay is None:
        return Lag(replica, problem="has WAL to replay and has replayed nothing since it started")
    return Lag(
        replica, seconds=max(0.0, since_replay), note="its replay is paused" if paused else None
    )


def mariadb_lag(replica: str, status: Mapping[str, object] | None) -> Lag:
    """A MariaDB/MySQL replica's lag from its ``SHOW REPLICA STATUS`` row (None: no row,
    not a replica): ``Seconds_Behind_Master``, NULL while a replication thread is stopped."""
    if status is None:
        return Lag(replica, problem="is not a replica (SHOW REPLICA STATUS is empty)")
    behind = status.get("Seconds_Behind_Master")
    if behind is None:
        stopped = [
            name
            for name, key in (("SQL", "Slave_SQL_Running"), ("IO", "Slave_IO_Running"))
            if str(status.get(key, "")).lower() != "yes"
        ]
        threads = " and ".join(stopped) or "a replication"
        thread = "threads are" if len(stopped) > 1 else "thread is"
        return Lag(replica, problem=f"is not replicating (its {threads} {thread} stopped)")
    return Lag(replica, seconds=float(str(behind)))


def _postgres_reading(connection: Connection, replica: str) -> Lag:
    row = connection.exec_driver_sql(
        "SELECT pg_is_in_recovery(), "
        "CASE WHEN pg_is_in_recovery() THEN "
        "pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) END, "
        "EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp()), "
        "CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END, "
        "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()::text END"
    ).one()
    unreplayed = float(row[1]) if row[1] is not None else None
    paused = bool(row[3])
    replayed_soon = False
    if unreplayed is not None and unreplayed > 0 and not paused:
        # Look again for a moment: WAL that replays at once is no lag.
        deadline = time.monotonic() + SETTLE
        while not replayed_soon and time.monotonic() < deadline:
            time.sleep(SETTLE / 5)
            replayed_soon = bool(
                connection.exec_driver_sql(
                    "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %(lsn)s::pg_lsn) >= 0",
                    {"lsn": row[4]},
                ).scalar()
            )
    return standby_lag(
        replica,
        in_recovery=bool(row[0]),
        unreplayed_bytes=unreplayed,
        since_replay=float(row[2]) if row[2] is not None else None,
        paused=paused,
        replayed_soon=replayed_soon,
    )


def _mariadb_reading(connection: Connection, replica: str) -> Lag:
    result = connection.exec_driver_sql("SHOW REPLICA STATUS")
    row = result.mappings().first()
    return mariadb_lag(replica, dict(row) if row is not None else None)


def read_lag(connection: Connection, replica: str) -> Lag:
    """``replica``'s lag, asked of the replica on ``connection``."""
    if connection.dialect.name == "postgresql":
        return _postgres_reading(connection, replica)
    return _mariadb_reading(connection, replica)


def _shape(reason: str | None) -> str | None:
    """A hold without its figures: "replica1 lags 3.2 s" and "... 3.4 s" are one state,
    logged once."""
    return _FIGURES.sub("#", reason) if reason is not None else None


_FIGURES: Final = re.compile(r"\d+(?:\.\d+)?")


class ReplicaWatch:
    """The replicas of every source handle that names some, read at most every
    `REUSE_FOR` seconds each, and the reason they hold that source's batches."""

    def __init__(
        self, replicas: Mapping[str, tuple[Sequence[str], float]], handles: Mapping[str, Handle]
    ) -> None:
        self.replicas = replicas
        """By source handle: its replicas' handle names and ``max_replica_lag`` (seconds)."""
        self.handles = handles
        self._readings: dict[str, tuple[float, Lag]] = {}
        self._probes: dict[str, asyncio.Task[Lag]] = {}
        self._held: dict[str, str | None] = {}

    async def hold(self, source: str) -> str | None:
        """Why no batch may start on ``source`` now (a replica lags), or None."""
        watched = self.replicas.get(source)
        if not watched:
            return None
        names, max_lag = watched
        lags = await asyncio.gather(*(self.lag(name) for name in names))
        reason = lag_hold(lags, max_lag)
        if _shape(reason) != _shape(self._held.get(source)):
            if reason is None:
                log.info("replicas of '%s' are within %s again", source, seconds_text(max_lag))
            else:
                log.info("holding batches on '%s': %s", source, reason)
        self._held[source] = reason
        return reason

    async def lag(self, name: str) -> Lag:
        """Replica ``name``'s reading, reused for `REUSE_FOR` seconds."""
        cached = self._readings.get(name)
        if cached is not None and time.monotonic() - cached[0] < REUSE_FOR:
            return cached[1]
        probe = self._probes.get(name)
        if probe is None or probe.done():
            probe = self._probes[name] = asyncio.create_task(self._probe(name))
        done, _ = await asyncio.wait({probe}, timeout=PROBE_TIMEOUT)
        if not done:
            return Lag(name, problem=f"cannot be reached (no answer within {PROBE_TIMEOUT:g} s)")
        lag = probe.result()
        self._readings[name] = (time.monotonic(), lag)
        return lag

    async def _probe(self, name: str) -> Lag:
        handle = self.handles[name]
        try:
            return await handle.transaction(read_lag, name)
        except ArchivistError as exc:
            detail = exc.message.removeprefix(f"database error on {handle.label}: ")
            return Lag(name, problem=f"cannot be reached: {detail}")

    async def close(self) -> None:
        """Wait for probes still running (their handles are closed next)."""
        pending = [probe for probe in self._probes.values() if not probe.done()]
        if pending:
            await asyncio.wait(pending)
