"""`archivist pause`, `resume`, `cancel` and `status` against a live `archivist run`: real
processes, real sockets, real SQLite, PostgreSQL and MariaDB databases."""

from __future__ import annotations

import getpass
import json
import signal
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from e2esupport import archivist, count, ids, make_chat_table, wait_for, write_config

pytestmark = pytest.mark.timeout(240)

ROWS = 3000
KEPT = 100
"""Each policy keeps this many rows: nearly every row moves, in batches of 20 with a rest
of 0.2 s between them, so a task runs for many seconds and is paused or cancelled midway."""
TABLES = ("chat_messages", "events")


def make_setup(
    tmp_path: Path, socket_dir: Path, primary: str, archive: str
) -> tuple[Path, set[int]]:
    for table in TABLES:
        make_chat_table(primary, ROWS, table)
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": primary, "archive": archive},
        [
            {
                "collection": table,
                "order_by": "created_at",
                "max_rows": KEPT,
                "rows_per_archive": 10,
                "batch_size": 20,
            }
            for table in TABLES
        ],
        socket_dir / "worker.sock",
        worker={"pause": 0.2},
    )
    return config, set(range(1, ROWS + 1))


def status_json(config: Path) -> dict[str, object]:
    shown = archivist("status", "--config", str(config), "--json", timeout=60)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert isinstance(document, dict)
    return document


def policy_of(document: dict[str, object], collection: str) -> dict[str, object]:
    policies = document["policies"]
    assert isinstance(policies, list)
    return next(p for p in policies if p["collection"] == collection)


def author_prefix() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}/"


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    return output


def assert_every_row_kept(primary: str, archive: str, table: str, expected: set[int]) -> None:
    """Every row in the source, the archive or both: none lost."""
    assert ids(primary, table) | ids(archive, table) == expected


