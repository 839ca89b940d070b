"""The databases a benchmark run uses: one primary and one archive per engine, and the
``chat_messages`` data reset to the same state before every measured run.

Rows are generated once per engine into a seed table (``bench_seed``) in the primary;
each run re-creates ``chat_messages`` from it with one ``INSERT ... SELECT``, so every
run of every method starts from identical data without regenerating it.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import sqlalchemy as sa

from archivist import sample
from archivist.data.handles import create_engine

TABLE: Final = "chat_messages"
SEED_TABLE: Final = "bench_seed"
FOREGROUND_ID_BASE: Final = 1_000_000_000
"""Ids of rows the foreground inserts: far above any generated id."""
FILL_CHUNK: Final = 5_000
PG_SERVER: Final = "postgres@127.0.0.1:5432"
MARIADB_SERVER: Final = "root@127.0.0.1:3306"
ENGINES: Final = ("sqlite", "postgresql", "mariadb")
SETTLE_POLL: Final = 0.5
"""Seconds between two readings of MariaDB's dirty pages and purge history."""
SETTLE_STILL: Final = 4
"""Readings in a row with no fewer dirty pages that mean the flushing is done."""
SETTLE_HISTORY: Final = 1000
"""Purge history length under which the purge of a reset's deletes counts as done."""
SETTLE_MAX: Final = 60.0
"""Seconds a reset waits at most for MariaDB to write out what it left in memory."""


def chat_table(metadata: sa.MetaData, name: str = TABLE) -> sa.Table:
    """``archivist.sample``'s table without its index (see `create_indexes`)."""
    return sample.chat_messages_table(metadata, name, index=False)


def create_indexes(connection: sa.Connection, table: sa.Table, *, app_index: bool) -> None:
    """The policy's ``created_at`` index, and the application's ``(room_id, created_at)``."""
    sa.Index(f"ix_{table.name}_created_at", table.c.created_at).create(connection)
    if app_index:
        sa.Index(f"ix_{table.name}_room_created", table.c.room_id, table.c.created_at).create(
            connection
        )


