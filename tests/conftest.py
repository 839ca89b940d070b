"""Shared fixtures: a fresh, empty database per test on SQLite, PostgreSQL and MariaDB.

PostgreSQL and MariaDB come from the local servers (override with ARCHIVIST_TEST_PG_URL and
ARCHIVIST_TEST_MYSQL_URL). An unreachable server skips its tests, except under CI=true, where
it fails them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from datasupport import ENGINES
from servers import PrivateMariaDB, PrivatePostgres, short_directory
from support import need_private_servers

PG_SERVER_URL = os.environ.get(
    "ARCHIVIST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MYSQL_SERVER_URL = os.environ.get(
    "ARCHIVIST_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/"
)

_HOW = {
    "postgresql": "start PostgreSQL on 127.0.0.1:5432 (user postgres, trust) or set "
    "ARCHIVIST_TEST_PG_URL to a server URL whose user may CREATE DATABASE",
    "mysql": "start MariaDB on 127.0.0.1:3306 (root, no password) or set "
    "ARCHIVIST_TEST_MYSQL_URL to a server URL whose user may CREATE DATABASE",
}


def _server_unavailable(engine: str, error: Exception) -> None:
    message = f"{engine} server unreachable ({type(error).__name__}): {_HOW[engine]}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class _Server:
    """One database server on which tests create and drop their own databases."""

    def __init__(self, engine: str, url: str) -> None:
        self.engine_name = engine
        self.url = make_url(url)
        self._admin: sa.Engine | None = None
        self._error: Exception | None = None

    def admin(self) -> sa.Engine:
        if self._error is not None:
            _server_unavailable(self.engine_name, self._error)
        if self._admin is None:
            engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT", pool_size=1)
            try:
                with engine.connect() as connection:
                    connection.exec_driver_sql("SELECT 1")
            except sa.exc.OperationalError as exc:
                engine.dispose()
                self._error = exc
                _server_unavailable(self.engine_name, exc)
            self._admin = engine
        return self._admin

    def create(self) -> tuple[str, str]:
        name = f"archivist_test_{secrets.token_hex(6)}"
        with self.admin().connect() as connection:
            if self.engine_name == "postgresql":
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
            else:
                connection.exec_driver_sql(
                    f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
        url = self.url.set(database=name)
        return name, url.render_as_string(hide_password=False)

    def drop(self, name: str) -> None:
        with self.admin().connect() as connection:
            if self.engine_name == "postgresql":
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")

    def dispose(self) -> None:
        if self._admin is not None:
            self._admin.dispose()


@pytest.fixture(scope="session")
def _servers() -> Iterator[dict[str, _Server]]:
    servers = {
        "postgresql": _Server("postgresql", PG_SERVER_URL),
        "mysql": _Server("mysql", MYSQL_SERVER_URL),
    }
    yield servers
    for server in servers.values():
        server.dispose()


@pytest.fixture
def fresh_db(_servers: dict[str, _Server], tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """A factory: ``fresh_db("sqlite" | "postgresql" | "mysql")`` -> URL of a new empty
    database, dropped when the test ends."""
    created: list[tuple[_Server, str]] = []
    counter = iter(range(1_000_000))

    def make(engine: str) -> str:
        if engine == "sqlite":
            return f"sqlite:///{tmp_path / f'db{next(counter)}.sqlite'}"
        server = _servers[engine]
        name, url = server.create()
        created.append((server, name))
        return url

    yield make
    for server, name in created:
        server.drop(name)


@pytest.fixture
def sqlite_url(fresh_db: Callable[[str], str]) -> str:
    return fresh_db("sqlite")


@pytest.fixture
def pg_url(fresh_db: Callable[[str], str]) -> str:
    return fresh_db("postgresql")


@pytest.fixture
def mysql_url(fresh_db: Callable[[str], str]) -> str:
    return fresh_db("mysql")


@pytest.fixture(params=ENGINES)
def any_url(request: pytest.FixtureRequest, fresh_db: Callable[[str], str]) -> str:
    """A fresh database on each engine in turn."""
    return fresh_db(str(request.param))


class _SecondServers:
    """A second PostgreSQL and a second MariaDB, started on first use and kept for the
    session (several tests cross servers; each start costs seconds)."""

    def __init__(self) -> None:
        self.postgres: PrivatePostgres | None = None
        self.mariadb: PrivateMariaDB | None = None

    def server(self, engine: str) -> PrivatePostgres | PrivateMariaDB:
        need_private_servers()
        if engine == "postgresql":
            if self.postgres is None:
                server = PrivatePostgres(short_directory("archivist-pg2-"))
                server.install()
                server.start()
                self.postgres = server
            return self.postgres
        if self.mariadb is None:
            mariadb = PrivateMariaDB(short_directory("archivist-my2-"))
            mariadb.install()
            mariadb.start()
            self.mariadb = mariadb
        return self.mariadb

    def remove(self) -> None:
        for server in (self.postgres, self.mariadb):
            if server is not None:
                server.remove()


@pytest.fixture(scope="session")
def _second_servers() -> Iterator[_SecondServers]:
    servers = _SecondServers()
    yield servers
    servers.remove()


@pytest.fixture
def second_db(_second_servers: _SecondServers) -> Callable[[str], str]:
    """A factory: ``second_db("postgresql" | "mysql")`` -> URL of a new empty database on a
    second server of that engine (not the one ``fresh_db`` uses), so that rows really cross
    servers. The servers start on first use and stop when the session ends."""

    def make(engine: str) -> str:
        name = f"archivist_second_{secrets.token_hex(6)}"
        return _second_servers.server(engine).create_database(name)

    return make
