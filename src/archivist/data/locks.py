"""One mover per collection: a lock in the source database that dies with its holder.

Before a task of a collection is sent to a worker, the daemon takes the collection's
mover lock *in the source database*, which every host running archivist already shares,
and holds it until the task has ended. Two daemons (two hosts, or a one-shot
``archivist archive`` beside ``archivist run``) then never move one collection at once,
and when a holder dies (SIGKILL, host gone, connection cut) the database lets go:

- PostgreSQL: ``pg_try_advisory_lock`` on a session of its own (session level), keyed by a
  stable hash of the lock's name; the session's ``application_name`` says who holds it.
- MariaDB/MySQL: ``GET_LOCK(name, 0)`` on a connection of its own; who holds it is written
  to a small table, ``archivist_movers``, beside the connection's id.
- SQLite: ``flock`` on a file beside the database file (``<db>.archivist-<collection>.lock``),
  which holds who holds it. A ``BEGIN IMMEDIATE`` would block the application's writes.

Names, keys and the holder's text are pure functions (unit-tested); the rest is the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import hashlib
import logging
import os
import re
import socket
import time
from typing import Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from archivist.data.handles import Handle
from archivist.errors import MoverBusy

log = logging.getLogger(__name__)

TAG_PREFIX: Final = "archivist mover"
"""How a PostgreSQL lock session's ``application_name`` starts (PostgreSQL keeps 63 bytes)."""
PG_NAME_LIMIT: Final = 63
MYSQL_NAME_LIMIT: Final = 64
"""``GET_LOCK`` names are at most 64 characters."""
MYSQL_TABLE: Final = "archivist_movers"
FILE_TAG_LOOKS: Final = 10
"""Looks, 10 ms apart, at a held SQLite lock file whose holder has not written its name yet."""
PG_KEEPALIVES: Final = {
    "tcp_keepalives_idle": 10,
    "tcp_keepalives_interval": 5,
    "tcp_keepalives_count": 3,
}
"""The lock session's TCP keepalives (seconds, probes): a vanished host is dead to the
server after ~25 s."""
MYSQL_WAIT_TIMEOUT: Final = 60
"""Seconds a MariaDB lock session may sit idle before the server ends it."""
_PLAIN: Final = re.compile(r"[A-Za-z0-9_]{1,64}")


# --- pure parts -------------------------------------------------------------------------------


class Holder(msgspec.Struct, frozen=True):
    """Who holds a mover lock: a host and process, since when (epoch seconds)."""

    host: str
    pid: int | None = None
    since: float | None = None
    detail: str = ""
    """What else is known when host and pid are not (a database session's id)."""

    def describe(self) -> str:
        """``host:pid since 2026-12-06 23:55:12 UTC`` (the parts that are known)."""
        who = f"{self.host}:{self.pid}" if self.pid is not None else self.host
        if self.detail:
            who = f"{who} ({self.detail})"
        if self.since is not None:
            moment = datetime.datetime.fromtimestamp(self.since, datetime.UTC)
            who += f" since {moment:%Y-%m-%d %H:%M:%S} UTC"
        return who

    def tag(self) -> str:
        """This holder in one short line (PostgreSQL's ``application_name``, the lock file):
        ``archivist mover <pid> <since> <host>``, the host cut to fit 63 bytes."""
        head = f"{TAG_PREFIX} {self.pid or 0} {int(self.since or 0)} "
        room = PG_NAME_LIMIT - len(head.encode())
        host = self.host.encode()[:room].decode(errors="ignore")
        return head + host


