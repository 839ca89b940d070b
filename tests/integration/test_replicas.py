"""Replica lag on real replicas the tests set up: a PostgreSQL standby made with
``pg_basebackup -R`` from a private primary, and a MariaDB replica of a private MariaDB.
Lag is induced by pausing replay (``pg_wal_replay_pause()``, ``STOP REPLICA
SQL_THREAD``): while it lasts no batch runs (rows stay, status and the log say why), and
archiving resumes once replay does. Each pair starts once for this module."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from archivist.config import ReplicaCheck, make_config
from archivist.data import DataDaemon
from archivist.data.replicas import Lag, read_lag
from archivist.errors import ConfigError
from e2esupport import archivist, count, make_chat_table, processes, wait_for, write_config
from servers import (
    PRIMARY_OPTIONS,
    PrivateMariaDB,
    PrivatePostgres,
    free_port,
    replication_options,
    short_directory,
    start_replication,
    start_standby,
    wait_until,
)
from support import need_private_servers

ROWS = 3000
POLICY: dict[str, object] = {
    "collection": "chat_messages",
    "order_by": "created_at",
    "max_rows": 1000,
    "rows_per_archive": 100,
    "batch_size": 200,
}


@pytest.fixture(scope="module")
def postgres_pair() -> Iterator[tuple[PrivatePostgres, PrivatePostgres]]:
    """A private primary (wal_level=replica) and its streaming standby."""
    need_private_servers()
    primary = PrivatePostgres(short_directory("archivist-pgp-"), PRIMARY_OPTIONS)
    standby: PrivatePostgres | None = None
    try:
        primary.install()
        primary.start()
        standby = start_standby(primary, short_directory("archivist-pgs-"))
        yield primary, standby
    finally:
        if standby is not None:
            standby.remove()
        primary.remove()


@pytest.fixture(scope="module")
def mariadb_pair() -> Iterator[tuple[PrivateMariaDB, PrivateMariaDB]]:
    """A private MariaDB and its replica."""
    need_private_servers()
    primary = PrivateMariaDB(short_directory("archivist-myp-"), replication_options(1))
    replica = PrivateMariaDB(short_directory("archivist-myr-"), replication_options(2))
    try:
        for server in (primary, replica):
            server.install()
            server.start()
        start_replication(primary, replica)
        yield primary, replica
    finally:
        replica.remove()
        primary.remove()


def execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def lag_of(url: str) -> Lag:
    """The replica's lag as archivist reads it."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return read_lag(connection, "replica1")
    finally:
        engine.dispose()


