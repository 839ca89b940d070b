"""The cold tier's figures (docs/performance.md, "Cold tier"): archiving ROWS/2 of ROWS
SQLite rows into an Iceberg table against into a SQLite archive table on the same machine
(rows/s), the Iceberg archive's size on disk against the source table's for the same rows,
and the archiving process's peak memory as the rows archived grow.

    PYTHONPATH=src .venv/bin/python bench/coldtier_bench.py [--rows 1000000] [--runs 3]
        [--no-memory] [--json bench/results/DATE-coldtier.json]

The two paths run alternately, --runs times each, from fresh copies of one source; the
figures are the medians, with each round's ratio and the load average before and after
each run.

Prints the figures; not a test (nothing is timed against a threshold).
"""

from __future__ import annotations

import argparse
import json
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


def load() -> float:
    return os.getloadavg()[0]


def run_once(base: Path, pristine: Path, name: str, rows: int, keep: int) -> dict[str, float]:
    """One archiving run of ``name`` ("sql" or "iceberg") from a fresh copy of the source."""
    work = base / f"{name}-{time.monotonic_ns()}"
    work.mkdir()
    source = work / "primary.db"
    shutil.copy(pristine, source)
    url = (
        f"sqlite:///{work}/archive.db"
        if name == "sql"
        else f"iceberg+sqlite:///{work}/catalog.db?warehouse={work}/warehouse"
    )
    before = load()
    figures = archive(work, source, url, keep, 250_000)
    figures["load_before"] = before
    figures["load_after"] = load()
    target = work / ("archive.db" if name == "sql" else "warehouse")
    figures["size_mb"] = folder_size(target) / 1e6
    shutil.rmtree(work)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="alternated runs of each path")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory figures")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    rows = args.rows
    half = rows // 2
    runs: dict[str, list[dict[str, float]]] = {"sql": [], "iceberg": []}
    memory: list[dict[str, float]] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        pristine = base / "pristine.db"
        make_source(pristine, rows)
        print(f"source: {rows:,} rows, {folder_size(pristine) / 1e6:.1f} MB")

        # The two paths alternate (the order flips each round), so that a change in the
        # machine's load falls on both; the ratio of each round is of neighbouring runs.
        for round_ in range(args.runs):
            order = ("sql", "iceberg") if round_ % 2 == 0 else ("iceberg", "sql")
            for name in order:
                figures = run_once(base, pristine, name, rows, rows - half)
                runs[name].append(figures)
                print(
                    f"round {round_ + 1} {name}: "
                    + ", ".join(f"{k} {v:,.1f}" for k, v in figures.items()),
                    flush=True,
                )

        if not args.no_memory:
            for moved in (half // 5, half // 2, half):
                work = base / f"mem{moved}"
                work.mkdir()
                source = work / "primary.db"
                shutil.copy(pristine, source)
                url = f"iceberg+sqlite:///{work}/catalog.db?warehouse={work}/warehouse"
                figures = archive(work, source, url, rows - moved, 100_000)
                figures["load"] = load()
                memory.append(figures)
                print(
                    f"memory: {moved:,} rows archived (rows_per_file 100,000): "
                    f"peak RSS {figures['rss_mb']:.0f} MB",
                    flush=True,
                )
                shutil.rmtree(work)

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    ratios = [
        ice["rows_per_s"] / sql["rows_per_s"]
        for sql, ice in zip(runs["sql"], runs["iceberg"], strict=True)
    ]
    summary = {
        "sql_rows_per_s": median("sql", "rows_per_s"),
        "iceberg_rows_per_s": median("iceberg", "rows_per_s"),
        "ratio_of_medians": median("iceberg", "rows_per_s") / median("sql", "rows_per_s"),
        "ratios_by_round": ratios,
        "size_ratio": median("iceberg", "size_mb") / median("sql", "size_mb"),
    }
    print(
        f"cold tier figures ({time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
        f"{os.cpu_count()} cores, load {load():.1f}): {half:,} of {rows:,} rows, medians of "
        f"{args.runs}: Iceberg {summary['iceberg_rows_per_s']:,.0f} rows/s, SQLite table "
        f"{summary['sql_rows_per_s']:,.0f} rows/s (ratio {summary['ratio_of_medians']:.2f}; "
        f"by round {', '.join(f'{r:.2f}' for r in ratios)}); size ratio "
        f"{summary['size_ratio']:.2f}"
    )
    if args.json is not None:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        document = {
            "machine": {
                "started": started,
                "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "node": platform.node(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "commit": commit,
            },
            "settings": {"rows": rows, "archive_rows": half, "runs": args.runs},
            "runs": runs,
            "memory": memory,
            "summary": summary,
        }
        args.json.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
