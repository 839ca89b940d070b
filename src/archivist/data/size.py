"""How many rows a policy's table holds, measured without reading the whole table
(``data/size``, daemon-internal): the engine's statistics and the primary key's range first,
an exact count only when they leave it open.

A size check asks "is the table over ``max_rows``, and by how much?". `measure` answers it:

1. cheap figures, no rows read: a sound upper bound (``max(pk) - min(pk) + 1`` for an
   integer primary key, two index lookups) and the engine's estimate (PostgreSQL:
   ``pg_class.reltuples`` scaled to the table's current pages and ``n_live_tup``, the larger;
   MariaDB: ``information_schema.TABLES.TABLE_ROWS``, which InnoDB keeps up to date on each
   insert and delete; SQLite: none, since ``sqlite_stat1`` is only written by ``ANALYZE``,
   which applications rarely run). When the bound is within the limit, or the estimate is
   below `archivist.sizing.ESTIMATE_MARGIN` of it, the table is within its limit and no row
   is read (`closer_look`); the answer is then marked inexact.
2. otherwise an exact ``count(*)``, the planner's way (PostgreSQL in parallel, MariaDB and
   SQLite through the smallest index). An index walk from the newest end (``ORDER BY
   order_by DESC OFFSET max_rows``, then a count of the rows at or below the value found)
   reads the same rows, since an exact answer near or over the limit needs every row
   either way, and measured 1.8 to 2.7 times slower (docs/performance.md): not used.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from archivist.data.columns import Kind
from archivist.data.schema import TableInfo
from archivist.sizing import Size, closer_look, settled_size

log = logging.getLogger(__name__)


def estimate_rows(connection: Connection, info: TableInfo) -> int | None:
    """The engine's own estimate of the table's rows (no rows read), or None."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        row = connection.execute(
            sa.text(
                "SELECT c.reltuples, c.relpages, "
                "pg_relation_size(c.oid) / current_setting('block_size')::bigint, "
                "pg_stat_get_live_tuples(c.oid) "
                "FROM pg_class c WHERE c.oid = to_regclass(quote_ident(:name))"
            ),
            {"name": info.table.name},
        ).first()
        if row is None:
            return None
        reltuples, relpages, pages, live = float(row[0]), int(row[1]), int(row[2]), int(row[3])
        # What the planner does: the density of the last ANALYZE times the pages now (a
        # table that grew since has more pages). n_live_tup follows every commit but is
        # lost with the statistics; the larger of the two errs towards a closer look.
        if reltuples < 0:
            scaled = 0
        elif relpages > 0:
            scaled = round(reltuples / relpages * pages)
        else:
            scaled = round(reltuples)
        found = max(scaled, live)
        return found if found > 0 else None
    if dialect in ("mysql", "mariadb"):
        value = connection.execute(
            sa.text(
                "SELECT TABLE_ROWS FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :name"
            ),
            {"name": info.table.name},
        ).scalar()
        return int(value) if value is not None else None
    return None


def pk_bound(connection: Connection, info: TableInfo) -> int | None:
    """``max(pk) - min(pk) + 1`` for an integer primary key: never fewer than the rows (two
    index lookups; separate subqueries, since SQLite reads only a lone min or max from its
    index). None for any other key."""
    if info.spec(info.pk).kind is not Kind.INTEGER:
        return None
    pk = info.table.c[info.pk]
    high = sa.select(sa.func.max(pk)).scalar_subquery()
    low = sa.select(sa.func.min(pk)).scalar_subquery()
    row = connection.execute(sa.select(high, low)).first()
    if row is None or row[0] is None or row[1] is None:
        return 0
    return int(row[0]) - int(row[1]) + 1


def _count(connection: Connection, info: TableInfo, where: ColumnElement[bool]) -> int:
    query = sa.select(sa.func.count()).select_from(info.table).where(where)
    return int(connection.execute(query).scalar_one())


def measure(
    connection: Connection,
    info: TableInfo,
    column: str,
    where: ColumnElement[bool],
    limit: int | None,
) -> Size:
    """The size of the rows ``where`` selects, exact unless the cheap figures settle that it
    is within ``limit`` (see the module's docstring). ``limit`` None: the cheap figures only
    (the size of a table whose policy has no ``max_rows``, for its growth); rows None when
    there are none."""
    estimate = estimate_rows(connection, info)
    bound = pk_bound(connection, info)
    if limit is None or not closer_look(limit, bound=bound, estimate=estimate):
        return settled_size(bound, estimate)
    log.debug("%s: near or over max_rows %d (estimate %s); counting", info.name, limit, estimate)
    return Size(_count(connection, info, where), True, "count")
