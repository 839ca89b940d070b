"""What an operator asks of a running ArchiveDaemon: its report (``archivist status``), pause,
resume and cancel.

`Operator` implements `archivist.daemon.control.Controlled` over an `ArchiveDaemon`, for the
control socket and for `archivist.Daemon` (embedding). Pausing a collection records the
pause (`archivist.daemon.pauses`), stops its task after its current batch through the
worker's ``cancel`` (the design's safe point: every row is in the source, the archive or
both), and the daemon's policy checks then queue nothing for it until it is resumed.
`report` is pure: it reads the daemon's state and does no I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Final

from archivist import protocol
from archivist.errors import PeerError, UnknownCollection, UnknownTask

if TYPE_CHECKING:
    from archivist.daemon.service import ArchiveDaemon
    from archivist.daemon.tracker import TaskRecord

log = logging.getLogger("archivist.daemon.service")

WORKER_STATUS_TIMEOUT: Final = 5.0
"""Seconds ``archivist status`` waits for the worker's part of the daemon's answer."""


class Operator:
    """Status, pause, resume and cancel on one `ArchiveDaemon`."""

    def __init__(self, daemon: ArchiveDaemon) -> None:
        self.daemon = daemon

    async def pause(self, collection: str | None, by: str) -> dict[str, object]:
        """Pause ``collection`` (None: every policy): no task of it starts, and its task
        stops after its current batch (waited for, up to the daemon's STOP_TIMEOUT)."""
        daemon = self.daemon
        self._known(collection)
        fresh = daemon.pauses.pause(collection, by, time.time())
        reason = daemon.pauses.reason(collection or "")
        assert reason is not None
        if fresh:
            log.info("%s: %s", collection or "every policy", reason)
        stopping = [
            (record, daemon.holds.stop_after_batch(record, reason))
            for record in daemon.tracker.records()
            if not record.finished and collection in (None, record.collection)
        ]
        waits = [wait for _, wait in stopping if wait is not None]
        if waits:
            await asyncio.wait(waits)
        return {
            "paused": collection,
            "already": not fresh,
            "pauses": daemon.pauses.as_json(),
            "stopped": [record_json(record) for record, _ in stopping],
        }

    async def resume(self, collection: str | None) -> dict[str, object]:
        """Undo a pause (None: every pause); the policies are checked at once."""
        daemon = self.daemon
        self._known(collection)
        resumed = daemon.pauses.resume(collection)
        for name in resumed:
            log.info("%s: resumed", "every policy" if name == "*" else name)
        for name, reason in list(daemon.holds.holding.items()):
            if daemon.pauses.reason(name) is None and reason.startswith("paused by"):
                del daemon.holds.holding[name]
        daemon.wake.set()
        return {"resumed": resumed, "pauses": daemon.pauses.as_json()}

    async def cancel_task(self, task_id: str) -> dict[str, object]:
        """Stop one task after its current batch (or before it starts) and wait for it."""
        record = self.daemon.tracker.find(task_id)
        if record is None:
            raise UnknownTask(f"no task {task_id} in this daemon; `archivist status` lists them")
        if record.finished:
            raise UnknownTask(f"task {task_id} has ended already ({record.state})")
        stopping = self.daemon.holds.stop_after_batch(record, "cancelled on request")
        if stopping is not None:
            await stopping
        return {"cancelled": record_json(record)}

    async def control_status(self) -> dict[str, object]:
        """The worker's own status (its tasks, as on the worker's socket) where it answers,
        and the daemon's `report`."""
        document: dict[str, object] = {}
        connection = self.daemon.live_connection()
        if connection is not None:
            try:
                async with asyncio.timeout(WORKER_STATUS_TIMEOUT):
                    worker = await connection.status()
                document.update(json.loads(protocol.encode(worker)))
            except PeerError as exc:
                document["workerError"] = exc.message
            except TimeoutError:
                document["workerError"] = f"no answer in {WORKER_STATUS_TIMEOUT:.0f} s"
        document.update(report(self.daemon))
        return document

    def _known(self, collection: str | None) -> None:
        policies = self.daemon.policies
        if collection is not None and collection not in policies:
            names = ", ".join(sorted(policies)) or "none"
            raise UnknownCollection(f"no policy for {collection!r}; the policies: {names}")


def record_json(record: TaskRecord) -> dict[str, object]:
    """A task record for ``status --json`` and the control answers."""
    return {
        "taskId": record.task_id,
        "collection": record.collection,
        "state": record.state,
        "archived": record.archived,
        "maxRows": record.max_rows,
        "createdAt": record.created_at,
        "finishedAt": record.finished_at,
        "error": record.error,
    }


def report(daemon: ArchiveDaemon) -> dict[str, object]:
    """What ``archivist status`` shows of the daemon: itself, its pauses, and per policy
    the table's size against its limit, growth, last and next run, and its state."""
    interval = daemon.options.check_interval
    next_check = None
    if daemon.watching and daemon.last_check is not None:
        next_check = daemon.last_check + interval
    policies = []
    for name, policy in daemon.policies.items():
        keeping = daemon.keeping[name]
        unfinished = daemon.tracker.unfinished(name)
        last = daemon.tracker.last_finished(name)
        paused = daemon.pauses.reason(name)
        holding = daemon.holds.holding.get(name)
        state, reason = "idle", None
        if paused is not None:
            state, reason = "paused", paused
            if unfinished is not None:
                reason += f"; task {unfinished.task_id} stops after its batch"
        elif unfinished is not None:
            state = unfinished.state
        elif holding is not None:
            state, reason = "waiting", holding
        elif keeping.state == "behind":
            state = "behind"
        rules = policy.rules
        policies.append(
            {
                "collection": name,
                "sourceHandle": policy.source_handle,
                "destHandle": policy.dest_handle,
                "mode": rules.mode,
                "rows": keeping.rows,
                "maxRows": policy.max_rows,
                "olderThan": str(rules.older_than) if rules.older_than is not None else None,
                "growth": keeping.growth,
                "moving": keeping.moving,
                "minRate": keeping.rate,
                "keepUp": keeping.state,
                "state": state,
                "reason": reason,
                "task": record_json(unfinished) if unfinished is not None else None,
                "lastRun": record_json(last) if last is not None else None,
                "nextRun": next_check if state in ("idle", "behind") else None,
            }
        )
    return {
        "daemon": {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "startedAt": daemon.started_at,
            "checkInterval": interval,
            "lastCheck": daemon.last_check,
            "nextCheck": next_check,
            "workerSocket": str(daemon.options.socket_path),
            "connected": daemon.live_connection() is not None,
        },
        "paused": daemon.pauses.as_json(),
        "policies": policies,
        "tasks": [record_json(record) for record in daemon.tracker.records()],
    }
