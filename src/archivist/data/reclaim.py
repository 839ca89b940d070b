"""Space reclaim after a task that moved rows (the policy's ``reclaim`` key), with only what
each engine can do without blocking the application:

- PostgreSQL: ``VACUUM (ANALYZE)`` of the table (not ``VACUUM FULL``, which locks it
  exclusively). VACUUM cannot run inside a transaction, so it runs in autocommit.
- MariaDB/MySQL: ``ANALYZE TABLE`` (fresh statistics after many deletes); ``OPTIMIZE TABLE``
  (which rebuilds the table, online for InnoDB but heavy) only with ``reclaim = "full"``.
- SQLite: ``PRAGMA incremental_vacuum`` when the file uses incremental auto-vacuum
  (``PRAGMA auto_vacuum`` = 2); otherwise nothing runs, since a full ``VACUUM`` rewrites
  the whole file under an exclusive lock that blocks every writer.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import msgspec
from sqlalchemy.engine import Engine

from archivist.data.handles import Handle

log = logging.getLogger(__name__)

ReclaimMode = bool | Literal["full"]

SQLITE_INCREMENTAL = 2
"""``PRAGMA auto_vacuum`` of a file that frees pages on ``PRAGMA incremental_vacuum``."""


class Reclaimed(msgspec.Struct, frozen=True):
    """What a reclaim did: the statements run (none when the engine had nothing it could
    run without blocking), what they said, and how long it took."""

    table: str
    handle: str
    statements: tuple[str, ...]
    detail: str
    seconds: float

    def describe(self) -> str:
        ran = "; ".join(self.statements) if self.statements else "nothing run"
        return f"{self.table} on '{self.handle}': {ran} ({self.detail}) in {self.seconds:.2f} s"


async def reclaim(handle: Handle, table: str, mode: ReclaimMode = True) -> Reclaimed:
    """Run ``mode``'s space reclaim of ``table`` on ``handle`` (see the module) and log it."""
    started = time.monotonic()
    if handle.dialect_name == "sqlite":
        statements, detail = await handle.run(_sqlite, handle.engine)
    elif handle.dialect_name == "postgresql":
        statements, detail = await handle.run(_postgresql, handle.engine, table)
    else:
        statements, detail = await handle.run(_mysql, handle.engine, table, mode == "full")
    done = Reclaimed(table, handle.name, statements, detail, time.monotonic() - started)
    log.info("reclaim: %s", done.describe())
    return done


def _sqlite(engine: Engine) -> tuple[tuple[str, ...], str]:
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            auto_vacuum = cursor.execute("PRAGMA auto_vacuum").fetchone()[0]
            if auto_vacuum != SQLITE_INCREMENTAL:
                return (), (
                    "this SQLite file does not use incremental auto-vacuum (PRAGMA "
                    f"auto_vacuum = {auto_vacuum}); a full VACUUM would need an exclusive "
                    "lock on the whole file, so archivist leaves it to you"
                )
            before = cursor.execute("PRAGMA freelist_count").fetchone()[0]
            # The pragma frees one page a step, and the sqlite3 module's execute steps a
            # statement without result columns once; executescript steps it to the end.
            # The connection runs in autocommit (handles.py), so the script holds the
            # write lock only while it runs.
            try:
                cursor.executescript("BEGIN IMMEDIATE; PRAGMA incremental_vacuum; COMMIT;")
            except BaseException:
                if raw.in_transaction:
                    raw.rollback()
                raise
            after = cursor.execute("PRAGMA freelist_count").fetchone()[0]
        finally:
            cursor.close()
    return ("PRAGMA incremental_vacuum",), f"free pages {before} -> {after}"


def _postgresql(engine: Engine, table: str) -> tuple[tuple[str, ...], str]:
    with engine.connect() as plain:
        connection = plain.execution_options(isolation_level="AUTOCOMMIT")
        quoted = connection.dialect.identifier_preparer.quote(table)
        statement = f"VACUUM (ANALYZE) {quoted}"
        connection.exec_driver_sql(statement)
    return (statement,), "done"


def _mysql(engine: Engine, table: str, full: bool) -> tuple[tuple[str, ...], str]:
    statements: list[str] = []
    said: list[str] = []
    with engine.connect() as plain:
        connection = plain.execution_options(isolation_level="AUTOCOMMIT")
        quoted = connection.dialect.identifier_preparer.quote(table)
        for verb in ("OPTIMIZE", "ANALYZE") if full else ("ANALYZE",):
            statement = f"{verb} TABLE {quoted}"
            # Status rows: (Table, Op, Msg_type, Msg_text).
            rows = connection.exec_driver_sql(statement).fetchall()
            statements.append(statement)
            said += [f"{row[1]} {row[2]}: {row[3]}" for row in rows]
    return tuple(statements), "; ".join(said) or "done"
