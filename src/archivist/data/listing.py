"""How ``data/list`` reads a page: `ListQuery` (filter, order, keyset cursor and limit,
optionally bound so one statement serves every page of a shape) and the cursor's position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.types import NullType

from archivist.data.filters import (
    SortKey,
    compile_filter,
    keyset_condition,
    order_clauses,
    sort_keys,
)
from archivist.data.params import CursorParam, ListParams
from archivist.data.schema import TableInfo
from archivist.data.stored import Stored, StoredForm
from archivist.data.values import decode_value
from archivist.errors import InvalidParams


def keys_of_filter(filter_: dict[str, Any] | None, pk: str) -> list[object] | None:
    """The keys a filter of the form ``{pk: {"$in": [...]}}`` names, else None."""
    if filter_ is None or list(filter_) != [pk]:
        return None
    condition = filter_[pk]
    if isinstance(condition, dict) and list(condition) == ["$in"]:
        keys = condition["$in"]
        return keys if isinstance(keys, list) else None
    return None


def ascending_field(p: ListParams, default_order: str) -> str | None:
    """The field a listing is in ascending order of, first, or None (then no cursor)."""
    if p.order_by:
        first = p.order_by[0]
        return first.field if first.direction == "asc" else None
    if p.cursor is not None:
        return p.cursor.field if p.cursor.direction == "after" else None
    return default_order


def cursor_position(info: TableInfo, cursor: CursorParam) -> list[object]:
    """The cursor's position, decoded: its value, then the key of its row where the cursor
    is not on the key and names one (``id``)."""
    value = decode_value(info.spec(cursor.field), cursor.value, where="cursor.")
    if cursor.field == info.pk or cursor.id is msgspec.UNSET:
        return [value]
    return [value, decode_value(info.spec(info.pk), cursor.id, where="cursor.")]


def position_params(position: Sequence[object], limit: int) -> dict[str, object]:
    """The parameters of a listing built with ``bound`` (`ListQuery.build`) for a cursor at
    ``position`` and a page of ``limit`` rows."""
    params: dict[str, object] = {f"cursor_{i}": v for i, v in enumerate(position) if v is not None}
    params["page_limit"] = limit
    return params


class ListQuery(msgspec.Struct, frozen=True):
    """A ``data/list`` query over one table (`build`), run in a transaction (`run`)."""

    query: sa.Select[Any]
    reverse: bool
    table: sa.Table
    stored: bool
    """Also read each row's stored form."""
    params: Mapping[str, object] = msgspec.field(default_factory=dict)
    """The query's parameters, when built with ``bound``."""

    @classmethod
    def build(
        cls,
        info: TableInfo,
        p: ListParams,
        default_order: str,
        *,
        stored: bool = False,
        bound: bool = False,
    ) -> ListQuery:
        """The listing ``p`` asks for. With ``bound``, the cursor's values and the limit are
        the parameters ``cursor_<i>`` and ``page_limit`` (`position_params`), so the query
        serves every page of its shape: the same order, and a cursor whose values are null
        at the same places (or none)."""
        requested = [SortKey(o.field, o.direction) for o in p.order_by or []]
        cursor = p.cursor
        if cursor is not None:
            info.codec.check_fields([cursor.field], what="cursor field")
            if requested and requested[0].field != cursor.field:
                raise InvalidParams("invalid params: cursor.field must be the first orderBy field")
            extra = [k.field for k in requested[1:] if k.field != info.pk]
            if extra:
                raise InvalidParams(
                    "invalid params: with a cursor, orderBy may name only the cursor field"
                )
            if not requested:
                requested = [SortKey(cursor.field, "asc")]
        keys = sort_keys(info, requested, default_order)
        where = compile_filter(info, p.filter)
        reverse = False
        position = [] if cursor is None else cursor_position(info, cursor)
        params: Mapping[str, object] = {}
        limit: int | sa.BindParameter[int] = p.limit
        if bound:
            params = position_params(position, p.limit)
            limit = sa.bindparam("page_limit", p.limit, type_=sa.Integer())
        if cursor is not None:
            if bound:
                position = [
                    value
                    if value is None
                    else sa.bindparam(f"cursor_{i}", value, type_=info.table.c[key.field].type)
                    for i, (key, value) in enumerate(zip(keys, position, strict=False))
                ]
            after = cursor.direction == "after"
            where = sa.and_(where, keyset_condition(info, keys, position, after=after))
            reverse = not after
        query = (
            sa.select(info.table)
            .where(where)
            .order_by(*order_clauses(info, keys, reverse=reverse))
            .limit(limit)
        )
        return cls(query, reverse, info.table, stored, params)

    def run(
        self, connection: Connection
    ) -> tuple[list[str], list[Sequence[object]], list[Stored] | None]:
        """The column names, the rows, and (if asked) the rows' stored forms."""
        if not self.stored:
            result = connection.execute(self.query, self.params)
            rows: list[Sequence[object]] = list(result.all())
            if self.reverse:
                rows.reverse()  # a page before the cursor still comes in the listing order
            return list(result.keys()), rows, None
        form = StoredForm.of(self.table, connection.dialect)
        result = connection.execute(self.query.add_columns(*form.extra), self.params)
        split = [form.split(row) for row in result.all()]
        if self.reverse:
            split.reverse()
        names = list(result.keys())[: form.width]
        return names, [typed for typed, _ in split], [values for _, values in split]

    def run_columns(
        self, connection: Connection
    ) -> tuple[list[str], list[list[object]], list[Stored]]:
        """The column names, the typed values column by column, and the rows' stored forms,
        for a dialect whose driver returns the stored form (`PASSTHROUGH_DIALECTS`): the
        rows are read once without type processing, straight from the driver's cursor, and
        each column's result processor (the very one SQLAlchemy applies) then runs over
        its column, not over each row's values in turn."""
        stored = self.run_raw(connection)
        dialect = connection.dialect
        columns: list[list[object]] = []
        for column, values in zip(self.table.c, zip(*stored, strict=True), strict=False):
            process = column.type.dialect_impl(dialect).result_processor(dialect, None)
            columns.append(list(values) if process is None else [process(v) for v in values])
        if not stored:
            columns = [[] for _ in self.table.c]
        return [column.name for column in self.table.c], columns, stored

    def run_raw(self, connection: Connection) -> list[Stored]:
        """The listing's rows as the driver's cursor returns them (no type processing), in
        the table's column order: for a dialect whose driver returns the stored form."""
        raw = [sa.type_coerce(column, NullType()) for column in self.table.c]
        result = connection.execute(self.query.with_only_columns(*raw), self.params)
        try:
            stored: list[Stored] = list(result.cursor.fetchall())
        finally:
            result.close()
        if self.reverse:
            stored.reverse()
        return stored

    def run_stored_only(self, connection: Connection) -> list[Stored]:
        """The listing's rows in their stored form only (no type processing)."""
        raw = [sa.type_coerce(column, NullType()) for column in self.table.c]
        query = self.query.with_only_columns(*raw)
        rows = [tuple(row) for row in connection.execute(query, self.params)]
        if self.reverse:
            rows.reverse()
        return rows
