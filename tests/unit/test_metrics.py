"""The pure pieces of the daemon's metrics: which phase and path an ``execute`` is, rows
skipped, each report's new rows and throttled seconds, throttle reasons' kinds, the
listen address; and the observer's series fed events by hand, as a design-only worker
(no ``throttledSeconds``) and archivist's own send them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from archivist.config import parse_address
from archivist.daemon.keepup import KeepUp
from archivist.daemon.metrics import Attempts, path_of, phase_of, skipped_rows
from archivist.daemon.prometheus import PrometheusObserver
from archivist.daemon.tracker import TaskRecord
from archivist.errors import ConfigError, InvalidParams
from archivist.protocol import Archive, Complete, JSONObject, Progress, decode_frame, encode
from archivist.worker.pacing import Pacer
from archivist.worker.queue import Task
from archivist.worker.throttle import Throttle, ThrottleSettings, reason_kind


def _record(mode: str | None = None, task_id: str = "chat-t1-1") -> TaskRecord:
    return TaskRecord(
        collection="chat",
        source_handle="primary",
        dest_handle="archive",
        max_rows=1000,
        batch_size=100,
        order_by=None,
        task_id=task_id,
        mode=mode,  # type: ignore[arg-type]
    )


def test_each_step_of_a_batch_has_its_phase() -> None:
    def phase(target: str, handle: str) -> str | None:
        return phase_of(target, handle, "primary", "archive")

    assert phase("data/list", "primary") == "list"
    assert phase("data/list", "archive") == "verify"  # reading the copies back
    assert phase("data/copy", "primary") == "copy"
    assert phase("data/create", "archive") == "copy"
    assert phase("data/delete", "primary") == "delete"
    assert phase("data/count", "primary") is None
    assert phase("data/load", "primary") is None
    assert phase("ping", "primary") is None


def test_the_path_is_the_tasks_own_tables_and_a_purge_is_a_purge() -> None:
    record = _record()
    assert path_of("data/copy", "chat", record) == "daemon"
    assert path_of("data/create", "chat", record) == "worker"
    assert path_of("data/create", "chat_children", record) is None  # a child's copy
    assert path_of("data/delete", "chat", record) is None
    assert path_of("data/delete", "chat", _record("purge")) == "purge"


def test_rows_skipped_come_from_deletes_and_relays_only() -> None:
    assert skipped_rows("data/delete", {"deleted": 8, "skipped": [3, 9]}) == 2
    assert skipped_rows("data/relay", {"deleted": 0, "skipped": [3]}) == 1
    assert skipped_rows("data/delete", {"deleted": 8}) == 0
    assert skipped_rows("data/list", {"skipped": [1]}) == 0


def test_each_report_counts_only_what_is_new_since_the_attempts_last() -> None:
    attempts = Attempts()
    assert attempts.rows("t1", 100) == 100
    assert attempts.rows("t1", 250) == 150
    assert attempts.rows("t1", 250) == 0
    assert attempts.rows("t2", 40) == 40  # another attempt starts from 0
    assert attempts.throttled("t1", None) == {}  # a design-only worker sends none
    assert attempts.throttled("t1", {"load": 2.0, "yielding": 1.0}) == {
        "load": 2.0,
        "yielding": 1.0,
    }
    assert attempts.throttled("t1", {"load": 2.5, "yielding": 1.0, "gremlins": 9.0}) == {
        "load": 0.5
    }
    attempts.forget("t1")
    assert attempts.rows("t1", 10) == 10


def test_the_throttles_reasons_have_their_kinds(tmp_path: Path) -> None:
    pause = tmp_path / "pause"
    pause.touch()
    settings = ThrottleSettings(pause_file=pause, max_latency_ms=10, max_active=5)
    throttle = Throttle(settings)
    paused = throttle._paused_by_file()
    slow = throttle._judge("primary", {"latencyMs": 50.0, "active": 1})
    busy = throttle._judge("primary", {"latencyMs": 1.0, "active": 9, "metric": "active backends"})
    assert paused is not None and slow is not None and busy is not None
    assert [reason_kind(r) for r in (paused, slow, busy)] == ["pause_file", "latency", "load"]
    assert reason_kind("yielding to 2 other sessions using primary") == "yielding"
    held = throttle._judge("primary", {"latencyMs": 1.0, "hold": "replica1 lags 12 s"})
    assert held == "replica1 lags 12 s" and throttle.kind(held) == "replica_lag"
    assert throttle.kind(slow) == "latency"


def test_a_metrics_address_is_host_and_port() -> None:
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    assert parse_address(":9464") == ("0.0.0.0", 9464)
    assert parse_address("metrics.internal:80") == ("metrics.internal", 80)
    for bad in ("9464", "localhost", "127.0.0.1:0", "127.0.0.1:70000", "::1:9464", "a b:1"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_address(bad)


def test_the_throttled_seconds_extension_is_optional_on_the_wire() -> None:
    plain = b'{"command":"progress","taskId":"t","archived":5,"total":9,"status":"in_progress"}'
    message = decode_frame(plain, {"progress": Progress})
    assert isinstance(message, Progress) and message.throttled_seconds is None
    assert encode(message).rstrip(b"\n") == plain  # absent, it is not sent
    extended = Progress(
        task_id="t", archived=5, total=9, status="in_progress", throttled_seconds={"load": 1.5}
    )
    assert b'"throttledSeconds":{"load":1.5}' in encode(extended)
    negative = plain[:-1] + b',"throttledSeconds":{"load":-1}}'
    with pytest.raises(InvalidParams, match="throttledSeconds"):
        decode_frame(negative, {"progress": Progress})


def _sample(observer: PrometheusObserver, name: str, **labels: str) -> float | None:
    return observer.registry.get_sample_value(name, labels)


def test_a_design_only_workers_reports_count_rows_and_batches_but_no_throttle() -> None:
    observer = PrometheusObserver(CollectorRegistry())
    record = _record()
    # A design-only worker: no taskId on its callbacks (the daemon finds the task by its
    # collection), no throttledSeconds on its reports.
    observer.executed(record, "data/list", {"dbHandle": "primary", "collection": "chat"}, {}, 0.02)
    observer.executed(
        record, "data/create", {"dbHandle": "archive", "collection": "chat"}, {}, 0.05
    )
    observer.executed(record, "data/list", {"dbHandle": "archive", "collection": "chat"}, {}, 0.01)
    observer.executed(
        record, "data/delete", {"dbHandle": "primary"}, {"deleted": 98, "skipped": [1, 2]}, 0.03
    )
    observer.notified(
        record, Progress(task_id=record.task_id, archived=98, total=100, status="in_progress")
    )
    observer.notified(
        record, Complete(task_id=record.task_id, archived=100, duration=5, status="success")
    )
    record.state = "success"
    observer.finished(record)
    observer.finished(record)  # told twice, counted once
    c = {"collection": "chat"}
    assert _sample(observer, "archivist_rows_archived_total", **c, path="worker") == 100
    assert _sample(observer, "archivist_batches_total", **c, path="worker") == 1
    assert _sample(observer, "archivist_rows_skipped_total", **c) == 2
    for phase, seconds in (("list", 0.02), ("copy", 0.05), ("verify", 0.01), ("delete", 0.03)):
        assert _sample(observer, "archivist_batch_phase_seconds_sum", **c, phase=phase) == seconds
    assert _sample(observer, "archivist_tasks_total", **c, status="success", code="") == 1
    assert _sample(observer, "archivist_throttled_seconds_total", **c, reason="load") is None
    assert (_sample(observer, "archivist_last_success_timestamp_seconds", **c) or 0) > 0


def test_throttled_seconds_and_errors_count_by_reason_and_code() -> None:
    observer = PrometheusObserver(CollectorRegistry())
    record = _record()
    observer.executed(record, "data/copy", {"dbHandle": "primary", "collection": "chat"}, {}, 0.1)
    observer.notified(
        record,
        Progress(
            task_id=record.task_id,
            archived=50,
            total=100,
            status="in_progress",
            throttled_seconds={"pause_file": 3.0},
        ),
    )
    observer.notified(
        record,
        Complete(
            task_id=record.task_id,
            archived=50,
            duration=5,
            status="error",
            code="verify_mismatch",
            throttled_seconds={"pause_file": 3.0, "yielding": 4.0},
        ),
    )
    record.state, record.code = "error", "verify_mismatch"
    observer.finished(record)
    c = {"collection": "chat"}
    assert _sample(observer, "archivist_rows_archived_total", **c, path="daemon") == 50
    assert _sample(observer, "archivist_throttled_seconds_total", **c, reason="pause_file") == 3.0
    assert _sample(observer, "archivist_throttled_seconds_total", **c, reason="yielding") == 4.0
    assert (
        _sample(observer, "archivist_tasks_total", **c, status="error", code="verify_mismatch") == 1
    )
    assert _sample(observer, "archivist_last_success_timestamp_seconds", **c) is None


def test_a_policy_held_counts_the_seconds_between_checks_that_found_it_held() -> None:
    observer = PrometheusObserver(CollectorRegistry())
    observer.held("chat", "window")
    time.sleep(0.01)
    observer.held("chat", "window")  # held since the check before
    observer.held("chat", None)
    observer.held("chat", "paused")  # held from here on, not since the check before
    observer.held("chat", None)

    def held(reason: str) -> float:
        value = _sample(
            observer, "archivist_throttled_seconds_total", collection="chat", reason=reason
        )
        return value or 0.0

    assert held("window") >= 0.01
    assert held("paused") < held("window")


def _task() -> Task:
    spec = Archive(
        task_id="t1",
        collection="chat",
        source_handle="primary",
        dest_handle="archive",
        max_rows=100,
        batch_size=10,
    )
    return Task(spec=spec, owner=None)


def test_the_worker_counts_seconds_held_by_each_reason_and_sends_them() -> None:
    task = _task()
    assert task.throttle_totals() is None  # nothing waited: nothing on the wire

    async def load(target: str, params: JSONObject) -> JSONObject:
        return {"latencyMs": 1.0, "others": 1}

    settings = ThrottleSettings(yield_ratio=5, load_interval=0.01)
    pacer = Pacer(task, Throttle(settings), settings, 0.0, load)

    async def run() -> None:
        pacer.throttled("primary probe took 120 ms (limit 50 ms)")
        await asyncio.sleep(0.02)
        pacer.throttled("primary probe took 80 ms (limit 50 ms)")
        await asyncio.sleep(0.02)
        pacer.throttled(None)
        # The application uses the database: the task rests 5 times its 0.01 s batch.
        await pacer.pause_between_batches(0.01, 10)

    asyncio.run(run())
    totals = task.throttle_totals()
    assert totals is not None and set(totals) == {"latency", "yielding"}
    assert totals["latency"] >= 0.04
    assert totals["yielding"] > 0


def test_a_scrape_reads_the_daemons_state_sizes_limits_rates_and_restarts() -> None:
    behind = KeepUp(max_rows=100)
    behind.observe(150, at=0.0, moved=0)
    behind.observe(190, at=10.0, moved=60)  # grew 100 rows in 10 s while 60 moved
    age_policy = KeepUp(max_rows=None, min_rate=25.0)
    daemon = SimpleNamespace(
        policies={"chat": None, "events": None},
        keeping={"chat": behind, "events": age_policy},
        supervisor=SimpleNamespace(restarts=2),
        worker_connected=True,
    )
    observer = PrometheusObserver(CollectorRegistry())
    observer.watch(daemon)  # type: ignore[arg-type]
    chat = {"collection": "chat"}
    assert _sample(observer, "archivist_table_rows", **chat) == 190
    assert _sample(observer, "archivist_policy_max_rows", **chat) == 100
    assert _sample(observer, "archivist_table_growth_rows_per_second", **chat) == 10.0
    assert _sample(observer, "archivist_moved_rows_per_second", **chat) == 6.0
    assert _sample(observer, "archivist_min_rate_rows_per_second", **chat) == behind.rate == 15.0
    assert _sample(observer, "archivist_behind", **chat) == 1
    events = {"collection": "events"}
    assert _sample(observer, "archivist_table_rows", **events) is None  # not counted yet
    assert _sample(observer, "archivist_policy_max_rows", **events) is None  # no limit
    assert _sample(observer, "archivist_min_rate_rows_per_second", **events) == 25.0
    assert _sample(observer, "archivist_worker_restarts_total") == 2
    assert _sample(observer, "archivist_worker_connected") == 1
    # Every collection's counters exist from the start, at 0.
    assert _sample(observer, "archivist_rows_skipped_total", **events) == 0
    assert _sample(observer, "archivist_throttled_seconds_total", **events, reason="window") == 0
