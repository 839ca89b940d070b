"""The worker process: its socket file, start-up, shutdown on SIGTERM, and its log."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import support
from support import WorkerProcess, archive_task

StartWorker = Callable[..., AbstractContextManager[WorkerProcess]]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_socket_file_is_mode_0600(worker: WorkerProcess) -> None:
    assert stat.S_ISSOCK(worker.socket_path.lstat().st_mode)
    assert mode_of(worker.socket_path) == 0o600


def test_socket_directory_is_created_0700(socket_dir: Path) -> None:
    private = socket_dir / "run"
    with support.start_worker(private.parent, socket_name="run/w.sock") as worker:
        assert worker.socket_path.parent == private
        assert mode_of(private) == 0o700
        assert mode_of(worker.socket_path) == 0o600


def test_socket_is_removed_and_exit_is_0_after_sigterm(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        assert client.ping()["message"] == "pong"
    assert worker.terminate() == 0
    assert not worker.socket_path.exists()


def test_sigterm_with_a_running_task_stops_it_at_a_safe_point(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        client.request(archive_task("t1"))
        ping = client.recv_until(support.is_execute("ping"))
        worker.process.send_signal(signal.SIGTERM)
        worker.wait_for_log("shutting down")
        # The task is mid-request: it reaches a safe point once its answer arrives.
        support.answer_as_empty_daemon(client, ping)
        frame = client.recv()
        while frame.get("command") == "execute":
            assert frame["targetCommand"] in ("ping", "data/count"), "must not touch rows"
            support.answer(client, frame, {"count": 5})
            frame = client.recv()
        assert frame["command"] == "complete"
        assert (frame["taskId"], frame["status"], frame["archived"]) == ("t1", "cancelled", 0)
    assert worker.process.wait(support.STOP_TIMEOUT) == 0
    assert not worker.socket_path.exists()


def test_sigterm_completes_queued_tasks_as_cancelled(start_worker: StartWorker) -> None:
    with start_worker("--concurrency", "1") as worker, worker.connect() as client:
        client.request(archive_task("running", "a"))
        client.request(archive_task("queued", "b"))
        ping = client.recv_until(support.is_execute("ping"))
        worker.process.send_signal(signal.SIGTERM)
        complete = client.recv_until(support.is_complete("queued"))
        assert complete["status"] == "cancelled"
        assert support.finish_empty_task(client, "running", ping)["status"] == "cancelled"
        assert worker.process.wait(support.STOP_TIMEOUT) == 0


def test_sigterm_cuts_a_task_that_never_reaches_a_safe_point_after_the_timeout(
    start_worker: StartWorker,
) -> None:
    with start_worker("--shutdown-timeout", "0.3") as worker, worker.connect() as client:
        client.request(archive_task("stuck"))
        client.recv_until(support.is_execute("ping"))  # never answered
        started = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        # The owner still learns how the task ended, though the task never got its answer.
        complete = client.recv_until(support.is_complete("stuck"))
        assert (complete["status"], complete["archived"]) == ("cancelled", 0)
        assert "safe point" in complete["error"]
        assert worker.terminate() == 0
        assert time.monotonic() - started < 5
        assert not worker.socket_path.exists()


def test_new_tasks_are_refused_while_shutting_down(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        client.request(archive_task("t1"))
        ping = client.recv_until(support.is_execute("ping"))
        worker.process.send_signal(signal.SIGTERM)
        worker.wait_for_log("shutting down")
        refused = client.request(archive_task("t2", "other"))
        assert (refused["status"], refused["code"]) == ("error", "shutting_down")
        support.finish_empty_task(client, "t1", ping)
    assert worker.process.wait(support.STOP_TIMEOUT) == 0


def test_stale_socket_file_of_a_dead_worker_is_replaced(socket_dir: Path) -> None:
    stale = socket_dir / "worker.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(stale))
    dead.close()  # the file stays, nobody listens: what a killed worker leaves
    assert stale.exists()
    with support.start_worker(socket_dir) as worker, worker.connect() as client:
        assert client.ping()["message"] == "pong"
        assert mode_of(stale) == 0o600


def test_second_worker_on_a_live_socket_exits_with_a_clear_message(
    worker: WorkerProcess, socket_dir: Path
) -> None:
    second = subprocess.run(
        support.worker_command(worker.socket_path),
        capture_output=True,
        timeout=support.START_TIMEOUT,
        check=False,
    )
    assert second.returncode != 0
    assert "already listening" in second.stderr.decode()
    assert os.fspath(worker.socket_path) in second.stderr.decode()
    # The first worker keeps its socket and keeps serving.
    with worker.connect() as client:
        assert client.ping()["message"] == "pong"


def test_socket_directory_open_to_others_is_refused(socket_dir: Path) -> None:
    shared = socket_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = subprocess.run(
        support.worker_command(shared / "w.sock"),
        capture_output=True,
        timeout=support.START_TIMEOUT,
        check=False,
    )
    assert result.returncode != 0
    assert "open to other users" in result.stderr.decode()
    assert not (shared / "w.sock").exists()


def test_existing_non_socket_file_is_not_replaced(socket_dir: Path) -> None:
    precious = socket_dir / "worker.sock"
    precious.write_text("not a socket")
    result = subprocess.run(
        support.worker_command(precious),
        capture_output=True,
        timeout=support.START_TIMEOUT,
        check=False,
    )
    assert result.returncode != 0
    assert "not a socket" in result.stderr.decode()
    assert precious.read_text() == "not a socket"


TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def test_log_has_timestamps_and_tells_start_connections_and_task_lifecycle(
    worker: WorkerProcess,
) -> None:
    with worker.connect() as client:
        client.request(archive_task("logged-task"))
        support.finish_empty_task(client, "logged-task")
    worker.wait_for_log("disconnected")
    assert worker.terminate() == 0
    lines = [line for line in worker.stderr().splitlines() if line.strip()]
    assert lines and all(TIMESTAMP.match(line) for line in lines), lines
    log = "\n".join(lines)
    assert "listening on" in log and os.fspath(worker.socket_path) in log
    assert "connected" in log and "disconnected" in log
    task_lines = [line for line in lines if "logged-task" in line]
    assert any("queued" in line for line in task_lines), task_lines
    assert any("started" in line for line in task_lines), task_lines
    assert any("finished: success" in line for line in task_lines), task_lines
    assert "socket" in lines[-1] and "removed" in lines[-1]
