"""Paths (issue 27): archivist on every way rows can travel (one database file to another,
two databases of one server, two servers, two engines) against the simplest fast program
a user could write or install for the same path.

The second servers are started here (a PostgreSQL cluster from ``initdb``/``pg_ctl``, a
``mariadbd`` with its own data directory, each on a free port), so that the cross-server
rows really cross servers. The baselines:

- SQLite -> SQLite: two ``sqlite3`` connections, ``executemany``.
- into PostgreSQL: the psycopg loop the issue describes: SELECT the 1,000 oldest, COPY
  them into the archive, commit, ``DELETE ... WHERE id = ANY(%s)`` (or ``IN``), commit.
- MariaDB -> MariaDB: pt-archiver ``--bulk-insert --bulk-delete`` (Debian's
  percona-toolkit), on one server or from one server to the other.
- PostgreSQL -> MariaDB: ``COPY (SELECT ...) TO STDOUT`` (PostgreSQL's text format is
  what ``LOAD DATA`` reads by default), ``LOAD DATA LOCAL INFILE``, commit, delete, commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psycopg
import pymysql
import sqlalchemy as sa
from engines import TABLE, Target
from workloads import ArchiveRun

# tests/servers.py starts the tests' private PostgreSQL and MariaDB servers; the
# benchmark's second servers are the same thing, so they come from there, not a copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import (
    PrivateMariaDB,
    PrivatePostgres,
    missing_programs,
    short_directory,
)

COLUMNS: Final = "id, room_id, sender_id, created_at, body, metadata"
PT_ARCHIVER_MISSING: Final = (
    "pt-archiver: not installed, its rows skipped (it is Debian's percona-toolkit: "
    "apt-get install -y percona-toolkit)"
)


@dataclass(frozen=True)
class Baseline:
    key: str
    label: str
    run: Callable[[Target, int, int], ArchiveRun]


@dataclass(frozen=True)
class PathSpec:
    key: str
    label: str
    source: str
    """The source's engine, on the shared server (or a file): sqlite, postgresql, mariadb."""
    archive: str
    """Where the archive is: ``same`` (the other database of the source's server or file),
    ``pg`` (the shared PostgreSQL), ``pg2`` or ``mariadb2`` (the second servers)."""
    baseline: str
    target: float | None
    """The ratio issue 27 asks for (None: no target, a figure to keep)."""
    worker: tuple[tuple[str, str], ...] = ()
    """Extra ``[worker]`` settings for archivist on this path."""
    baseline_of: str | None = None
    """Take the baseline's figures from that path's runs (same data, same servers)."""
    most_runs: int | None = None
    """Run this path at most so many times (issue 27: 2 for the rows through the worker,
    the slowest rows)."""


# --- the baselines --------------------------------------------------------------------


def _pg_conninfo(url: str) -> str:
    parts = sa.engine.make_url(url)
    return (
        f"host={parts.host} port={parts.port or 5432} user={parts.username} "
        f"dbname={parts.database} options='-c TimeZone=UTC'"
    )


