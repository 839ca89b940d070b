"""Who else is using a database: the application's sessions, told apart from archivist's own.

The worker yields to an application that is using the source database (``--yield-ratio``):
it asks ``data/load``, whose ``others`` counts the sessions other than archivist's that
used the database within the last `ACTIVE_WINDOW` seconds.

- PostgreSQL: ``pg_stat_activity``, by each session's ``state_change``.
- MariaDB/MySQL: ``information_schema.PROCESSLIST``, by each thread's time in its state.
- SQLite has no sessions to list: a delete's slices look at ``PRAGMA data_version``, which
  moves when another connection commits (`archivist.data.slicing`), and note it here. The
  daemon's own connections to one file commit too (a handle's pool, the delete handle):
  their commits are counted here (`own_commit`), and a look that another of them may
  have seen is not taken for the application's (`Look`).

Archivist's own sessions are known by their server-side ids, noted as each connection is
made (`track_sessions`), for every engine of this process: two handles on one database are
not each other's application. Other archivist processes' sessions (several daemons on one
database) are known on PostgreSQL by their ``application_name`` (`session_name`, and the
mover locks' ``archivist mover ...``). MariaDB sends ``program_name`` as a connection
attribute, but shows it only in ``performance_schema`` (off by default) and its process
list has no per-session name: there another archivist's sessions still count as the
application's (documented limitation).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

MINE: Final = "archivist_own_commits"
"""Where a pooled SQLite connection keeps how many commits it made itself."""

ACTIVE_WINDOW: Final = 2.0
"""Seconds since another session's last statement within which it counts as active."""

_own: dict[str, set[int]] = {"postgresql": set(), "mysql": set()}
_own_lock = threading.Lock()
_others_seen: dict[str, float] = {}
"""SQLite: when a connection last saw another's commit, by database file."""

SESSION_PREFIX: Final = "archivist "
"""How every archivist session's name starts (PostgreSQL ``application_name``, MariaDB's
``program_name`` connection attribute), the mover locks' ``archivist mover`` included."""


def session_name() -> str:
    """This process's data sessions' name: ``archivist data <pid>``."""
    return f"{SESSION_PREFIX}data {os.getpid()}"


_POSTGRESQL: Final = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND backend_type = 'client backend'"
    " AND pid <> ALL(%(own)s)"
    # Other archivists' sessions, data and mover locks (`archivist.data.locks`), are not
    # the application.
    f" AND application_name NOT LIKE '{SESSION_PREFIX}%%'"
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


@dataclass
class _Commits:
    """The commits the daemon's own connections made to one SQLite file: ``begun`` counts
    each as it starts, ``done`` as it has ended."""

    begun: int = 0
    done: int = 0


_commits: dict[str, _Commits] = {}


def _commits_of(engine: Engine) -> _Commits | None:
    path = _sqlite_file(engine)
    if path is None:
        return None
    with _own_lock:
        return _commits.setdefault(path, _Commits())


@contextlib.contextmanager
def own_commit(connection: Connection) -> Iterator[None]:
    """Around anything that may commit to the connection's SQLite database file."""
    commits = _commits_of(connection.engine)
    if commits is None:
        yield
        return
    with _own_lock:
        commits.begun += 1
    try:
        yield
    finally:
        info = connection.connection.info
        with _own_lock:
            commits.done += 1
            info[MINE] = info.get(MINE, 0) + 1


class Look(msgspec.Struct, frozen=True):
    """What one look at ``PRAGMA data_version`` on a SQLite connection tells."""

    changed: bool
    """Another connection committed since this one last looked (the first time: assume so)."""
    by_others: bool
    """... and it was not one of the daemon's own: none of them committed meanwhile."""


def look(connection: Connection, raw: Any) -> Look:
    """Look at ``PRAGMA data_version`` on ``connection`` (SQLite), and note the application
    (`note_others`) when only it can have committed since the connection last looked.

    The daemon's own commits by other connections are ``done`` (before the version is read)
    and ``begun`` (after), less this connection's own: if, now, as many have begun as had
    ended when this connection last looked, none of them can have moved the version."""
    info = connection.connection.info
    commits = _commits_of(connection.engine) or _Commits()
    mine = info.get(MINE, 0)
    done = commits.done - mine
    (version,) = raw.execute("PRAGMA data_version").fetchone()
    begun = commits.begun - mine
    seen, done_then = info.get(LOOKED, (None, None))
    info[LOOKED] = (version, done)
    changed = seen != version
    by_others = changed and done_then is not None and begun == done_then
    if by_others:
        note_others(connection.engine)
    return Look(changed, by_others)


LOOKED: Final = "archivist_looked"
"""Where a pooled SQLite connection keeps its last look: the version, and how many of the
daemon's other commits to the file had ended before it."""


def note_others(engine: Engine) -> None:
    """A connection of ``engine`` (SQLite) saw another connection's commit just now."""
    path = _sqlite_file(engine)
    if path is not None:
        _others_seen[path] = time.monotonic()


def others(connection: Connection) -> int:
    """How many sessions besides archivist's used the connection's database within the last
    `ACTIVE_WINDOW` seconds. SQLite: 1 when a connection of the daemon (this one, looking
    now, or a delete's slices) saw another connection's commit within that time, else 0;
    looking here is what lets a task resting between batches see that the application still
    writes, with no delete of its own to notice it. A session the server does not show
    (PostgreSQL without ``pg_read_all_stats``, MariaDB without ``PROCESS``, for other users'
    sessions) does not count."""
    family = _family(connection.dialect.name)
    if family is None:
        if connection.dialect.name == "sqlite":
            look(connection, connection.connection.dbapi_connection)
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
