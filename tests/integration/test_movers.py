"""One mover per collection, across processes: the mover lock in the source database.

- A one-shot ``archivist archive`` beside another holder exits 1 naming it (host:pid since
  when); with ``--wait`` it says it waits and archives once the holder is gone.
- Two ``archivist run`` on one config (separate worker sockets) against one primary: the
  test SIGKILLs whichever holds the lock (found in the database), and on PostgreSQL and
  MariaDB also cuts the lock's session, several times at seeded moments, restarting what
  it killed; then checks that every seeded row is in the primary or the archive, none in
  both, and that no two processes ever ran a data command of the collection at once (from
  the daemons' ``mover step`` log lines).

The seed is printed (``movers seed N``); ``ARCHIVIST_MOVERS_SEED=N`` replays a run.
Figures are printed and recorded as junit properties; docs/reliability.md has the last.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from archivist.data.handles import Handle
from archivist.data.locks import Holder, holder_of
from e2esupport import (
    Processes,
    archivist,
    children_of,
    count,
    ids,
    make_chat_table,
    processes,
    wait_for,
    write_config,
)
from support import short_socket_dir

ENGINES = ["sqlite", "postgresql", "mysql"]
ROWS = 3000
MAX_ROWS = 101
ROWS_PER_ARCHIVE = 1
"""Any count over 101 is archived down to 100: the runs converge however they were cut."""
KEEP = MAX_ROWS - ROWS_PER_ARCHIVE
BATCH = 30
KILLS = 4
"""Per engine: SIGKILLs of the holder (and, on PostgreSQL and MariaDB, as many cuts)."""
KILL_AFTER_ROWS = (20, 200)
STEP_TIMEOUT = 60.0
CHECK_INTERVAL = 0.5
READY = "connected to the worker at"
STEP = re.compile(r"mover step (begin|end) collection=(\S+) pid=(\d+) command=(\S+) at=([\d.]+)")


def movers_seed() -> int:
    replay = os.environ.get("ARCHIVIST_MOVERS_SEED")
    return int(replay) if replay else secrets.randbits(32)


def _urls(fresh_db: Callable[[str], str], engine: str) -> tuple[str, str]:
    return fresh_db(engine), fresh_db(engine)


def _config(
    path: Path, primary: str, archive: str, socket_path: Path, *, pause: float = 0.15
) -> Path:
    """Small, slow batches (each task takes seconds), checked every half second; no yielding:
    the other mover's sessions are not an application to make way for. No batch starts
    while the file ``pause`` beside the config exists."""
    worker: dict[str, object] = {
        "pause": pause,
        "yield_ratio": 0,
        "batch_time": 0.05,
        "min_batch": BATCH,
        "pause_file": str(path.parent / "pause"),
    }
    return write_config(
        path,
        {"primary": primary, "archive": archive},
        [
            {
                "collection": "chat_messages",
                "order_by": "created_at",
                "max_rows": MAX_ROWS,
                "rows_per_archive": ROWS_PER_ARCHIVE,
                "batch_size": BATCH,
            }
        ],
        socket_path,
        worker=worker,
        daemon={"check_interval": CHECK_INTERVAL, "health_interval": 1},
    )


def _holder(primary: str) -> Holder | None:
    """Who holds chat_messages' mover lock, asked of the primary as `archivist status` asks."""

    async def ask() -> Holder | None:
        handle = Handle("primary", primary)
        try:
            return await holder_of(handle, "chat_messages")
        finally:
            await handle.close()

    return asyncio.run(ask())


