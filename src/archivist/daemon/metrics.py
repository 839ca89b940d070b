"""What the daemon tells its metrics, and the pure pieces that turn its events into series.

The ArchiveDaemon calls an `Observer` at each event it already learns of: a worker's
``execute`` callback served (how long each phase of a batch took, on which path rows
move, rows the delete skipped as changed), ``progress`` and ``complete`` (rows moved,
batches, the optional ``throttledSeconds``), a task record that ends, a policy check, a
health ping. `Observer` does nothing; `archivist.daemon.prometheus` keeps the series, and
is imported only when metrics are served (prometheus-client is not imported otherwise).
Everything here is pure and unit-tested (tests/unit/test_metrics.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from archivist.daemon.tracker import TaskRecord
    from archivist.protocol import Complete, JSONObject, Progress

Phase = Literal["list", "copy", "verify", "delete"]
RowsPath = Literal["daemon", "worker", "purge"]
"""How a task's rows move: copied by the daemon (``data/copy``: inside a database, or
streamed between servers and engines), through the worker (``data/create`` of rows it
listed), or deleted without a copy."""

THROTTLE_REASONS: Final = (
    "load",
    "latency",
    "yielding",
    "pause_file",
    "replica_lag",
    "window",
    "paused",
)
"""The ``reason`` label of throttled seconds: the worker's (its ``throttledSeconds``) and
the daemon's own: ``window`` (a policy held outside its window or over ``max_runtime``)
and ``paused`` (``archivist pause``)."""


class Observer:
    """The daemon's events as the metrics see them; this base ignores them all."""

    def executed(
        self,
        record: TaskRecord | None,
        target: str,
        params: JSONObject,
        answer: JSONObject,
        seconds: float,
    ) -> None:
        """A worker's ``execute`` callback was answered in ``seconds``; ``record`` is its
        task (None: not one of ours)."""

    def notified(self, record: TaskRecord, message: Progress | Complete) -> None:
        """A ``progress`` or ``complete`` of ``record``'s current attempt arrived."""

    def finished(self, record: TaskRecord) -> None:
        """``record`` ended (success, error or cancelled), whoever ended it."""

    def checked(self, collection: str, *, within: bool) -> None:
        """A policy check counted ``collection``; ``within``: it found nothing due."""

    def held(self, collection: str, reason: Literal["window", "paused"] | None) -> None:
        """A policy check found ``collection`` held, and why: its window or ``max_runtime``
        (``window``), ``archivist pause`` (``paused``); None: not held."""

    def pinged(self, seconds: float) -> None:
        """A health ping of the worker was answered in ``seconds``."""


def phase_of(target: str, db_handle: object, source: str, dest: str) -> Phase | None:
    """Which phase of a batch an ``execute`` of ``target`` on ``db_handle`` is, for a task
    moving ``source`` to ``dest``: listing the source, copying (``data/copy`` lists and
    copies in one call; ``data/create`` writes the rows listed), reading the copies back
    (a listing of the destination), deleting. None: not a batch's step (counts, load
    probes, pings)."""
    if target == "data/list":
        if db_handle == dest and dest != source:
            return "verify"
        return "list"
    if target in ("data/copy", "data/create"):
        return "copy"
    if target == "data/delete":
        return "delete"
    return None


def path_of(target: str, collection: object, record: TaskRecord) -> RowsPath | None:
    """The path ``record``'s rows take, as an ``execute`` of ``target`` on ``collection``
    shows it (a child table's rows say nothing of the task's own); None: it does not say."""
    if record.mode == "purge":
        return "purge"
    if collection != record.collection:
        return None
    if target == "data/copy":
        return "daemon"
    if target == "data/create":
        return "worker"
    return None


def skipped_rows(target: str, answer: Mapping[str, object]) -> int:
    """Rows a delete (or a relay) left in the source because they changed since listed."""
    if target not in ("data/delete", "data/relay"):
        return 0
    skipped = answer.get("skipped")
    return len(skipped) if isinstance(skipped, list) else 0


class Attempts:
    """What each running attempt reported last, so that each message's new rows and
    throttled seconds are counted once: ``progress`` and ``complete`` carry totals of the
    attempt (an attempt queued again after a lost connection runs under a new task id)."""

    def __init__(self) -> None:
        self._rows: dict[str, int] = {}
        self._throttled: dict[str, dict[str, float]] = {}
        self.paths: dict[str, RowsPath] = {}
        """The path each attempt's rows were last seen taking."""

    def rows(self, task_id: str, archived: int) -> int:
        """Rows moved since the attempt's last report."""
        before = self._rows.get(task_id, 0)
        self._rows[task_id] = max(before, archived)
        return max(0, archived - before)

    def throttled(self, task_id: str, totals: Mapping[str, float] | None) -> dict[str, float]:
        """Seconds throttled per reason since the attempt's last report (reasons this
        daemon does not know are left out: a label's values stay few)."""
        if not totals:
            return {}
        before = self._throttled.setdefault(task_id, {})
        new: dict[str, float] = {}
        for reason, seconds in totals.items():
            if reason not in THROTTLE_REASONS or seconds <= before.get(reason, 0.0):
                continue
            new[reason] = seconds - before.get(reason, 0.0)
            before[reason] = seconds
        return new

    def forget(self, task_id: str) -> None:
        self._rows.pop(task_id, None)
        self._throttled.pop(task_id, None)
        self.paths.pop(task_id, None)
