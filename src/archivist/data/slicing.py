"""How a SQLite delete shares the database's one write lock with the application: short
slices, each one statement that takes the lock, deletes and commits in one call, and a gap
between slices while other connections are writing.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any, Final

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

SLICE_ROWS: Final = 200
"""Rows per slice of a SQLite delete: each slice holds the write lock well under 1 ms."""
SLICE_GAP: Final = 0.0015
"""Seconds between slices, with the write lock free, while other connections write to the
database. An application writer that met a slice sleeps 1 ms in SQLite's busy handler
before it tries again; the gap is longer, so that second try finds the lock free instead
of the next slice."""
QUIET_SLICE_ROWS: Final = 1000
"""Rows per slice while no other connection writes: nobody waits for the lock, and one
statement writes each page once, where five slices commit the same pages five times (a
guarded delete of 1,000 rows: 4.9-6.9 ms in one statement, 12.7-14.5 ms in five)."""
QUIET_AFTER: Final = 1.0
"""Seconds without another connection's commit before the slices of a delete grow."""
BUSY_AT: Final = "archivist_busy_at"
"""Where a pooled SQLite connection keeps when it last saw another connection's commit."""
DATA_VERSION: Final = "archivist_data_version"
"""Where a pooled SQLite connection keeps the last ``PRAGMA data_version`` it read."""


def others_wrote(connection: Connection, raw: Any) -> bool:
    """Whether another connection committed to this database since this one last asked
    (its own commits do not count); the first time, assume so."""
    (version,) = raw.execute("PRAGMA data_version").fetchone()
    seen = connection.connection.info.get(DATA_VERSION)
    connection.connection.info[DATA_VERSION] = version
    return bool(seen != version)


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


def slices(connection: Connection, raw: Any, total: int, size: int) -> Iterator[int]:
    """The start of each slice of ``total`` rows, ``size`` at a time. Before every slice
    but the first, the lock stays free for `SLICE_GAP` if another connection has committed
    to the database since this one last looked (asked once, before the second slice): the
    application is writing, and a writer may be waiting. With no other writer, no time is
    spent waiting."""
    yielding: bool | None = None
    for start in range(0, total, size):
        if start:
            if yielding is None:
                yielding = others_wrote(connection, raw)
            if yielding:
                time.sleep(SLICE_GAP)
        yield start


def adaptive_slices(
    connection: Connection, raw: Any, total: int, largest: int
) -> Iterator[tuple[int, int]]:
    """``(start, size)`` of each slice of ``total`` rows. While another connection has
    committed to the database within the last `QUIET_AFTER` seconds (as this connection
    saw it, asking before each slice; before its first look, assume so), the application is
    writing: every slice is `SLICE_ROWS` long, with the lock free for `SLICE_GAP` before
    each but the first. Otherwise nobody is waiting, and a slice is up to
    `QUIET_SLICE_ROWS` (and ``largest``) long.

    Asking only whether anyone wrote since this connection last looked was not enough:
    about one delete in eight of the quick benchmark's, with the application writing every
    8 ms, found no write since and went in one long statement, and the foreground p99 on
    SQLite rose from 7 to 9-13 ms.
    """
    info = connection.connection.info
    start = 0
    while start < total:
        now = time.monotonic()
        first_look = DATA_VERSION not in info  # nothing seen yet: assume a writer, once
        if others_wrote(connection, raw) and not first_look:
            info[BUSY_AT] = now
        busy = first_look or now - info.get(BUSY_AT, -QUIET_AFTER) < QUIET_AFTER
        if busy and start:
            time.sleep(SLICE_GAP)
        size = SLICE_ROWS if busy else max(1, min(QUIET_SLICE_ROWS, largest))
        yield start, size
        start += size
