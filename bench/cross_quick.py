"""A quick measurement of archivist's paths between two databases (issue 27, crossserver):
``archivist archive`` end to end, by the daemon's copy (``in_database = true``) and through
the worker, against a psycopg COPY loop on PostgreSQL. Not the benchmark of record
(bench/archive_bench.py is): one table size, a few runs, printed as rows/s.

    PYTHONPATH=src .venv/bin/python bench/cross_quick.py --pairs pg-pg,pg-pg2 --rows 60000

A pair's ``2`` puts the archive on a second server of that engine, started here
(tests/servers.py), so that rows really cross servers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from archivist import sample
from archivist.data.handles import create_engine
from servers import PrivateMariaDB, PrivatePostgres, short_directory

ENGINES = {"pg": "postgresql", "my": "mysql", "sqlite": "sqlite"}
SHARED = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/",
}


class Servers:
    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.second: dict[str, PrivatePostgres | PrivateMariaDB] = {}
        self.made: list[tuple[str, str, PrivatePostgres | PrivateMariaDB | None]] = []

    def database(self, code: str) -> str:
        name = f"xq_{secrets.token_hex(4)}"
        engine = ENGINES[code.rstrip("2")]
        if engine == "sqlite":
            return f"sqlite:///{self.scratch / (name + '.db')}"
        if code.endswith("2"):
            if engine not in self.second:
                cls = PrivatePostgres if engine == "postgresql" else PrivateMariaDB
                server = cls(short_directory(f"xq-{engine}-"))
                server.install()
                server.start()
                self.second[engine] = server
            url = self.second[engine].create_database(name)
            self.made.append((engine, name, self.second[engine]))
            return url
        admin = sa.create_engine(SHARED[engine] + ("postgres" if engine == "postgresql" else ""))
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        admin.dispose()
        self.made.append((engine, name, None))
        return SHARED[engine] + name

    def close(self) -> None:
        for engine, name, server in self.made:
            if server is None:
                admin = sa.create_engine(
                    SHARED[engine] + ("postgres" if engine == "postgresql" else "")
                )
                with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                    c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
                admin.dispose()
        for server in self.second.values():
            server.stop()
            server.remove()


def fill(url: str, rows: int) -> None:
    engine = create_engine(url)
    metadata = sa.MetaData()
    table = sample.chat_messages_table(metadata, "chat_messages", index=False)
    with engine.begin() as connection:
        table.drop(connection, checkfirst=True)
        table.create(connection)
        chunk: list[dict[str, object]] = []
        for row in sample.generate_rows(rows):
            chunk.append(row)
            if len(chunk) == 5000:
                connection.execute(table.insert(), chunk)
                chunk = []
        if chunk:
            connection.execute(table.insert(), chunk)
        sa.Index("ix_chat_created", table.c.created_at).create(connection)
        sa.Index("ix_chat_room_created", table.c.room_id, table.c.created_at).create(connection)
    engine.dispose()


def drop_archive(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS chat_messages")
    engine.dispose()


def run_archivist(primary: str, archive: str, moved: int, in_database: bool, work: Path) -> float:
    config = work / "archivist.toml"
    config.write_text(
        f'[handles]\nprimary = "{primary}"\narchive = "{archive}"\n\n'
        f"[worker]\nconcurrency = 1\nin_database = {str(in_database).lower()}\n"
        "yield_ratio = 0\nmax_latency_ms = 100000\nmax_active = 100000\n\n"
        '[[archive]]\ncollection = "chat_messages"\norder_by = "created_at"\n'
        "max_rows = 1\nrows_per_archive = 1\nbatch_size = 1000\n"
    )
    command = [sys.executable, "-m", "archivist", "archive", "chat_messages", "--config"]
    command += [str(config), "--max-rows", str(moved), "--batch-size", "1000"]
    started = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return moved / seconds


def psycopg_loop(primary: str, archive: str, moved: int) -> float:
    """The issue's loop: SELECT a batch, COPY it into the archive, commit, DELETE ... WHERE
    id = ANY(%s), commit."""
    import psycopg

    def dsn(url: str) -> str:
        return url.replace("postgresql+psycopg://", "postgresql://")

    columns = "id, room_id, sender_id, created_at, body, metadata"
    with psycopg.connect(dsn(primary)) as src, psycopg.connect(dsn(archive)) as dst:
        with dst.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS chat_messages (id bigint PRIMARY KEY, room_id integer,"
                " sender_id integer, created_at timestamptz, body text, metadata json)"
            )
        dst.commit()
        started = time.perf_counter()
        left = moved
        while left > 0:
            with src.cursor() as cursor:
                cursor.execute(
                    f"SELECT {columns.replace('metadata', 'metadata::text')} FROM chat_messages"
                    " ORDER BY created_at, id LIMIT %s",
                    (min(1000, left),),
                )
                rows = cursor.fetchall()
            src.commit()
            with (
                dst.cursor() as cursor,
                cursor.copy(f"COPY chat_messages ({columns}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            dst.commit()
            with src.cursor() as cursor:
                cursor.execute(
                    "DELETE FROM chat_messages WHERE id = ANY(%s)", ([r[0] for r in rows],)
                )
            src.commit()
            left -= len(rows)
        return moved / (time.perf_counter() - started)


def pt_archiver(primary: str, archive: str, moved: int) -> float:
    """pt-archiver's bulk mode between the two MariaDB databases (ids 1..moved are the
    oldest); the archive table made first, as archivist would."""
    source, dest = sa.engine.make_url(primary), sa.engine.make_url(archive)
    engine = create_engine(archive)
    with engine.begin() as connection:
        table = sample.chat_messages_table(sa.MetaData(), "chat_messages", index=False)
        table.create(connection, checkfirst=True)
    engine.dispose()

    def dsn(url: sa.engine.URL) -> str:
        return (
            f"h={url.host},P={url.port or 3306},u={url.username},D={url.database},t=chat_messages"
        )

    command = ["pt-archiver", "--source", dsn(source), "--dest", dsn(dest)]
    command += ["--where", f"id <= {moved}", "--limit", "1000", "--commit-each"]
    command += ["--no-check-charset", "--no-version-check", "--set-vars", "time_zone='+00:00'"]
    command += ["--bulk-insert", "--bulk-delete"]
    started = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return moved / (time.perf_counter() - started)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="xq-", dir="/tmp") as name:
        yield Path(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="pg-pg,pg-pg2,my-my2,pg-my2,my-pg2,sqlite-pg2,pg-sqlite")
    parser.add_argument("--rows", type=int, default=60_000, help="rows in the table")
    parser.add_argument("--move", type=int, default=30_000, help="rows each run moves")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--methods", default="copy,worker,loop,pt")
    args = parser.parse_args()
    methods = args.methods.split(",")
    print(f"load average {os.getloadavg()}")
    with scratch_dir() as scratch:
        servers = Servers(scratch)
        try:
            for pair in args.pairs.split(","):
                source_code, dest_code = pair.split("-")
                primary = servers.database(source_code)
                archive = servers.database(dest_code)
                figures: dict[str, list[float]] = {m: [] for m in methods}
                for _ in range(args.runs):
                    for method in methods:
                        both = {primary.split(":")[0], archive.split(":")[0]}
                        if method == "loop" and both != {"postgresql+psycopg"}:
                            continue
                        if method == "pt" and both != {"mysql+pymysql"}:
                            continue
                        fill(primary, args.rows)
                        drop_archive(archive)
                        if method == "loop":
                            figures[method].append(psycopg_loop(primary, archive, args.move))
                        elif method == "pt":
                            figures[method].append(pt_archiver(primary, archive, args.move))
                        else:
                            figures[method].append(
                                run_archivist(
                                    primary, archive, args.move, method == "copy", scratch
                                )
                            )
                shown = ", ".join(
                    f"{m} {statistics.median(v):,.0f} rows/s [{min(v):,.0f}-{max(v):,.0f}]"
                    for m, v in figures.items()
                    if v
                )
                print(f"{pair}: {shown}  (load {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            servers.close()


if __name__ == "__main__":
    main()
