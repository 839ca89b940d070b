"""What the benchmark measures: archivist end to end, the baselines it is compared with,
the foreground application, and the worker socket's round trip.

Every function here moves or times one thing and returns plain numbers; the main script
decides when each runs and `report` turns the numbers into figures.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import multiprocessing.sharedctypes
import multiprocessing.synchronize
import os
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg
import pymysql
import sqlalchemy as sa
from engines import FOREGROUND_ID_BASE, TABLE, Target, chat_table

SUMMARY_RE: Final = re.compile(
    r"archived ([\d,]+) rows of \S+ .*? in ([\d.,]+) s, ([\d,]+) rows/s", re.DOTALL
)
RSS_POLL_SECONDS: Final = 0.02
FOREGROUND_PACE: Final = 0.004
"""Seconds between the starts of two foreground operations (an app at ~250 ops/s)."""


@dataclass
class ArchiveRun:
    rows: int
    seconds: float
    """Wall clock, measured outside the process (start-up, schema mirroring, everything)."""
    task_rows_per_second: float = 0.0
    """What archivist's own summary says: the task, from queueing to completion."""
    daemon_peak_kib: int = 0
    worker_peak_kib: int = 0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


# --- archivist ------------------------------------------------------------------------------


def run_archivist(target: Target, rows: int, batch_size: int, workdir: Path) -> ArchiveRun:
    """``archivist archive`` as a subprocess (daemon in it, worker its child), timed from
    outside, with the peak RSS (VmHWM) of both processes polled while it runs."""
    config = workdir / f"{target.engine}.toml"
    config.write_text(target.config_toml(batch_size), encoding="utf-8")
    # The benchmark's own connections, used a moment ago, would count as an application
    # using the database, which archivist yields to: close them.
    target.dispose()
    command = [
        sys.executable,
        "-m",
        "archivist",
        "archive",
        TABLE,
        "--config",
        str(config),
        "--max-rows",
        str(rows),
        "--batch-size",
        str(batch_size),
    ]
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    with _peak_rss(process.pid) as peaks:
        stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"archivist archive failed ({process.returncode}): {stderr[-2000:]}")
    match = SUMMARY_RE.search(stdout)
    if match is None:
        raise RuntimeError(f"no summary line in archivist's output: {stdout[-1000:]}")
    archived = int(match.group(1).replace(",", ""))
    if archived != rows:
        raise RuntimeError(f"archivist archived {archived} rows, not {rows}")
    return ArchiveRun(
        rows=archived,
        seconds=seconds,
        task_rows_per_second=float(match.group(3).replace(",", "")),
        daemon_peak_kib=peaks["daemon"],
        worker_peak_kib=peaks["worker"],
    )


FIRST_BATCH_RE: Final = re.compile(r"mover step begin .*? at=([\d.]+)")


@dataclass
class OneShot:
    seconds: float
    """Wall clock of the whole command: start-up, the batch, exit."""
    first_batch: float
    """Seconds from the command's launch to its first batch's first step (the daemon's
    debug log stamps it with the wall clock)."""
    cpu: float
    """CPU seconds (user + system) of the command and its worker: what the start-up costs
    regardless of how busy the machine is."""


def run_one_shot(target: Target, rows: int, workdir: Path) -> OneShot:
    """``archivist archive --max-rows rows --batch-size rows`` (one batch), timed from
    outside, with the first batch's start read from its debug log."""
    config = workdir / f"{target.engine}-one-shot.toml"
    config.write_text(target.config_toml(rows), encoding="utf-8")
    target.dispose()
    command = [
        sys.executable,
        "-m",
        "archivist",
        "archive",
        TABLE,
        "--config",
        str(config),
        "--max-rows",
        str(rows),
        "--log-level",
        "debug",
    ]
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched = time.time()
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if done.returncode != 0:
        raise RuntimeError(f"archivist archive failed ({done.returncode}): {done.stderr[-2000:]}")
    match = FIRST_BATCH_RE.search(done.stderr)
    if match is None:
        raise RuntimeError(f"no 'mover step begin' in the debug log: {done.stderr[-1000:]}")
    return OneShot(seconds, float(match.group(1)) - launched, cpu)


@dataclass
class KeepUpRun:
    """``archivist run`` holding a table at its limit beside the foreground (issue 25)."""

    checks: list[dict[str, object]]
    """The daemon's keep-up state for the table at each check (rows, growth, rate, ...)."""
    moved: int
    seconds: float
    inserted: int


