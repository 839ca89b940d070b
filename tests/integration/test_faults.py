"""Faults: a database that goes away mid-task, a dropped daemon-worker connection, a
read-only or full archive database, and secrets in database URLs.

The daemon runs in-process (`runtime.running`) with a real worker child, so a test can hook
the command bus to strike at an exact step, and watch the worker's log (capfd).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from archivist.daemon.runtime import Launch, archive_now, running
from archivist.daemon.service import ArchiveDaemon
from archivist.daemon.tracker import TaskRecord
from archivist.data import DataDaemon, handles
from archivist.data.bus import JSONObject
from archivist.errors import ArchivistError
from e2esupport import (
    COPY_COMMANDS,
    PATHS,
    archivist,
    copies_to,
    count,
    ids,
    make_chat_table,
    processes,
    small_config,
    wait_for,
    write_config,
)
from servers import PrivateMariaDB, PrivatePostgres, accepts, short_directory
from support import need_private_servers, short_socket_dir

ROWS = 3000


def assert_every_row_once(primary: str, archive: str, rows: int = ROWS) -> None:
    in_primary, in_archive = ids(primary), ids(archive)
    assert in_primary | in_archive == set(range(1, rows + 1)), "rows were lost"
    assert not in_primary & in_archive, "rows are in both databases"


class ExclusiveLock:
    """A second connection holding ``BEGIN EXCLUSIVE`` on a SQLite file: writers fail with
    "database is locked" (after their busy timeout) until `release`."""

    def __init__(self, path: Path) -> None:
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("BEGIN EXCLUSIVE")
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if not self._released:
                self._released = True
                self._connection.rollback()
                self._connection.close()

    def release_after(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.release)
        timer.start()
        return timer


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process daemon waits 0.1 s (not 10 s) for a locked SQLite file."""
    monkeypatch.setattr(handles, "SQLITE_BUSY_TIMEOUT_MS", 100)


# --- the database goes away mid-task ---------------------------------------------------------


FAILED_COPY = {
    "rows": "batch failed (data/create on archive: database error on handle 'archive'",
    "in_database": "batch failed (data/copy on primary: database error on handles 'primary' "
    "and 'archive' (copying inside the database)",
}


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("short_busy_timeout")
@PATHS
def test_a_locked_archive_database_fails_batches_that_retry_with_backoff_then_complete(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], path: str
) -> None:
    primary, archive_file = f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "a.db"
    archive = f"sqlite:///{archive_file}"
    make_chat_table(primary, ROWS)
    config = small_config(primary, archive, retry_for=30, in_database=path == "in_database")
    locks: list[ExclusiveLock] = []
    command = COPY_COMMANDS[path]

    async def scenario() -> TaskRecord:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            create = daemon.data.bus.command(command)

            async def lock_on_the_third_batch(params: JSONObject) -> JSONObject:
                if not locks and copies_to(params, "archive") and count(archive) >= 400:
                    locks.append(ExclusiveLock(archive_file))
                    locks[0].release_after(2.5)
                return await create(params)

            daemon.data.bus.register(command, lock_on_the_third_batch, replace=True)
            return await archive_now(daemon, "chat_messages", 1200)

    try:
        started = time.monotonic()
        record = asyncio.run(scenario())
        took = time.monotonic() - started
    finally:
        for lock in locks:
            lock.release()
    log = capfd.readouterr().err

    assert locks, "the lock was never taken"
    assert record.state == "success" and record.archived == 1200
    assert took >= 2.5
    assert FAILED_COPY[path] in log
    assert "database is locked" in log
    retries = log.count("; retrying in")
    assert retries >= 2, "the batch was not retried with backoff"
    assert "retrying in 0.5 s" in log and "retrying in 1.0 s" in log
    assert ids(primary) == set(range(1201, ROWS + 1))
    assert_every_row_once(primary, archive)


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("short_busy_timeout")
@PATHS
def test_a_database_locked_longer_than_retry_for_fails_the_task_naming_it_then_later_checks_finish(
    tmp_path: Path, path: str
) -> None:
    """The task gives up after retry_for with status error naming the database; nothing is
    lost; the daemon keeps serving and a later policy check queues the work again."""
    primary, archive_file = f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "a.db"
    archive = f"sqlite:///{archive_file}"
    make_chat_table(primary, ROWS)
    config = small_config(primary, archive, retry_for=1.5, in_database=path == "in_database")
    locks: list[ExclusiveLock] = []
    updates: list[tuple[str, str, str | None]] = []
    command = COPY_COMMANDS[path]

    def on_update(record: TaskRecord) -> None:
        updates.append((record.task_id, record.state, record.error))

    async def scenario() -> None:
        async with running(
            config, Launch(private_socket=True, watch=True), on_update=on_update
        ) as daemon:
            create = daemon.data.bus.command(command)

            async def lock_once(params: JSONObject) -> JSONObject:
                if not locks and copies_to(params, "archive") and len(ids(archive)) >= 200:
                    locks.append(ExclusiveLock(archive_file))
                return await create(params)

            daemon.data.bus.register(command, lock_once, replace=True)
            deadline = time.monotonic() + 30
            while not any(state == "error" for _, state, _ in updates):
                assert time.monotonic() < deadline, f"no task failed: {updates}"
                await asyncio.sleep(0.05)
            assert count(primary) > 1800, "the task finished despite the lock"
            await asyncio.sleep(0.6)  # later checks run (and fail again) while it is locked
            assert_every_row_once(primary, archive)
            locks[0].release()
            while count(primary) > 1800:
                assert time.monotonic() < deadline + 30, "later checks did not finish the work"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            ping = await (await daemon.connection()).ping()
            assert ping["message"] == "pong"

    try:
        asyncio.run(scenario())
    finally:
        for lock in locks:
            lock.release()

    errors = [error or "" for _, state, error in updates if state == "error"]
    assert errors
    assert FAILED_COPY[path].split("(", 1)[1] in errors[0]
    assert "database is locked" in errors[0] and "gave up after retrying" in errors[0]
    assert any(state == "success" for _, state, _ in updates)
    assert count(primary) == 1800
    assert ids(primary) == set(range(1201, ROWS + 1))
    assert_every_row_once(primary, archive)


