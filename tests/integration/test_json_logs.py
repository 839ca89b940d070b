"""``--log-format json``: a real ``archivist archive`` (and the worker it starts) logs one
JSON object per line with the task's fields, and never a handle's password."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from e2esupport import count, make_chat_table, wait_for, write_config

PASSWORD = "Sup3rS3cretPW"


def test_json_logs_carry_the_tasks_fields_and_never_the_password(
    tmp_path: Path, pg_url: str
) -> None:
    # The test server trusts its clients: the password is in the URL, and unused.
    server = make_url(pg_url)
    archive_url = (
        f"postgresql://{server.username}:{PASSWORD}@{server.host}:{server.port}/{server.database}"
    )
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    make_chat_table(primary, 300)
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": primary, "archive": archive_url},
        [
            {
                "collection": "chat_messages",
                "order_by": "created_at",
                "max_rows": 100,
                "rows_per_archive": 20,
                "batch_size": 50,
            }
        ],
        socket=tmp_path / "worker.sock",
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "archivist",
            "archive",
            "chat_messages",
            "--config",
            str(config),
            "--log-format",
            "json",
            "-vv",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=environ,
    )
    assert done.returncode == 0, done.stderr
    assert count(primary) == 80

    assert PASSWORD not in done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert {"timestamp", "level", "logger", "message"} <= line.keys(), line
        assert line["timestamp"].endswith("Z")
    assert "debug" in {line["level"] for line in lines}
    # The daemon's line about the finished task, and the worker child's (which logs JSON
    # because the daemon passed it the format).
    daemon_done = [
        line
        for line in lines
        if line["logger"] == "archivist.daemon.service" and line.get("status") == "success"
    ]
    worker_done = [
        line
        for line in lines
        if line["logger"] == "archivist.worker.server" and line.get("status") == "success"
    ]
    assert len(daemon_done) == 1 and len(worker_done) == 1, lines
    # Every line about the task carries its id, a throttle or a retry as much as its end.
    task_id = daemon_done[0]["task_id"]
    about = [line for line in lines if task_id in line["message"]]
    assert len(about) >= 4
    missing = [line["message"] for line in about if line.get("task_id") != task_id]
    assert not missing, missing
    for line in (daemon_done[0], worker_done[0]):
        assert line["collection"] == "chat_messages"
        assert line["rows"] == 220
        assert (line["source_handle"], line["dest_handle"]) == ("primary", "archive")
        assert isinstance(line["duration_ms"], int)
        assert line["task_id"] == daemon_done[0]["task_id"]


def _run_until_archived(tmp_path: Path, *options: str, daemon: dict[str, object]) -> str:
    """``archivist run`` until it has archived its table down to the policy, then SIGTERM:
    its stderr (its own lines and its worker child's)."""
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    make_chat_table(primary, 300)
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
        socket=tmp_path / "worker.sock",
        daemon=daemon,
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "archivist", "run", "--config", str(config), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
    )
    try:
        wait_for(lambda: count(primary) == 80, 60, "the run to archive")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, err
    return err


def test_daemon_log_format_in_the_config_reaches_run_and_its_worker(tmp_path: Path) -> None:
    err = _run_until_archived(tmp_path, daemon={"log_format": "json"})
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    loggers = {line["logger"] for line in lines}
    assert "archivist.daemon.service" in loggers and "archivist.worker.server" in loggers
    assert any(line.get("status") == "success" for line in lines)


def test_quiet_run_logs_only_warnings_and_errors(tmp_path: Path) -> None:
    err = _run_until_archived(tmp_path, "-q", "--log-format", "json", daemon={})
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert {line["level"] for line in lines} <= {"warning", "error"}, lines