def _mariadb_connect(url: str, **options: object) -> pymysql.connections.Connection[object]:
    parts = sa.engine.make_url(url)
    connection = pymysql.connect(
        host=parts.host,
        port=parts.port or 3306,
        user=parts.username,
        database=parts.database,
        autocommit=False,
        **options,  # type: ignore[arg-type]
    )
    with connection.cursor() as cursor:
        cursor.execute("SET time_zone = '+00:00'")
    return connection


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def sqlite_executemany(target: Target, rows: int, batch_size: int) -> ArchiveRun:
    """Two sqlite3 connections: select a batch, ``executemany`` it into the archive file,
    commit, delete it by id, commit."""
    target.create_archive()
    target.dispose()
    source = sqlite3.connect(_sqlite_path(target.primary_url), isolation_level=None, timeout=30)
    archive = sqlite3.connect(_sqlite_path(target.archive_url), isolation_level=None, timeout=30)
    moved = 0
    started = time.perf_counter()
    try:
        while moved < rows:
            limit = min(batch_size, rows - moved)
            source.execute("BEGIN IMMEDIATE")
            batch = source.execute(
                f"SELECT {COLUMNS} FROM {TABLE} ORDER BY created_at LIMIT ?", (limit,)
            ).fetchall()
            if not batch:
                source.execute("COMMIT")
                break
            archive.execute("BEGIN")
            archive.executemany(f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", batch)
            archive.execute("COMMIT")
            marks = ", ".join("?" * len(batch))
            source.execute(f"DELETE FROM {TABLE} WHERE id IN ({marks})", [r[0] for r in batch])
            source.execute("COMMIT")
            moved += len(batch)
    finally:
        source.close()
        archive.close()
    return ArchiveRun(rows=moved, seconds=time.perf_counter() - started)


def copy_into_postgres(target: Target, rows: int, batch_size: int) -> ArchiveRun:
    """SELECT the batch from the source (PostgreSQL, MariaDB or SQLite, its usual driver),
    ``COPY ... FROM STDIN`` it into the PostgreSQL archive, commit, delete it by id,
    commit: the loop of issue 27's table."""
    target.create_archive()
    target.dispose()
    source_engine = sa.engine.make_url(target.primary_url).get_backend_name()
    read: Callable[[int], list[tuple[object, ...]]]
    delete: Callable[[list[object]], None]
    select = f"SELECT {COLUMNS} FROM {TABLE} ORDER BY created_at LIMIT "
    with contextlib.ExitStack() as stack:
        if source_engine == "postgresql":
            pg = stack.enter_context(psycopg.connect(_pg_conninfo(target.primary_url)))
            # metadata as its JSON text: COPY takes it as it is, nothing parses it.
            pg_select = select.replace("metadata", "metadata::text")

            def read(limit: int) -> list[tuple[object, ...]]:
                return pg.execute(pg_select + "%s", (limit,)).fetchall()

            def delete(ids: list[object]) -> None:
                pg.execute(f"DELETE FROM {TABLE} WHERE id = ANY(%s)", (ids,))
                pg.commit()

        elif source_engine == "mysql":
            my = _mariadb_connect(target.primary_url)
            stack.callback(my.close)

            def read(limit: int) -> list[tuple[object, ...]]:
                with my.cursor() as cursor:
                    cursor.execute(select + "%s", (limit,))
                    return list(cursor.fetchall())

            def delete(ids: list[object]) -> None:
                with my.cursor() as cursor:
                    cursor.execute(f"DELETE FROM {TABLE} WHERE id IN %s", (ids,))
                my.commit()

        else:
            lite = sqlite3.connect(_sqlite_path(target.primary_url), timeout=30)
            stack.callback(lite.close)

            def read(limit: int) -> list[tuple[object, ...]]:
                return lite.execute(select + "?", (limit,)).fetchall()

            def delete(ids: list[object]) -> None:
                marks = ", ".join("?" * len(ids))
                lite.execute(f"DELETE FROM {TABLE} WHERE id IN ({marks})", ids)
                lite.commit()

        dest = stack.enter_context(psycopg.connect(_pg_conninfo(target.archive_url)))
        moved = 0
        started = time.perf_counter()
        while moved < rows:
            batch = read(min(batch_size, rows - moved))
            if not batch:
                break
            with (
                dest.cursor() as cursor,
                cursor.copy(f"COPY {TABLE} ({COLUMNS}) FROM STDIN") as copy,
            ):
                for row in batch:
                    copy.write_row(row)
            dest.commit()
            delete([row[0] for row in batch])
            moved += len(batch)
        return ArchiveRun(rows=moved, seconds=time.perf_counter() - started)


def postgres_into_mariadb(target: Target, rows: int, batch_size: int) -> ArchiveRun:
    """``COPY (SELECT the oldest batch) TO STDOUT`` (text: tab-separated, ``\\N``, backslash
    escapes, as ``LOAD DATA`` reads by default), ``LOAD DATA LOCAL INFILE`` into MariaDB,
    commit, delete the batch's ids from PostgreSQL, commit."""
    target.create_archive()
    target.dispose()
    scratch = Path(tempfile.mkdtemp(prefix="archivist-bench-load-"))
    batch_file = scratch / "batch.tsv"
    columns = COLUMNS.replace("created_at", "created_at AT TIME ZONE 'UTC'")
    load = f"LOAD DATA LOCAL INFILE %s INTO TABLE {TABLE} CHARACTER SET utf8mb4 ({COLUMNS})"
    dest = _mariadb_connect(target.archive_url, local_infile=True)
    moved = 0
    try:
        with psycopg.connect(_pg_conninfo(target.primary_url)) as source:
            started = time.perf_counter()
            while moved < rows:
                limit = min(batch_size, rows - moved)
                data = bytearray()
                with (
                    source.cursor() as cursor,
                    cursor.copy(
                        f"COPY (SELECT {columns} FROM {TABLE} ORDER BY created_at "
                        f"LIMIT {limit}) TO STDOUT"
                    ) as copy,
                ):
                    for block in copy:
                        data += block
                if not data:
                    break
                lines = bytes(data).rstrip(b"\n").split(b"\n")
                ids = [int(line.split(b"\t", 1)[0]) for line in lines]
                batch_file.write_bytes(data)
                with dest.cursor() as cursor:
                    loaded = cursor.execute(load, (str(batch_file),))
                if loaded != len(ids):
                    raise RuntimeError(f"LOAD DATA took {loaded} rows of {len(ids)}")
                dest.commit()
                source.execute(f"DELETE FROM {TABLE} WHERE id = ANY(%s)", (ids,))
                source.commit()
                moved += len(ids)
            seconds = time.perf_counter() - started
    finally:
        dest.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return ArchiveRun(rows=moved, seconds=seconds)


def pt_archiver_bulk(target: Target, rows: int, batch_size: int) -> ArchiveRun:
    """Percona's pt-archiver ``--bulk-insert --bulk-delete``, from the source's server to
    the archive's (the same server or another), moving the same rows (ids 1..rows are the
    oldest)."""
    target.create_archive()
    target.dispose()

    def dsn(url: str) -> str:
        parts = sa.engine.make_url(url)
        return (
            f"h={parts.host},P={parts.port or 3306},u={parts.username},D={parts.database},t={TABLE}"
        )

    command = [
        "pt-archiver",
        "--source",
        dsn(target.primary_url),
        "--dest",
        dsn(target.archive_url),
        "--where",
        f"id <= {rows}",
        "--limit",
        str(batch_size),
        "--commit-each",
        "--bulk-insert",
        "--bulk-delete",
        "--no-check-charset",
        "--no-version-check",
        "--set-vars",
        "time_zone='+00:00'",
    ]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"pt-archiver failed ({finished.returncode}): {finished.stderr[-2000:]}")
    return ArchiveRun(rows=target.count("archive"), seconds=seconds)