def replicated(url: str, rows: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return count(url) == rows
        except sa.exc.SQLAlchemyError:
            return False  # the database or table has not reached the replica yet

    return check


def source_on(
    primary: PrivatePostgres | PrivateMariaDB, replica_url_of: Callable[[str], str]
) -> tuple[str, str]:
    """A new database with ``ROWS`` rows on ``primary``, and its URL on the replica once
    the replica has every row."""
    name = f"app_{secrets.token_hex(4)}"
    url = primary.create_database(name)
    make_chat_table(url, ROWS)
    replica_url = replica_url_of(name)
    wait_until(replicated(replica_url, ROWS), 60, "the rows to reach the replica")
    return url, replica_url


def throttled_reasons(socket: Path) -> set[str]:
    """Why the worker's running tasks are throttled, from ``archivist status --json``."""
    result = archivist("status", "--socket", str(socket), "--json", timeout=60)
    if result.returncode != 0:
        return set()
    answer = json.loads(result.stdout)
    return {str(task.get("throttled")) for task in answer.get("running", [])}


def replica_config(tmp_path: Path, url: str, replica_url: str) -> Path:
    return write_config(
        tmp_path / "archivist.toml",
        {
            "primary": {"url": url, "replicas": ["replica1"], "max_replica_lag": "1s"},
            "replica1": replica_url,
            "archive": f"sqlite:///{tmp_path / 'archive.db'}",
        },
        [POLICY],
        tmp_path / "worker.sock",
    )


def checked(tmp_path: Path, url: str, replica_url: str) -> str:
    """What ``archivist check`` says (it exits 0: a lag is no problem of the config)."""
    result = archivist("check", "--config", str(replica_config(tmp_path, url, replica_url)))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def hold_then_resume(
    tmp_path: Path,
    url: str,
    replica_url: str,
    expected: str,
    resume: Callable[[], None],
) -> None:
    """``archivist run`` on ``url`` whose replica lags: no row moves while status shows
    ``expected``; after ``resume`` the table comes back to its limit."""
    socket = tmp_path / "worker.sock"
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    config = replica_config(tmp_path, url, replica_url)
    log = tmp_path / "run.log"
    with processes() as started:
        run = started.start("run", "--config", str(config), "-v", output=log)
        seen: set[str] = set()

        def reason_shown() -> bool:
            seen.update(throttled_reasons(socket))
            return any(reason.startswith(expected) for reason in seen)

        wait_for(reason_shown, 90, f"status to show 'throttled: {expected}'", run, 0.3)
        text = log.read_text()
        assert f"holding batches on 'primary': {expected}" in text
        assert f"throttled: {expected}" in text
        # Held before its first batch: not a row has moved.
        assert count(url) == ROWS
        resume()
        wait_for(lambda: count(url) == 900, 120, "archiving to resume", run, 0.3)
        assert "replicas of 'primary' are within 1.0 s again" in log.read_text()
    assert count(archive) == ROWS - 900


@pytest.mark.timeout(300)
def test_no_batch_runs_while_the_postgresql_standby_lags(
    postgres_pair: tuple[PrivatePostgres, PrivatePostgres], tmp_path: Path
) -> None:
    primary, standby = postgres_pair
    url, standby_url = source_on(primary, lambda name: standby.url.rsplit("/", 1)[0] + f"/{name}")
    wait_until(lambda: lag_of(standby_url) == Lag("replica1", seconds=0.0), 60, "no lag")
    shown = checked(tmp_path, url, standby_url)
    assert "replicas (max_replica_lag 1.0 s): replica1 0.0 s behind" in shown
    assert "batches would wait now" not in shown
    execute(standby_url, "SELECT pg_wal_replay_pause()")
    try:
        # WAL the standby receives and does not replay: it lags from now on.
        execute(url, "CREATE TABLE ticks (id integer)", "INSERT INTO ticks VALUES (1)")
        wait_until(
            lambda: (lag_of(standby_url).seconds or 0) > 1.0, 60, "the standby to lag over 1 s"
        )
        shown = checked(tmp_path, url, standby_url)
        assert "batches would wait now: replica1 lags " in shown
        assert "(its replay is paused)" in shown
        hold_then_resume(
            tmp_path,
            url,
            standby_url,
            "replica1 lags ",
            lambda: execute(standby_url, "SELECT pg_wal_replay_resume()"),
        )
    finally:
        execute(standby_url, "SELECT pg_wal_replay_resume()")
    assert lag_of(standby_url).seconds == 0.0


@pytest.mark.timeout(300)
def test_no_batch_runs_while_the_mariadb_replica_is_not_replaying(
    mariadb_pair: tuple[PrivateMariaDB, PrivateMariaDB], tmp_path: Path
) -> None:
    primary, replica = mariadb_pair
    url, replica_url = source_on(primary, lambda name: f"{replica.url}{name}")
    wait_until(lambda: lag_of(replica_url) == Lag("replica1", seconds=0.0), 60, "no lag")
    execute(replica_url, "STOP REPLICA SQL_THREAD")
    try:
        hold_then_resume(
            tmp_path,
            url,
            replica_url,
            "replica1 is not replicating (its SQL thread is stopped)",
            lambda: execute(replica_url, "START REPLICA SQL_THREAD"),
        )
    finally:
        execute(replica_url, "START REPLICA SQL_THREAD")
    # The replica replayed every delete.
    wait_until(replicated(replica_url, 900), 60, "the replica to replay the deletes")


def test_mariadb_seconds_behind_master_is_read_from_a_delayed_replica(
    mariadb_pair: tuple[PrivateMariaDB, PrivateMariaDB],
) -> None:
    """A replica held back by MASTER_DELAY reports how far behind it is: the figure the
    hold compares with max_replica_lag."""
    primary, replica = mariadb_pair
    url, replica_url = source_on(primary, lambda name: f"{replica.url}{name}")
    execute(replica.url, "STOP REPLICA", "CHANGE MASTER TO MASTER_DELAY=30", "START REPLICA")
    try:
        execute(url, "CREATE TABLE ticks (id integer)", "INSERT INTO ticks VALUES (1)")
        wait_until(
            lambda: (lag_of(replica_url).seconds or 0) >= 2, 60, "the replica to fall 2 s behind"
        )
    finally:
        execute(replica.url, "STOP REPLICA", "CHANGE MASTER TO MASTER_DELAY=0", "START REPLICA")
    wait_until(lambda: lag_of(replica_url).seconds == 0.0, 60, "the replica to catch up")


def test_a_replica_that_cannot_be_reached_holds_batches(fresh_db: Callable[[str], str]) -> None:
    """``data/load`` on a source whose replica does not answer carries a hold naming it."""
    url = fresh_db("postgresql")
    gone = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/app"
    config = make_config(
        {"primary": url, "replica1": gone, "archive": "sqlite://"},
        replica_checks={"primary": ReplicaCheck(replicas=("replica1",), max_lag=5.0)},
    )

    async def load() -> dict[str, object]:
        data = DataDaemon(config)
        try:
            return await data.execute("data/load", {"dbHandle": "primary"})
        finally:
            await data.close()

    answer = asyncio.run(load())
    assert str(answer["hold"]).startswith("replica1 cannot be reached: ")
    assert "connection" in str(answer["hold"]).lower()


def test_a_sqlite_replica_is_refused_at_start(tmp_path: Path) -> None:
    config = make_config(
        {"primary": f"sqlite:///{tmp_path}/p.db", "copy": f"sqlite:///{tmp_path}/c.db"},
        replica_checks={"primary": ReplicaCheck(replicas=("copy",))},
    )
    with pytest.raises(ConfigError, match="'copy' is a sqlite database; a replica is a"):
        DataDaemon(config)
