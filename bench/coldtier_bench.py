"""The cold tier's figures (docs/performance.md, "Cold tier"): archiving ROWS/2 of ROWS
SQLite rows into an Iceberg table against into a SQLite archive table on the same machine
(rows/s), the Iceberg archive's size on disk against the source table's for the same rows,
and the archiving process's peak memory as the rows archived grow.

    PYTHONPATH=src .venv/bin/python bench/coldtier_bench.py [--rows 1000000]

Prints the figures; not a test (nothing is timed against a threshold).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from archivist import sample


def make_source(path: Path, rows: int) -> None:
    engine = sa.create_engine(f"sqlite:///{path}")
    metadata = sa.MetaData()
    table = sample.chat_messages_table(metadata, "chat_messages")
    metadata.create_all(engine)
    sample.fill(engine, table, rows)
    engine.dispose()


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def archive(
    folder: Path, source: Path, archive_url: str, keep: int, rows_per_file: int
) -> dict[str, float]:
    """One ``archivist archive`` run moving all but ``keep`` rows; its rows/s and peak RSS."""
    config = folder / "archivist.toml"
    config.write_text(
        f'[handles]\nprimary = "sqlite:///{source}"\narchive = "{archive_url}"\n\n'
        f"[worker]\nbatch_time = 0\n\n"
        f'[[archive]]\ncollection = "chat_messages"\norder_by = "created_at"\n'
        f"max_rows = {keep}\nrows_per_archive = 1\nbatch_size = 10000\n"
        f"rows_per_file = {rows_per_file}\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [
            "/usr/bin/time",
            "-v",
            sys.executable,
            "-m",
            "archivist",
            "archive",
            "chat_messages",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    moved = int(re.search(r"archived ([\d,]+) rows", done.stdout).group(1).replace(",", ""))  # type: ignore[union-attr]
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    return {"rows": moved, "seconds": seconds, "rows_per_s": moved / seconds, "rss_mb": rss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    rows = args.rows
    half = rows // 2
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        pristine = base / "pristine.db"
        make_source(pristine, rows)
        print(f"source: {rows:,} rows, {folder_size(pristine) / 1e6:.1f} MB")

        results = {}
        for name in ("sql", "iceberg"):
            work = base / name
            work.mkdir()
            source = work / "primary.db"
            shutil.copy(pristine, source)
            url = (
                f"sqlite:///{work}/archive.db"
                if name == "sql"
                else f"iceberg+sqlite:///{work}/catalog.db?warehouse={work}/warehouse"
            )
            results[name] = archive(work, source, url, rows - half, 250_000)
            target = work / ("archive.db" if name == "sql" else "warehouse")
            results[name]["size_mb"] = folder_size(target) / 1e6
            print(name, {k: round(v, 1) for k, v in results[name].items()})

        for moved in (half // 5, half // 2, half):
            work = base / f"mem{moved}"
            work.mkdir()
            source = work / "primary.db"
            shutil.copy(pristine, source)
            url = f"iceberg+sqlite:///{work}/catalog.db?warehouse={work}/warehouse"
            figures = archive(work, source, url, rows - moved, 100_000)
            print(
                f"memory: {moved:,} rows archived (rows_per_file 100,000): "
                f"peak RSS {figures['rss_mb']:.0f} MB"
            )

    sql, ice = results["sql"], results["iceberg"]
    print(
        f"cold tier figures ({time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}): "
        f"{half:,} of {rows:,} rows: Iceberg {ice['rows_per_s']:,.0f} rows/s, SQLite table "
        f"{sql['rows_per_s']:,.0f} rows/s (ratio {ice['rows_per_s'] / sql['rows_per_s']:.2f}); "
        f"size: Iceberg {ice['size_mb']:.1f} MB, SQLite table {sql['size_mb']:.1f} MB "
        f"(ratio {ice['size_mb'] / sql['size_mb']:.2f})"
    )


if __name__ == "__main__":
    main()