@pytest.mark.parametrize("engine", ["sqlite", "mysql"])
def test_pausing_one_collection_stops_its_task_and_leaves_the_other_moving(
    tmp_path: Path,
    socket_dir: Path,
    fresh_db: Callable[[str], str],
    run_process: Callable[..., subprocess.Popen[str]],
    engine: str,
) -> None:
    primary, archive = fresh_db(engine), fresh_db(engine)
    config, expected = make_setup(tmp_path, socket_dir, primary, archive)
    process = run_process("run", "--config", str(config))
    wait_for(lambda: all(count(archive, t) > 0 for t in TABLES), 60, "both tables moving", process)

    paused = archivist("pause", "chat_messages", "--config", str(config), timeout=90)
    assert paused.returncode == 0, paused.stderr
    assert f"chat_messages: paused by {author_prefix()}" in paused.stdout
    assert "stopped after its batch (cancelled" in paused.stdout
    frozen = (count(primary, "chat_messages"), count(archive, "chat_messages"))
    other = count(archive, "events")

    # The other collection keeps moving, several checks long; the paused one does not.
    wait_for(lambda: count(archive, "events") >= other + 200, 60, "events to move on", process)
    assert (count(primary, "chat_messages"), count(archive, "chat_messages")) == frozen
    document = status_json(config)
    chat = policy_of(document, "chat_messages")
    assert chat["state"] == "paused" and chat["task"] is None
    pauses = document["paused"]
    assert isinstance(pauses, dict)
    assert str(pauses["collections"]["chat_messages"]["by"]).startswith(author_prefix())
    assert pauses["all"] is None
    assert policy_of(document, "events")["state"] in ("running", "queued", "idle")
    human = archivist("status", "--config", str(config), timeout=60)
    assert human.returncode == 0, human.stderr
    assert f"paused by {author_prefix()}" in human.stdout
    assert all(len(line) <= 80 for line in human.stdout.splitlines()), human.stdout

    resumed = archivist("resume", "chat_messages", "--config", str(config), timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: chat_messages" in resumed.stdout
    wait_for(
        lambda: count(archive, "chat_messages") > frozen[1], 60, "chat_messages again", process
    )
    stop(process)
    for table in TABLES:
        assert_every_row_kept(primary, archive, table, expected)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_cancel_stops_a_running_task_after_its_batch_and_keeps_every_row(
    tmp_path: Path,
    socket_dir: Path,
    fresh_db: Callable[[str], str],
    run_process: Callable[..., subprocess.Popen[str]],
    engine: str,
) -> None:
    primary, archive = fresh_db(engine), fresh_db(engine)
    config, expected = make_setup(tmp_path, socket_dir, primary, archive)
    process = run_process("run", "--config", str(config))
    wait_for(lambda: count(archive, "events") > 0, 60, "events moving", process)
    task = policy_of(status_json(config), "events")["task"]
    assert isinstance(task, dict)
    task_id = str(task["taskId"])

    cancelled = archivist("cancel", task_id, "--config", str(config), timeout=90)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"task {task_id}: cancelled after " in cancelled.stdout
    document = status_json(config)
    finished = {t["taskId"]: t for t in document["finished"]}  # type: ignore[union-attr]
    assert finished[task_id]["state"] == "cancelled"
    assert finished[task_id]["error"] == "cancelled on request"
    again = archivist("cancel", task_id, "--config", str(config), timeout=60)
    assert again.returncode == 1 and f"task {task_id} has ended already" in again.stderr
    unknown = archivist("cancel", "nope-1", "--config", str(config), timeout=60)
    assert unknown.returncode == 1 and "no task nope-1" in unknown.stderr

    stop(process)
    for table in TABLES:
        assert_every_row_kept(primary, archive, table, expected)


@pytest.mark.parametrize("kept", ["beside the control socket", "in pause_state"])
def test_a_pause_of_every_policy_survives_a_restart_until_resumed(
    tmp_path: Path,
    socket_dir: Path,
    sqlite_url: str,
    fresh_db: Callable[[str], str],
    run_process: Callable[..., subprocess.Popen[str]],
    kept: str,
) -> None:
    archive = fresh_db("sqlite")
    config, expected = make_setup(tmp_path, socket_dir, sqlite_url, archive)
    if kept == "in pause_state":
        state = tmp_path / "state" / "pauses.json"
        state.parent.mkdir()
        text = config.read_text()
        config.write_text(text.replace("[daemon]\n", f'[daemon]\npause_state = "{state}"\n'))
    process = run_process("run", "--config", str(config))
    wait_for(lambda: count(archive, "chat_messages") > 0, 60, "rows moving", process)
    paused = archivist("pause", "--config", str(config), timeout=90)
    assert paused.returncode == 0, paused.stderr
    assert f"every policy: paused by {author_prefix()}" in paused.stdout
    stop(process)
    moved = {table: count(archive, table) for table in TABLES}
    if kept == "in pause_state":
        assert state.exists()
        # As systemd removes a service's RuntimeDirectory when it stops.
        for leftover in socket_dir.iterdir():
            leftover.unlink()

    process = run_process("run", "--config", str(config))
    checks: list[object] = []

    def checked_again() -> bool:
        shown = archivist("status", "--config", str(config), "--json", timeout=60)
        if shown.returncode != 0:
            return False
        daemon = json.loads(shown.stdout).get("daemon")  # None: only the worker is up yet
        if (
            daemon is not None
            and daemon["lastCheck"] is not None
            and daemon["lastCheck"] not in checks
        ):
            checks.append(daemon["lastCheck"])
        return len(checks) >= 3

    wait_for(checked_again, 60, "three policy checks of the restarted daemon", process)
    assert {table: count(archive, table) for table in TABLES} == moved
    document = status_json(config)
    pauses = document["paused"]
    assert isinstance(pauses, dict) and str(pauses["all"]["by"]).startswith(author_prefix())
    assert {p["state"] for p in document["policies"]} == {"paused"}  # type: ignore[union-attr]
    human = archivist("status", "--config", str(config), timeout=60)
    assert "every policy paused by" in human.stdout

    still = archivist("resume", "events", "--config", str(config), timeout=60)
    assert still.returncode == 1 and "events stays paused" in still.stderr
    resumed = archivist("resume", "--config", str(config), timeout=60)
    assert resumed.returncode == 0 and "resumed: every policy" in resumed.stdout
    wait_for(lambda: count(archive, "events") > moved["events"], 60, "rows again", process)
    stop(process)
    for table in TABLES:
        assert_every_row_kept(sqlite_url, archive, table, expected)


def test_control_commands_without_a_daemon_say_where_they_looked(tmp_path: Path) -> None:
    sock = tmp_path / "none.sock"
    for args in (["pause", "chat_messages"], ["resume"], ["cancel", "t-1"]):
        done = archivist(*args, "--socket", str(sock))
        assert done.returncode == 1
        assert f"no daemon is listening at {sock}.control" in done.stderr
        assert "start one with `archivist run`" in done.stderr
        assert "Traceback" not in done.stderr


def test_pause_of_a_collection_without_a_policy_names_the_policies(
    tmp_path: Path,
    socket_dir: Path,
    sqlite_url: str,
    fresh_db: Callable[[str], str],
    run_process: Callable[..., subprocess.Popen[str]],
) -> None:
    config, _ = make_setup(tmp_path, socket_dir, sqlite_url, fresh_db("sqlite"))
    process = run_process("run", "--config", str(config))
    wait_for((socket_dir / "worker.sock.control").exists, 60, "the daemon", process)
    done = archivist("pause", "chat_mesages", "--config", str(config), timeout=60)
    assert done.returncode == 1
    assert "no policy for 'chat_mesages'; the policies: chat_messages, events" in done.stderr
    stop(process)


def test_the_control_socket_stays_private_beside_a_worker_that_admits_other_users(
    tmp_path: Path,
    socket_dir: Path,
    sqlite_url: str,
    fresh_db: Callable[[str], str],
    run_process: Callable[..., subprocess.Popen[str]],
) -> None:
    config, _ = make_setup(tmp_path, socket_dir, sqlite_url, fresh_db("sqlite"))
    config.write_text(config.read_text().replace("[worker]\n", "[worker]\nallow_uid = [65534]\n"))
    process = run_process("run", "--config", str(config))
    control = socket_dir / "worker.sock.control"
    wait_for(control.exists, 60, "the control socket", process)

    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o711
    assert stat.S_IMODE(control.stat().st_mode) == 0o600
    paused = archivist("pause", "--config", str(config), timeout=90)
    assert paused.returncode == 0, paused.stderr
    stop(process)
