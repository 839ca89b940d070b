"""`archivist run` stops on SIGTERM or SIGINT sent to its whole process group.

systemd (KillMode=control-group), a shell's `timeout` and Ctrl-C in a terminal signal the
daemon and its worker child together: the worker then stops on its own while the daemon is
stopping too. The daemon must notice the worker's exit, not wait for it to come back, and
exit within its shutdown bound; no row may be lost or duplicated.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from e2esupport import children_of, count, ids, make_chat_table, wait_for, write_config
from support import short_socket_dir

ROWS = 3000
KEPT = 900
"""Rows the policy keeps in the primary (max_rows less rows_per_archive)."""
SHUTDOWN_TIMEOUT = 5
# The daemon's bound: the worker's shutdown_timeout, the supervisor's margin past it (5 s),
# and start-up of Python itself on a loaded machine.
EXIT_BOUND = SHUTDOWN_TIMEOUT + 5 + 10


def _config(tmp_path: Path, *, slow: bool = True) -> tuple[str, str, Path]:
    """Small batches that rest (``slow``: the task still runs when the signal comes), or
    large ones without rest (the rerun)."""
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    if slow:
        make_chat_table(primary, ROWS)
    config_file = write_config(
        tmp_path / ("archivist.toml" if slow else "rerun.toml"),
        {"primary": primary, "archive": archive},
        [
            {
                "collection": "chat_messages",
                "order_by": "created_at",
                "max_rows": KEPT + 100,
                "rows_per_archive": 100,
                "batch_size": 20 if slow else 500,
            }
        ],
        socket=short_socket_dir() / "worker.sock",
        worker={"pause": 0.3 if slow else 0, "shutdown_timeout": SHUTDOWN_TIMEOUT},
    )
    return primary, archive, config_file


def _start(config_file: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "archivist", "run", "--config", str(config_file), "-v"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as under systemd
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is gone for our purpose.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("signum", "whole_group"),
    [
        (signal.SIGTERM, True),
        (signal.SIGINT, True),
        (signal.SIGTERM, False),
    ],
    ids=["sigterm-group", "sigint-group", "sigterm-daemon-only"],
)
def test_run_stops_within_its_bound_and_loses_no_row(
    tmp_path: Path, signum: signal.Signals, whole_group: bool
) -> None:
    primary, archive, config_file = _config(tmp_path)
    log = tmp_path / "run.log"
    process = _start(config_file, log)
    pgid = process.pid
    try:
        wait_for(lambda: count(archive) >= 100, 60, "archiving to start")
        assert process.poll() is None, log.read_text()
        workers = children_of(process.pid)
        assert len(workers) == 1, workers
        if whole_group:
            os.killpg(pgid, signum)
        else:
            process.send_signal(signum)
        try:
            code = process.wait(EXIT_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"archivist run still running {EXIT_BOUND} s after the signal:\n" + log.read_text()
            )
        assert code in (0, 128 + signal.SIGTERM, 128 + signal.SIGINT), log.read_text()
        wait_for(lambda: not _alive(workers[0]), 5, "the worker to be gone")
        assert count(primary) > KEPT, "the task should have been stopped before its end"
    finally:
        _kill_group(pgid)
        process.wait(10)

    # Nothing lost: every seeded row is in the primary or the archive.
    assert ids(primary) | ids(archive) == set(range(1, ROWS + 1))
    # A rerun converges with no duplicates.
    second = _start(_config(tmp_path, slow=False)[2], log)
    try:
        wait_for(lambda: count(primary) == KEPT, 120, "the rerun to converge", None)
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(EXIT_BOUND)
    finally:
        _kill_group(second.pid)
        second.wait(10)
    assert ids(primary) | ids(archive) == set(range(1, ROWS + 1))
    assert ids(primary) & ids(archive) == set()
    assert count(primary) + count(archive) == ROWS
