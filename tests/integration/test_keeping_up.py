"""Keeping up, end to end: a real ``archivist run`` with the default yield_ratio beside an
application that inserts rows faster than a fully yielding archivist moves them."""

from __future__ import annotations

import itertools
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from archivist import sample
from archivist.daemon.keepup import read_state
from e2esupport import archivist, count, ids, make_chat_table, wait_for, write_config
from support import short_socket_dir

pytestmark = pytest.mark.timeout(150)

MAX_ROWS = 500
BATCH = 25
COMMIT_EVERY = 0.01
CHAT_EVERY = 5
"""The application commits every 10 ms (to a log table of its own: busy, as the daemon
sees it), and one commit in CHAT_EVERY adds a chat message: ~20 rows/s, fewer on a loaded
machine. Within one check interval (1 s) that is less than a batch, so a table kept up
with stays within max_rows + batch_size."""
CHECKS = 40
"""Checks the table gets to come back within max_rows + batch_size after the daemon first
finds it outgrowing archivist."""


def _application_inserts(url: str, stop: threading.Event, inserted: list[int]) -> None:
    """Commit every COMMIT_EVERY s, a chat message (ids from 100,000 up) one time in
    CHAT_EVERY, until ``stop``."""
    engine = sa.create_engine(url)
    table = sample.chat_messages_table(sa.MetaData())
    rows = sample.generate_rows(1_000_000, start_id=100_000)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("CREATE TABLE IF NOT EXISTS app_log (note VARCHAR(20))"))
            connection.commit()
            for turn in itertools.count():
                if stop.wait(COMMIT_EVERY):
                    break
                if turn % CHAT_EVERY:
                    connection.execute(sa.text("INSERT INTO app_log (note) VALUES ('working')"))
                    connection.commit()
                else:
                    connection.execute(table.insert(), [next(rows)])
                    connection.commit()
                    inserted.append(1)
    finally:
        engine.dispose()


def test_the_daemon_yields_less_while_a_table_outgrows_archivist_until_it_is_back(
    pg_url: str, tmp_path: Path, run_process: Callable[..., subprocess.Popen[str]]
) -> None:
    """With yield_ratio 200, archivist rests ~200x each batch while the application works:
    a few rows/s, against ~20 the application adds. The daemon sees the table over its
    limit and larger at consecutive checks, asks the running task for 1.5x the growth
    (the worker logs it), `status` shows it, and the table comes back within
    max_rows + batch_size within a bounded number of checks. No row is lost or doubled.

    On PostgreSQL, where the application's sessions are seen in pg_stat_activity: on
    SQLite, yielding sees the application only through its own deletes, and beside this
    application it mostly did not yield at all (nothing to keep up with)."""
    primary = pg_url
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    make_chat_table(primary, MAX_ROWS + 100)
    socket = short_socket_dir() / "worker.sock"
    config_file = write_config(
        tmp_path / "archivist.toml",
        {"primary": primary, "archive": archive},
        [
            {
                "collection": "chat_messages",
                "order_by": "created_at",
                "max_rows": MAX_ROWS,
                "rows_per_archive": 200,  # tasks of 8+ batches: each rests
                "batch_size": BATCH,
            }
        ],
        socket=socket,
        worker={"batch_time": 0},  # fixed batches; yield_ratio stays the default (200)
        daemon={"check_interval": 1.0},
    )
    stop = threading.Event()
    inserted: list[int] = []
    writer = threading.Thread(target=_application_inserts, args=(primary, stop, inserted))
    writer.start()
    try:
        process = run_process("run", "--config", str(config_file))
        checks: list[dict[str, object]] = []

        def next_check() -> bool:
            """True once the daemon has written a check not seen yet (recorded)."""
            state = read_state(socket)
            if state is None or (checks and state["at"] == checks[-1]["at"]):
                return False
            policies = state["policies"]
            assert isinstance(policies, dict)
            checks.append({"at": state["at"], **policies["chat_messages"]})
            return True

        def behind() -> bool:
            return next_check() and checks[-1]["state"] == "behind"

        wait_for(behind, 60, "the daemon to find the table outgrowing archivist", process)
        first_behind = len(checks) - 1
        shown = archivist("status", "--config", str(config_file), timeout=30)
        for _ in range(CHECKS):
            wait_for(next_check, 30, "the next check", process)
            if int(str(checks[-1]["rows"])) <= MAX_ROWS + BATCH:
                break
        back = checks[-1]
        stop.set()
        writer.join(30)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        stop.set()
        writer.join(30)

    assert process.returncode == 0, output
    # It fell behind at the yielding rate first: over the limit and growing.
    before = checks[first_behind]
    assert int(str(before["rows"])) > MAX_ROWS
    assert isinstance(before["growth"], float) and before["growth"] > 0
    # The daemon asked for 1.5x the growth it measured, and the worker took it.
    assert before["minRate"] == pytest.approx(1.5 * before["growth"], rel=0.01)
    assert "yielding less: at least" in output
    assert "rows/s at least" in output  # the worker's log of the running or next task
    assert shown.returncode == 0, shown.stderr

    # The policy's line (and the lines its state wraps onto) says so.
    policy_lines = shown.stdout[
        shown.stdout.index("\nchat_messages ") : shown.stdout.index("tasks:")
    ]
    assert "behind" in policy_lines or "keeps up" in policy_lines  # a check may come between
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80, shown.stdout
    # Back within max_rows + batch_size within CHECKS checks, the application still writing.
    assert int(str(back["rows"])) <= MAX_ROWS + BATCH, checks[first_behind:]
    # Nothing lost, nothing doubled.
    primary_ids, archive_ids = ids(primary), ids(archive)
    assert not primary_ids & archive_ids
    assert len(primary_ids | archive_ids) == MAX_ROWS + 100 + len(inserted)
    assert count(archive) > 100
