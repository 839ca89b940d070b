"""Crash safety: a real 50,000-row archive whose worker, then daemon, is SIGKILLed at seeded
random moments and restarted, with every row accounted for after every kill.

The seed is printed (``crash seed N``); ``ARCHIVIST_CRASH_SEED=N`` replays a run. Figures
(kills, rows compared, losses) are printed and recorded as junit properties; the last run's
are in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import sqlalchemy as sa

from archivist.config import ArchiveConfig, make_config
from archivist.daemon.runtime import Launch, archive_now, running
from archivist.daemon.tracker import TaskRecord
from archivist.data import DataDaemon
from archivist.data.bus import JSONObject
from archivist.errors import ArchivistError
from e2esupport import (
    PATHS,
    Processes,
    count,
    ids,
    make_chat_table,
    processes,
    small_config,
    write_config,
)
from support import short_socket_dir

ROWS = 50_000
MAX_ROWS = 10_000
ROWS_PER_ARCHIVE = 1_000
KEEP = MAX_ROWS - ROWS_PER_ARCHIVE
"""What the policy leaves in the primary: the newest 9,000 rows (ids 41,001..50,000)."""
BATCH = 200
KILLS = 20
"""Per victim (worker, then daemon) and engine pair."""
KILL_AFTER_ROWS = (1, 250)
"""A kill comes once this many more rows (uniform) have landed in the archive since the
victim (re)started, plus a jitter of up to ~one batch: always mid-task, anywhere in a batch."""
KILL_JITTER = (0.0, 0.005)
STEP_TIMEOUT = 60.0

Victim = Literal["worker", "daemon"]


def crash_seed() -> int:
    replay = os.environ.get("ARCHIVIST_CRASH_SEED")
    return int(replay) if replay else secrets.randbits(32)


@dataclass
class Figures:
    worker_kills: int = 0
    daemon_kills: int = 0
    kills_with_copies_in_both: int = 0
    """Kills after which some rows sat in both databases: copied, delete not yet run."""
    most_rows_in_both: int = 0
    rows_compared: int = 0
    checks: int = 0
    losses: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Archivist:
    """The databases of one run, the in-process reader that checks them, and the two
    processes the test kills: ``archivist daemon`` and ``archivist worker``."""

    def __init__(
        self, primary: str, archive: str, workdir: Path, started: Processes, seed: int
    ) -> None:
        self.primary, self.archive = primary, archive
        self.seed = seed
        self.started = started
        self.socket_dir = short_socket_dir()
        self.socket = self.socket_dir / "worker.sock"
        self.log = workdir / "archivist.log"
        entry: dict[str, object] = {
            "collection": "chat_messages",
            "order_by": "created_at",
            "max_rows": MAX_ROWS,
            "rows_per_archive": ROWS_PER_ARCHIVE,
            "batch_size": BATCH,
        }
        handles = {"primary": primary, "archive": archive}
        self.config_file = write_config(
            workdir / "archivist.toml",
            handles,
            [entry],
            daemon={"check_interval": 0.2, "health_interval": 1},
        )
        # The checker reads both databases through the data layer, as the worker sees them.
        self.runner = asyncio.Runner()
        self.data = DataDaemon(make_config(handles, [ArchiveConfig(**entry)]))  # type: ignore[arg-type]
        self.runner.run(self.data.start())
        self.runner.run(self.data.ensure_archive_table("chat_messages"))
        self.originals = self.items("primary")
        assert len(self.originals) == ROWS
        self.figures = Figures()
        self.processes: dict[Victim, subprocess.Popen[str]] = {}

    def close(self) -> None:
        self.started.kill_all()
        self.runner.run(self.data.close())
        self.runner.close()
        for path in self.socket_dir.iterdir():
            path.unlink()
        self.socket_dir.rmdir()

    # --- reading ---------------------------------------------------------------------------

    def landed(self) -> int:
        """Rows in the archive, through the checker's pooled connections: a new connection
        per look (~20-40 ms on MariaDB) let a fast run move a thousand rows between looks,
        so kills came later than `KILL_AFTER_ROWS` says."""
        counted = self.runner.run(
            self.data.execute("data/count", {"collection": "chat_messages", "dbHandle": "archive"})
        )
        return int(counted["count"])  # type: ignore[call-overload]

    def items(self, handle: str) -> dict[int, JSONObject]:
        result = self.runner.run(
            self.data.execute(
                "data/list", {"collection": "chat_messages", "dbHandle": handle, "limit": ROWS}
            )
        )
        items = result["items"]
        assert isinstance(items, list)
        return {int(item["id"]): item for item in items}

    def check(self, after: str) -> set[int]:
        """Every original row is in the primary or the archive, every archived row equals its
        original; returns the ids found in both."""
        # The primary first: a row deleted from it meanwhile was in the archive before.
        in_primary = ids(self.primary)
        archived = self.items("archive")
        lost = set(self.originals) - in_primary - set(archived)
        changed = sorted(key for key, item in archived.items() if item != self.originals[key])
        self.figures.checks += 1
        self.figures.rows_compared += len(archived)
        self.figures.losses += len(lost) + len(changed)
        assert not lost, f"seed {self.seed}, {after}: lost {len(lost)} row(s): {sorted(lost)[:10]}"
        assert not changed, (
            f"seed {self.seed}, {after}: {len(changed)} archived row(s) differ from their "
            f"originals, e.g. {self.originals[changed[0]]} -> {archived[changed[0]]}"
        )
        assert set(archived) <= set(self.originals), f"seed {self.seed}, {after}: unknown rows"
        return in_primary & set(archived)

    # --- the processes ---------------------------------------------------------------------

    def start(self, victim: Victim) -> None:
        if victim == "worker":
            args = ("worker", "--socket", str(self.socket))
        else:
            args = ("daemon", "--config", str(self.config_file), "--socket", str(self.socket))
        self.processes[victim] = self.started.start(*args, output=self.log)

    def kill_at_a_random_moment(self, victim: Victim, rng: random.Random) -> None:
        """Wait for archiving to progress a random number of rows, then SIGKILL ``victim``."""
        landed = self.landed()
        target = landed + rng.randint(*KILL_AFTER_ROWS)
        deadline = time.monotonic() + STEP_TIMEOUT
        while self.landed() < target:
            for name, process in self.processes.items():
                assert process.poll() is None, f"the {name} exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"seed {self.seed}: no progress to {target} archived rows before killing the "
                f"{victim}; log:\n{self.log.read_text()[-3000:]}"
            )
            time.sleep(0.005)
        time.sleep(rng.uniform(*KILL_JITTER))
        process = self.processes[victim]
        process.send_signal(signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL

    def kill_and_restart(self, victim: Victim, kills: int, rng: random.Random) -> None:
        for number in range(1, kills + 1):
            self.kill_at_a_random_moment(victim, rng)
            in_both = self.check(f"{victim} kill {number}")
            if victim == "worker":
                self.figures.worker_kills += 1
            else:
                self.figures.daemon_kills += 1
            if in_both:
                self.figures.kills_with_copies_in_both += 1
                self.figures.most_rows_in_both = max(self.figures.most_rows_in_both, len(in_both))
            assert count(self.primary) > MAX_ROWS + BATCH, (
                f"seed {self.seed}: the run archived too fast for {kills} kills; the policy "
                "would stop early"
            )
            self.start(victim)

    def converge(self) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not (count(self.primary) == KEEP and count(self.archive) == ROWS - KEEP):
            assert time.monotonic() < deadline, (
                f"seed {self.seed}: no convergence: primary {count(self.primary)}, archive "
                f"{count(self.archive)}; log:\n{self.log.read_text()[-3000:]}"
            )
            time.sleep(0.1)
        time.sleep(0.5)  # a few more policy checks: nothing else may move


PAIRS = [
    "sqlite_to_sqlite",
    "postgresql_to_mariadb",
    "postgresql_to_postgresql",
    "mariadb_to_mariadb",
    "mariadb_to_mariadb2",
]
"""``2``: the archive is on a second server of that engine (`second_db`)."""


@pytest.fixture
def crash_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """The pairs: SQLite files and MariaDB databases of one server are copied inside the
    database, PostgreSQL databases by COPY through the daemon, PostgreSQL to MariaDB and
    MariaDB to a second MariaDB server streamed by the daemon (bulk writes, digests)."""
    pair: str = request.param
    if pair == "sqlite_to_sqlite":
        primary, archive = tmp_path / "primary.db", tmp_path / "archive.db"
        yield f"sqlite:///{primary}", f"sqlite:///{archive}", pair
        return
    fresh_db = request.getfixturevalue("fresh_db")
    source, dest = pair.split("_to_")
    engines = {"postgresql": "postgresql", "mariadb": "mysql"}
    if dest.endswith("2"):
        archive = request.getfixturevalue("second_db")(engines[dest[:-1]])
    else:
        archive = fresh_db(engines[dest])
    yield fresh_db(engines[source]), archive, pair


@pytest.mark.timeout(240)
@pytest.mark.parametrize("crash_urls", PAIRS, indirect=True)
def test_sigkilled_worker_and_daemon_lose_no_row_and_converge_to_the_policy(
    crash_urls: tuple[str, str, str],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    primary, archive, pair = crash_urls
    seed = crash_seed()
    print(f"crash seed {seed}")
    rng = random.Random(f"{seed}-{pair}")
    make_chat_table(primary, ROWS)
    started_at = time.monotonic()
    with processes() as started:
        run = Archivist(primary, archive, tmp_path, started, seed)
        try:
            run.start("daemon")
            run.start("worker")
            run.kill_and_restart("worker", KILLS, rng)
            run.kill_and_restart("daemon", KILLS, rng)
            run.converge()

            in_both = run.check("convergence")
            figures = run.figures
            figures.seconds = time.monotonic() - started_at
            log = run.log.read_text()
        finally:
            run.close()

    in_primary = ids(primary)
    assert not in_both, f"seed {seed}: {len(in_both)} row(s) in both databases"
    assert in_primary == set(range(ROWS - KEEP + 1, ROWS + 1)), f"seed {seed}"
    assert count(archive) == ROWS - KEEP
    assert "conflict" not in log, f"seed {seed}: a rerun hit a conflict"
    assert figures.worker_kills == KILLS and figures.daemon_kills == KILLS
    assert figures.losses == 0
    summary = (
        f"crash figures {pair} seed {seed}: kills survived {figures.worker_kills} worker + "
        f"{figures.daemon_kills} daemon, kills with copies in both databases "
        f"{figures.kills_with_copies_in_both} (most rows {figures.most_rows_in_both}), checks "
        f"{figures.checks}, rows compared {figures.rows_compared}, losses {figures.losses}, "
        f"{figures.seconds:.1f} s"
    )
    print(summary)
    for name in ("worker_kills", "daemon_kills", "kills_with_copies_in_both", "rows_compared"):
        record_property(f"{pair}_{name}", getattr(figures, name))
    record_property(f"{pair}_losses", figures.losses)
    record_property(f"{pair}_seed", seed)


# --- the windows between copy and delete, deterministically --------------------------------


@pytest.mark.timeout(120)
@PATHS
def test_a_copy_that_landed_before_a_crash_is_created_again_then_deleted_without_conflict(
    tmp_path: Path, path: str
) -> None:
    """The worker is SIGKILLed after its first batch was copied and verified, before the
    delete ran: those rows (and the second batch's, being copied beside that delete, and
    copied inside the database also the third's, listed ahead) sit in both databases; the
    rerun copies them again (idempotent) and deletes them, with no conflict and no
    duplicate."""
    primary, archive = f"sqlite:///{tmp_path / 'p.db'}", f"sqlite:///{tmp_path / 'a.db'}"
    make_chat_table(primary, 3000)
    config = small_config(primary, archive, in_database=path == "in_database")
    copied_at_most = 400 if path == "rows" else 600
    seen: dict[str, object] = {}

    async def scenario() -> TaskRecord:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            delete = daemon.data.bus.command("data/delete")

            async def kill_worker_instead(params: JSONObject) -> JSONObject:
                if "in_both" not in seen:
                    seen["in_both"] = ids(primary) & ids(archive)
                    assert daemon.supervisor is not None and daemon.supervisor.pid is not None
                    os.kill(daemon.supervisor.pid, signal.SIGKILL)
                    await asyncio.sleep(1.0)  # the answer can no longer reach anyone
                    raise ArchivistError("the worker was killed before this delete")
                return await delete(params)

            daemon.data.bus.register("data/delete", kill_worker_instead, replace=True)
            record = await archive_now(daemon, "chat_messages", 1000)
            seen["restarts"] = daemon.supervisor.restarts if daemon.supervisor else 0
            return record

    record = asyncio.run(scenario())

    in_both = seen["in_both"]
    assert isinstance(in_both, set)
    assert set(range(1, 201)) <= in_both <= set(range(1, copied_at_most + 1)), (
        "not the first batch in both"
    )
    assert seen["restarts"] == 1
    assert record.state == "success" and record.error is None
    assert record.archived == 1000
    assert ids(primary) == set(range(1001, 3001))
    assert ids(archive) == set(range(1, 1001))
    assert count(archive) == 1000


UPDATED = (3, 57, 199, 650)
"""Rows updated just before their delete: in the first and in the fourth batch of 200."""


@dataclass
class AfterUpdates:
    record: TaskRecord
    in_primary: dict[int, JSONObject]
    in_archive: dict[int, JSONObject]
    delete_calls: int


def archive_while_updating(tmp_path: Path, path: str) -> tuple[str, str, AfterUpdates]:
    """Archive the 1000 oldest of 3000 rows; a second connection updates rows of a batch
    after they were copied and verified, just before their delete."""
    primary, archive = f"sqlite:///{tmp_path / 'p.db'}", f"sqlite:///{tmp_path / 'a.db'}"
    make_chat_table(primary, 3000)
    config = small_config(primary, archive, in_database=path == "in_database")
    calls = 0

    async def update_rows(keys: list[int]) -> None:
        engine = sa.create_engine(primary)
        try:
            with engine.begin() as connection:
                connection.execute(
                    sa.text(
                        "UPDATE chat_messages SET body = 'updated after copy ' || id "
                        f"WHERE id IN ({', '.join(map(str, keys))})"
                    )
                )
        finally:
            engine.dispose()

    async def scenario() -> AfterUpdates:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            delete = daemon.data.bus.command("data/delete")

            async def update_then_delete(params: JSONObject) -> JSONObject:
                nonlocal calls
                calls += 1
                keys = params["ids"]  # with "expected" (rows path) or "matching"
                assert isinstance(keys, list)
                batch = {int(key) for key in keys}
                touch = [key for key in UPDATED if key in batch]
                if touch and calls <= 4:  # once per batch; a later batch moves them as they are
                    await update_rows(touch)
                return await delete(params)

            daemon.data.bus.register("data/delete", update_then_delete, replace=True)
            record = await archive_now(daemon, "chat_messages", 1000)
            found: list[dict[int, JSONObject]] = []
            for handle in ("primary", "archive"):
                listed = await daemon.data.execute(
                    "data/list",
                    {
                        "collection": "chat_messages",
                        "dbHandle": handle,
                        "filter": {"id": {"$in": list(UPDATED)}},
                    },
                )
                items = listed["items"]
                assert isinstance(items, list)
                found.append({int(item["id"]): item for item in items})
            return AfterUpdates(record, found[0], found[1], calls)

    return primary, archive, asyncio.run(scenario())


@pytest.mark.timeout(120)
@PATHS
def test_a_row_updated_between_copy_and_delete_is_never_deleted_with_stale_archive_content(
    tmp_path: Path, path: str
) -> None:
    """The delete skips the updated rows: each ends in the archive with its update (moved
    again) or still in the primary with it; no update is lost, no row at all is lost."""
    primary, archive, after = archive_while_updating(tmp_path, path)

    assert after.record.state == "success", after.record.error
    assert after.delete_calls >= 5
    for key in UPDATED:
        body = f"updated after copy {key}"
        if key in after.in_primary:  # kept: the primary holds the update
            assert after.in_primary[key]["body"] == body
        else:  # moved again: the archive holds the update
            assert after.in_archive[key]["body"] == body, f"row {key} lost its update"
    assert ids(primary) | ids(archive) == set(range(1, 3001))
    assert count(primary) == 2000


@pytest.mark.timeout(120)
@PATHS
def test_rows_skipped_as_updated_are_moved_again_by_the_same_task(
    tmp_path: Path, path: str
) -> None:
    """The executor's promise ("a row updated since is kept and moved again, updated, by a
    later batch"): the task moves exactly the 1000 oldest rows, updated ones included, and
    leaves no row in both databases."""
    primary, archive, after = archive_while_updating(tmp_path, path)

    assert after.record.state == "success", after.record.error
    assert not after.in_primary, f"updated rows left in the primary: {sorted(after.in_primary)}"
    for key in UPDATED:
        assert after.in_archive[key]["body"] == f"updated after copy {key}"
    assert ids(primary) == set(range(1001, 3001))
    assert not ids(primary) & ids(archive)
