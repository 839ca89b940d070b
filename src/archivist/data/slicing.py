"""How a SQLite delete shares the database's one write lock with the application: short
slices, each one statement that takes the lock, deletes and commits in one call, and a gap
between slices while other connections are writing.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from archivist.data.activity import LOOKED, look, own_commit

SLICE_ROWS: Final = 200
"""Most rows per slice of a SQLite delete while other connections write."""
SLICE_LADDER: Final = (10, 15, 20, 30, 40, 50, 70, 100, 140, SLICE_ROWS)
"""The sizes a slice takes while others write (few sizes: each is a prepared statement)."""
SLICE_HOLD: Final = 0.0008
"""Seconds a slice should hold the write lock while other connections write. An application
writer that met a slice sleeps 1 ms in SQLite's busy handler before it tries again; a slice
shorter than that is over when it does, and the gap keeps the next one from having begun.
How many rows fit in that time depends on the machine, the table and its indexes, so the
size follows the measured time (`next_slice`)."""
SLICE_GAP: Final = 0.0015
"""Seconds between slices, with the write lock free, while other connections write to the
database: longer than the busy handler's first sleep, so that its second try finds the lock
free instead of the next slice."""
QUIET_SLICE_ROWS: Final = 1000
"""Rows per slice while no other connection writes: nobody waits for the lock, and one
statement writes each page once, where five slices commit the same pages five times (about
twice as slow: docs/performance.md, SQLite to SQLite)."""
QUIET_AFTER: Final = 1.0
"""Seconds without another connection's commit before the slices of a delete grow."""
BUSY_AT: Final = "archivist_busy_at"
"""Where a pooled SQLite connection keeps when it last saw another connection's commit."""
BUSY_SLICE: Final = "archivist_busy_slice"
"""Where a pooled SQLite connection keeps the size of its next slice while others write."""
BUSY_HELD: Final = "archivist_busy_held"
"""... and how long its last slices of that size held the lock."""
HELD_KEPT: Final = 4
"""Slices of one size whose times `next_slice` weighs."""


def next_slice(size: int, held: list[float]) -> int:
    """The size of the next slice while others write, after slices of ``size`` rows held the
    lock for ``held`` seconds each (the last few, newest last): the largest of
    `SLICE_LADDER` expected to hold it at most `SLICE_HOLD`, growing at most to the next
    size up at a time. The quickest of the few is taken: a slice's time also counts any wait
    for the lock while an application's commit held it, which says nothing of its size."""
    fitted = size * SLICE_HOLD / max(min(held), 1e-6)
    larger = [step for step in SLICE_LADDER if step > size]
    ceiling = larger[0] if larger else SLICE_LADDER[-1]
    fitting = [step for step in SLICE_LADDER if step <= min(fitted, ceiling)]
    return fitting[-1] if fitting else SLICE_LADDER[0]


@contextlib.contextmanager
def commits_without_sync(raw: Any) -> Iterator[None]:
    """The main database's commits do not wait for the disk while inside (``synchronous=
    NORMAL``): for deletes whose rows were copied, durably, before. A delete lost in a power
    cut leaves rows that are in the archive too, and the next run deletes them again."""
    (synchronous,) = raw.execute("PRAGMA main.synchronous").fetchone()
    raw.execute("PRAGMA main.synchronous=NORMAL")
    try:
        yield
    finally:
        raw.execute(f"PRAGMA main.synchronous={int(synchronous)}")


def execute(raw: Any, sql: str, params: list[object]) -> Any:
    """Run one statement on the raw ``sqlite3`` connection; a failure is raised as
    SQLAlchemy would raise it, so the handle reports it as a database error."""
    try:
        return raw.execute(sql, params)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from None


@dataclass
class Slice:
    """One slice of a delete: rows ``start`` to ``start + size`` of its keys."""

    start: int
    size: int
    held: float | None = None
    """Seconds its statement held the write lock, told by whoever ran it."""


def adaptive_slices(connection: Connection, raw: Any, total: int, largest: int) -> Iterator[Slice]:
    """Each `Slice` of ``total`` rows; the caller runs it, then sets its ``held``.

    While another connection has committed to the database within the last `QUIET_AFTER`
    seconds (as this connection saw it, asking before each slice; before its first look,
    assume so), the application is writing: every slice is as long as holds the lock for
    about `SLICE_HOLD` (`next_slice`, from the connection's last slices; at first
    `SLICE_ROWS`), with the lock free for `SLICE_GAP` before each but the first. Otherwise
    nobody is waiting, and a slice is up to `QUIET_SLICE_ROWS` (and ``largest``) long.

    Asking only whether anyone wrote since this connection last looked was not enough: an
    application writing every few milliseconds can happen not to have written since, and a
    delete that then went in one long statement raised the application's p99 latency.
    """
    info = connection.connection.info
    start = 0
    while start < total:
        now = time.monotonic()
        first_look = LOOKED not in info  # nothing seen yet: assume a writer, once
        if look(connection, raw).changed and not first_look:
            info[BUSY_AT] = now
        busy = first_look or now - info.get(BUSY_AT, -QUIET_AFTER) < QUIET_AFTER
        if busy and start:
            time.sleep(SLICE_GAP)
        if busy:
            size = min(info.get(BUSY_SLICE, SLICE_ROWS), largest)
        else:
            size = max(1, min(QUIET_SLICE_ROWS, largest))
        part = Slice(start, size)
        with own_commit(connection):
            yield part
        if busy and part.held is not None and start + size <= total:
            # (A short last slice says little of a full one's time: it is not weighed.)
            held = [*info.get(BUSY_HELD, ())[-(HELD_KEPT - 1) :], part.held]
            if size != info.get(BUSY_SLICE, SLICE_ROWS):
                held = [part.held]  # clipped by ``largest``: the times were of another size
            info[BUSY_SLICE] = next_slice(size, held)
            info[BUSY_HELD] = [] if info[BUSY_SLICE] != size else held
        start += size
