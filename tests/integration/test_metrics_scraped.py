"""``archivist run --metrics``: a real run archives, and its Prometheus series, scraped over
HTTP and parsed with prometheus_client's parser, say what it did: the rows archived are the
rows gone from the source, on the path they took, in batches whose phases were timed; the
table's size and limit, the task's outcome, seconds held by a pause file, a worker restart."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2esupport import archivist, children_of, count, make_chat_table, wait_for, write_config

ROWS = 300
POLICY = {
    "collection": "chat_messages",
    "order_by": "created_at",
    "max_rows": 100,
    "rows_per_archive": 20,
    "batch_size": 50,
}
KEPT = 80  # max_rows - rows_per_archive
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape(port: int) -> Samples:
    """Every sample of the metrics page, by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def _start(
    run_process: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
    socket_dir: Path,
    archive: str,
    *,
    worker: dict[str, object] | None = None,
) -> tuple[subprocess.Popen[str], int, str]:
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    make_chat_table(primary, ROWS)
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": primary, "archive": archive},
        [POLICY],
        socket=socket_dir / "worker.sock",
        worker=worker,
    )
    port = _free_port()
    process = run_process(
        "run", "--config", str(config), "--metrics", f"127.0.0.1:{port}", output=tmp_path / "log"
    )
    return process, port, primary


def _scrape_when(
    port: int, done: Callable[[Samples], bool], what: str, process: subprocess.Popen[str]
) -> Samples:
    found: list[Samples] = []

    def ready() -> bool:
        try:
            samples = scrape(port)
        except OSError:
            return False  # not serving yet
        found[:] = [samples]
        return done(samples)

    wait_for(ready, 90, what, process, interval=0.2)
    return found[0]


@pytest.mark.timeout(240)
def test_scraped_series_match_what_the_run_archived(
    tmp_path: Path, socket_dir: Path, run_process: Callable[..., subprocess.Popen[str]]
) -> None:
    started = time.time()
    process, port, primary = _start(
        run_process, tmp_path, socket_dir, f"sqlite:///{tmp_path / 'archive.db'}"
    )
    samples = _scrape_when(
        port,
        lambda s: (
            total(s, "archivist_tasks_total", status="success") >= 1
            and value(s, "archivist_health_ping_seconds_count") >= 1
            and value(s, "archivist_table_rows", collection="chat_messages") == KEPT
        ),
        "a task's success, a health ping and a check after it",
        process,
    )
    moved = ROWS - count(primary)
    assert moved == ROWS - KEPT
    c = {"collection": "chat_messages"}
    # Two SQLite files: copied by the daemon, inside the database.
    assert value(samples, "archivist_rows_archived_total", **c, path="daemon") == moved
    assert total(samples, "archivist_rows_archived_total") == moved
    batches = value(samples, "archivist_batches_total", **c, path="daemon")
    assert math.ceil(moved / POLICY["batch_size"]) <= batches <= moved  # type: ignore[operator]
    for phase in ("copy", "delete"):
        timed = value(samples, "archivist_batch_phase_seconds_count", **c, phase=phase)
        assert timed >= batches, phase
        assert value(samples, "archivist_batch_phase_seconds_sum", **c, phase=phase) > 0
    assert value(samples, "archivist_tasks_total", **c, status="success", code="") == 1
    assert total(samples, "archivist_tasks_total", status="error") == 0
    assert value(samples, "archivist_policy_max_rows", **c) == POLICY["max_rows"]
    assert value(samples, "archivist_rows_skipped_total", **c) == 0
    assert started <= value(samples, "archivist_last_success_timestamp_seconds", **c) <= time.time()
    assert value(samples, "archivist_worker_connected") == 1
    assert value(samples, "archivist_worker_restarts_total") == 0

    # The worker child dies: the daemon restarts it, and counts it.
    worker = children_of(process.pid)
    assert len(worker) == 1
    os.kill(worker[0], signal.SIGKILL)
    _scrape_when(
        port,
        lambda s: (
            value(s, "archivist_worker_restarts_total") == 1
            and value(s, "archivist_worker_connected") == 1
        ),
        "the restart counted",
        process,
    )
    # Paused by `archivist pause`: the checks that find it paused count the time.
    paused = archivist("pause", "chat_messages", "--config", str(tmp_path / "archivist.toml"))
    assert paused.returncode == 0, paused.stderr
    _scrape_when(
        port,
        lambda s: value(s, "archivist_throttled_seconds_total", **c, reason="paused") > 0,
        "paused seconds",
        process,
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0


@pytest.mark.timeout(240)
def test_rows_through_the_worker_and_a_pause_file_show_in_their_series(
    tmp_path: Path,
    socket_dir: Path,
    pg_url: str,
    run_process: Callable[..., subprocess.Popen[str]],
) -> None:
    pause = tmp_path / "pause"
    pause.touch()
    process, port, primary = _start(
        run_process,
        tmp_path,
        socket_dir,
        pg_url,
        worker={"pause_file": str(pause), "in_database": False},
    )
    # The task is queued, and waits for the pause file to go.
    _scrape_when(
        port,
        lambda s: value(s, "archivist_table_rows", collection="chat_messages") == ROWS,
        "the first check",
        process,
    )
    time.sleep(1)  # held meanwhile: the seconds below are at least what the task waited
    pause.unlink()
    samples = _scrape_when(
        port,
        lambda s: total(s, "archivist_tasks_total", status="success") >= 1,
        "the task's success",
        process,
    )
    c = {"collection": "chat_messages"}
    moved = ROWS - count(primary)
    # Rows through the worker (in_database off): listed, copied, read back, deleted.
    assert value(samples, "archivist_rows_archived_total", **c, path="worker") == moved
    for phase in ("list", "copy", "verify", "delete"):
        assert value(samples, "archivist_batch_phase_seconds_count", **c, phase=phase) >= 1, phase
    assert value(samples, "archivist_throttled_seconds_total", **c, reason="pause_file") > 0
    assert value(samples, "archivist_throttled_seconds_total", **c, reason="load") == 0
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0


def test_a_bad_metrics_address_is_refused_before_anything_starts(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": f"sqlite:///{tmp_path / 'p.db'}", "archive": f"sqlite:///{tmp_path / 'a.db'}"},
        [],
        daemon={"metrics": "localhost"},
    )
    done = subprocess.run(
        [sys.executable, "-m", "archivist", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")},
    )
    assert done.returncode == 1
    assert "daemon.metrics: 'localhost' is not an address to listen on" in done.stderr