def run_keep_up(
    target: Target,
    max_rows: int,
    batch_size: int,
    seconds: float,
    check_interval: float,
    workdir: Path,
) -> KeepUpRun:
    """``archivist run`` for ``seconds`` with a policy of ``max_rows`` on a table that holds
    that many rows, while the foreground (already running) inserts and reads; the daemon's
    keep-up state is read from beside the worker's socket after every check."""
    from archivist.daemon.keepup import read_state

    socket_path = workdir / f"{target.engine}-keepup.sock"
    config = workdir / f"{target.engine}-keepup.toml"
    policy = target.config_toml(batch_size)
    policy = policy.replace("max_rows = 1\n", f"max_rows = {max_rows}\n").replace(
        "rows_per_archive = 1\n", f"rows_per_archive = {batch_size}\n"
    )
    policy = policy.replace(
        "[worker]\n",
        f'[daemon]\ncheck_interval = {check_interval}\n\n[worker]\nsocket = "{socket_path}"\n',
    )
    config.write_text(policy, encoding="utf-8")
    before = target.count("primary")
    target.dispose()
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    command = [sys.executable, "-m", "archivist", "run", "--config", str(config)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=env
    )
    checks: list[dict[str, object]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            if process.poll() is not None:
                raise RuntimeError(f"archivist run exited ({process.returncode})")
            state = read_state(socket_path)
            if state is not None and (not checks or state["at"] != checks[-1]["at"]):
                policies = state.get("policies")
                if isinstance(policies, dict) and TABLE in policies:
                    checks.append({"at": state["at"], **policies[TABLE]})
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)
    elapsed = time.monotonic() - started
    moved = target.count("archive")
    inserted = target.count("primary") + moved - before
    return KeepUpRun(checks=checks, moved=moved, seconds=elapsed, inserted=inserted)


