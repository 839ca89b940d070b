"""Handles' engines (`archivist.data.handles.create_engine`): archivist's session settings
(SQLite switched to WAL even while an application writes in another journal mode), and
MariaDB connections that share one TLS context in PyMySQL's preferred mode."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from archivist.data import handles
from archivist.data.handles import create_engine


def test_mariadb_connections_share_one_preferred_tls_context(mysql_url: str) -> None:
    """PyMySQL, given no TLS option, tries TLS if the server offers it and checks no
    certificate; it made that context (loading the system's CA certificates, ~20 ms) for
    every connection. Now one is made per process, and the connections still work."""
    engine = create_engine(mysql_url)
    try:
        with contextlib.ExitStack() as stack:
            connections = [stack.enter_context(engine.connect()) for _ in range(3)]
            contexts = {id(c.connection.dbapi_connection.ctx) for c in connections}  # type: ignore[union-attr]
            zones = [c.exec_driver_sql("SELECT @@session.time_zone").scalar() for c in connections]
        assert len(contexts) == 1
        assert zones == ["+00:00"] * 3
    finally:
        engine.dispose()


def test_tls_options_in_a_mariadb_url_still_reach_pymysql(mysql_url: str) -> None:
    """A URL that names a CA file gets PyMySQL's own context for it: a missing file is an
    error, not silently the shared context of the preferred mode."""
    engine = create_engine(f"{mysql_url}?ssl_ca=/nonexistent/archivist-ca.pem")
    try:
        with pytest.raises(FileNotFoundError), engine.connect():
            pass
    finally:
        engine.dispose()


def test_sqlite_waits_for_an_application_writing_in_rollback_mode(tmp_path: Path) -> None:
    """An application's database in SQLite's default (rollback) journal mode, in the middle
    of a write when archivist connects: switching it to WAL fails at once, without SQLite's
    busy handler. archivist waits for the write to end, as the busy timeout would, then
    connects, and the file stays in WAL mode."""
    path = tmp_path / "app.sqlite"
    application = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    application.execute("CREATE TABLE notes (note TEXT)")
    application.execute("BEGIN IMMEDIATE")
    application.execute("INSERT INTO notes VALUES ('working')")
    writing = threading.Timer(0.3, application.execute, ("COMMIT",))
    engine = create_engine(f"sqlite:///{path}")
    try:
        started = time.monotonic()
        writing.start()
        with engine.connect() as connection:
            waited = time.monotonic() - started
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
            notes = connection.exec_driver_sql("SELECT count(*) FROM notes").scalar()
        assert (mode, notes) == ("wal", 1)
        assert waited >= 0.2  # it did find the write under way
    finally:
        writing.join()
        engine.dispose()
        application.close()


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_postgres_urls_as_users_write_them_connect(pg_url: str, scheme: str) -> None:
    """``postgres://`` (libpq's spelling, which SQLAlchemy refuses) and ``postgresql://``
    reach the server through psycopg."""
    url = scheme + "://" + pg_url.split("://", 1)[1]
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            assert (
                connection.exec_driver_sql("SELECT current_database()").scalar()
                == (pg_url.rsplit("/", 1)[1])
            )
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


@pytest.mark.parametrize("scheme", ["mysql", "mariadb"])
def test_mysql_urls_as_users_write_them_connect(mysql_url: str, scheme: str) -> None:
    url = scheme + "://" + mysql_url.split("://", 1)[1]
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            assert (
                connection.exec_driver_sql("SELECT DATABASE()").scalar()
                == (mysql_url.rsplit("/", 1)[1])
            )
        assert engine.dialect.driver == "pymysql"
    finally:
        engine.dispose()


@pytest.mark.parametrize("engine_name", ["postgresql", "mysql"])
def test_a_pooled_connection_is_pinged_only_after_idling_and_a_lost_one_is_replaced(
    pg_url: str, mysql_url: str, engine_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back in use within `PING_AFTER_IDLE_SECONDS`: no ping (no round trip). After idling
    that long, the ping finds a connection the server ended, and the pool hands out a new
    one before anyone uses the lost one."""
    monkeypatch.setattr(handles, "PING_AFTER_IDLE_SECONDS", 0.3)
    url = pg_url if engine_name == "postgresql" else mysql_url
    who = "pg_backend_pid()" if engine_name == "postgresql" else "CONNECTION_ID()"
    end = "SELECT pg_terminate_backend({})" if engine_name == "postgresql" else "KILL {}"
    engine, other = create_engine(url), create_engine(url)
    pings: list[object] = []
    dialect = engine.dialect
    real_ping = dialect.do_ping
    monkeypatch.setattr(dialect, "do_ping", lambda c: pings.append(c) or real_ping(c))
    try:
        with engine.connect() as connection:
            first = connection.exec_driver_sql(f"SELECT {who}").scalar()
        assert len(pings) == 1  # a new connection
        for _ in range(3):
            with engine.connect() as connection:
                assert connection.exec_driver_sql(f"SELECT {who}").scalar() == first
        assert len(pings) == 1  # used again at once: not pinged
        with other.begin() as admin:
            admin.exec_driver_sql(end.format(first))
        time.sleep(0.5)
        with engine.connect() as connection:
            again = connection.exec_driver_sql(f"SELECT {who}").scalar()
        assert len(pings) >= 2 and again != first
    finally:
        engine.dispose()
        other.dispose()
