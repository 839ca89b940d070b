"""Crash safety into Iceberg: a real archive from SQLite into an Iceberg table whose worker
and daemon are SIGKILLed at seeded random moments (while rows are staged, committed, or
deleted from the source) and restarted; after every kill every row is in the source or in
the table's current snapshot, none twice, and the run converges with 0 lost and 0
duplicated, counted by pyarrow and DuckDB (not archivist's reader).

The seed is printed (``crash seed N``); ``ARCHIVIST_CRASH_SEED=N`` replays a run.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Literal

import pytest
import sqlalchemy as sa
from pyiceberg.exceptions import NoSuchTableError

from archivist import sample
from e2esupport import Processes, count, ids, make_chat_table, processes, write_config
from icebergsupport import duckdb_rows, lake_url, load_table, read_with_pyarrow
from support import short_socket_dir

ROWS = 24_000
MAX_ROWS = 5_000
ROWS_PER_ARCHIVE = 1_000
KEEP = MAX_ROWS - ROWS_PER_ARCHIVE
"""The newest 4,000 rows stay in the source."""
BATCH = 100
ROWS_PER_FILE = 300
KILLS = {"worker": 14, "daemon": 6}
"""20 kills in all; fewer of the daemon, whose restart (imports, catalog, checks) costs
seconds on a loaded machine."""
KILL_AFTER_ROWS = (1, 300)
"""A kill comes once this many more rows (uniform) left the source since the victim
(re)started, plus a jitter that lands it while the next rows are staged, committed or
deleted."""
KILL_JITTER = (0.0, 0.3)
STEP_TIMEOUT = 45.0

Victim = Literal["worker", "daemon"]


def crash_seed() -> int:
    replay = os.environ.get("ARCHIVIST_CRASH_SEED")
    return int(replay) if replay else secrets.randbits(32)


def original_rows(url: str) -> dict[int, tuple[object, ...]]:
    """Every row of the source, as archivist's own exact types read it."""
    engine = sa.create_engine(url)
    try:
        table = sample.chat_messages_table(sa.MetaData(), "chat_messages")
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(
                    table.c.id, table.c.room_id, table.c.sender_id, table.c.created_at, table.c.body
                )
            ).all()
        return {int(row[0]): tuple(row) for row in rows}
    finally:
        engine.dispose()


