"""Why a policy waits now: its pause, its window, its ``max_runtime``; and stopping a
policy's task after its batch once it is held.

`Holds` keeps the state these decisions read (when each policy's run started, the window
whose run used up ``max_runtime``, the reason each policy waits now); the ArchiveDaemon asks
it before each check and on each progress of a policy's task.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from archivist.daemon.pauses import Pauses
from archivist.daemon.policies import Policy
from archivist.daemon.tracker import TaskRecord
from archivist.policy import hold_reason

# Logged as the daemon, as before this module was split from it.
log = logging.getLogger("archivist.daemon.service")


class Holds:
    """The policies' holds, and the tasks asked to stop because of them."""

    def __init__(
        self,
        policies: Mapping[str, Policy],
        pauses: Pauses,
        cancel: Callable[[TaskRecord], Coroutine[Any, Any, None]],
    ) -> None:
        self.policies = policies
        self.pauses = pauses
        self._cancel = cancel
        self.runs: dict[TaskRecord, dt.datetime] = {}
        """Tasks queued by a policy check (not by `archivist archive`), and when: windows
        and ``max_runtime`` govern these alone."""
        self.spent: dict[str, dt.datetime] = {}
        """Per collection, the opening of the window in which its run used up max_runtime."""
        self.holding: dict[str, str] = {}
        """Per collection, why its policy waits now ("waiting for window 01:00-05:00")."""
        self._stopping: dict[TaskRecord, asyncio.Task[None]] = {}

    def reason(
        self, policy: Policy, now: dt.datetime, started: dt.datetime | None = None
    ) -> str | None:
        """Why the policy may not start a batch at ``now`` (`hold_reason`), remembering the
        window whose run used up ``max_runtime``; None when it may."""
        paused = self.pauses.reason(policy.collection)
        if paused is not None:
            return paused
        rules = policy.rules
        if rules.window is None and rules.max_runtime is None:
            return None
        spent_in = self.spent.get(policy.collection)
        reason = hold_reason(rules, now, started=started, spent_in=spent_in)
        if reason is not None and started is not None and rules.window is not None:
            opened = rules.window.opened_at(now)
            if opened is not None and reason.startswith("max_runtime"):
                self.spent[policy.collection] = opened
                reason = hold_reason(rules, now, spent_in=opened)
        return reason

    def stop_if_held(self, record: TaskRecord, now: dt.datetime) -> bool:
        """Ask a policy's task to stop after its current batch if its window has closed or
        its run is over ``max_runtime``; whether it is held."""
        policy = self.policies.get(record.collection)
        if policy is None:
            return False
        reason = self.reason(policy, now, self.runs.get(record))
        if reason is None:
            return False
        self.stop_after_batch(record, reason)
        return True

    def stop_after_batch(self, record: TaskRecord, reason: str) -> asyncio.Task[None] | None:
        """Ask ``record``'s task to stop after its current batch (once); the task that waits
        for it to end, or None if it has ended."""
        if record.finished:
            return None
        stopping = self._stopping.get(record)
        if stopping is None:
            log.info(
                "%s: %s; stopping task %s after its batch",
                record.collection,
                reason,
                record.task_id,
            )
            stopping = asyncio.get_running_loop().create_task(self._cancel(record))
            self._stopping[record] = stopping
            stopping.add_done_callback(lambda _: self._stopping.pop(record, None))
        return stopping