HOLD = """
import asyncio, sys
from archivist.data.handles import Handle
from archivist.data.locks import acquire

async def main():
    lock = await acquire(Handle("primary", sys.argv[1]), "chat_messages")
    print("held", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_one_shot_archive_names_the_holder_and_waits_for_it_with_wait(
    engine: str, fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    primary, archive = _urls(fresh_db, engine)
    make_chat_table(primary, 300)
    socket_dir = short_socket_dir()
    config = _config(tmp_path / "archivist.toml", primary, archive, socket_dir / "w.sock")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, primary], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        seen = _holder(primary)
        assert seen is not None and seen.pid == holder.pid

        refused = archivist("archive", "chat_messages", "--config", str(config), "--max-rows", "50")
        assert refused.returncode == 1, refused.stderr
        named = f"held by {socket.gethostname()}:{holder.pid} since "
        assert named in refused.stderr, refused.stderr
        assert "--wait" in refused.stderr
        assert count(primary) == 300 and count(archive) == 0

        with processes() as started:
            output = tmp_path / "wait.log"
            waiting = started.start(
                "archive",
                "chat_messages",
                "--config",
                str(config),
                "--max-rows",
                "50",
                "--wait",
                output=output,
            )
            wait_for(lambda: "waiting: " in output.read_text(), 30, "the wait", waiting)
            assert named in output.read_text()
            time.sleep(1.5)  # it keeps trying, and moves nothing while the holder lives
            assert waiting.poll() is None and count(primary) == 300
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
            assert waiting.wait(60) == 0, output.read_text()
        text = output.read_text()
        assert "the other archivist is done; archiving now" in text
        assert count(primary) == 250 and count(archive) == 50
        assert ids(primary) | ids(archive) == set(range(1, 301))
        assert _holder(primary) is None  # the one-shot run let go when it ended
    finally:
        holder.kill()
        holder.wait(10)
        for path in socket_dir.iterdir():
            path.unlink()
        socket_dir.rmdir()


@dataclass
class Figures:
    sigkills: int = 0
    cuts: int = 0
    takeovers: int = 0
    longest_takeover: float = 0.0
    steps: int = 0
    processes: int = 0
    overlaps: int = 0
    rows_compared: int = 0
    notes: list[str] = field(default_factory=list)


class Movers:
    """Two ``archivist run`` slots on one primary, each with its own config (socket) and log."""

    def __init__(
        self, engine: str, primary: str, archive: str, workdir: Path, started: Processes
    ) -> None:
        self.engine, self.primary, self.archive = engine, primary, archive
        self.started = started
        self.socket_dir = short_socket_dir()
        self.configs = [
            _config(
                workdir / f"run{slot}.toml", primary, archive, self.socket_dir / f"w{slot}.sock"
            )
            for slot in (0, 1)
        ]
        self.logs = [workdir / "run0.log", workdir / "run1.log"]
        self.slots: list[subprocess.Popen[str]] = []
        self.killed_at: dict[int, float] = {}
        self.figures = Figures()
        # Looks through pooled connections: a new one per look (tens of ms on MariaDB)
        # lets hundreds of rows move between a decision and its kill.
        self.runner = asyncio.Runner()
        self.handle = Handle("primary", primary)
        self.engines = {url: sa.create_engine(url) for url in (primary, archive)}

    def count(self, url: str) -> int:
        with self.engines[url].connect() as connection:
            if not sa.inspect(connection).has_table("chat_messages"):
                return 0  # the archive's, before the first task made it
            return int(
                connection.exec_driver_sql("SELECT count(*) FROM chat_messages").scalar_one()
            )

    def holder(self) -> Holder | None:
        return self.runner.run(holder_of(self.handle, "chat_messages"))

    def start(self, slot: int) -> subprocess.Popen[str]:
        """Start a run in ``slot`` and wait until it is up (connected to its worker): a
        takeover is then timed from a kill, not from a start-up."""
        log = self.logs[slot]
        ready = log.read_text().count(READY) if log.exists() else 0
        process = self.started.start("run", "-v", "--config", str(self.configs[slot]), output=log)
        wait_for(lambda: log.read_text().count(READY) > ready, STEP_TIMEOUT, "start-up", process)
        self.figures.processes += 1
        if slot < len(self.slots):
            self.slots[slot] = process
        else:
            self.slots.append(process)
        return process

    def close(self) -> None:
        self.started.kill_all()
        self.runner.run(self.handle.close())
        self.runner.close()
        for engine in self.engines.values():
            engine.dispose()
        for path in self.socket_dir.iterdir():
            path.unlink()
        self.socket_dir.rmdir()

    def tail(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in self.logs)

    def holding(self, exclude: int | None = None) -> tuple[int, Holder]:
        """Wait for one of the slots to hold the lock (not pid ``exclude``); its slot."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            holder = self.holder()
            pids = [p.pid for p in self.slots]
            if holder is not None and holder.pid in pids and holder.pid != exclude:
                return pids.index(holder.pid), holder
            assert holder is None or holder.pid in (*pids, exclude), (
                f"a stranger holds the lock: {holder}"
            )
            assert time.monotonic() < deadline, f"nobody took the lock over:\n{self.tail()}"
            time.sleep(0.02)

    def wait_rows(self, more: int) -> None:
        target = self.count(self.archive) + more
        deadline = time.monotonic() + STEP_TIMEOUT
        while self.count(self.archive) < target and self.count(self.primary) > MAX_ROWS:
            assert time.monotonic() < deadline, f"no progress:\n{self.tail()}"
            time.sleep(0.02)

    def sigkill(self, slot: int) -> list[int]:
        """SIGKILL the run in ``slot``; its worker's pid."""
        process = self.slots[slot]
        children = children_of(process.pid)
        process.send_signal(signal.SIGKILL)
        self.killed_at[process.pid] = time.time()
        assert process.wait(10) == -signal.SIGKILL
        self.figures.sigkills += 1
        return children

    def restart(self, slot: int, children: list[int]) -> None:
        """Start the killed slot again; no batch starts meanwhile (the pause file), so that
        rows are left for the next kills however slow start-up is."""
        pause = self.configs[slot].parent / "pause"
        pause.touch()
        # Its worker ends when it finds its daemon gone; the slot's socket is free again.
        for child in children:
            deadline = time.monotonic() + 10
            while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.start(slot)
        pause.unlink()

    def cut(self) -> None:
        """End the lock's database session from outside, as a network cut or a DBA would."""
        engine = sa.create_engine(self.primary, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                if self.engine == "postgresql":
                    # The session holding the advisory lock (not another run's try at it).
                    ended = connection.exec_driver_sql(
                        "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l"
                        " WHERE l.locktype = 'advisory' AND l.granted"
                        " AND l.database = (SELECT oid FROM pg_database"
                        " WHERE datname = current_database())"
                    ).scalar_one()
                else:
                    name = connection.exec_driver_sql(
                        "SELECT DISTINCT lock_name FROM archivist_movers"
                    ).scalar_one()
                    session = connection.exec_driver_sql(
                        "SELECT IS_USED_LOCK(%s)", (name,)
                    ).scalar_one()
                    ended = 0
                    if session is not None:
                        connection.exec_driver_sql(f"KILL CONNECTION {int(session)}")
                        ended = 1
        finally:
            engine.dispose()
        assert ended == 1
        self.figures.cuts += 1

    def steps(self) -> dict[int, list[tuple[float, float]]]:
        """Each process's spans of data commands on chat_messages: from a command's begin
        to the moment none of its commands is running; a process killed mid-command ends
        its last span when it was killed."""
        spans: dict[int, list[tuple[float, float]]] = {}
        for log in self.logs:
            open_: dict[int, tuple[int, float]] = {}
            for match in STEP.finditer(log.read_text()):
                kind, _collection, pid_text, _command, at_text = match.groups()
                pid, at = int(pid_text), float(at_text)
                self.figures.steps += kind == "begin"
                running, since = open_.get(pid, (0, at))
                if kind == "begin":
                    open_[pid] = (running + 1, since if running else at)
                elif running == 1:
                    spans.setdefault(pid, []).append((since, at))
                    del open_[pid]
                else:
                    open_[pid] = (running - 1, since)
            for pid, (_running, since) in open_.items():
                spans.setdefault(pid, []).append((since, self.killed_at.get(pid, time.time())))
        return spans


def _overlaps(spans: dict[int, list[tuple[float, float]]]) -> list[str]:
    """Spans of two different processes that overlap in time."""
    flat = sorted((start, end, pid) for pid, mine in spans.items() for start, end in mine)
    found: list[str] = []
    latest: tuple[float, int] | None = None  # the furthest end so far, and whose
    for start, end, pid in flat:
        if latest is not None and latest[1] != pid and start < latest[0]:
            found.append(
                f"pid {pid} began at {start:.6f} while pid {latest[1]} ran to {latest[0]:.6f}"
            )
        if latest is None or end > latest[0]:
            latest = (end, pid)
    return found


@pytest.mark.parametrize("engine", ENGINES)
def test_two_runs_on_one_primary_move_each_collection_one_at_a_time_through_kills(
    engine: str,
    fresh_db: Callable[[str], str],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    seed = movers_seed()
    print(f"movers seed {seed}")
    rng = random.Random(seed)
    primary, archive = _urls(fresh_db, engine)
    make_chat_table(primary, ROWS)
    seeded = set(range(1, ROWS + 1))
    with processes() as started:
        movers = Movers(engine, primary, archive, tmp_path, started)
        try:
            movers.start(0)
            movers.start(1)
            slot, holder = movers.holding()
            kinds = ["sigkill"] * KILLS + (["cut"] * KILLS if engine != "sqlite" else [])
            rng.shuffle(kinds)
            for kind in kinds:
                movers.wait_rows(rng.randint(*KILL_AFTER_ROWS))
                assert movers.count(primary) > MAX_ROWS + BATCH, (
                    f"seed {seed}: the runs archived too fast for {len(kinds)} kills"
                )
                slot, holder = movers.holding()
                began = time.monotonic()
                if kind == "sigkill":
                    # The other run takes over (within a check interval or so).
                    children = movers.sigkill(slot)
                    killed = slot
                    slot, holder = movers.holding(exclude=holder.pid)
                    movers.figures.takeovers += 1
                    movers.figures.longest_takeover = max(
                        movers.figures.longest_takeover, time.monotonic() - began
                    )
                    movers.restart(killed, children)
                else:
                    movers.cut()
                    # Anyone may take it now, the cut process too (once its task stopped).
                    wait_for(lambda: movers.holder() is not None, STEP_TIMEOUT, "a new holder")
                    slot, holder = movers.holding()
            # Converge: down to the policy, and nobody moving any more.
            wait_for(
                lambda: movers.count(primary) <= MAX_ROWS and movers.holder() is None,
                STEP_TIMEOUT,
                f"convergence (primary {count(primary)})",
            )
            for process in movers.slots:
                assert process.poll() is None, movers.tail()
                process.send_signal(signal.SIGTERM)
            for process in movers.slots:
                assert process.wait(30) == 0, movers.tail()
            in_primary, archived = ids(primary), ids(archive)
            movers.figures.rows_compared = len(in_primary) + len(archived)
            assert in_primary | archived == seeded, (
                f"seed {seed}: lost {sorted(seeded - in_primary - archived)[:10]}"
            )
            assert not in_primary & archived, (
                f"seed {seed}: in both {sorted(in_primary & archived)[:10]}"
            )
            assert count(archive) == len(archived) and count(primary) == len(in_primary)
            assert len(in_primary) in (KEEP, MAX_ROWS)
            spans = movers.steps()
            overlaps = _overlaps(spans)
            movers.figures.overlaps = len(overlaps)
            assert len(spans) >= 2, f"one process moved everything:\n{movers.tail()}"
            assert not overlaps, f"seed {seed}: two movers at once: {overlaps[:5]}"
            text = "\n".join(log.read_text() for log in movers.logs)
            assert (
                "skipped this cycle: chat_messages is being archived by another archivist" in text
            )
            if engine != "sqlite":
                assert "was lost; no batch moves until it is taken again" in text
        finally:
            movers.close()
    figures = movers.figures
    print(f"movers figures ({engine}): {figures}")
    for name, value in vars(figures).items():
        record_property(name, value)


def test_status_with_the_config_names_the_mover(tmp_path: Path, sqlite_url: str) -> None:
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    make_chat_table(sqlite_url, 3000)
    socket_dir = short_socket_dir()
    config = _config(
        tmp_path / "archivist.toml", sqlite_url, archive, socket_dir / "w.sock", pause=0.2
    )
    try:
        with processes() as started:
            run = started.start("run", "--config", str(config), output=tmp_path / "run.log")
            wait_for(lambda: _holder(sqlite_url) is not None, 30, "the run to hold the lock", run)
            shown = archivist("status", "--config", str(config))
            assert shown.returncode == 0, shown.stderr
            assert f"chat_messages: held by {socket.gethostname()}:{run.pid} since " in shown.stdout
            as_json = archivist("status", "--config", str(config), "--json")
            assert as_json.returncode == 0, as_json.stderr
            mover = json.loads(as_json.stdout)["movers"]["chat_messages"]
            assert (mover["host"], mover["pid"]) == (socket.gethostname(), run.pid)
    finally:
        for path in socket_dir.iterdir():
            path.unlink()
        socket_dir.rmdir()
