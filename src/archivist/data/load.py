"""``data/load``: how busy a database is, read by a probe query (its latency, the engine's
busy count, and the sessions besides archivist's using the database).
"""

from __future__ import annotations

import time
from typing import Final

from sqlalchemy.engine import Connection

from archivist.data.activity import others
from archivist.data.handles import Handle
from archivist.data.values import JSONObject

# Per engine: what counts as busy, and the query that reads it (one row, one integer).
BUSY_METRICS: Final = {
    "postgresql": (
        "active backends",
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid()",
    ),
    "mysql": ("threads running", "SHOW GLOBAL STATUS LIKE 'Threads_running'"),
    "mariadb": ("threads running", "SHOW GLOBAL STATUS LIKE 'Threads_running'"),
}


def _probe(connection: Connection, busy_query: str | None) -> tuple[int | None, int]:
    """The engine's busy count (None where it has none), and the sessions besides
    archivist's using the database (`archivist.data.activity.others`)."""
    connection.exec_driver_sql("SELECT 1").scalar()
    active = None
    if busy_query is not None:
        row = connection.exec_driver_sql(busy_query).one()
        active = int(row[-1]) - (1 if busy_query.startswith("SHOW") else 0)
    return active, others(connection)


async def probe_load(handle: Handle) -> JSONObject:
    """How busy ``handle``'s database is: a probe query's latency, the engine's busy count,
    and how many sessions besides archivist's are using it (``others``: the application).

    The latency counts the whole path a batch's statements take (thread hand-off, pool,
    server), so it rises with any kind of load, on every engine.
    """
    metric = BUSY_METRICS.get(handle.dialect_name)
    started = time.perf_counter()
    active, others_using = await handle.transaction(_probe, metric[1] if metric else None)
    result: JSONObject = {"latencyMs": round((time.perf_counter() - started) * 1000, 3)}
    if metric is not None and active is not None:
        result["active"] = active
        result["metric"] = metric[0]
    result["others"] = others_using
    return result