BASELINES: Final = {
    baseline.key: baseline
    for baseline in (
        Baseline("executemany", "sqlite3 executemany loop", sqlite_executemany),
        Baseline("copy_loop", "psycopg COPY loop", copy_into_postgres),
        Baseline("pt_bulk", "pt-archiver bulk", pt_archiver_bulk),
        Baseline(
            "copy_load_data",
            "COPY out, LOAD DATA in",
            postgres_into_mariadb,
        ),
    )
}

ROWS_THROUGH_WORKER: Final = (("in_database", "false"),)
PATHS: Final = (
    PathSpec("sqlite", "SQLite -> SQLite", "sqlite", "same", "executemany", None),
    PathSpec("mariadb", "MariaDB, 2 databases, 1 server", "mariadb", "same", "pt_bulk", None),
    PathSpec("pg", "PG, 2 databases, 1 server", "postgresql", "same", "copy_loop", 1.0),
    PathSpec(
        "pg_rows",
        "PG, rows through the worker",
        "postgresql",
        "same",
        "copy_loop",
        None,
        ROWS_THROUGH_WORKER,
        baseline_of="pg",
        most_runs=2,
    ),
    PathSpec(
        "mariadb_rows",
        "MariaDB, rows through the worker",
        "mariadb",
        "same",
        "pt_bulk",
        None,
        ROWS_THROUGH_WORKER,
        baseline_of="mariadb",
        most_runs=2,
    ),
    PathSpec("pg_pg2", "PG -> PG2 (2 servers)", "postgresql", "pg2", "copy_loop", 1.0),
    PathSpec(
        "mariadb_mariadb2",
        "MariaDB -> MariaDB2 (2 servers)",
        "mariadb",
        "mariadb2",
        "pt_bulk",
        1.5,
    ),
    PathSpec(
        "pg_mariadb2",
        "PG -> MariaDB2",
        "postgresql",
        "mariadb2",
        "copy_load_data",
        1.0,
    ),
    PathSpec("mariadb_pg2", "MariaDB -> PG2", "mariadb", "pg2", "copy_loop", 1.0),
    PathSpec("sqlite_pg", "SQLite -> PG", "sqlite", "pg", "copy_loop", 1.0),
)