@pytest.fixture(scope="session")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    need_private_servers()
    server = PrivatePostgres(short_directory("archivist-pg-"))
    server.install()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@contextlib.contextmanager
def postgres_down_for(seconds: float, server: PrivatePostgres) -> Iterator[threading.Thread]:
    """Stop the private PostgreSQL now and start it again after ``seconds`` (and, come what
    may, before leaving), waiting until it accepts connections."""
    server.stop()
    restart = threading.Timer(seconds, server.start)
    restart.start()
    try:
        yield restart
    finally:
        restart.join()
        if not accepts(server.url):
            server.start()


def hook_moving_steps(
    daemon: ArchiveDaemon, hook: Callable[[JSONObject, Any], Awaitable[Any]]
) -> None:
    """Run ``hook`` before each ``data/copy`` and ``data/delete`` (a move from a server is
    one ``data/copy``; other paths delete with ``data/delete``)."""
    for name in ("data/copy", "data/delete"):
        real = daemon.data.bus.command(name)

        async def hooked(params: JSONObject, real: Any = real) -> Any:
            return await hook(params, real)

        daemon.data.bus.register(name, hooked, replace=True)


@pytest.mark.timeout(120)
def test_postgresql_stopped_mid_task_fails_batches_that_retry_until_it_is_back(
    private_postgres: PrivatePostgres,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    pg_url = private_postgres.url
    engine = sa.create_engine(pg_url)
    with engine.connect() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS chat_messages")
        connection.commit()
    engine.dispose()
    archive = f"sqlite:///{tmp_path / 'a.db'}"
    make_chat_table(pg_url, ROWS)
    config = small_config(pg_url, archive, retry_for=60)
    outage: list[float] = []

    async def scenario() -> TaskRecord:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            stack = contextlib.ExitStack()

            async def stop_postgres_once_400_rows_moved(params: JSONObject, real: Any) -> Any:
                if not outage and count(archive) >= 400:
                    outage.append(time.monotonic())
                    await asyncio.to_thread(
                        stack.enter_context, postgres_down_for(3.0, private_postgres)
                    )
                return await real(params)

            # Before the next step that moves rows: a delete, or a copy that moves its batch.
            hook_moving_steps(daemon, stop_postgres_once_400_rows_moved)
            try:
                return await archive_now(daemon, "chat_messages", 1200)
            finally:
                await asyncio.to_thread(stack.close)

    record = asyncio.run(scenario())
    log = capfd.readouterr().err

    assert outage, "PostgreSQL was never stopped"
    assert record.state == "success" and record.archived == 1200
    assert "database error on handle 'primary'" in log and "; retrying in" in log
    assert ids(pg_url) == set(range(1201, ROWS + 1))
    assert_every_row_once(pg_url, archive)


@pytest.fixture
def private_mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    need_private_servers()
    server = PrivateMariaDB(tmp_path / "mariadb")
    server.install()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(180)
def test_mariadb_restarted_mid_task_fails_batches_that_retry_until_it_is_back(
    private_mariadb: PrivateMariaDB, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    primary = private_mariadb.create_database("archivist_faults")
    archive = f"sqlite:///{tmp_path / 'a.db'}"
    make_chat_table(primary, ROWS)
    config = small_config(primary, archive, retry_for=60)
    outage: list[float] = []

    async def scenario() -> TaskRecord:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            restart = threading.Timer(3.0, private_mariadb.start)

            async def stop_mariadb_once_400_rows_moved(params: JSONObject, real: Any) -> Any:
                if not outage and count(archive) >= 400:
                    outage.append(time.monotonic())
                    await asyncio.to_thread(private_mariadb.stop)
                    restart.start()
                return await real(params)

            hook_moving_steps(daemon, stop_mariadb_once_400_rows_moved)
            try:
                return await archive_now(daemon, "chat_messages", 1200)
            finally:
                if outage:
                    await asyncio.to_thread(restart.join)

    record = asyncio.run(scenario())
    log = capfd.readouterr().err

    assert outage, "MariaDB was never stopped"
    assert record.state == "success" and record.archived == 1200, record.error
    assert "database error on handle 'primary'" in log and "; retrying in" in log
    assert ids(primary) == set(range(1201, ROWS + 1))
    assert_every_row_once(primary, archive)


# --- the daemon-worker connection drops mid-task ---------------------------------------------


@pytest.mark.timeout(90)
@PATHS
def test_a_connection_closed_by_the_daemon_mid_task_is_reopened_and_the_task_queued_again(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], path: str
) -> None:
    primary, archive = f"sqlite:///{tmp_path / 'p.db'}", f"sqlite:///{tmp_path / 'a.db'}"
    make_chat_table(primary, ROWS)
    config = small_config(primary, archive, in_database=path == "in_database")
    closed: list[int] = []
    command = COPY_COMMANDS[path]

    async def scenario() -> tuple[TaskRecord, int]:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            create = daemon.data.bus.command(command)

            async def close_on_the_third_create(params: JSONObject) -> JSONObject:
                if not closed and count(archive) >= 400:
                    closed.append(count(archive))
                    connection = await daemon.connection()
                    await connection.close()  # from the daemon's side, mid-batch
                return await create(params)

            daemon.data.bus.register(command, close_on_the_third_create, replace=True)
            record = await archive_now(daemon, "chat_messages", 1200)
            return record, daemon.connections

    record, connections = asyncio.run(scenario())
    log = capfd.readouterr().err

    assert closed
    assert connections == 2, "the daemon did not reconnect exactly once"
    assert record.state == "success" and record.archived == 1200
    assert record.attempts == 2
    assert "connection lost" in log or "connection closed" in log
    assert ids(primary) == set(range(1201, ROWS + 1))
    assert count(archive) == 1200
    assert_every_row_once(primary, archive)


@pytest.mark.timeout(90)
@PATHS
def test_a_connection_closed_by_the_worker_mid_task_is_reopened_and_later_checks_finish(
    tmp_path: Path, path: str
) -> None:
    """The worker ends its side (SIGTERM: its task stops at a safe point, it closes the
    connection and exits); the supervisor restarts it, the daemon reconnects, and the policy
    brings the table down to exactly what it leaves."""
    primary, archive = f"sqlite:///{tmp_path / 'p.db'}", f"sqlite:///{tmp_path / 'a.db'}"
    make_chat_table(primary, ROWS)
    config = small_config(primary, archive, in_database=path == "in_database")
    stopped: list[int] = []
    command = COPY_COMMANDS[path]

    async def scenario() -> tuple[int, int]:
        async with running(config, Launch(private_socket=True, watch=True)) as daemon:
            create = daemon.data.bus.command(command)

            async def stop_the_worker_on_the_third_create(params: JSONObject) -> JSONObject:
                if not stopped and count(archive) >= 400:
                    assert daemon.supervisor is not None and daemon.supervisor.pid is not None
                    stopped.append(daemon.supervisor.pid)
                    os.kill(daemon.supervisor.pid, signal.SIGTERM)
                return await create(params)

            daemon.data.bus.register(command, stop_the_worker_on_the_third_create, replace=True)
            deadline = time.monotonic() + 40
            while not (daemon.connections >= 2 and count(primary) == 1800):
                assert time.monotonic() < deadline, "the archive did not complete"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # more checks: nothing else may move
            assert daemon.supervisor is not None
            return daemon.connections, daemon.supervisor.restarts

    connections, restarts = asyncio.run(scenario())

    assert stopped
    assert connections == 2 and restarts == 1
    assert ids(primary) == set(range(1201, ROWS + 1))
    assert count(archive) == 1200
    assert_every_row_once(primary, archive)


# --- a read-only or full archive database ----------------------------------------------------


@pytest.mark.timeout(60)
def test_a_read_only_archive_database_fails_the_task_clearly_and_deletes_nothing(
    tmp_path: Path,
) -> None:
    primary, archive_file = f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "a.db"
    make_chat_table(primary, ROWS)

    async def create_archive_table() -> None:
        async with DataDaemon(small_config(primary, f"sqlite:///{archive_file}")) as data:
            await data.ensure_archive_table("chat_messages")

    asyncio.run(create_archive_table())
    # As root, file modes do not stop writes; SQLite's read-only open mode does. A URI
    # filename is never attached (its mode would be lost): rows go through the worker.
    read_only = f"sqlite:///file:{archive_file}?mode=ro&uri=true"
    config = small_config(primary, read_only, retry_for=1.0)

    async def scenario() -> str:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            with pytest.raises(ArchivistError) as failure:
                await archive_now(daemon, "chat_messages", 1200)
            return failure.value.message

    error = asyncio.run(scenario())

    assert "database error on handle 'archive'" in error
    assert "readonly database" in error
    assert ids(primary) == set(range(1, ROWS + 1)), "rows were deleted from the primary"
    assert count(f"sqlite:///{archive_file}") == 0


@pytest.mark.timeout(60)
def test_a_full_archive_disk_fails_the_task_clearly_and_deletes_no_row_it_could_not_copy(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        primary, archive = f"sqlite:///{tmp_path / 'p.db'}", f"sqlite:///{disk / 'a.db'}"
        make_chat_table(primary, ROWS)
        config = small_config(primary, archive, retry_for=1.0)

        async def scenario() -> str:
            async with running(config, Launch(private_socket=True, watch=False)) as daemon:
                with pytest.raises(ArchivistError) as failure:
                    await archive_now(daemon, "chat_messages", ROWS)
                return failure.value.message

        error = asyncio.run(scenario())
        in_archive = ids(archive)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)

    # Copied inside the database (two SQLite files), the error names both handles.
    assert "database error on handles 'primary' and 'archive'" in error
    assert "database or disk is full" in error
    in_primary = ids(primary)
    assert len(in_archive) < ROWS, "the disk was not full"
    assert in_primary | in_archive == set(range(1, ROWS + 1)), "rows were lost"
    assert len(in_primary) >= ROWS - len(in_archive)


# --- secrets in database URLs ----------------------------------------------------------------


@pytest.fixture
def pg_role(pg_url: str) -> Iterator[tuple[str, str]]:
    """A login role with a password that owns the test database: (role, password)."""
    role = f"archivist_secret_{secrets.token_hex(4)}"
    password = f"pw-{secrets.token_hex(12)}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    database = make_url(pg_url).database
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            connection.exec_driver_sql(f'ALTER DATABASE "{database}" OWNER TO {role}')
        yield role, password
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{database}" OWNER TO postgres')
            connection.exec_driver_sql(f"DROP OWNED BY {role} CASCADE")
            connection.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        admin.dispose()


@pytest.mark.timeout(120)
def test_passwords_in_database_urls_never_appear_in_output_errors_or_status(
    pg_url: str, pg_role: tuple[str, str], tmp_path: Path
) -> None:
    role, password = pg_role
    with_password = make_url(pg_url).set(username=role, password=password)
    primary = with_password.render_as_string(hide_password=False)
    assert password in primary
    make_chat_table(primary, ROWS)
    policy: dict[str, object] = {
        "collection": "chat_messages",
        "order_by": "created_at",
        "max_rows": 2000,
        "rows_per_archive": 200,
        "batch_size": 200,
    }
    outputs: dict[str, str] = {}

    def check(name: str, handles: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        config = write_config(tmp_path / f"{name}.toml", handles, [policy])
        done = archivist(*args, "--config", str(config), "-v", timeout=60)
        outputs[name] = done.stdout + done.stderr
        return done

    # The archive database does not exist: a server error while the password is in use.
    missing = with_password.set(database="archivist_no_such_database")
    done = check(
        "missing_database",
        {"primary": primary, "archive": missing.render_as_string(hide_password=False)},
        "archive",
        "chat_messages",
        "--max-rows",
        "100",
    )
    assert done.returncode != 0 and "archivist_no_such_database" in outputs["missing_database"]
    # Nothing listens on the port: a connection error.
    refused = with_password.set(port=1)
    done = check(
        "refused",
        {"primary": refused.render_as_string(hide_password=False), "archive": primary},
        "archive",
        "chat_messages",
    )
    assert done.returncode != 0 and "primary" in outputs["refused"]
    # A wrong password against 127.0.0.1 (the local server trusts 127.0.0.1, so it also
    # names a missing database to be sure of an error). Never the primary's database: two
    # handles on one table would "archive" rows onto themselves and delete them.
    wrong = with_password.set(password=f"wrong-{password}", database="archivist_no_such_db_2")
    done = check(
        "wrong_password",
        {"primary": primary, "archive": wrong.render_as_string(hide_password=False)},
        "archive",
        "chat_messages",
        "--max-rows",
        "100",
    )
    assert done.returncode != 0 and "archivist_no_such_db_2" in outputs["wrong_password"]
    # A successful run, its log and its status.
    archive = f"sqlite:///{tmp_path / 'a.db'}"
    socket = short_socket_dir() / "worker.sock"
    config = write_config(
        tmp_path / "run.toml", {"primary": primary, "archive": archive}, [policy], socket
    )
    log = tmp_path / "run.log"
    with processes() as started:
        run = started.start("run", "--config", str(config), "-v", output=log)
        wait_for(lambda: count(archive) == 1200, 60, "the run to archive 1200 rows", run)
        shown = archivist("status", "--config", str(config), "--json", timeout=30)
        run.send_signal(signal.SIGTERM)
        run.wait(40)
    outputs["run"] = log.read_text()
    outputs["status"] = shown.stdout + shown.stderr
    assert shown.returncode == 0 and json.loads(shown.stdout)["finished"]
    shutil.rmtree(socket.parent, ignore_errors=True)

    leaks = [name for name, text in outputs.items() if password in text]
    assert not leaks, f"the password appears in: {leaks}"


@PATHS
def test_a_worker_that_stops_answering_is_reconnected_to_after_a_missed_ping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    make_chat_table(primary, ROWS)
    config = small_config(primary, archive, in_database=path == "in_database")
    command = COPY_COMMANDS[path]
    config.daemon.health_interval = 0.3
    config.daemon.health_timeout = 0.5

    async def scenario() -> tuple[int, int, int]:
        launch = Launch(private_socket=True, watch=False)
        async with running(config, launch) as daemon:
            assert daemon.supervisor is not None
            create = daemon.data.bus.command(command)
            frozen = asyncio.Event()

            async def freeze_worker_once(params: JSONObject) -> JSONObject:
                result = await create(params)
                worker = daemon.supervisor.pid if daemon.supervisor else None
                if not frozen.is_set() and worker is not None:
                    frozen.set()
                    os.kill(worker, signal.SIGSTOP)  # alive, but answers nothing
                    asyncio.get_running_loop().call_later(2.0, os.kill, worker, signal.SIGCONT)
                return result

            daemon.data.bus.register(command, freeze_worker_once, replace=True)
            record = await archive_now(daemon, "chat_messages", 1200)
            return record.archived, record.attempts, daemon.connections

    with caplog.at_level(logging.WARNING, logger="archivist.daemon.service"):
        archived, attempts, connections = asyncio.run(scenario())

    assert "worker health check failed" in caplog.text
    assert connections >= 2 and attempts >= 2
    assert archived == 1200
    assert count(primary) == ROWS - 1200
    assert_every_row_once(primary, archive)
