"""Database servers of a test's (or a benchmark's) own: a PostgreSQL cluster from ``initdb``
and ``pg_ctl``, a ``mariadbd`` with its own data directory, each on a free port of 127.0.0.1.

Tests that stop a server, or need a second server to cross (rows between two servers,
replicas), start one of these, so that the shared servers other tests use stay untouched.
``bench/`` imports this module too (its second servers are the same kind of thing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import sqlalchemy as sa

# The newest installed PostgreSQL's programs (initdb, pg_ctl, pg_basebackup), if any.
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=None, key=lambda p: p.parent.name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def accepts(url: str) -> bool:
    """Whether a server at ``url`` answers ``SELECT 1`` now."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def missing_programs() -> str | None:
    """Why private servers cannot start here, or None when they can."""
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        return "needs initdb and pg_ctl (/usr/lib/postgresql/*/bin) for a private PostgreSQL"
    if shutil.which("mariadbd") is None or shutil.which("mariadb-install-db") is None:
        return "needs mariadbd and mariadb-install-db to run a private MariaDB"
    return None


def short_directory(prefix: str) -> Path:
    """A short directory (a server's socket lives there: the AF_UNIX path limit) that the
    postgres user can reach (pytest's tmp directories are root's, mode 0700)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


class PrivatePostgres:
    """A PostgreSQL cluster of its own (``initdb`` into ``directory``, trust), run as the
    ``postgres`` user when we are root (PostgreSQL refuses to run as root)."""

    def __init__(self, directory: Path, options: Sequence[str] = ()) -> None:
        assert PG_BIN is not None
        self.bin_dir = PG_BIN
        self.directory = directory
        self.options = list(options)
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def run(self, *command: str) -> str:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, check=False, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def install(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        )

    def start(self) -> None:
        settings = [
            f"-p {self.port}",
            f"-k {self.directory}",
            "-c listen_addresses=127.0.0.1",
            "-c fsync=off",
            *(f"-c {option}" for option in self.options),
        ]
        self.run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "server.log"),
            "-o",
            " ".join(settings),
            "-w",
            "start",
        )
        wait_until(lambda: accepts(self.url), 60, "the private PostgreSQL to accept")

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: every session is cut."""
        self.run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def remove(self) -> None:
        """Stop (if running) and delete the cluster's files."""
        with contextlib.suppress(AssertionError):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


PRIMARY_OPTIONS = ("wal_level=replica", "max_wal_senders=4", "wal_keep_size=64MB")
"""A private PostgreSQL that standbys can stream from (``pg_basebackup -R``)."""


def start_standby(primary: PrivatePostgres, directory: Path) -> PrivatePostgres:
    """A streaming standby of ``primary`` (started with `PRIMARY_OPTIONS`) on a port of
    its own: ``pg_basebackup -R`` (which writes ``standby.signal`` and the primary's
    conninfo), then start, hot standby (read-only sessions) on."""
    standby = PrivatePostgres(directory, ["hot_standby=on", "wal_receiver_status_interval=1s"])
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    standby.run(
        str(standby.bin_dir / "pg_basebackup"),
        "-h",
        "127.0.0.1",
        "-p",
        str(primary.port),
        "-U",
        "postgres",
        "-D",
        str(standby.data),
        "-R",
        "-X",
        "stream",
        "--no-sync",
    )
    standby.start()
    return standby


def replication_options(server_id: int) -> list[str]:
    """``mariadbd`` options of one server of a replication pair (binary log for a primary,
    relay log for a replica; both written, so either can be either)."""
    return [
        f"--server-id={server_id}",
        "--log-bin=mariadb-bin",
        "--binlog-format=ROW",
        "--relay-log=relay-bin",
    ]


def start_replication(primary: PrivateMariaDB, replica: PrivateMariaDB) -> None:
    """Make ``replica`` replicate ``primary`` from its current binary log position (both
    started with `replication_options`), and wait until both threads run."""
    engine = sa.create_engine(primary.url)
    try:
        with engine.connect() as connection:
            row = connection.exec_driver_sql("SHOW MASTER STATUS").one()
            log_file, position = str(row[0]), int(row[1])
    finally:
        engine.dispose()
    engine = sa.create_engine(replica.url)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(
                f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, "
                f"MASTER_USER='root', MASTER_PASSWORD='', MASTER_LOG_FILE='{log_file}', "
                f"MASTER_LOG_POS={position}, MASTER_CONNECT_RETRY=1"
            )
            connection.exec_driver_sql("START REPLICA")

        def running() -> bool:
            with engine.connect() as connection:
                status = connection.exec_driver_sql("SHOW REPLICA STATUS").mappings().one()
            return status["Slave_IO_Running"] == "Yes" and status["Slave_SQL_Running"] == "Yes"

        wait_until(running, 60, "the private MariaDB replica to replicate")
    finally:
        engine.dispose()


class PrivateMariaDB:
    """A ``mariadbd`` of its own (own datadir, socket and port on 127.0.0.1, root without a
    password)."""

    def __init__(self, directory: Path, options: Sequence[str] = ()) -> None:
        self.directory = directory
        self.options = list(options)
        self.port = free_port()
        self.url = f"mysql+pymysql://root@127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        installed = subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.directory / 'data'}",
                "--auth-root-authentication-method=normal",
                "--user=root",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={self.directory / 'data'}",
                f"--socket={self.directory / 'mariadb.sock'}",
                f"--pid-file={self.directory / 'mariadb.pid'}",
                f"--log-error={self.directory / 'error.log'}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--user=root",
                "--innodb-buffer-pool-size=32M",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.accepts, 60, "the private MariaDB to accept connections")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), like ``pg_ctl stop -m fast``: sessions are cut."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)

    def accepts(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.directory / "error.log").read_text(errors="replace")
            raise AssertionError(f"the private MariaDB exited:\n{log[-2000:]}")
        return accepts(self.url)

    def create_database(self, name: str) -> str:
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(
                    f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
        finally:
            engine.dispose()
        return f"{self.url}{name}"

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
