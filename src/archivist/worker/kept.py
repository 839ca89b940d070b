"""The rows a task leaves in its source: those other rows still reference (the daemon's
``kept``) and those whose values the destination cannot store, and how the task ends with them."""

from __future__ import annotations

import logging
from typing import Final

from archivist.errors import ArchivistError, BadAnswer, RowsKept, UnstorableValue
from archivist.protocol import JSONObject
from archivist.worker.batch import DEFAULT_PRIMARY_KEY, Batch
from archivist.worker.queue import Task

# Logged as the executor, as before this module was split from it.
log = logging.getLogger("archivist.worker.executor")

MAX_UNSTORABLE: Final = 1000
"""Rows a task keeps in the source for values its destination cannot store before it stops:
each is named in the task's error, and excluded by key from its listings."""


class KeptRows:
    """What one task has kept in its source so far; both kinds count against its rows."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.kept = 0
        """Rows the daemon kept in the source because other rows still reference them: the
        cursor moves past them, and they count against the task's rows."""
        self.kept_reasons: dict[str, None] = {}
        self.primary_key = DEFAULT_PRIMARY_KEY
        """The source's primary key, as its listings name it."""
        self.unstorable: dict[object, str] = {}
        """Rows kept in the source because the destination cannot store one of their
        values, by key: what is wrong with each. They count against the task's rows."""

    @property
    def count(self) -> int:
        return len(self.unstorable) + self.kept

    def unstorable_kept(self, shown: int = 5) -> UnstorableValue:
        """How a task that kept unstorable rows ends: what moved, what stayed, and why."""
        reasons = list(self.unstorable.values())
        more = f"; and {len(reasons) - shown} more" if len(reasons) > shown else ""
        return UnstorableValue(
            f"moved {self.task.archived} row(s); kept {len(reasons)} in "
            f"{self.task.spec.source_handle}, with values {self.task.spec.dest_handle} "
            f"cannot store: {'; '.join(reasons[:shown])}{more}"
        )

    def rows_kept(self) -> RowsKept:
        """How the task ended when it kept rows other rows still reference: what moved,
        what stayed, and why."""
        reasons = "; ".join(self.kept_reasons) or "still referenced by other rows"
        return RowsKept(
            f"moved {self.task.archived} row(s); kept {self.kept} in "
            f"{self.task.spec.source_handle}: {reasons}"
        )

    def ending(self) -> ArchivistError | None:
        """The error a task that ran to its end reports for the rows it kept, or None."""
        if self.unstorable:
            kept = self.unstorable_kept()
            if self.kept:
                kept = UnstorableValue(f"{kept.message}; {self.rows_kept().message}")
            return kept
        if self.kept:
            return self.rows_kept()
        return None

    def listing_filter(self) -> JSONObject | None:
        """A listing's filter: the task's own (its ``where``, its age cutoff), and leaving
        out the unstorable rows; None when the task's own is all it needs."""
        if not self.unstorable:
            return None
        # Rows kept in the source are its oldest: a listing from the start would find
        # them again, batch after batch.
        merged: JSONObject = dict(self.task.spec.filter or {})
        left_out = list(self.unstorable)
        condition = merged.get(self.primary_key)
        if condition is None:
            merged[self.primary_key] = {"$nin": left_out}
        elif isinstance(condition, dict) and all(str(op).startswith("$") for op in condition):
            before = condition.get("$nin")
            others = list(before) if isinstance(before, list) else []
            merged[self.primary_key] = {**condition, "$nin": others + left_out}
        else:  # a plain value: the key equals it
            merged[self.primary_key] = {"$eq": condition, "$nin": left_out}
        return merged

    def keep_unstorable(self, batch: Batch, created: JSONObject) -> None:
        refused = created.get("unstorable")
        if refused is None:
            return
        if not isinstance(refused, list) or not all(isinstance(r, dict) for r in refused):
            raise BadAnswer("data/create answered with unstorable not a list of objects")
        for entry in refused:
            key = entry.get("key")
            if key is None or isinstance(key, list | dict):
                raise BadAnswer(f"data/create named an unstorable row by no key: {entry!r}")
            batch.unstorable.add(key)
            self.primary_key = batch.primary_key
            if key not in self.unstorable:
                reason = (
                    f"{batch.primary_key}={key!r}: {entry.get('field')} = "
                    f"{entry.get('value')} ({entry.get('error')})"
                )
                self.unstorable[key] = reason
                log.warning("task %s: kept in the source: %s", self.task.task_id, reason)
        if len(self.unstorable) >= MAX_UNSTORABLE:
            raise UnstorableValue(f"{self.unstorable_kept().message}; stopped there")

    def keep_referenced(self, kept: int, reason: object) -> None:
        """Count rows the daemon's delete kept because other rows still reference them."""
        self.kept += kept
        self.kept_reasons[reason if isinstance(reason, str) else "still referenced"] = None
        log.info("task %s: %d row(s) kept: %s", self.task.task_id, kept, reason)
