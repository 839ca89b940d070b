"""``archivist run`` under systemd's ``Type=notify``: a test socket, bound where
``NOTIFY_SOCKET`` says, receives READY=1 once the worker is up, WATCHDOG=1 pings when
``WATCHDOG_USEC`` is set, and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from e2esupport import count, make_chat_table, wait_for, write_config


@pytest.fixture
def notify_socket(socket_dir: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(socket_dir / "notify"))
    sock.settimeout(60)
    yield sock
    sock.close()


def _messages(sock: socket.socket, until: str, process: subprocess.Popen[str]) -> list[str]:
    """Datagrams received until one holds the line ``until`` (each datagram one string)."""
    received: list[str] = []
    while True:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            process.kill()
            raise AssertionError(f"no {until} in {received}: {process.communicate()[0]}") from None
        received.append(data)
        if until in data.splitlines():
            return received


def _config(tmp_path: Path, socket_dir: Path, rows: int = 300) -> tuple[Path, str]:
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    make_chat_table(primary, rows)
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": primary, "archive": f"sqlite:///{tmp_path / 'archive.db'}"},
        [
            {
                "collection": "chat_messages",
                "order_by": "created_at",
                "max_rows": 100,
                "rows_per_archive": 20,
            }
        ],
        socket=socket_dir / "worker.sock",
    )
    return config, primary


@pytest.mark.timeout(180)
def test_run_tells_systemd_it_is_ready_then_stopping(
    tmp_path: Path,
    socket_dir: Path,
    notify_socket: socket.socket,
    run_process: Callable[..., subprocess.Popen[str]],
) -> None:
    config, primary = _config(tmp_path, socket_dir)
    process = run_process(
        "run", "--config", str(config), env={"NOTIFY_SOCKET": notify_socket.getsockname()}
    )
    before_ready = _messages(notify_socket, "READY=1", process)
    ready = before_ready[-1].splitlines()
    assert "STATUS=archiving by 1 policy" in ready
    # Ready means the worker it started listens, and the daemon has reached it.
    assert (socket_dir / "worker.sock").exists()
    assert not any("WATCHDOG=1" in message for message in before_ready)  # none asked for

    wait_for(lambda: count(primary) == 80, 60, "the run to archive", process)
    process.send_signal(signal.SIGTERM)
    after = _messages(notify_socket, "STOPPING=1", process)
    assert any(line.startswith("STATUS=stopping") for line in after[-1].splitlines())
    assert process.wait(60) == 0


@pytest.mark.timeout(180)
def test_run_pings_the_watchdog_on_an_abstract_socket(
    tmp_path: Path, socket_dir: Path, run_process: Callable[..., subprocess.Popen[str]]
) -> None:
    name = f"archivist-test-{os.getpid()}-{tmp_path.name}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(60)
    with sock:
        config, _ = _config(tmp_path, socket_dir, rows=10)
        process = run_process(
            "run",
            "--config",
            str(config),
            env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "400000"},  # a ping each 0.2 s
        )
        _messages(sock, "READY=1", process)
        # Pings go on while it runs, each a datagram of its own.
        assert _messages(sock, "WATCHDOG=1", process)[-1] == "WATCHDOG=1"
        assert _messages(sock, "WATCHDOG=1", process)[-1] == "WATCHDOG=1"
        process.send_signal(signal.SIGTERM)
        _messages(sock, "STOPPING=1", process)
        assert process.wait(60) == 0