def parse_tag(text: str | None) -> Holder | None:
    """The holder a `Holder.tag` names; None for any other text."""
    if not text or not text.startswith(TAG_PREFIX + " "):
        return None
    parts = text[len(TAG_PREFIX) + 1 :].split(" ", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() or not parts[2]:
        return None
    pid, since = int(parts[0]), int(parts[1])
    return Holder(parts[2], pid or None, since or None)


def me() -> Holder:
    """This process as a holder: now."""
    return Holder(socket.gethostname(), os.getpid(), time.time())


def lock_name(database: str, collection: str) -> str:
    """The name of a collection's mover lock in one source database."""
    return f"archivist:{database}:{collection}"


def mysql_lock_name(database: str, collection: str) -> str:
    """`lock_name` as ``GET_LOCK`` takes it: hashed when longer than 64 characters. The lock
    is server-wide, hence the database in the name."""
    name = lock_name(database, collection)
    if len(name) <= MYSQL_NAME_LIMIT:
        return name
    return "archivist:" + hashlib.sha256(name.encode()).hexdigest()[:48]


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_try_advisory_lock`` (not Python's ``hash``,
    which differs between processes)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def advisory_ids(key: int) -> tuple[int, int]:
    """How ``pg_locks`` shows a bigint advisory key: (``classid``, ``objid``), its high and
    low 32 bits."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def lock_file(database_file: str, collection: str) -> str:
    """The SQLite lock file of a collection, beside its database file."""
    name = collection
    if not _PLAIN.fullmatch(collection):
        name = hashlib.sha256(collection.encode()).hexdigest()[:16]
    return f"{database_file}.archivist-{name}.lock"


# --- the lock ---------------------------------------------------------------------------------


class MoverLock:
    """A held mover lock. `alive` says whether it is still ours; `release` lets it go."""

    def __init__(self, collection: str, holder: Holder, where: str) -> None:
        self.collection = collection
        self.holder = holder
        self.where = where
        """The lock as a person would look for it (its name, key or file)."""

    async def alive(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class _SessionLock(MoverLock):
    """PostgreSQL and MariaDB: a lock that lives as long as one database session."""

    def __init__(
        self,
        collection: str,
        holder: Holder,
        where: str,
        handle: Handle,
        connection: Connection,
        check: str,
        unlock: str,
        params: dict[str, object],
    ) -> None:
        super().__init__(collection, holder, where)
        self._handle = handle
        self._connection: Connection | None = connection
        self._check, self._unlock, self._params = check, unlock, params
        self._busy = asyncio.Lock()  # one statement at a time on the session

    async def alive(self) -> bool:
        async with self._busy:
            connection = self._connection
            if connection is None:
                return False
            try:
                held = await self._handle.run(_scalar, connection, self._check, self._params)
            except Exception as exc:  # any failure: the session, and so the lock, may be gone
                log.warning("%s: mover lock %s lost: %s", self.collection, self.where, exc)
                held = False
            if not held:
                self._connection = None
                await self._handle.run(_discard, connection)
            return bool(held)

    async def release(self) -> None:
        async with self._busy:
            connection, self._connection = self._connection, None
            if connection is None:
                return
            with contextlib.suppress(Exception):
                await self._handle.run(_scalar, connection, self._unlock, self._params)
            with contextlib.suppress(Exception):
                await self._handle.run(_discard, connection)


class _FileLock(MoverLock):
    """SQLite: ``flock`` on a file beside the database; the kernel lets go when we die."""

    def __init__(self, collection: str, holder: Holder, path: str, fd: int) -> None:
        super().__init__(collection, holder, path)
        self._fd: int | None = fd

    async def alive(self) -> bool:
        # Ours while our descriptor is open and the path still names its file (a file
        # removed and made anew could be locked by another process).
        if self._fd is None:
            return False
        try:
            here, ours = os.stat(self.where), os.fstat(self._fd)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # the lock goes with the last descriptor


async def acquire(handle: Handle, collection: str) -> MoverLock:
    """Take ``collection``'s mover lock in ``handle``'s database without waiting; MoverBusy
    (naming the holder) when another process holds it."""
    holder = me()
    dialect = handle.dialect_name
    if dialect == "sqlite":
        return _acquire_file(handle, collection, holder)
    if dialect == "postgresql":
        return await _acquire_session(handle, collection, holder, _PostgreSQL)
    if dialect in ("mysql", "mariadb"):
        return await _acquire_session(handle, collection, holder, _MySQL)
    log.warning(
        "%s: no mover lock on %s databases; nothing keeps two movers apart", collection, dialect
    )
    return MoverLock(collection, holder, "none")


async def holder_of(handle: Handle, collection: str) -> Holder | None:
    """Who holds ``collection``'s mover lock now (None: nobody)."""
    dialect = handle.dialect_name
    if dialect == "sqlite":
        path = _sqlite_path(handle)
        return _file_holder(lock_file(path, collection)) if path else None
    engine = _PostgreSQL if dialect == "postgresql" else _MySQL
    if dialect not in ("postgresql", "mysql", "mariadb"):
        return None
    return await handle.transaction(engine.holder, collection)


def busy(collection: str, holder: Holder) -> MoverBusy:
    error = MoverBusy(
        f"{collection} is being archived by another archivist: held by {holder.describe()}"
    )
    error.holder = holder.describe()
    return error


# --- SQLite -----------------------------------------------------------------------------------


def _sqlite_path(handle: Handle) -> str | None:
    database = handle.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None  # a private database: nobody else can move it
    return os.path.realpath(database)


def _acquire_file(handle: Handle, collection: str, holder: Holder) -> MoverLock:
    database = _sqlite_path(handle)
    if database is None:
        return MoverLock(collection, holder, "private database")
    path = lock_file(database, collection)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise busy(collection, _file_holder(path) or Holder("unknown holder")) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, (holder.tag() + "\n").encode(), 0)
    return _FileLock(collection, holder, path, fd)