@contextlib.contextmanager
def _peak_rss(pid: int) -> Iterator[dict[str, int]]:
    """Poll VmHWM (the kernel's peak RSS) of ``pid`` and of its children until exit."""
    peaks = {"daemon": 0, "worker": 0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peaks["daemon"] = max(peaks["daemon"], _vm_hwm(pid))
            for child in _children(pid):
                peaks["worker"] = max(peaks["worker"], _vm_hwm(child))
            done.wait(RSS_POLL_SECONDS)

    thread = threading.Thread(target=poll, name="rss-poll", daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        done.set()
        thread.join()


def _vm_hwm(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(c) for c in (task / "children").read_text().split())
    return found


# --- the application-level limit: a plain Python loop -----------------------------------


def run_plain_loop(target: Target, rows: int, batch_size: int) -> ArchiveRun:
    """Read a batch with one connection, insert it into the archive with another, delete it,
    commit both (archive first): what an application would write with SQLAlchemy Core."""
    archive_table = target.create_archive()
    source = chat_table(sa.MetaData())
    primary, archive = target.sa_engine("primary"), target.sa_engine("archive")
    moved = 0
    started = time.perf_counter()
    # On SQLite the read must take the write lock up front (BEGIN IMMEDIATE, as archivist's
    # handles do): a read snapshot cannot be upgraded once another writer has committed.
    with (
        primary.connect().execution_options(archivist_write=True) as reader,
        archive.connect() as writer,
    ):
        while moved < rows:
            limit = min(batch_size, rows - moved)
            batch = reader.execute(
                sa.select(source).order_by(source.c.created_at).limit(limit)
            ).all()
            if not batch:
                break
            writer.execute(archive_table.insert(), [row._asdict() for row in batch])
            ids = [row.id for row in batch]
            reader.execute(source.delete().where(source.c.id.in_(ids)))
            writer.commit()
            reader.commit()
            moved += len(batch)
    return ArchiveRun(rows=moved, seconds=time.perf_counter() - started)


# --- the in-database limit ----------------------------------------------------------------


def run_in_database(target: Target, rows: int, batch_size: int) -> ArchiveRun:
    """Rows never leave the database server (SQLite ATTACH, MariaDB across databases), or
    leave it only as raw binary COPY blocks (PostgreSQL, two databases)."""
    target.create_archive()
    target.dispose()
    started = time.perf_counter()
    if target.engine == "sqlite":
        moved = _sqlite_in_db(target, rows, batch_size)
    elif target.engine == "postgresql":
        moved = _postgres_copy(target, rows, batch_size)
    else:
        moved = _mariadb_in_db(target, rows, batch_size)
    return ArchiveRun(rows=moved, seconds=time.perf_counter() - started)


def _sqlite_in_db(target: Target, rows: int, batch_size: int) -> int:
    connection = sqlite3.connect(target.primary_db, isolation_level=None, timeout=30)
    try:
        connection.execute("ATTACH DATABASE ? AS arch", (target.archive_db,))
        oldest = f"SELECT id FROM main.{TABLE} ORDER BY created_at LIMIT ?"
        moved = 0
        while moved < rows:
            limit = min(batch_size, rows - moved)
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(
                f"INSERT INTO arch.{TABLE} SELECT * FROM main.{TABLE} WHERE id IN ({oldest})",
                (limit,),
            )
            deleted = connection.execute(
                f"DELETE FROM main.{TABLE} WHERE id IN ({oldest})", (limit,)
            ).rowcount
            connection.execute("COMMIT")
            if deleted == 0:
                break
            moved += deleted
        return moved
    finally:
        connection.close()


def _postgres_copy(target: Target, rows: int, batch_size: int) -> int:
    server = "host=127.0.0.1 port=5432 user=postgres options='-c TimeZone=UTC'"
    with (
        psycopg.connect(f"{server} dbname={target.primary_db}") as source,
        psycopg.connect(f"{server} dbname={target.archive_db}") as dest,
    ):
        moved = 0
        while moved < rows:
            limit = min(batch_size, rows - moved)
            oldest = f"SELECT id FROM {TABLE} ORDER BY created_at LIMIT {limit}"
            with (
                source.cursor() as reader,
                dest.cursor() as writer,
                reader.copy(
                    f"COPY (SELECT * FROM {TABLE} WHERE id IN ({oldest})) TO STDOUT (FORMAT BINARY)"
                ) as out,
                writer.copy(f"COPY {TABLE} FROM STDIN (FORMAT BINARY)") as into,
            ):
                for block in out:
                    into.write(block)
            with source.cursor() as deleter:
                deleter.execute(f"DELETE FROM {TABLE} WHERE id IN ({oldest})")
                deleted = deleter.rowcount
            dest.commit()
            source.commit()
            if deleted == 0:
                break
            moved += deleted
        return moved


def _mariadb_in_db(target: Target, rows: int, batch_size: int) -> int:
    connection = pymysql.connect(
        host="127.0.0.1", port=3306, user="root", database=target.primary_db, autocommit=False
    )
    try:
        moved = 0
        with connection.cursor() as cursor:
            cursor.execute("SET time_zone = '+00:00'")
            while moved < rows:
                limit = min(batch_size, rows - moved)
                cursor.execute(
                    f"INSERT INTO {target.archive_db}.{TABLE} "
                    f"SELECT * FROM {TABLE} ORDER BY created_at LIMIT {limit}"
                )
                deleted = cursor.execute(f"DELETE FROM {TABLE} ORDER BY created_at LIMIT {limit}")
                connection.commit()
                if deleted == 0:
                    break
                moved += deleted
        return moved
    finally:
        connection.close()


# --- pt-archiver --------------------------------------------------------------------------


def run_pt_archiver(target: Target, rows: int, batch_size: int, *, bulk: bool) -> ArchiveRun:
    """Percona's pt-archiver on MariaDB, moving the same rows (ids 1..rows are the oldest)."""
    target.create_archive()
    target.dispose()
    dsn = "h=127.0.0.1,P=3306,u=root,D={},t=" + TABLE
    command = [
        "pt-archiver",
        "--source",
        dsn.format(target.primary_db),
        "--dest",
        dsn.format(target.archive_db),
        "--where",
        f"id <= {rows}",
        "--limit",
        str(batch_size),
        "--commit-each",
        "--no-check-charset",
        "--no-version-check",
        "--set-vars",
        "time_zone='+00:00'",
    ]
    if bulk:
        command += ["--bulk-insert", "--bulk-delete"]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"pt-archiver failed ({finished.returncode}): {finished.stderr[-2000:]}")
    moved = target.count("archive")
    if moved != rows:
        raise RuntimeError(f"pt-archiver moved {moved} rows, not {rows}")
    return ArchiveRun(rows=moved, seconds=seconds)


def pt_archiver_version() -> str:
    if shutil.which("pt-archiver") is None:
        return ""
    finished = subprocess.run(
        ["pt-archiver", "--version"], capture_output=True, text=True, check=False
    )
    return finished.stdout.strip()


# --- foreground: the application next to the archiver -----------------------------------


@dataclass
class Foreground:
    """A second process doing application work on the primary while something else runs.

    With ``insert_rate``, a third process tops the application's inserts up to that many
    rows/s in all (the foreground's own, paced one operation per 4 ms, fall short of
    ~120/s on a loaded machine), in small multi-row inserts every 50 ms."""

    target: Target
    max_seconds: float
    insert_rate: float | None = None
    _stop: multiprocessing.synchronize.Event | None = None
    _process: multiprocessing.process.BaseProcess | None = None
    _topup: multiprocessing.process.BaseProcess | None = None
    _results: multiprocessing.connection.Connection | None = None
    latencies: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    """When each operation began, in seconds since the foreground was ready."""

    def __enter__(self) -> Foreground:
        context = multiprocessing.get_context("fork")
        self._stop = context.Event()
        ready = context.Event()
        inserted = context.Value("q", 0)
        receiver, sender = context.Pipe(duplex=False)
        self.target.dispose()  # no pooled connection crosses the fork
        self._process = context.Process(
            target=_foreground_main,
            args=(self.target.primary_url, self._stop, ready, sender, self.max_seconds, inserted),
            name="bench-foreground",
        )
        self._process.start()
        sender.close()
        self._results = receiver
        if not ready.wait(30):
            raise RuntimeError("the foreground process did not start")
        if self.insert_rate:
            self._topup = context.Process(
                target=_topup_main,
                args=(self.target.primary_url, self._stop, inserted, self.insert_rate),
                name="bench-topup",
            )
            self._topup.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._stop is not None and self._process is not None and self._results is not None
        self._stop.set()
        self.starts, self.latencies = self._results.recv() if self._results.poll(60) else ([], [])
        self._process.join(30)
        if self._topup is not None:
            self._topup.join(30)
        self._results.close()


TOPUP_ID_BASE: Final = 9_000_000_000_000
"""Ids of the rows the top-up process inserts (above every foreground id)."""


def _topup_main(
    url: str,
    stop: multiprocessing.synchronize.Event,
    inserted: multiprocessing.sharedctypes.Synchronized[int],
    rate: float,
) -> None:
    """Every 50 ms, insert (in one statement) the rows that bring ``inserted`` (the
    foreground's and ours) up to ``rate`` rows/s since we began, at most one second's."""
    from archivist.data.handles import create_engine

    engine = create_engine(url)
    table = chat_table(sa.MetaData())
    rng = random.Random(os.getpid())
    next_id = TOPUP_ID_BASE + rng.randrange(1_000_000) * 1_000_000
    with engine.connect() as connection:
        origin = time.monotonic()
        base = inserted.value
        while not stop.wait(0.05):
            due = int(rate * (time.monotonic() - origin)) - (inserted.value - base)
            due = min(due, int(rate))
            if due <= 0:
                continue
            rows = [_new_message(next_id + n, rng) for n in range(due)]
            next_id += due
            connection.execute(table.insert(), rows)
            connection.commit()
            with inserted.get_lock():
                inserted.value += due
    engine.dispose()


def _foreground_main(
    url: str,
    stop: multiprocessing.synchronize.Event,
    ready: multiprocessing.synchronize.Event,
    results: multiprocessing.connection.Connection,
    max_seconds: float,
    inserted: multiprocessing.sharedctypes.Synchronized[int] | None = None,
) -> None:
    """Alternately insert a new message and read a random room's latest 50, paced, until
    told to stop or ``max_seconds`` pass; sends back when each operation began (seconds since
    ready) and its latency (seconds), as two lists."""
    from archivist.data.handles import create_engine

    engine = create_engine(url)
    if engine.dialect.name == "postgresql":
        # archivist's engine names its sessions "archivist data <pid>", and archivist
        # yields only to sessions that are not its own: the application must not wear
        # that name, or archivist would never yield to it.
        @sa.event.listens_for(engine, "connect")
        def _name(dbapi_connection: Any, _record: object) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET application_name = 'bench foreground'")
            dbapi_connection.commit()

    table = chat_table(sa.MetaData())
    rng = random.Random(os.getpid())
    latest = (
        sa.select(table)
        .where(table.c.room_id == sa.bindparam("room"))
        .order_by(table.c.created_at.desc())
        .limit(50)
    )
    latencies: list[float] = []
    starts: list[float] = []
    next_id = FOREGROUND_ID_BASE + rng.randrange(1_000_000) * 100_000
    with engine.connect() as connection:
        connection.execute(latest, {"room": 1}).all()  # connect and warm up before timing
        connection.commit()
        ready.set()
        origin = time.perf_counter()
        deadline = time.monotonic() + max_seconds
        insert = True
        while not stop.is_set() and time.monotonic() < deadline:
            began = time.perf_counter()
            if insert:
                connection.execute(table.insert(), [_new_message(next_id, rng)])
                connection.commit()
                next_id += 1
                if inserted is not None:
                    with inserted.get_lock():
                        inserted.value += 1
            else:
                connection.execute(latest, {"room": rng.randint(1, 200)}).all()
                connection.commit()
            ended = time.perf_counter()
            starts.append(began - origin)
            latencies.append(ended - began)
            insert = not insert
            time.sleep(max(0.0, FOREGROUND_PACE - (ended - began)))
    engine.dispose()
    results.send((starts, latencies))
    results.close()


def _new_message(row_id: int, rng: random.Random) -> dict[str, object]:
    import datetime as dt

    return {
        "id": row_id,
        "room_id": rng.randint(1, 200),
        "sender_id": rng.randint(1, 5000),
        "created_at": dt.datetime.now(dt.UTC),
        "body": "a new message from the foreground application " * 4,
        "metadata": {"client": "web", "edited": False, "reactions": 0, "lang": "en"},
    }


# --- reference loads: what the machine does to the foreground without any archiver ------

REFERENCE_ROWS: Final = 1000
"""Rows per transaction of the reference disk writer."""
REFERENCE_PAUSE: Final = 0.05
"""Seconds the reference disk writer rests between its transactions: about 20,000 rows/s,
what an archiver moves next to a busy application."""


@contextlib.contextmanager
def reference_load(kind: str, scratch: Path) -> Iterator[None]:
    """Load the machine the way an archiver would, with no archiver and nothing shared with
    the application but the machine: ``cpu``, one process spinning on one core; ``disk``,
    one process committing `REFERENCE_ROWS`-row transactions durably (SQLite, WAL,
    ``synchronous=FULL``) to a file of its own on the same disk. The foreground's latency
    during these says what any archiver doing that much work costs on this machine."""
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    process = context.Process(
        target=_reference_main, args=(kind, str(scratch / f"reference-{kind}.db"), stop)
    )
    process.start()
    try:
        yield
    finally:
        stop.set()
        process.join(30)


def _reference_main(kind: str, path: str, stop: multiprocessing.synchronize.Event) -> None:
    if kind == "cpu":
        while not stop.is_set():
            sum(range(10_000))
        return
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")
    body = "x" * 400
    while not stop.is_set():
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO t (body) VALUES (?)", [(body,) for _ in range(REFERENCE_ROWS)]
        )
        connection.execute("COMMIT")
        time.sleep(REFERENCE_PAUSE)
    connection.close()