class Run:
    def __init__(self, workdir: Path, started: Processes, seed: int) -> None:
        self.workdir = workdir
        self.started = started
        self.seed = seed
        self.primary = f"sqlite:///{workdir}/primary.db"
        make_chat_table(self.primary, ROWS)
        self.originals = original_rows(self.primary)
        self.socket_dir = short_socket_dir()
        self.socket = self.socket_dir / "worker.sock"
        self.log = workdir / "archivist.log"
        self.config = write_config(
            workdir / "archivist.toml",
            {"primary": self.primary, "archive": lake_url(workdir)},
            [
                {
                    "collection": "chat_messages",
                    "order_by": "created_at",
                    "max_rows": MAX_ROWS,
                    "rows_per_archive": ROWS_PER_ARCHIVE,
                    "batch_size": BATCH,
                    "rows_per_file": ROWS_PER_FILE,
                    "partition": "day",
                }
            ],
            daemon={"check_interval": 0.2, "health_interval": 1},
        )
        self.processes: dict[Victim, subprocess.Popen[str]] = {}
        self.kills = {"worker": 0, "daemon": 0}
        self.checks = 0
        self.most_in_both = 0

    def close(self) -> None:
        self.started.kill_all()
        for path in self.socket_dir.iterdir():
            path.unlink()
        self.socket_dir.rmdir()

    def start(self, victim: Victim) -> None:
        if victim == "worker":
            args = ("worker", "--socket", str(self.socket))
        else:
            args = ("daemon", "--config", str(self.config), "--socket", str(self.socket))
        self.processes[victim] = self.started.start(*args, output=self.log)

    def archived(self) -> list[dict[str, object]]:
        """The current snapshot's rows, read from its Parquet files by pyarrow."""
        try:
            table = load_table(self.workdir, "chat_messages")
        except NoSuchTableError:
            return []
        read = read_with_pyarrow(table)
        return read.to_pylist() if read.num_columns else []

    def check(self, after: str) -> None:
        """Every original row is in the source or the Iceberg table, exactly, and none is in
        the table twice."""
        in_primary = ids(self.primary)  # first: a row deleted meanwhile was committed before
        archived = self.archived()
        keys = [int(row["id"]) for row in archived]  # type: ignore[call-overload]
        twice = len(keys) - len(set(keys))
        lost = set(self.originals) - in_primary - set(keys)
        self.checks += 1
        assert not twice, f"seed {self.seed}, {after}: {twice} row(s) archived twice"
        assert not lost, f"seed {self.seed}, {after}: lost {len(lost)}: {sorted(lost)[:10]}"
        for row in archived:
            original = self.originals[int(row["id"])]  # type: ignore[call-overload]
            copy = (row["id"], row["room_id"], row["sender_id"], row["created_at"], row["body"])
            assert copy == original, f"seed {self.seed}, {after}: {copy} != {original}"
            assert isinstance(row["created_at"], dt.datetime)
        self.most_in_both = max(self.most_in_both, len(in_primary & set(keys)))

    def kill_at_a_random_moment(self, victim: Victim, rng: random.Random) -> None:
        target = (ROWS - count(self.primary)) + rng.randint(*KILL_AFTER_ROWS)
        deadline = time.monotonic() + STEP_TIMEOUT
        while ROWS - count(self.primary) < target:
            for name, process in self.processes.items():
                assert process.poll() is None, f"the {name} exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"seed {self.seed}: no progress before killing the {victim}; log:\n"
                f"{self.log.read_text()[-3000:]}"
            )
            time.sleep(0.01)
        time.sleep(rng.uniform(*KILL_JITTER))
        process = self.processes[victim]
        process.send_signal(signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
        self.kills[victim] += 1
        self.check(f"{victim} kill {self.kills[victim]}")
        assert count(self.primary) > MAX_ROWS + ROWS_PER_FILE, (
            f"seed {self.seed}: archived too fast for {sum(KILLS.values())} kills"
        )
        self.start(victim)

    def converge(self) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while count(self.primary) != KEEP or len(self.archived()) != ROWS - KEEP:
            assert time.monotonic() < deadline, (
                f"seed {self.seed}: no convergence: source {count(self.primary)}, archive "
                f"{len(self.archived())}; log:\n{self.log.read_text()[-3000:]}"
            )
            time.sleep(0.2)
        time.sleep(0.5)  # a few more policy checks: nothing else may move


@pytest.mark.timeout(300)
def test_sigkilled_worker_and_daemon_archiving_into_iceberg_lose_and_duplicate_no_row(
    tmp_path: Path,
) -> None:
    seed = crash_seed()
    print(f"crash seed {seed}")
    rng = random.Random(f"{seed}-iceberg")
    started_at = time.monotonic()
    with processes() as started:
        run = Run(tmp_path, started, seed)
        try:
            run.start("daemon")
            run.start("worker")
            victims: list[Victim] = ["worker"] * KILLS["worker"] + ["daemon"] * KILLS["daemon"]
            rng.shuffle(victims)
            for victim in victims:
                run.kill_at_a_random_moment(victim, rng)
            run.converge()
            run.check("convergence")
        finally:
            run.close()

    table = load_table(tmp_path, "chat_messages")
    # Counted by DuckDB over the table's metadata, and by pyarrow over its files.
    ((rows, distinct, low, high),) = duckdb_rows(
        table, "count(*), count(DISTINCT id), min(id), max(id)"
    )
    assert (rows, distinct, low, high) == (ROWS - KEEP, ROWS - KEEP, 1, ROWS - KEEP)
    assert len(read_with_pyarrow(table)) == ROWS - KEEP
    assert ids(run.primary) == set(range(ROWS - KEEP + 1, ROWS + 1))
    assert run.kills == KILLS
    print(
        f"iceberg crash figures seed {seed}: kills {run.kills['worker']} worker + "
        f"{run.kills['daemon']} daemon, checks {run.checks}, most rows in both "
        f"{run.most_in_both}, lost 0, duplicated 0, {time.monotonic() - started_at:.1f} s"
    )
