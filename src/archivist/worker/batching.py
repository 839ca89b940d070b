"""Adaptive batch size: aim every batch at a target duration, like pt-online-schema-change's
``--chunk-time``. Pure arithmetic, no I/O.

The size follows a decaying average of the measured rate (rows per second) times the
target time, between a minimum and the task's ``batchSize`` (the protocol's rows per batch,
which stays the most a batch holds); a batch that ran far over the target cuts the next
one hard, at once, instead of waiting for the average to catch up.

Rows also have a width: a batch's rows travel in one frame, so the size is also kept to
what fits a byte ``budget`` at the width of the rows listed last (bytes per row, from the
listings' sizes), whatever the time allows and even below the minimum: wide rows move
in smaller batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DECAY: Final = 0.5
"""Weight of the newest measurement in the decaying average."""
FAR_OVER: Final = 2.0
"""A batch this many times over the target is cut to the size that would have fit."""


@dataclass
class BatchSizer:
    """The next batch's size, from how long earlier batches took."""

    size: int
    minimum: int
    maximum: int
    target: float
    """Seconds a batch should take; 0 or less keeps ``size`` fixed."""
    rate: float | None = None
    budget: int | None = None
    """Bytes of rows a batch may hold (None: no bound)."""
    width: float | None = None
    """Bytes per row of the rows listed last."""

    @classmethod
    def for_task(
        cls, batch_size: int, target: float, minimum: int, budget: int | None = None
    ) -> BatchSizer:
        """The task's ``batchSize`` is where batches start and the most they may hold."""
        low = max(1, min(batch_size, minimum))
        return cls(size=batch_size, minimum=low, maximum=batch_size, target=target, budget=budget)

    def fitting(self) -> int:
        """The most rows of the last width that fit the budget (at least one)."""
        if self.budget is None or self.width is None:
            return self.maximum
        return max(1, int(self.budget / self.width))

    def learn_width(self, rows: int, size: int) -> int:
        """Account for a listing of ``rows`` rows in ``size`` bytes; returns the next size."""
        if rows <= 0 or size <= 0:
            return self.size
        self.width = size / rows
        if self.target <= 0 or self.rate is None:
            self.size = self._clamp(self.maximum)
        else:
            self.size = self._clamp(self.rate * self.target)
        return self.size

    def record(self, rows: int, seconds: float) -> int:
        """Account for a finished batch; returns the size of the next one."""
        if self.target <= 0 or rows <= 0:
            return self.size
        seconds = max(seconds, 1e-4)
        measured = rows / seconds
        if seconds > FAR_OVER * self.target:
            self.rate = measured
            self.size = self._clamp(measured * self.target)
            return self.size
        self.rate = measured if self.rate is None else DECAY * measured + (1 - DECAY) * self.rate
        self.size = self._clamp(self.rate * self.target)
        return self.size

    def _clamp(self, value: float) -> int:
        return min(max(self.minimum, min(self.maximum, round(value))), self.fitting())