@dataclass
class Target:
    """One engine's pair of databases, and how to reach them."""

    engine: str
    primary_url: str
    archive_url: str
    primary_db: str
    """Database name (PostgreSQL, MariaDB) or file path (SQLite)."""
    archive_db: str
    version: str = ""
    seeded: int = 0
    worker_settings: dict[str, str] = field(default_factory=dict)
    """Extra ``[worker]`` settings for archivist's runs (raw TOML values)."""
    _engines: dict[str, sa.Engine] = field(default_factory=dict)

    def sa_engine(self, which: str) -> sa.Engine:
        """A pooled engine on the primary or the archive, with archivist's session settings."""
        if which not in self._engines:
            url = self.primary_url if which == "primary" else self.archive_url
            self._engines[which] = create_engine(url)
        return self._engines[which]

    def dispose(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    def seed(self, rows: int) -> None:
        """Generate ``rows`` rows into the seed table (once; grows it when asked for more)."""
        if rows <= self.seeded:
            return
        engine = self.sa_engine("primary")
        metadata = sa.MetaData()
        seed = chat_table(metadata, SEED_TABLE)
        with engine.begin() as connection:
            seed.drop(connection, checkfirst=True)
            seed.create(connection)
        if self.engine == "postgresql":
            _copy_fill(engine, rows)
        else:
            _insert_fill(engine, seed, rows)
        self.seeded = rows

    def reset(self, rows: int) -> None:
        """Primary: a fresh ``chat_messages`` with the first ``rows`` seed rows; archive: none."""
        self.seed(rows)
        primary = self.sa_engine("primary")
        metadata = sa.MetaData()
        table = chat_table(metadata)
        seed = chat_table(metadata, SEED_TABLE)
        with primary.begin() as connection:
            table.drop(connection, checkfirst=True)
            table.create(connection)
            chosen = sa.select(seed).order_by(seed.c.id).limit(rows)
            connection.execute(table.insert().from_select(list(seed.c.keys()), chosen))
            create_indexes(connection, table, app_index=True)
        self.drop_archive()
        self.settle()
        for engine in self._engines.values():
            engine.dispose()  # no pooled connection keeps a stale view of the new table

    def settle(self) -> None:
        """MariaDB: wait until InnoDB has written out the pages the reset dirtied (their
        count stops falling) and purged what it deleted. Right after a reset of 1,000,000
        rows InnoDB still flushes ~3,000 dirty pages for ~15 s (the default
        ``innodb_io_capacity`` of 200): a run started then shares the disk with that, and
        the first run after the seeding (archivist's) with more. Each timed run starts on
        a quiet server instead."""
        if self.engine != "mariadb":
            return
        status = "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'"
        history = (
            "SELECT count FROM information_schema.INNODB_METRICS"
            " WHERE name = 'trx_rseg_history_len'"
        )
        deadline = time.monotonic() + SETTLE_MAX
        lowest, still = None, 0
        with self.sa_engine("primary").connect() as connection:
            while time.monotonic() < deadline and still < SETTLE_STILL:
                dirty = int(connection.exec_driver_sql(status).one()[1])
                purging = int(connection.exec_driver_sql(history).scalar() or 0) > SETTLE_HISTORY
                connection.rollback()  # the next reading sees the server now
                still = still + 1 if lowest is not None and dirty >= lowest and not purging else 0
                lowest = dirty if lowest is None else min(lowest, dirty)
                time.sleep(SETTLE_POLL)

    def drop_archive(self) -> None:
        table = chat_table(sa.MetaData())
        with self.sa_engine("archive").begin() as connection:
            table.drop(connection, checkfirst=True)

    def create_archive(self) -> sa.Table:
        """The archive table for the baselines: the source's columns, primary key and
        ``created_at`` index (archivist creates its own from the source's schema)."""
        table = chat_table(sa.MetaData())
        with self.sa_engine("archive").begin() as connection:
            table.drop(connection, checkfirst=True)
            table.create(connection)
            create_indexes(connection, table, app_index=False)
        return table

    def count(self, which: str) -> int:
        with self.sa_engine(which).connect() as connection:
            return int(connection.execute(sa.text(f"SELECT count(*) FROM {TABLE}")).scalar_one())

    def config_toml(self, batch_size: int) -> str:
        return (
            "[handles]\n"
            f'primary = "{self.primary_url}"\n'
            f'archive = "{self.archive_url}"\n\n'
            "[worker]\nconcurrency = 1\n"
            + "".join(f"{key} = {value}\n" for key, value in self.worker_settings.items())
            + "\n"
            "[[archive]]\n"
            f'collection = "{TABLE}"\n'
            'order_by = "created_at"\n'
            "max_rows = 1\n"
            "rows_per_archive = 1\n"
            f"batch_size = {batch_size}\n"
        )


def _insert_fill(engine: sa.Engine, seed: sa.Table, rows: int) -> None:
    with engine.begin() as connection:
        chunk: list[dict[str, object]] = []
        for row in sample.generate_rows(rows):
            chunk.append(row)
            if len(chunk) == FILL_CHUNK:
                connection.execute(seed.insert(), chunk)
                chunk = []
        if chunk:
            connection.execute(seed.insert(), chunk)


def _copy_fill(engine: sa.Engine, rows: int) -> None:
    """PostgreSQL: COPY the generated rows (text format, JSON as text)."""
    import json

    raw = engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
        columns = "id, room_id, sender_id, created_at, body, metadata"
        with cursor.copy(f"COPY {SEED_TABLE} ({columns}) FROM STDIN") as copy:
            for row in sample.generate_rows(rows):
                copy.write_row(
                    (
                        row["id"],
                        row["room_id"],
                        row["sender_id"],
                        row["created_at"],
                        row["body"],
                        json.dumps(row["metadata"]),
                    )
                )
        raw.commit()
    finally:
        raw.close()


# --- engines: open, describe, drop --------------------------------------------------------


@contextlib.contextmanager
def targets(names: list[str], notes: list[str]) -> Iterator[list[Target]]:
    """Open each reachable engine's databases; unreachable ones are skipped with a note."""
    scratch = Path(tempfile.mkdtemp(prefix="archivist-bench-"))
    opened: list[Target] = []
    try:
        for name in names:
            try:
                opened.append(_open(name, scratch))
            except (sa.exc.SQLAlchemyError, OSError) as exc:
                notes.append(f"{name}: skipped, server unreachable ({_first_line(exc)})")
        yield opened
    finally:
        for target in opened:
            target.dispose()
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                _drop(target)
        shutil.rmtree(scratch, ignore_errors=True)


def _open(name: str, scratch: Path) -> Target:
    suffix = secrets.token_hex(4)
    if name == "sqlite":
        primary, archive = scratch / "primary.db", scratch / "archive.db"
        target = Target(
            name, f"sqlite:///{primary}", f"sqlite:///{archive}", str(primary), str(archive)
        )
        import sqlite3

        target.version = f"SQLite {sqlite3.sqlite_version}"
        return target
    server = PG_SERVER if name == "postgresql" else MARIADB_SERVER
    scheme = "postgresql+psycopg" if name == "postgresql" else "mysql+pymysql"
    admin_db = "postgres" if name == "postgresql" else ""
    admin = create_engine(f"{scheme}://{server}/{admin_db}")
    primary_db, archive_db = f"bench_primary_{suffix}", f"bench_archive_{suffix}"
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            version = str(connection.execute(sa.text("SELECT version()")).scalar_one())
            for database in (primary_db, archive_db):
                connection.execute(sa.text(f"CREATE DATABASE {database}"))
    finally:
        admin.dispose()
    target = Target(
        name,
        f"{scheme}://{server}/{primary_db}",
        f"{scheme}://{server}/{archive_db}",
        primary_db,
        archive_db,
    )
    target.version = (
        version.split(" on ", maxsplit=1)[0] if name == "postgresql" else f"MariaDB {version}"
    )
    return target


def _drop(target: Target) -> None:
    if target.engine == "sqlite":
        return
    server = PG_SERVER if target.engine == "postgresql" else MARIADB_SERVER
    scheme = "postgresql+psycopg" if target.engine == "postgresql" else "mysql+pymysql"
    admin_db = "postgres" if target.engine == "postgresql" else ""
    admin = create_engine(f"{scheme}://{server}/{admin_db}")
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for database in (target.primary_db, target.archive_db):
                connection.execute(sa.text(f"DROP DATABASE IF EXISTS {database}"))
    finally:
        admin.dispose()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
