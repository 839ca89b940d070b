"""The archivist benchmark (issues 6 and 27): archivist on every path rows travel (one
server, two servers, two engines) against the fastest simple program for that path
(psycopg's COPY loop, pt-archiver's bulk mode, LOAD DATA, executemany), per engine against
the application-level and in-database limits, the foreground application's latency, peak
memory, a one-shot archive's start-up and the socket round trip, on the same generated
``chat_messages`` data.

    .venv/bin/python bench/archive_bench.py --quick      # CI size (make bench)
    .venv/bin/python bench/archive_bench.py              # 500,000 of 1,000,000 rows
    .venv/bin/python bench/archive_bench.py --only paths # issue 27's table alone

Each figure is the median of ``--runs`` runs with min and max; ratios are run by run.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from engines import ENGINES, Target, targets
from paths import (
    BASELINES,
    PATHS,
    PT_ARCHIVER_MISSING,
    PathSpec,
    path_target,
    pt_archiver_installed,
    second_servers,
)
from report import (
    Results,
    machine,
    per_second,
    percentile,
    print_paths,
    print_report,
    write_json,
)
from rich.console import Console
from workloads import (
    ArchiveRun,
    Foreground,
    pt_archiver_version,
    reference_load,
    run_archivist,
    run_in_database,
    run_keep_up,
    run_one_shot,
    run_pings,
    run_plain_loop,
    run_pt_archiver,
)

import archivist

MIB = 1024
ORDER: list[tuple[str, str]] = [
    ("archivist", "archivist end to end (wall clock, incl. start-up)"),
    ("archivist_task", "archivist task (its own summary)"),
    ("archivist_rows", "archivist, rows through the worker (in_database = false)"),
    ("plain", "plain Python loop (SQLAlchemy Core, 2 connections)"),
    ("in_db", "in-database loop (ATTACH / COPY / INSERT..SELECT)"),
    ("pt_commit", "pt-archiver --limit 1000 --commit-each"),
    ("pt_bulk", "pt-archiver ... --bulk-insert --bulk-delete"),
    ("r_plain", "ratio archivist / plain loop"),
    ("r_task_plain", "ratio archivist task / plain loop"),
    ("r_rows_plain", "ratio archivist rows through the worker / plain loop"),
    ("r_in_db", "ratio archivist / in-database"),
    ("r_pt_bulk", "ratio archivist / pt-archiver bulk"),
    ("r_pt_commit", "ratio archivist / pt-archiver commit-each"),
    ("fg_idle_p50", "foreground p50, idle"),
    ("fg_idle_p99", "foreground p99, idle"),
    ("fg_archivist_p50", "foreground p50, during archivist"),
    ("fg_archivist_p99", "foreground p99, during archivist"),
    ("fg_eager_p50", "foreground p50, during archivist never yielding (yield_ratio = 0)"),
    ("fg_eager_p99", "foreground p99, during archivist never yielding (yield_ratio = 0)"),
    ("fg_plain_p50", "foreground p50, during plain loop"),
    ("fg_plain_p99", "foreground p99, during plain loop"),
    ("fg_cpu_p99", "foreground p99, one core kept busy (reference)"),
    ("fg_disk_p99", "foreground p99, a durable writer to another file (reference)"),
    ("r_fg_archivist", "ratio foreground p99 archivist / idle"),
    ("r_fg_eager", "ratio foreground p99 archivist never yielding / idle"),
    ("r_fg_plain", "ratio foreground p99 plain loop / idle"),
    ("r_fg_cpu", "ratio foreground p99 one busy core / idle (reference)"),
    ("r_fg_disk", "ratio foreground p99 durable writer / idle (reference)"),
    ("archivist_fg", "archivist with the foreground running"),
    ("eager_fg", "archivist never yielding, with the foreground running"),
    ("plain_fg", "plain loop with the foreground running"),
    ("rss_daemon_small", "daemon peak RSS, {small:,} source rows"),
    ("rss_worker_small", "worker peak RSS, {small:,} source rows"),
    ("rss_daemon", "daemon peak RSS, {rows:,} source rows"),
    ("rss_worker", "worker peak RSS, {rows:,} source rows"),
    ("ku_most", "keep-up: most rows at a check after the first"),
    ("ku_over", "keep-up: rows over max_rows + batch_size at worst (0: held)"),
    ("ku_checks", "keep-up: checks"),
    ("ku_app_rate", "keep-up: rows/s the application inserted"),
    ("ku_moved_rate", "keep-up: rows/s archivist moved"),
    ("ku_asked", "keep-up: highest rate the daemon asked"),
    ("fg_keepup_p50", "foreground p50, during keep-up"),
    ("fg_keepup_p99", "foreground p99, during keep-up"),
    ("r_fg_keepup", "ratio foreground p99 keep-up / idle"),
    ("first_batch", "one-shot archive of 1,000 rows: launch to first batch"),
    ("one_shot", "one-shot archive of 1,000 rows: the whole command"),
    ("one_shot_cpu", "one-shot archive of 1,000 rows: CPU time, daemon + worker"),
    ("interpreter", "python -c pass (the interpreter alone)"),
    ("ping_p50", "ping round trip p50"),
    ("ping_p99", "ping round trip p99"),
    ("ping_rate", "pings per second, one connection"),
]


SECTIONS: tuple[str, ...] = ("paths", "engines", "startup", "pings")
STARTUP_ROWS = 1000
STARTUP_TARGET = 0.4
"""Seconds a one-shot archive of 1,000 rows may take, start-up to first batch (issue 27)."""


@dataclass(frozen=True)
class Settings:
    rows: int
    archive_rows: int
    runs: int
    batch_size: int
    memory_rows: int
    pings: int
    idle_seconds: float
    foreground_rows: int
    foreground: bool
    memory: bool
    engines: list[str]
    worker: dict[str, str] = field(default_factory=dict)
    keep_up: bool = False
    keep_up_rows: int = 50_000
    keep_up_seconds: float = 300.0
    check_interval: float = 5.0
    keep_up_rate: float = 120.0
    sections: tuple[str, ...] = SECTIONS
    paths: tuple[str, ...] = ()
    """Only these paths of the paths section (their keys; empty: every path)."""
    startup_runs: int = 5


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CI size: 30,000 of 60,000 rows")
    parser.add_argument("--rows", type=int, help="rows in the source table (1,000,000)")
    parser.add_argument("--archive-rows", type=int, help="rows archived per run (half of --rows)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (3)")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows per batch (1000)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="sqlite,postgresql,mariadb")
    parser.add_argument(
        "--json",
        type=Path,
        help="where the JSON goes (bench/results/local/<time>.json, git-ignored; results of "
        "record are committed in bench/results/)",
    )
    parser.add_argument("--skip-foreground", action="store_true", help="no foreground latency")
    parser.add_argument(
        "--foreground-rows",
        type=int,
        help="rows archived beside the foreground (30,000 or --archive-rows, the fewer): "
        "archivist yields to it, at ~1,000 rows/s",
    )
    parser.add_argument("--skip-memory", action="store_true", help="no small-table memory runs")
    parser.add_argument("--pings", type=int, help="pings per run (5000; quick 2000)")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        help="seconds the foreground runs alone, and beside each reference load (30; quick "
        "8): at ~245 operations a second the idle p99 then stands on ~7,000 of them",
    )
    parser.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [worker] setting for archivist's runs, e.g. pause=0.05 (repeatable)",
    )
    parser.add_argument(
        "--keep-up",
        action="store_true",
        help="only the keep-up scenario: archivist run holds a table at --keep-up-rows by "
        "policy while the foreground inserts ~120 rows/s and reads; does the table stay "
        "within max_rows + batch_size after the first check?",
    )
    parser.add_argument(
        "--keep-up-rows", type=int, default=50_000, help="the policy's max_rows (50,000)"
    )
    parser.add_argument(
        "--keep-up-seconds", type=float, help="how long archivist run runs (300; quick 60)"
    )
    parser.add_argument(
        "--keep-up-rate",
        type=float,
        default=120.0,
        help="rows/s the application inserts in the keep-up scenario, idle and during: a "
        "second process tops the foreground's own inserts up to it (120; 0: the foreground's "
        "alone, which fall short of it on a loaded machine)",
    )
    parser.add_argument(
        "--check-interval",
        type=float,
        default=5.0,
        help="the daemon's check_interval in the keep-up scenario (5 s: at ~120 rows/s a "
        "check's growth stays under a batch of 1,000)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable): paths (issue 27's table: every path "
        "against its baseline, second servers started here), engines (per engine: plain "
        "and in-database loops, pt-archiver, foreground, memory), startup (a one-shot "
        "archive of 1,000 rows), pings; default: all",
    )
    parser.add_argument(
        "--path",
        action="append",
        choices=[spec.key for spec in PATHS],
        help="with --only paths: run only this path (repeatable; default: every path)",
    )
    parser.add_argument(
        "--startup-runs", type=int, default=5, help="one-shot archives timed for start-up (5)"
    )
    args = parser.parse_args(argv)
    rows = args.rows or (60_000 if args.quick else 1_000_000)
    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines: {', '.join(unknown)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    archive_rows = min(args.archive_rows or rows // 2, rows)
    settings = Settings(
        rows=rows,
        archive_rows=archive_rows,
        runs=args.runs,
        batch_size=args.batch_size,
        memory_rows=20_000 if args.quick else 100_000,
        pings=args.pings or (2_000 if args.quick else 5_000),
        idle_seconds=args.idle_seconds or (8.0 if args.quick else 30.0),
        foreground_rows=min(args.foreground_rows or 30_000, archive_rows),
        foreground=not args.skip_foreground,
        memory=not args.skip_memory,
        engines=engines,
        worker=dict(item.split("=", 1) for item in args.worker),
        keep_up=args.keep_up,
        keep_up_rows=args.keep_up_rows,
        keep_up_seconds=args.keep_up_seconds or (60.0 if args.quick else 300.0),
        check_interval=args.check_interval,
        keep_up_rate=args.keep_up_rate,
        sections=tuple(args.only or SECTIONS),
        paths=tuple(args.path or ()),
        startup_runs=args.startup_runs,
    )
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.json or Path(__file__).parent / "results" / "local" / f"{stamp}.json"
    return settings, json_path


class Bench:
    """Runs every measurement of one engine, ``runs`` times, into ``results``."""

    def __init__(
        self, settings: Settings, results: Results, console: Console, workdir: Path
    ) -> None:
        self.settings = settings
        self.results = results
        self.console = console
        self.workdir = workdir
        self.has_pt_archiver = pt_archiver_installed()
        self.paths_results = Results()

    def keep_up(self, target: Target) -> None:
        """The foreground alone, then beside ``archivist run`` holding the table at its
        policy's limit (issue 25, "Keeping up")."""
        s = self.settings
        name = target.engine
        for run_number in range(1, s.runs + 1):
            self.say(f"{name}: keep-up run {run_number}/{s.runs}")
            target.reset(s.keep_up_rows)
            rate = s.keep_up_rate or None
            with Foreground(target, s.idle_seconds, insert_rate=rate) as idle:
                time.sleep(s.idle_seconds)
            self.latency(name, "idle", idle)
            target.reset(s.keep_up_rows)
            with Foreground(target, s.keep_up_seconds + 600, insert_rate=rate) as app:
                run = run_keep_up(
                    target,
                    s.keep_up_rows,
                    s.batch_size,
                    s.keep_up_seconds,
                    s.check_interval,
                    self.workdir,
                )
            self.latency(name, "keepup", app)
            sizes = [int(str(check["rows"])) for check in run.checks[1:]]
            if not sizes:
                self.results.notes.append(f"{name}: keep-up saw fewer than two checks")
                continue
            most = max(sizes)
            asked = [float(str(c["minRate"])) for c in run.checks if c.get("minRate")]
            self.results.add(name, "ku_most", "rows", most)
            self.results.add(name, "ku_over", "rows", max(0, most - s.keep_up_rows - s.batch_size))
            self.results.add(name, "ku_checks", "checks", len(run.checks))
            self.results.add(name, "ku_app_rate", "rows/s", run.inserted / run.seconds)
            self.results.add(name, "ku_moved_rate", "rows/s", run.moved / run.seconds)
            self.results.add(name, "ku_asked", "rows/s", max(asked, default=0.0))
            self.results.add_series(
                name,
                "keepup_rows",
                [
                    {
                        "second": float(str(c["at"])) - float(str(run.checks[0]["at"])),
                        "rows": float(str(c["rows"])),
                    }
                    for c in run.checks
                ],
            )
            self.say(
                f"  keep-up: {len(run.checks)} checks, most {most:,} rows after the first "
                f"(bound {s.keep_up_rows + s.batch_size:,}), app {run.inserted / run.seconds:,.0f} "
                f"rows/s, moved {run.moved / run.seconds:,.0f} rows/s, asked up to "
                f"{max(asked, default=0.0):,.0f} rows/s"
            )
        self.results.add_ratios(name, "r_fg_keepup", "fg_keepup_p99", "fg_idle_p99")

    def engine(self, target: Target) -> None:
        s = self.settings
        name = target.engine
        if s.keep_up:
            self.keep_up(target)
            return
        started = time.monotonic()
        target.seed(max(s.rows, s.memory_rows))
        self.say(f"{name}: seeded {target.seeded:,} rows in {time.monotonic() - started:.1f} s")
        for run in range(1, s.runs + 1):
            self.say(f"{name}: run {run}/{s.runs}")
            archived = self.archive("archivist", target, lambda: self._archivist(target))
            self.rss(name, "", archived)
            self.archive("archivist_rows", target, lambda: self._archivist_rows(target))
            self.archive(
                "plain", target, lambda: run_plain_loop(target, s.archive_rows, s.batch_size)
            )
            self.archive(
                "in_db", target, lambda: run_in_database(target, s.archive_rows, s.batch_size)
            )
            if name == "mariadb" and self.has_pt_archiver:
                for key, bulk in (("pt_commit", False), ("pt_bulk", True)):
                    self.archive(
                        key,
                        target,
                        lambda bulk=bulk: run_pt_archiver(
                            target, s.archive_rows, s.batch_size, bulk=bulk
                        ),
                    )
            if s.foreground:
                self.foreground(target)
            if s.memory and s.memory_rows < s.rows:
                target.reset(s.memory_rows)
                small = run_archivist(target, s.memory_rows // 2, s.batch_size, self.workdir)
                self.rss(name, "_small", small)
        for ratio, top, bottom in (
            ("r_plain", "archivist", "plain"),
            ("r_task_plain", "archivist_task", "plain"),
            ("r_rows_plain", "archivist_rows", "plain"),
            ("r_in_db", "archivist", "in_db"),
            ("r_pt_bulk", "archivist", "pt_bulk"),
            ("r_pt_commit", "archivist", "pt_commit"),
            ("r_fg_archivist", "fg_archivist_p99", "fg_idle_p99"),
            ("r_fg_eager", "fg_eager_p99", "fg_idle_p99"),
            ("r_fg_plain", "fg_plain_p99", "fg_idle_p99"),
            ("r_fg_cpu", "fg_cpu_p99", "fg_idle_p99"),
            ("r_fg_disk", "fg_disk_p99", "fg_idle_p99"),
        ):
            self.results.add_ratios(name, ratio, top, bottom)
        if name == "mariadb" and not self.has_pt_archiver:
            self.results.notes.append(
                "pt-archiver: skipped, not installed (apt-get install percona-toolkit)"
            )

    def _archivist(self, target: Target, *, record: bool = True) -> ArchiveRun:
        run = run_archivist(
            target, self.settings.archive_rows, self.settings.batch_size, self.workdir
        )
        if record:
            self.results.add(target.engine, "archivist_task", "rows/s", run.task_rows_per_second)
        return run

    def _archivist_rows(self, target: Target) -> ArchiveRun:
        """archivist with every row through the worker, as between two servers."""
        chosen = target.worker_settings
        target.worker_settings = {**chosen, "in_database": "false"}
        try:
            return run_archivist(
                target, self.settings.archive_rows, self.settings.batch_size, self.workdir
            )
        finally:
            target.worker_settings = chosen

    def _eager(self, target: Target, rows: int) -> ArchiveRun:
        """archivist with ``yield_ratio = 0``: never yielding to the application."""
        chosen = target.worker_settings
        target.worker_settings = {**chosen, "yield_ratio": "0"}
        try:
            return run_archivist(target, rows, self.settings.batch_size, self.workdir)
        finally:
            target.worker_settings = chosen

    def archive(self, key: str, target: Target, work: Callable[[], ArchiveRun]) -> ArchiveRun:
        """Reset the data, run one archiving method, check what moved, record rows/s."""
        target.reset(self.settings.rows)
        run = work()
        moved = target.count("archive")
        if moved != self.settings.archive_rows or run.rows != moved:
            raise RuntimeError(f"{target.engine} {key}: archive holds {moved} rows, ran {run.rows}")
        self.results.add(target.engine, key, "rows/s", run.rows_per_second)
        self.say(f"  {key:<10} {run.rows_per_second:>10,.0f} rows/s  ({run.seconds:.2f} s)")
        return run

    def rss(self, engine: str, suffix: str, run: ArchiveRun) -> None:
        self.results.add(engine, f"rss_daemon{suffix}", "MiB", run.daemon_peak_kib / MIB)
        self.results.add(engine, f"rss_worker{suffix}", "MiB", run.worker_peak_kib / MIB)

    def foreground(self, target: Target) -> None:
        s = self.settings
        target.reset(s.rows)
        with Foreground(target, s.idle_seconds) as idle:
            time.sleep(s.idle_seconds)
        self.latency(target.engine, "idle", idle)
        for kind in ("cpu", "disk"):
            with reference_load(kind, self.workdir), Foreground(target, s.idle_seconds) as app:
                time.sleep(s.idle_seconds)
            self.latency(target.engine, kind, app)
        rows = s.foreground_rows
        for key, work in (
            ("archivist", lambda: run_archivist(target, rows, s.batch_size, self.workdir)),
            ("eager", lambda: self._eager(target, rows)),
            ("plain", lambda: run_plain_loop(target, rows, s.batch_size)),
        ):
            target.reset(s.rows)
            with Foreground(target, 3600.0) as app:
                run = work()
            moved = target.count("archive")
            if moved != rows or run.rows != moved:
                raise RuntimeError(f"{target.engine} {key}: archive holds {moved}, ran {run.rows}")
            self.results.add(target.engine, f"{key}_fg", "rows/s", run.rows_per_second)
            self.latency(target.engine, key, app)

    def latency(self, engine: str, key: str, app: Foreground) -> None:
        """The foreground's p50 and p99 over the whole phase, and second by second."""
        latencies = app.latencies
        if not latencies:
            self.results.notes.append(f"{engine}: no foreground operations recorded ({key})")
            return
        p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
        self.results.add(engine, f"fg_{key}_p50", "ms", p50)
        self.results.add(engine, f"fg_{key}_p99", "ms", p99)
        self.results.add_series(engine, key, per_second(app.starts, latencies))
        self.say(
            f"  foreground {key:<9} p50 {p50:.2f} ms  p99 {p99:.2f} ms  ({len(latencies)} ops)"
        )

    def paths(self, opened: list[Target]) -> None:
        """Issue 27's table: each path, archivist then its baseline, run after run (paths
        interleaved, so that the machine's load drifts over all of them alike); ratios
        run by run."""
        s = self.settings
        sources = {target.engine: target for target in opened}
        shared_pg = sources["postgresql"].primary_url if "postgresql" in sources else None
        with second_servers(self.results.notes, shared_pg) as archives:
            prepared: list[tuple[PathSpec, Target]] = []
            for spec in PATHS:
                if s.paths and spec.key not in s.paths:
                    continue
                source = sources.get(spec.source)
                if source is None:
                    self.results.notes.append(f"path {spec.key}: skipped, no {spec.source}")
                    continue
                started = time.monotonic()
                source.seed(max(s.rows, s.memory_rows))
                if time.monotonic() - started > 1:
                    self.say(f"{source.engine}: seeded {source.seeded:,} rows")
                target = path_target(spec, source, archives)
                if target is None:
                    self.results.notes.append(f"path {spec.key}: skipped, no {spec.archive}")
                    continue
                prepared.append((spec, target))
            if not self.has_pt_archiver:
                self.results.notes.append(PT_ARCHIVER_MISSING)
                self.say(f"note: {PT_ARCHIVER_MISSING}")
            try:
                for run in range(1, s.runs + 1):
                    self.say(f"paths: run {run}/{s.runs}")
                    for spec, target in prepared:
                        if spec.most_runs is None or run <= spec.most_runs:
                            self._path_run(spec, target)
            finally:
                for _, target in prepared:
                    target.dispose()
        for spec, _ in prepared:
            top = self.paths_results.get(spec.key, "archivist")
            bottom = self.paths_results.get(spec.baseline_of or spec.key, "baseline")
            if top is None or bottom is None:
                continue
            for high, low in zip(top.values, bottom.values, strict=False):
                self.paths_results.add(spec.key, "ratio", "x", high / low)

    def _path_run(self, spec: PathSpec, target: Target) -> None:
        s = self.settings
        run = self._moved(spec.key, target, lambda: self._archivist(target, record=False))
        self.paths_results.add(spec.key, "archivist", "rows/s", run.rows_per_second)
        # The task's own rate (from queueing to the end, start-up left out): the ratio is
        # taken end to end, start-up and all, as a user's wall clock sees it.
        self.paths_results.add(spec.key, "archivist_task", "rows/s", run.task_rows_per_second)
        self.paths_results.add(spec.key, "rss_daemon", "MiB", run.daemon_peak_kib / MIB)
        self.paths_results.add(spec.key, "rss_worker", "MiB", run.worker_peak_kib / MIB)
        line = f"  {spec.key:<17} archivist {run.rows_per_second:>9,.0f} rows/s"
        baseline = BASELINES[spec.baseline]
        if spec.baseline_of is None and (spec.baseline != "pt_bulk" or self.has_pt_archiver):
            base = self._moved(
                spec.key, target, lambda: baseline.run(target, s.archive_rows, s.batch_size)
            )
            self.paths_results.add(spec.key, "baseline", "rows/s", base.rows_per_second)
            line += f"   {baseline.key} {base.rows_per_second:>9,.0f} rows/s"
            line += f"   ratio {run.rows_per_second / base.rows_per_second:.2f}"
        self.say(line)

    def _moved(self, key: str, target: Target, work: Callable[[], ArchiveRun]) -> ArchiveRun:
        """Reset the data, run one method, check that exactly the rows asked for moved."""
        s = self.settings
        target.reset(s.rows)
        run = work()
        moved, left = target.count("archive"), target.count("primary")
        if moved != s.archive_rows or run.rows != moved or left != s.rows - moved:
            raise RuntimeError(f"{key}: archive holds {moved} rows, source {left}, ran {run.rows}")
        return run

    def startup(self) -> None:
        """A one-shot ``archivist archive`` of 1,000 rows on SQLite, timed from outside:
        start-up, the first (and only) batch and exit, against the interpreter alone."""
        directory = self.workdir / "startup"
        directory.mkdir(exist_ok=True)
        primary, archive = directory / "primary.db", directory / "archive.db"
        target = Target(
            "sqlite", f"sqlite:///{primary}", f"sqlite:///{archive}", str(primary), str(archive)
        )
        target.worker_settings = dict(self.settings.worker)
        for _ in range(self.settings.startup_runs):
            target.reset(2 * STARTUP_ROWS)
            run = run_one_shot(target, STARTUP_ROWS, self.workdir)
            self.results.add("startup", "first_batch", "ms", run.first_batch * 1000)
            self.results.add("startup", "one_shot", "ms", run.seconds * 1000)
            self.results.add("startup", "one_shot_cpu", "ms", run.cpu * 1000)
            began = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            self.results.add("startup", "interpreter", "ms", (time.perf_counter() - began) * 1000)
        target.dispose()
        first = self.results.get("startup", "first_batch")
        whole = self.results.get("startup", "one_shot")
        cpu = self.results.get("startup", "one_shot_cpu")
        assert first is not None and whole is not None and cpu is not None
        verdict = "holds" if first.median < STARTUP_TARGET * 1000 else "DOES NOT HOLD"
        self.say(
            f"start-up: a one-shot archive of {STARTUP_ROWS:,} rows reached its first batch "
            f"in {first.median:.0f} ms median [{min(first.values):.0f}-{max(first.values):.0f}]"
            f" (the whole command {whole.median:.0f} ms, {cpu.median:.0f} ms of CPU) over "
            f"{len(first.values)} runs, load average {os.getloadavg()[0]:.1f}; "
            f"target < {STARTUP_TARGET * 1000:.0f} ms: {verdict}"
        )

    def pings(self) -> None:
        for _ in range(self.settings.runs):
            run = run_pings(self.settings.pings)
            self.results.add("socket", "ping_p50", "µs", percentile(run.latencies, 0.5) * 1e6)
            self.results.add("socket", "ping_p99", "µs", percentile(run.latencies, 0.99) * 1e6)
            self.results.add("socket", "ping_rate", "pings/s", run.per_second)
            self.say(f"  ping: {run.per_second:,.0f}/s")

    def say(self, message: str) -> None:
        self.console.print(message, highlight=False)


def main(argv: list[str] | None = None) -> int:
    settings, json_path = parse_args(argv)
    # Bytecode for the archivist measured, as an installed package has it: where
    # PYTHONDONTWRITEBYTECODE is set (as on our machines), every start of the CLI and of
    # its worker would compile its modules again (~0.15 s each on a slow machine).
    compileall.compile_dir(Path(archivist.__file__).parent, quiet=1)
    console = Console(width=None if sys.stdout.isatty() else 150)
    results = Results()
    workdir = Path(tempfile.mkdtemp(prefix="archivist-bench-config-"))
    versions: dict[str, str] = {"pt_archiver": pt_archiver_version()}
    console.print(
        f"archiving {settings.archive_rows:,} of {settings.rows:,} rows, batches of "
        f"{settings.batch_size:,}, {settings.runs} runs, engines {', '.join(settings.engines)}"
    )
    bench = Bench(settings, results, console, workdir)
    sections = settings.sections
    try:
        if "startup" in sections and not settings.keep_up:
            bench.startup()
        with targets(settings.engines, results.notes) as opened:
            for target in opened:
                target.worker_settings = settings.worker
                versions[target.engine] = target.version
            if "paths" in sections and not settings.keep_up:
                bench.paths(opened)
            if "engines" in sections or settings.keep_up:
                for target in opened:
                    bench.engine(target)
        if "pings" in sections and not settings.keep_up:
            bench.pings()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    info = machine(versions)
    order = [
        (key, label.format(small=settings.memory_rows, rows=settings.rows)) for key, label in ORDER
    ]
    print_paths(console, bench.paths_results, PATHS, BASELINES)
    print_report(console, results, order, info)
    write_json(json_path, results, info, settings.__dict__, paths=bench.paths_results)
    console.print(f"JSON: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
