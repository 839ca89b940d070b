"""Keeping up: how fast archivist must move a table that the application outgrows.

Yielding to a busy application (``yield_ratio``) can leave archivist slower than the
application's inserts, and the table then grows while archivist runs. At every policy check
the daemon tells this object the table's size and the rows archivist moved since the last
check; it measures the application's growth rate (rows/s added, the rows moved counted
back in) and, while the table ends checks above its limit and larger than at the check
before (which found it above its limit too), asks
the worker to move at least `FACTOR` times that rate (the task's ``minRate``). Once the
table has been back within reach for `RELAX_AFTER` checks in a row, it relaxes to what
the growth measured then asks for (nothing when the application has gone quiet).

`KeepUp` is pure: no I/O, no clock of its own (the caller passes the time), unit-tested
against a simulated table (tests/unit/test_keepup.py). The daemon leaves the states in a
small JSON file beside the worker's socket (`write_state`), which ``archivist status``
reads (`read_state`): only the daemon knows sizes between checks.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

FACTOR: Final = 1.5
"""Move at least this many times the measured growth: the rate that both keeps up and
works off the backlog (at 1.5x, a backlog of one check's growth takes two checks)."""
RELAX_AFTER: Final = 3
"""Checks in a row a table must be kept in reach before its rate is relaxed: one good
check may be luck of timing (a task just finished)."""

KeepUpState = Literal["unknown", "within", "keeps up", "behind"]


@dataclass
class KeepUp:
    """One policy's keep-up state, updated at each check."""

    max_rows: int | None
    """None: a policy without max_rows (an age policy), which is never behind it."""
    min_rate: float | None = None
    """The user's floor (rows/s), from the policy's ``min_rate``."""
    factor: float = FACTOR
    relax_after: int = RELAX_AFTER

    rows: int | None = None
    """The table's size at the last check."""
    exact: bool = True
    """Whether ``rows`` was counted, or estimated (a table the engine's statistics settled
    as well within its limit: `archivist.data.size`)."""
    at: float | None = None
    """When the last check counted it (seconds, any monotonic clock)."""
    growth: float | None = None
    """Rows/s the application added between the last two checks."""
    moving: float | None = None
    """Rows/s archivist moved between the last two checks."""
    boost: float = 0.0
    """Rows/s asked for by keeping up (0: none)."""
    calm: int = 0
    """Checks in a row, since the boost was last raised, that did not find the table over
    its limit and growing."""
    behind: bool = False
    """The last check found the table over its limit and larger than at the check before."""

    def observe(self, rows: int, at: float, moved: int, *, exact: bool = True) -> None:
        """A check measured ``rows`` at time ``at`` (``exact``: counted, not estimated);
        archivist moved ``moved`` rows of the table since the previous check.

        A check counts exactly whenever the table is over its limit, so being ``behind``
        (over at two checks in a row) is always decided on counts; the growth between two
        estimates is as good as the estimates (PostgreSQL's follow every commit, InnoDB's
        every insert and delete)."""
        previous, since = self.rows, self.at
        self.rows, self.at, self.exact = rows, at, exact
        if previous is None or since is None or at <= since:
            return
        seconds = at - since
        moved = max(0, moved)
        self.growth = max(0.0, (rows - previous + moved) / seconds)
        self.moving = moved / seconds
        # Over at both checks: a table that just crossed its limit is the usual cycle (its
        # task is queued now), not a table that outgrows archivist.
        self.behind = self.max_rows is not None and rows > previous > self.max_rows
        if self.behind:
            self.boost = max(self.boost, self.factor * self.growth)
            self.calm = 0
        elif self.boost > 0:
            self.calm += 1
            if self.calm >= self.relax_after:
                # Relax to what the growth asks now: a steady application still needs it,
                # a quiet one needs nothing, and yielding is whole again.
                self.boost = self.factor * self.growth
                self.calm = 0

    @property
    def rate(self) -> float | None:
        """Rows/s the next task must move at least while yielding (None: no floor)."""
        floor = max(self.min_rate or 0.0, self.boost)
        return floor if floor > 0 else None

    @property
    def state(self) -> KeepUpState:
        """``behind``: over the limit and growing at the last check; ``keeps up``: a rate
        is asked for and the table no longer grows past its limit; ``within``: nothing
        asked for; ``unknown``: not two checks yet."""
        if self.rows is None or self.growth is None:
            return "unknown"
        if self.behind:
            return "behind"
        return "keeps up" if self.boost > 0 else "within"

    def as_json(self) -> dict[str, object]:
        """For ``archivist status``."""
        return {
            "rows": self.rows,
            "exact": self.exact,
            "maxRows": self.max_rows,
            "growth": self.growth,
            "moving": self.moving,
            "minRate": self.rate,
            "state": self.state,
        }


def state_path(socket_path: Path) -> Path:
    """Where the daemon serving the worker at ``socket_path`` leaves its keep-up state."""
    return socket_path.with_name(socket_path.name + ".keepup.json")


def write_state(socket_path: Path, policies: Mapping[str, KeepUp]) -> None:
    """Replace the state file atomically (a reader never sees half of it)."""
    path = state_path(socket_path)
    document = {
        "at": time.time(),
        "policies": {name: state.as_json() for name, state in policies.items()},
    }
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document), encoding="utf-8")
    os.replace(temporary, path)


def read_state(socket_path: Path) -> dict[str, object] | None:
    """The daemon's last keep-up state for that worker, or None if it left none."""
    try:
        document = json.loads(state_path(socket_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