# --- the worker socket's round trip -------------------------------------------------------


@dataclass
class PingRun:
    latencies: list[float]
    seconds: float

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds


def run_pings(count: int) -> PingRun:
    """Start a worker on a private socket and send it ``count`` pings, one at a time, on
    one connection (a raw blocking socket: the client adds as little as possible)."""
    scratch = Path(tempfile.mkdtemp(prefix="archivist-ping-"))
    path = scratch / "w.sock"
    worker = subprocess.Popen(
        [sys.executable, "-m", "archivist", "worker", "--socket", str(path), "-q"],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = _connect(path)
        with client, client.makefile("rb") as answers:
            latencies: list[float] = []
            started = time.perf_counter()
            for number in range(count):
                began = time.perf_counter()
                client.sendall(b'{"command":"ping","requestId":"p%d"}\n' % number)
                answer = answers.readline()
                latencies.append(time.perf_counter() - began)
                if b'"success"' not in answer:
                    raise RuntimeError(f"unexpected ping answer: {answer[:200]!r}")
            seconds = time.perf_counter() - started
        return PingRun(latencies, seconds)
    finally:
        worker.terminate()
        worker.wait(30)
        shutil.rmtree(scratch, ignore_errors=True)


def _connect(path: Path) -> socket.socket:
    deadline = time.monotonic() + 20
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            client.connect(str(path))
            return client
        except OSError:
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
