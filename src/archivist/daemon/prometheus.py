"""The daemon's Prometheus series (``[daemon] metrics``, ``--metrics``), in a registry of their
own, served over HTTP from a thread of the daemon's process.

Counters and histograms are updated as the daemon's events arrive (`PrometheusObserver`,
an `Observer`); what the daemon holds as state (each table's size at its last check, its
limit, growth and move rates, the worker's restarts and connection) is read when Prometheus
scrapes (`_StateCollector`). The series and example alert rules: docs/operations.md.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from archivist.config import parse_address
from archivist.daemon.metrics import (
    THROTTLE_REASONS,
    Attempts,
    Observer,
    path_of,
    phase_of,
    skipped_rows,
)
from archivist.errors import ArchivistError
from archivist.protocol import Complete

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

    from archivist.daemon.service import ArchiveDaemon
    from archivist.daemon.tracker import TaskRecord
    from archivist.protocol import JSONObject, Progress

log = logging.getLogger(__name__)

PHASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: a batch's step takes milliseconds (a small SQLite batch) to seconds."""


class PrometheusObserver(Observer):
    """The daemon's events as Prometheus series."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No ``*_created`` series beside each counter: they double what a scrape carries,
        # and the process start time says the same.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        self.attempts = Attempts()
        self._held_at: dict[str, float] = {}
        self._counted: weakref.WeakSet[TaskRecord] = weakref.WeakSet()
        r = self.registry
        self.rows = Counter(
            "archivist_rows_archived",
            "Rows moved from the source (copied, in mode copy; deleted, in a purge), by the "
            "path they took: daemon (copied by the daemon, inside a database or streamed), "
            "worker (through the worker), purge.",
            ["collection", "path"],
            registry=r,
        )
        self.batches = Counter(
            "archivist_batches",
            "Batches that moved rows, by path.",
            ["collection", "path"],
            registry=r,
        )
        self.phases = Histogram(
            "archivist_batch_phase_seconds",
            "Seconds each step of a batch took in the daemon, by phase: list, copy (a listing "
            "and its copy in one call on the daemon path), verify, delete.",
            ["collection", "phase"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.skipped = Counter(
            "archivist_rows_skipped",
            "Rows a delete left in the source because they changed since they were listed "
            "(they move with a later batch).",
            ["collection"],
            registry=r,
        )
        self.tasks = Counter(
            "archivist_tasks",
            "Tasks that ended, by status (success, error, cancelled) and error code.",
            ["collection", "status", "code"],
            registry=r,
        )
        self.throttled = Counter(
            "archivist_throttled_seconds",
            "Seconds tasks waited, by reason: load (busy connections), latency (slow probe), "
            "yielding (to the application), pause_file, replica_lag, window (outside the "
            "policy's window or over max_runtime), paused (archivist pause).",
            ["collection", "reason"],
            registry=r,
        )
        self.last_success = Gauge(
            "archivist_last_success_timestamp_seconds",
            "When a task of the collection last succeeded, or a check last found it within "
            "its policy (Unix time).",
            ["collection"],
            registry=r,
        )
        self.ping = Histogram(
            "archivist_health_ping_seconds",
            "Round trip of the daemon's health pings to the worker.",
            buckets=PHASE_BUCKETS,
            registry=r,
        )

    def watch(self, daemon: ArchiveDaemon) -> None:
        """Serve ``daemon``'s state at each scrape, and start its collections' series at 0."""
        self.registry.register(_StateCollector(daemon))
        for collection in daemon.policies:
            self.skipped.labels(collection)
            for reason in THROTTLE_REASONS:
                self.throttled.labels(collection, reason)

    # --- events -------------------------------------------------------------------------

    def executed(
        self,
        record: TaskRecord | None,
        target: str,
        params: JSONObject,
        answer: JSONObject,
        seconds: float,
    ) -> None:
        if record is None:
            return
        phase = phase_of(target, params.get("dbHandle"), record.source_handle, record.dest_handle)
        if phase is not None:
            self.phases.labels(record.collection, phase).observe(seconds)
        path = path_of(target, params.get("collection"), record)
        if path is not None:
            self.attempts.paths[record.task_id] = path
        skipped = skipped_rows(target, answer)
        if skipped:
            self.skipped.labels(record.collection).inc(skipped)

    def notified(self, record: TaskRecord, message: Progress | Complete) -> None:
        attempts = self.attempts
        rows = attempts.rows(message.task_id, message.archived)
        if rows:
            path = attempts.paths.get(message.task_id)
            if path is None:
                # No copy of the attempt seen: a row wider than a frame, which the daemon
                # moved itself (data/relay).
                path = "purge" if record.mode == "purge" else "daemon"
            self.rows.labels(record.collection, path).inc(rows)
            if not isinstance(message, Complete):
                self.batches.labels(record.collection, path).inc()
        for reason, seconds in attempts.throttled(
            message.task_id, message.throttled_seconds
        ).items():
            self.throttled.labels(record.collection, reason).inc(seconds)
        if isinstance(message, Complete):
            attempts.forget(message.task_id)

    def finished(self, record: TaskRecord) -> None:
        if record in self._counted:
            return
        self._counted.add(record)
        self.tasks.labels(record.collection, record.state, record.code or "").inc()
        if record.state == "success":
            self.last_success.labels(record.collection).set(time.time())

    def checked(self, collection: str, *, within: bool) -> None:
        if within:
            self.last_success.labels(collection).set(time.time())

    def held(self, collection: str, reason: Literal["window", "paused"] | None) -> None:
        now = time.monotonic()
        since = self._held_at.pop(collection, None)
        if reason is None:
            return
        if since is not None:
            self.throttled.labels(collection, reason).inc(now - since)
        self._held_at[collection] = now

    def pinged(self, seconds: float) -> None:
        self.ping.observe(seconds)


class _StateCollector(Collector):
    """What the daemon holds as state, read at each scrape (from the server's thread: plain
    reads of numbers the event loop sets)."""

    def __init__(self, daemon: ArchiveDaemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        daemon = self.daemon
        rows = GaugeMetricFamily(
            "archivist_table_rows",
            "Rows of the table at the daemon's last check (an estimate while the engine's "
            "statistics put it well within max_rows).",
            labels=["collection"],
        )
        limit = GaugeMetricFamily(
            "archivist_policy_max_rows",
            "The policy's max_rows (policies that set one).",
            labels=["collection"],
        )
        growth = GaugeMetricFamily(
            "archivist_table_growth_rows_per_second",
            "Rows/s the application added between the last two checks.",
            labels=["collection"],
        )
        moving = GaugeMetricFamily(
            "archivist_moved_rows_per_second",
            "Rows/s archivist moved between the last two checks.",
            labels=["collection"],
        )
        floor = GaugeMetricFamily(
            "archivist_min_rate_rows_per_second",
            "Rows/s asked of the collection's tasks at least while they yield (keeping up, "
            "or min_rate; 0: none).",
            labels=["collection"],
        )
        behind = GaugeMetricFamily(
            "archivist_behind",
            "1 when the last check found the table over max_rows and larger than at the "
            "check before (it outgrows archivist), else 0.",
            labels=["collection"],
        )
        for collection, state in list(daemon.keeping.items()):
            if state.rows is not None:
                rows.add_metric([collection], state.rows)
            if state.max_rows is not None:
                limit.add_metric([collection], state.max_rows)
            if state.growth is not None:
                growth.add_metric([collection], state.growth)
            if state.moving is not None:
                moving.add_metric([collection], state.moving)
            floor.add_metric([collection], state.rate or 0.0)
            behind.add_metric([collection], 1.0 if state.behind else 0.0)
        yield from (rows, limit, growth, moving, floor, behind)
        supervisor = daemon.supervisor
        restarts = CounterMetricFamily(
            "archivist_worker_restarts",
            "Times the worker child exited and was started again.",
        )
        restarts.add_metric([], supervisor.restarts if supervisor is not None else 0)
        yield restarts
        connected = GaugeMetricFamily(
            "archivist_worker_connected",
            "1 while the daemon is connected to its worker, else 0.",
        )
        connected.add_metric([], 1.0 if daemon.worker_connected else 0.0)
        yield connected


class MetricsServer:
    """The HTTP server of the series, in a thread; `close` stops it."""

    def __init__(self, observer: PrometheusObserver, address: str) -> None:
        host, port = parse_address(address)
        try:
            self._server: WSGIServer
            self._server, self._thread = start_http_server(
                port, addr=host, registry=observer.registry
            )
        except OSError as exc:
            raise ArchivistError(
                f"cannot serve metrics on {address}: {exc.strerror or exc}"
            ) from None
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{_bracketed(str(bound_host))}:{bound_port}/metrics"
        log.info("serving metrics on %s", self.url)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