# --- the second servers, and a target per path ----------------------------------------


@dataclass
class Archives:
    """Where the cross-server archives go: a URL maker per place (``pg2``, ``mariadb2``,
    ``pg``), and what to drop at the end."""

    makers: dict[str, Callable[[str], str]] = dataclasses.field(default_factory=dict)
    servers: list[PrivatePostgres | PrivateMariaDB] = dataclasses.field(default_factory=list)
    shared_databases: list[str] = dataclasses.field(default_factory=list)

    def database(self, place: str) -> str:
        return self.makers[place](f"bench_archive_{secrets.token_hex(4)}")


@contextlib.contextmanager
def second_servers(notes: list[str], shared_pg_url: str | None) -> Iterator[Archives]:
    """Start a second PostgreSQL (initdb, pg_ctl) and a second MariaDB (own datadir),
    configured like the shared ones (fsync on, a 128 MiB buffer pool), on free ports; stop
    and delete them at the end."""
    archives = Archives()
    why = missing_programs()
    try:
        if why is not None:
            notes.append(f"second servers: not started, {why}; cross-server rows skipped")
        else:
            postgres = PrivatePostgres(short_directory("archivist-bench-pg2-"), ["fsync=on"])
            archives.servers.append(postgres)
            postgres.install()
            postgres.start()
            archives.makers["pg2"] = postgres.create_database
            mariadb = PrivateMariaDB(
                short_directory("archivist-bench-my2-"), ["--innodb-buffer-pool-size=128M"]
            )
            archives.servers.append(mariadb)
            mariadb.install()
            mariadb.start()
            archives.makers["mariadb2"] = mariadb.create_database
        if shared_pg_url is not None:
            archives.makers["pg"] = lambda name: _create_shared_pg(
                shared_pg_url, name, archives.shared_databases
            )
        yield archives
    finally:
        for server in archives.servers:
            server.remove()
        if shared_pg_url is not None:
            _drop_shared_pg(shared_pg_url, archives.shared_databases)


def _admin_pg(url: str) -> sa.Engine:
    return sa.create_engine(
        sa.engine.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )


def _create_shared_pg(url: str, name: str, created: list[str]) -> str:
    engine = _admin_pg(url)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        engine.dispose()
    created.append(name)
    return sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)


def _drop_shared_pg(url: str, names: list[str]) -> None:
    engine = _admin_pg(url)
    try:
        with engine.connect() as connection:
            for name in names:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except sa.exc.SQLAlchemyError:
        pass
    finally:
        engine.dispose()


def path_target(spec: PathSpec, source: Target, archives: Archives) -> Target | None:
    """The source's target for ``same``; else one sharing its primary (and seed table) with
    an archive database in the place the path names (None when that place is missing)."""
    settings = {**source.worker_settings, **dict(spec.worker)}
    if spec.archive == "same":
        return dataclasses.replace(source, worker_settings=settings, _engines={})
    if spec.archive not in archives.makers:
        return None
    url = archives.database(spec.archive)
    return dataclasses.replace(
        source,
        archive_url=url,
        archive_db=sa.engine.make_url(url).database or "",
        worker_settings=settings,
        _engines={},
    )


def pt_archiver_installed() -> bool:
    return shutil.which("pt-archiver") is not None
