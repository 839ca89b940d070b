"""Named database handles: one SQLAlchemy engine per configured URL, and the one place where
blocking database work runs off the event loop (a thread pool per handle).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, ParamSpec, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from archivist.data.activity import own_commit, session_name, track_sessions
from archivist.errors import ArchivistError, ConfigError, DatabaseError

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
DEFAULT_THREADS: Final = 4
PING_AFTER_IDLE_SECONDS: Final = 1.0
"""A pooled server connection that has been idle this long is pinged (one round trip)
before it is used; one back in use sooner is not, since a moving task takes its
connections several times a batch. Should the server have gone in that second, the
first statement fails, the pool is renewed, and the work is retried as after any lost
connection."""
GROUP_CONCAT_MAX_LEN: Final = 4 * 1024 * 1024
"""Bytes a MariaDB/MySQL session's ``GROUP_CONCAT`` may return (MySQL's default is 1,024):
``data/copy`` reads a page's keys joined in one value, and a page of 100,000 (the most
``data/list`` and ``data/copy`` take) 64-bit keys with their commas is 2.1 MB at most."""

P = ParamSpec("P")
T = TypeVar("T")


SCHEME_ALIASES: Final = {"postgres": "postgresql"}
"""URL schemes users write (libpq and most tools take ``postgres://``) that SQLAlchemy does
not know, by the backend they name."""

DRIVER_EXTRAS: Final = {"psycopg": "postgresql", "pymysql": "mysql"}
"""The package extra that installs each driver archivist picks (pyproject.toml)."""


def normalize_url(url: str | URL) -> URL:
    """Pick the drivers archivist supports: psycopg 3 for PostgreSQL (``postgres://`` and
    ``postgresql://``), PyMySQL for MariaDB/MySQL (``mysql://``, ``mariadb://``; with
    utf8mb4). A URL that names its driver (``postgresql+psycopg2://``) keeps it."""
    parsed = make_url(url)
    backend, plus, driver = parsed.drivername.partition("+")
    if backend in SCHEME_ALIASES:
        parsed = parsed.set(drivername=SCHEME_ALIASES[backend] + plus + driver)
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend in ("mysql", "mariadb"):
        if "+" not in parsed.drivername:
            parsed = parsed.set(drivername=f"{backend}+pymysql")
        if "charset" not in parsed.query:
            parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def missing_driver_message(url: URL, exc: ImportError) -> str:
    """What to install when ``url``'s driver cannot be imported."""
    driver = url.get_driver_name()
    extra = DRIVER_EXTRAS.get(driver)
    how = (
        f"install it with: pip install 'archivist[{extra}]'"
        if extra
        else f"install the {driver} package"
    )
    backend = url.get_backend_name()
    return f"{backend} URLs need the {driver} driver, which is missing ({exc}); {how}"


def safe_url(url: URL) -> str:
    """The URL as it may be logged or shown: never with its password."""
    return url.render_as_string(hide_password=True)


def create_engine(url: str | URL, *, attach: Mapping[str, str] | None = None) -> Engine:
    """An engine with archivist's session settings: SQLite in WAL mode with a busy timeout and
    foreign keys; MariaDB and PostgreSQL sessions in UTC. ``attach`` (SQLite): other database
    files every connection attaches, by schema name."""
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    connect_args: dict[str, object] = {}
    if backend == "postgresql":
        connect_args["options"] = "-c TimeZone=UTC"
        # Other archivists on this database tell these sessions from the application's.
        connect_args["application_name"] = session_name()
    elif backend in ("mysql", "mariadb"):
        connect_args["init_command"] = (
            f"SET time_zone = '+00:00', group_concat_max_len = {GROUP_CONCAT_MAX_LEN}"
        )
        if parsed.get_driver_name() == "pymysql":
            # A connection attribute: visible in performance_schema.session_connect_attrs
            # where that is on (not in the process list, see `archivist.data.activity`).
            connect_args["program_name"] = session_name()
    try:
        engine = sa.create_engine(
            parsed,
            connect_args=connect_args,
            # SQLite opens a file: nothing to ping; servers are pinged after idling.
            pool_pre_ping=False,
            json_deserializer=_json_loads,
        )
    except ImportError as exc:
        raise ConfigError(missing_driver_message(parsed, exc)) from None
    if backend == "sqlite":
        _configure_sqlite(engine, attach or {})
    else:
        _ping_after_idle(engine)
        if parsed.get_driver_name() == "pymysql":
            event.listen(engine, "do_connect", _connect_pymysql)
    track_sessions(engine)
    if backend != "sqlite" and attach:
        raise ConfigError(f"only SQLite attaches databases, not {backend}")
    return engine


_IDLE_SINCE: Final = "archivist_idle_since"


def _ping_after_idle(engine: Engine) -> None:
    """Ping a connection taken from the pool when it has idled `PING_AFTER_IDLE_SECONDS`
    or more (or never been used); a lost one is replaced before anyone uses it
    (SQLAlchemy's pessimistic disconnect handling, raising ``DisconnectionError``)."""

    @event.listens_for(engine, "checkin")
    def idle(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is not None and time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise sa.exc.DisconnectionError(str(exc)) from exc
            raise


def _identity(connection: Connection) -> tuple[str, ...]:
    dialect = connection.dialect.name
    if dialect == "sqlite":
        rows = connection.exec_driver_sql("PRAGMA database_list").all()
        path = next((str(row[2]) for row in rows if row[1] == "main"), "")
        # An in-memory database is private to its connection pool: never shared.
        return ("sqlite", os.path.realpath(path) if path else f"memory:{id(connection.engine)}")
    if dialect == "postgresql":
        row = connection.exec_driver_sql(
            "SELECT (SELECT system_identifier FROM pg_control_system())::text, current_database()"
        ).one()
        return ("postgresql", str(row[0]), str(row[1]))
    if dialect in ("mysql", "mariadb"):
        row = connection.exec_driver_sql("SELECT @@hostname, @@port, DATABASE()").one()
        return ("mysql", *(str(value) for value in row))
    return (dialect, str(connection.engine.url.render_as_string(hide_password=True)))


def _json_loads(text: str | bytes) -> object:
    """JSON columns read with msgspec (several times faster than the json module); a
    document msgspec refuses (NaN, Infinity, which json.dumps writes) falls back to json.

    Writes keep SQLAlchemy's default serializer, so a copied document's text matches what
    the application wrote with it.
    """
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def _connect_pymysql(
    _dialect: sa.Dialect, _record: object, cargs: list[Any], cparams: dict[str, Any]
) -> Any:
    """A PyMySQL connection whose TLS context, in PyMySQL's preferred mode (no TLS option
    given: TLS if the server offers it, no certificate checked), is made once per process.
    PyMySQL makes one per connection, and loads the system's CA certificates for it, which
    that mode never reads: a noticeable cost a connection, three of them in every MariaDB
    start."""
    return _pymysql_class()(*cargs, **cparams)


@functools.cache
def _pymysql_class() -> type[Any]:
    # Guarded: a server's request for a local file gets only the buffer archivist offered
    # for that statement (`LOAD DATA LOCAL INFILE` into an archive), never a file.
    from archivist.data.transfer.mysql_load import GuardedConnection

    preferred: list[object] = []

    class SharedPreferredTLS(GuardedConnection):
        # _create_ssl_ctx is PyMySQL's private method, which types-PyMySQL does not declare.
        def _create_ssl_ctx(self, sslp: object) -> object:
            create: Callable[[object], object] = super()._create_ssl_ctx  # type: ignore[misc]
            if sslp != {}:  # TLS options given: PyMySQL's own context, as asked
                return create(sslp)
            if not preferred:  # two first connections at once may both make one: harmless
                preferred.append(create(sslp))
            return preferred[0]

    return SharedPreferredTLS


def _configure_sqlite(engine: Engine, attach: Mapping[str, str]) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: object, _record: object) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
        dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _enter_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            for schema, path in attach.items():
                cursor.execute(f"ATTACH DATABASE ? AS {schema}", (path,))
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        # A write transaction takes the write lock up front, so a read-then-write command
        # waits for other writers (busy timeout) instead of failing half way.
        write = connection.get_execution_options().get("archivist_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _enter_wal(cursor: sqlite3.Cursor) -> None:
    """Put the database in WAL mode, waiting as the busy timeout would for a writer in
    another journal mode to let go: SQLite answers "database is locked" at once, without
    its busy handler, when the switch finds any other connection inside a write."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.002
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError(
                    f"database is locked: another connection kept writing for "
                    f"{SQLITE_BUSY_TIMEOUT_MS // 1000} s, so it could not be put in WAL mode"
                ) from exc
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


async def run_to_the_end(executor: ThreadPoolExecutor, call: Callable[[], T]) -> T:
    """Run blocking ``call`` in ``executor``; a caller cancelled meanwhile is cancelled only
    once ``call`` has ended (a thread cannot be stopped half way)."""
    work = asyncio.get_running_loop().run_in_executor(executor, call)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([work])
        raise


class Handle:
    """One named database: its engine and the threads that run its blocking work."""

    def __init__(
        self,
        name: str,
        url: str | URL,
        *,
        threads: int = DEFAULT_THREADS,
        attach: Mapping[str, str] | None = None,
        label: str | None = None,
    ) -> None:
        self.name = name
        self.label = label or f"handle '{name}'"
        """How errors name this handle."""
        try:
            self.url = normalize_url(url)
            self.engine = create_engine(self.url, attach=attach)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise ConfigError(f"handles.{name}: cannot use this database URL: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"handles.{name}: {exc}") from None
        self.dialect_name = self.engine.dialect.name
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=f"archivist-db-{name}"
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"Handle({self.name!r}, {safe_url(self.url)!r})"

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking ``fn`` in this handle's threads; driver errors become DatabaseError."""
        if self._closed:
            raise DatabaseError(f"{self.label} is closed")
        # A thread cannot be stopped: its transaction commits or rolls back on its own.
        # The caller is gone (a closed connection), but whoever comes next (a recount
        # before a task is queued again) must see what that transaction did.
        return await run_to_the_end(
            self._executor, functools.partial(self._guarded, fn, *args, **kwargs)
        )

    async def identity(self) -> tuple[str, ...]:
        """What tells this database apart from every other one, asked of the database itself
        (two URLs may reach one database: another host name, a symlinked file)."""
        return await self.transaction(_identity)

    async def transaction(self, fn: Callable[..., T], *args: object, write: bool = False) -> T:
        """Run ``fn(connection, *args)`` in one short transaction in this handle's threads."""
        return await self.run(self._in_transaction, fn, args, write)

    def _in_transaction(self, fn: Callable[..., T], args: tuple[object, ...], write: bool) -> T:
        with self.engine.connect() as plain:
            if not write:
                with plain.begin():
                    return fn(plain, *args)
            connection = plain.execution_options(archivist_write=True)
            with own_commit(connection), connection.begin():
                return fn(connection, *args)

    def _guarded(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except ArchivistError:
            raise
        except DBAPIError as exc:
            log.debug("database error on %s", self.label, exc_info=True)
            raise DatabaseError(
                f"database error on {self.label}: {_first_line(exc.orig)}"
            ) from None
        except SQLAlchemyError as exc:
            log.debug("database error on %s", self.label, exc_info=True)
            raise DatabaseError(f"database error on {self.label}: {_first_line(exc)}") from None

    async def close(self) -> None:
        """Dispose the engine and stop the threads (waiting for running work)."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.engine.dispose)
        self._executor.shutdown(wait=True)


@contextlib.contextmanager
def driver_errors(dialect: sa.Dialect, statement: str) -> Iterator[None]:
    """A driver error raised outside SQLAlchemy (psycopg's COPY, say) as SQLAlchemy would
    raise it, so the handle reports it as a database error, and an IntegrityError stays
    one (a conflict)."""
    error = dialect.loaded_dbapi.Error
    try:
        yield
    except error as exc:
        raise DBAPIError.instance(statement, None, exc, error) from None


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else "unknown error"
    return text.splitlines()[0] if text else type(exc).__name__