def _file_holder(path: str) -> Holder | None:
    """Who holds the lock file at ``path``: None when nobody does (or it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        # The holder writes who it is just after it has locked the file: look again briefly.
        for _ in range(FILE_TAG_LOOKS):
            tagged = parse_tag(os.pread(fd, 512, 0).decode(errors="replace").strip())
            if tagged is not None:
                return tagged
            time.sleep(0.01)
        return Holder("unknown holder", detail=f"lock file {path}")
    finally:
        os.close(fd)


# --- PostgreSQL and MariaDB -------------------------------------------------------------------


def _scalar(connection: Connection, sql: str, params: dict[str, object]) -> object:
    return connection.execute(sa.text(sql), params).scalar()


def _discard(connection: Connection) -> None:
    """Close the session for good, not back into the pool: its lock goes with it."""
    with contextlib.suppress(Exception):
        connection.invalidate()
    with contextlib.suppress(Exception):
        connection.close()


class _Engine:
    """What differs between PostgreSQL's and MariaDB's session locks."""

    check: str
    unlock: str

    @staticmethod
    def params(connection: Connection, collection: str) -> dict[str, object]:
        raise NotImplementedError

    @staticmethod
    def try_lock(connection: Connection, params: dict[str, object], holder: Holder) -> bool:
        raise NotImplementedError

    @staticmethod
    def holder(connection: Connection, collection: str) -> Holder | None:
        raise NotImplementedError

    @staticmethod
    def where(params: dict[str, object]) -> str:
        raise NotImplementedError


class _PostgreSQL(_Engine):
    # A session-level advisory lock lives as long as its session: a live session still has it.
    check = "SELECT 1"
    unlock = "SELECT pg_advisory_unlock(:key)"

    @staticmethod
    def params(connection: Connection, collection: str) -> dict[str, object]:
        database = connection.execute(sa.text("SELECT current_database()")).scalar_one()
        return {"key": advisory_key(lock_name(str(database), collection))}

    @staticmethod
    def try_lock(connection: Connection, params: dict[str, object], holder: Holder) -> bool:
        # A host that vanishes without closing its connection is found dead by the server's
        # keepalives within about half a minute (not the system's two hours), which frees
        # its lock; a session over a Unix socket ignores them.
        for setting, seconds in PG_KEEPALIVES.items():
            connection.execute(sa.text(f"SET {setting} = {int(seconds)}"))
        # Named first: whoever finds the lock held then always finds who holds it. A session
        # that does not get the lock is closed at once.
        connection.execute(
            sa.text("SELECT set_config('application_name', :tag, false)"), {"tag": holder.tag()}
        )
        got = connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), params).scalar()
        return bool(got)

    @staticmethod
    def holder(connection: Connection, collection: str) -> Holder | None:
        key = _PostgreSQL.params(connection, collection)["key"]
        assert isinstance(key, int)
        classid, objid = advisory_ids(key)
        row = connection.execute(
            sa.text(
                "SELECT a.application_name, l.pid, host(a.client_addr),"
                " extract(epoch FROM a.backend_start)"
                " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND l.classid::bigint = :classid AND l.objid::bigint = :objid"
            ),
            {"classid": classid, "objid": objid},
        ).first()
        if row is None:
            return None
        tagged = parse_tag(row[0])
        if tagged is not None:
            return tagged
        since = float(row[3]) if row[3] is not None else None
        return Holder(row[2] or "local", None, since, detail=f"PostgreSQL session {row[1]}")

    @staticmethod
    def where(params: dict[str, object]) -> str:
        return f"pg advisory lock {params['key']}"


class _MySQL(_Engine):
    check = "SELECT IS_USED_LOCK(:name) = CONNECTION_ID()"
    unlock = "SELECT RELEASE_LOCK(:name)"

    @staticmethod
    def params(connection: Connection, collection: str) -> dict[str, object]:
        database = connection.execute(sa.text("SELECT DATABASE()")).scalar_one()
        return {"name": mysql_lock_name(str(database), collection)}

    @staticmethod
    def try_lock(connection: Connection, params: dict[str, object], holder: Holder) -> bool:
        # Who we are is written first, by connection id, so that whoever finds the lock held
        # always finds who holds it; the loser's row, and rows of holders that died, are
        # removed. A user who may not create the table is named by connection id and host.
        # A host that vanishes leaves its connection idle: the server ends it (and frees the
        # lock) after this long. The daemon looks at the session more often than that
        # (`archivist.daemon.movers.HEARTBEAT_INTERVAL`) while it holds the lock.
        connection.execute(sa.text(f"SET SESSION wait_timeout = {MYSQL_WAIT_TIMEOUT}"))
        recorded = _MySQL._record(connection, params, holder)
        got = connection.execute(sa.text("SELECT GET_LOCK(:name, 0)"), params).scalar()
        if recorded:
            with contextlib.suppress(sa.exc.DBAPIError):
                connection.execute(
                    sa.text(
                        f"DELETE FROM {MYSQL_TABLE} WHERE lock_name = :name AND connection_id"
                        + (" <> " if got == 1 else " = ")
                        + "CONNECTION_ID()"
                    ),
                    params,
                )
        return got == 1

    @staticmethod
    def _record(connection: Connection, params: dict[str, object], holder: Holder) -> bool:
        try:
            connection.execute(
                sa.text(
                    f"CREATE TABLE IF NOT EXISTS {MYSQL_TABLE} (lock_name VARCHAR(64) NOT NULL,"
                    " connection_id BIGINT NOT NULL, holder VARCHAR(255) NOT NULL,"
                    " PRIMARY KEY (lock_name, connection_id))"
                )
            )
            connection.execute(
                sa.text(
                    f"REPLACE INTO {MYSQL_TABLE} (lock_name, connection_id, holder)"
                    " VALUES (:name, CONNECTION_ID(), :tag)"
                ),
                {**params, "tag": holder.tag()},
            )
        except sa.exc.DBAPIError as exc:
            log.info("cannot record the mover lock's holder in %s: %s", MYSQL_TABLE, exc.orig)
            return False
        return True

    @staticmethod
    def holder(connection: Connection, collection: str) -> Holder | None:
        name = _MySQL.params(connection, collection)["name"]
        session = connection.execute(sa.text("SELECT IS_USED_LOCK(:name)"), {"name": name}).scalar()
        if session is None:
            return None
        with contextlib.suppress(sa.exc.DBAPIError):
            tag = connection.execute(
                sa.text(
                    f"SELECT holder FROM {MYSQL_TABLE}"
                    " WHERE lock_name = :name AND connection_id = :session"
                ),
                {"name": name, "session": session},
            ).scalar()
            tagged = parse_tag(tag)
            if tagged is not None:
                return tagged
        host = connection.execute(
            sa.text("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = :session"),
            {"session": session},
        ).scalar()
        return Holder(
            str(host or "unknown host"), None, None, detail=f"MariaDB connection {session}"
        )

    @staticmethod
    def where(params: dict[str, object]) -> str:
        return f"GET_LOCK('{params['name']}')"


async def _acquire_session(
    handle: Handle, collection: str, holder: Holder, engine: type[_Engine]
) -> MoverLock:
    connection, params, got = await handle.run(_open_and_lock, handle, collection, holder, engine)
    if got:
        return _SessionLock(
            collection,
            holder,
            engine.where(params),
            handle,
            connection,
            engine.check,
            engine.unlock,
            params,
        )
    try:
        # Read on a fresh transaction: the holder may just have let go.
        owner = await handle.transaction(engine.holder, collection)
    finally:
        await handle.run(_discard, connection)
    if owner is None:
        owner = Holder("a holder that has just let go")
    raise busy(collection, owner)


def _open_and_lock(
    handle: Handle, collection: str, holder: Holder, engine: type[_Engine]
) -> tuple[Connection, dict[str, object], bool]:
    # Autocommit: the session holds the lock, not a transaction, and it must not sit idle
    # in a transaction (holding back PostgreSQL's vacuum) for as long as a task runs.
    connection = handle.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        params = engine.params(connection, collection)
        got = engine.try_lock(connection, params, holder)
    except BaseException:
        _discard(connection)
        raise
    return connection, params, got


def holder_json(holder: Holder | None) -> dict[str, object] | None:
    """A holder as ``archivist status --json`` shows it."""
    if holder is None:
        return None
    return {
        "host": holder.host,
        "pid": holder.pid,
        "since": holder.since,
        "text": holder.describe(),
        **({"detail": holder.detail} if holder.detail else {}),
    }


__all__ = [
    "Holder",
    "MoverLock",
    "acquire",
    "advisory_key",
    "holder_of",
    "lock_file",
    "lock_name",
    "mysql_lock_name",
    "parse_tag",
]
