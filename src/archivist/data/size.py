"""How many rows a policy's table holds, measured without reading the whole table
(``data/size``, daemon-internal): the engine's statistics and the primary key's range first,
then an index walk from the newest end, then an exact count only of the rows over the limit.

A size check asks "is the table over ``max_rows``, and by how much?". `measure` answers it:

1. cheap figures, no rows read: a sound upper bound (``max(pk) - min(pk) + 1`` for an
   integer primary key, two index lookups) and the engine's estimate (PostgreSQL:
   ``pg_class.reltuples`` scaled to the table's current pages and ``n_live_tup``, the larger;
   MariaDB: ``information_schema.TABLES.TABLE_ROWS``, which InnoDB keeps up to date on each
   insert and delete; SQLite: none, since ``sqlite_stat1`` is only written by ``ANALYZE``,
   which applications rarely run). When the bound is within the limit, or the estimate is
   below `archivist.sizing.ESTIMATE_MARGIN` of it, the table is within its limit and no row is read
   (`closer_look`); the answer is then marked inexact.
2. otherwise the walk: the ``order_by`` values at positions ``limit - 1`` and ``limit``
   from the newest end (``ORDER BY order_by DESC LIMIT 2 OFFSET limit - 1``), read through
   the index on ``order_by`` (at most ``limit + 1`` index entries). No row at ``limit``: the
   table is within it. A row there: the rows at or below its value are counted through the
   index (the rows that will move, and a few the policy keeps), and the total is exact
   (`total_from_walk`).
3. an exact ``count(*)`` instead where the estimate says the table is over its limit (it
   reads the same rows as the walk would, faster: `archivist.sizing.exact_way`), or where
   no index starts with ``order_by`` (the missing-index warning at start-up says so).
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from archivist.data.columns import Kind
from archivist.data.schema import TableInfo
from archivist.sizing import Size, closer_look, exact_way, settled_size, total_from_walk

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


def walk_usable(info: TableInfo, column: str) -> bool:
    """Whether an index starts with ``column`` (the walk reads it, not the table)."""
    return column == info.pk or column in info.indexed


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
    """The size of the rows ``where`` selects, exact wherever it is over ``limit`` (see the
    module's docstring). ``limit`` None: the cheap figures only (the size of a table whose
    policy has no ``max_rows``, for its growth); rows None when there are none."""
    estimate = estimate_rows(connection, info)
    bound = pk_bound(connection, info)
    if limit is None:
        return settled_size(bound, estimate)
    if not closer_look(limit, bound=bound, estimate=estimate):
        return settled_size(bound, estimate)
    indexed = walk_usable(info, column)
    if exact_way(limit, estimate=estimate, indexed=indexed) == "count":
        if limit and not indexed:
            log.debug("%s: no index starts with %s; counting every row", info.name, column)
        return Size(_count(connection, info, where), True, "count")
    return walk_size(connection, info, column, where, limit, estimate)


def walk_size(
    connection: Connection,
    info: TableInfo,
    column: str,
    where: ColumnElement[bool],
    limit: int,
    estimate: int | None,
) -> Size:
    """The walk from the newest end (the module's step 2), for ``limit`` >= 1 on an indexed
    ``column``: exact wherever over ``limit``."""
    order = info.table.c[column]
    nulls = 0
    if info.spec(column).nullable:
        # NULLs sort first descending on PostgreSQL, last elsewhere: walk the values only.
        nulls = _count(connection, info, sa.and_(where, order.is_(None)))
        where = sa.and_(where, order.isnot(None))
        if nulls >= limit:
            return Size(nulls + _count(connection, info, where), True, "count")
    walk = limit - nulls
    newest: list[Any] = list(
        connection.execute(
            sa.select(order).where(where).order_by(order.desc()).limit(2).offset(walk - 1)
        ).scalars()
    )
    if len(newest) < 2:
        # Within the limit: exactly ``limit`` rows when the last position is filled.
        if len(newest) == 1:
            return Size(limit, True, "index")
        if estimate is not None:
            return Size(min(estimate, limit - 1), False, "index")
        # No estimate to report (SQLite): count, no more rows than the walk just read.
        return Size(nulls + _count(connection, info, where), True, "index")
    at_or_below = _count(connection, info, sa.and_(where, order <= newest[1]))
    above = 0
    if newest[0] == newest[1]:
        above = _count(connection, info, sa.and_(where, order > newest[1]))
    return Size(nulls + total_from_walk(walk, newest, at_or_below, above), True, "index")
