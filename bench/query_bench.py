"""The cold tier's query figure (docs/performance.md, "Cold tier"): ``archivist query`` of one
day's rows out of ROWS archived in an Iceberg table partitioned by day, its time, and how
many of the table's data files DuckDB read (partition pruning), against a query of every row.

The table is made by archivist (an ``archivist archive`` of a few rows creates it with its
schema, properties and day partitions), then filled with generated rows by pyiceberg in
large appends: archiving ROWS rows through archivist is coldtier_bench.py's measure.

    PYTHONPATH=src .venv/bin/python bench/query_bench.py [--rows 10000000] [--days 1000]

Prints the figures; not a test (nothing is timed against a threshold).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa
from pyiceberg.catalog.sql import SqlCatalog

from archivist import sample

START = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
CHUNK = 500_000


def make_table(folder: Path) -> tuple[Path, str]:
    """A SQLite source of 10 rows and the Iceberg table archivist makes for it (day
    partitions), holding 5 of them."""
    source = folder / "source.db"
    engine = sa.create_engine(f"sqlite:///{source}")
    metadata = sa.MetaData()
    table = sample.chat_messages_table(metadata, "chat_messages")
    metadata.create_all(engine)
    sample.fill(engine, table, 10)
    engine.dispose()
    lake = f"iceberg+sqlite:///{folder}/catalog.db?warehouse={folder}/warehouse"
    config = folder / "archivist.toml"
    config.write_text(
        f'[handles]\nprimary = "sqlite:///{source}"\narchive = "{lake}"\n\n'
        f'[[archive]]\ncollection = "chat_messages"\norder_by = "created_at"\n'
        f'older_than = "1d"\npartition = "day"\n'
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "archivist",
            "archive",
            "chat_messages",
            "--config",
            str(config),
            "--max-rows",
            "5",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"archive failed: {done.stderr}")
    return config, str(folder)


def fill(folder: Path, rows: int, days: int) -> None:
    """Append ``rows`` generated rows spread evenly over ``days`` days from START."""
    catalog = SqlCatalog(
        "archivist", uri=f"sqlite:///{folder}/catalog.db", warehouse=f"file://{folder}/warehouse"
    )
    table = catalog.load_table(("archivist", "chat_messages"))
    schema = table.schema().as_arrow()
    step = dt.timedelta(days=days) / rows
    for first in range(0, rows, CHUNK):
        count = min(CHUNK, rows - first)
        ids = list(range(1000 + first, 1000 + first + count))
        generated = list(sample.generate_rows(count, start_id=1000 + first))
        batch = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "room_id": pa.array([r["room_id"] for r in generated], pa.int32()),
                "sender_id": pa.array([r["sender_id"] for r in generated], pa.int32()),
                "created_at": pa.array(
                    [START + step * (first + i) for i in range(count)], pa.timestamp("us", "UTC")
                ),
                "body": pa.array([r["body"] for r in generated], pa.large_string()),
                "metadata": pa.array([str(r["metadata"]) for r in generated], pa.large_string()),
            }
        )
        table.append(batch.cast(schema))
        print(f"  appended {first + count:,} rows", file=sys.stderr)


def query(config: Path, sql: str) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "archivist", "query", "--config", str(config), sql],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"query failed: {done.stderr}")
    return time.monotonic() - started, done.stdout.strip().splitlines()[-1]


def files_read(config: Path, sql: str) -> str:
    """DuckDB's own account of the scan, from EXPLAIN ANALYZE: the data files it read."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "archivist",
            "query",
            "--config",
            str(config),
            "--format",
            "csv",
            f"EXPLAIN ANALYZE {sql}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if os.environ.get("QUERY_BENCH_PLAN"):
        print(done.stdout, file=sys.stderr)
    found = re.findall(r"Total Files Read[^\d]*(\d[\d,]*)", done.stdout)
    spent = re.findall(r"Total Time: ([\d.]+)s", done.stdout)
    files = f"data files read: {found[0]}" if found else "files read not shown"
    return files + (f"; DuckDB's own time {float(spent[0]):.3f} s" if spent else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="archivist-query-bench-"))
    try:
        config, _ = make_table(folder)
        began = time.monotonic()
        fill(folder, args.rows, args.days)
        filled = time.monotonic() - began
        files = len(list((folder / "warehouse").rglob("*.parquet")))
        day = START + dt.timedelta(days=args.days // 2)
        one_day = (
            "SELECT count(*) AS n FROM chat_messages WHERE created_at >= "
            f"TIMESTAMPTZ '{day.isoformat()}' AND created_at < "
            f"TIMESTAMPTZ '{(day + dt.timedelta(days=1)).isoformat()}'"
        )
        every = "SELECT count(*) AS n FROM chat_messages WHERE body LIKE '%zzz%'"
        print(f"machine: {platform.machine()}, {os.cpu_count()} cpu, load {os.getloadavg()[0]:.1f}")
        print(
            f"table: {args.rows:,} rows over {args.days} days, {files} data files, "
            f"filled by pyiceberg in {filled:.0f} s"
        )
        for name, sql in (("one day", one_day), ("every row", every)):
            times, answer = [], ""
            for _ in range(args.runs):
                seconds, answer = query(config, sql)
                times.append(seconds)
            print(
                f"{name}: median {statistics.median(times):.2f} s (of {args.runs}; whole "
                f"command, start-up included), answer {answer}; {files_read(config, sql)}"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
