"""Who else is using a database: the application's sessions, told apart from archivist's own.

The worker yields to an application that is using the source database (``--yield-ratio``):
it asks ``data/load``, whose ``others`` counts the sessions other than archivist's that
used the database within the last `ACTIVE_WINDOW` seconds.

- PostgreSQL: ``pg_stat_activity``, by each session's ``state_change``.
- MariaDB/MySQL: ``information_schema.PROCESSLIST``, by each thread's time in its state.
- SQLite has no sessions to list: a delete's slices look at ``PRAGMA data_version``, which
  moves when another connection commits (`archivist.data.slicing`), and note it here.

Archivist's own sessions are known by their server-side ids, noted as each connection is
made (`track_sessions`), for every engine of this process: two handles on one database are
not each other's application.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

ACTIVE_WINDOW: Final = 2.0
"""Seconds since another session's last statement within which it counts as active."""

_own: dict[str, set[int]] = {"postgresql": set(), "mysql": set()}
_own_lock = threading.Lock()
_others_seen: dict[str, float] = {}
"""SQLite: when a connection last saw another's commit, by database file."""

_POSTGRESQL: Final = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND backend_type = 'client backend'"
    " AND pid <> ALL(%(own)s)"
    " AND (state <> 'idle' OR state_change > clock_timestamp() - make_interval(secs => %(window)s))"
)
_MYSQL: Final = (
    "SELECT count(*) FROM information_schema.PROCESSLIST"
    " WHERE DB = DATABASE() AND ID NOT IN ({own})"
    " AND COMMAND NOT IN ('Daemon', 'Binlog Dump', 'Binlog Dump GTID', 'Killed')"
    " AND (COMMAND <> 'Sleep' OR TIME < {window})"
)


def _family(dialect: str) -> str | None:
    if dialect == "postgresql":
        return "postgresql"
    if dialect in ("mysql", "mariadb"):
        return "mysql"
    return None


def _session_id(family: str, dbapi_connection: Any) -> int | None:
    """The server's id of a driver connection: PostgreSQL's backend pid, MariaDB's thread."""
    try:
        if family == "postgresql":
            return int(dbapi_connection.info.backend_pid)
        return int(dbapi_connection.thread_id())
    except (AttributeError, TypeError, ValueError):  # another driver: its sessions count
        return None


def track_sessions(engine: Engine) -> None:
    """Note the server-side id of each connection ``engine`` makes, until it closes."""
    family = _family(engine.dialect.name)
    if family is None:
        return
    own = _own[family]

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        session = _session_id(family, dbapi_connection)
        if session is not None:
            record.info["archivist_session"] = session
            with _own_lock:
                own.add(session)

    @event.listens_for(engine, "close")
    def on_close(_dbapi_connection: Any, record: Any) -> None:
        session = record.info.pop("archivist_session", None)
        if session is not None:
            with _own_lock:
                own.discard(session)


def _sqlite_file(engine: Engine) -> str | None:
    """The database file an SQLite engine opens (archivist deletes through an engine of
    its own, so the file, not the engine, is what its sightings are kept by)."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.realpath(database)


def note_others(engine: Engine) -> None:
    """A connection of ``engine`` (SQLite) saw another connection's commit just now."""
    path = _sqlite_file(engine)
    if path is not None:
        _others_seen[path] = time.monotonic()


def others(connection: Connection) -> int:
    """How many sessions besides archivist's used the connection's database within the last
    `ACTIVE_WINDOW` seconds. SQLite: 1 when a delete's slices saw another connection's
    commit within that time, else 0. A session the server does not show (PostgreSQL without
    ``pg_read_all_stats``, MariaDB without ``PROCESS``, for other users' sessions) does not
    count."""
    family = _family(connection.dialect.name)
    if family is None:
        path = _sqlite_file(connection.engine)
        seen = _others_seen.get(path) if path is not None else None
        return int(seen is not None and time.monotonic() - seen < ACTIVE_WINDOW)
    with _own_lock:
        own = sorted(_own[family])
    if family == "postgresql":
        row = connection.exec_driver_sql(
            _POSTGRESQL, {"own": own or [0], "window": ACTIVE_WINDOW}
        ).one()
    else:
        listed = ", ".join(str(int(session)) for session in own) or "0"
        sql = _MYSQL.format(own=listed, window=int(ACTIVE_WINDOW))
        row = connection.exec_driver_sql(sql).one()
    return int(row[0])
