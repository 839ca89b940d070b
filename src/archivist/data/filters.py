"""Filters, orderings and keyset cursors of ``data/list`` and ``data/count``, compiled to
SQLAlchemy Core expressions: every field checked against the table's columns, every value a
bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from archivist.data.schema import TableInfo
from archivist.data.values import decode_value, decode_values
from archivist.errors import InvalidParams

OPERATORS: Final = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists")
MAX_IN_VALUES: Final = 100_000

Direction = Literal["asc", "desc"]


def one_of(
    info: TableInfo, column: ColumnElement[Any], values: Sequence[object], *, negate: bool = False
) -> ColumnElement[bool]:
    """``column IN (values)`` (``NOT IN`` with ``negate``), values bound.

    On PostgreSQL as ``= ANY(array)`` (``<> ALL``): one array parameter, so the statement's
    text is the same whatever the list, compiled once by SQLAlchemy and parsed once by
    psycopg, instead of one placeholder per value rendered and parsed on every call.
    """
    if info.dialect_name == "postgresql":
        from sqlalchemy.dialects import postgresql  # loaded with the engine already

        array = sa.bindparam(None, list(values), type_=postgresql.ARRAY(column.type))
        return column != sa.all_(array) if negate else column == sa.any_(array)
    return column.not_in(values) if negate else column.in_(values)


KEY_CHUNK: Final = 5_000
"""Keys one statement names at most (its bound parameters, or an array's elements): well
under every driver's limit (SQLite 32766, PostgreSQL 65535); longer lists go in chunks."""

_T = TypeVar("_T")


def chunks(values: Sequence[_T], size: int = KEY_CHUNK) -> Iterator[Sequence[_T]]:
    """``values`` in consecutive chunks of at most ``size``."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


class SortKey(msgspec.Struct, frozen=True):
    field: str
    direction: Direction = "asc"


def compile_filter(info: TableInfo, spec: object) -> ColumnElement[bool]:
    """``{field: value}`` (equality; null means IS NULL) or ``{field: {"$op": value, ...}}``,
    all conditions joined with AND."""
    if spec is None:
        return sa.true()
    if not isinstance(spec, Mapping):
        raise InvalidParams("filter: must be a JSON object")
    info.codec.check_fields(spec.keys())
    conditions = [_operator(info, name, op, operand) for name, op, operand in terms(spec)]
    return sa.and_(sa.true(), *conditions)


def terms(spec: Mapping[str, object]) -> Iterator[tuple[str, str, object]]:
    """Each condition of a filter as (field, operator, operand): ``{field: value}`` is
    ``$eq``. The engines' compilers (SQL here, Iceberg in `archivist.data.iceberg.filters`)
    share this reading of the language."""
    for name, condition in spec.items():
        if (
            isinstance(condition, Mapping)
            and condition
            and all(isinstance(key, str) and key.startswith("$") for key in condition)
        ):
            for op, operand in condition.items():
                yield name, op, operand
        elif isinstance(condition, Mapping | list):
            raise InvalidParams(
                f"filter.{name}: expected a value or an object of operators ({' '.join(OPERATORS)})"
            )
        else:
            yield name, "$eq", condition


def check_comparison(name: str, op: str, operand: object) -> None:
    """Refuse an unknown operator, or a list or an object where one value is due."""
    if op not in OPERATORS:
        raise InvalidParams(
            f"filter.{name}: unknown operator {op[:32]!r}; use {' '.join(OPERATORS)}"
        )
    if isinstance(operand, Mapping | list):
        raise InvalidParams(f"filter.{name}.{op}: expected a single value")


def _operator(info: TableInfo, name: str, op: str, operand: object) -> ColumnElement[bool]:
    column = info.table.c[name]
    spec = info.spec(name)
    where = f"filter.{name}."
    if op == "$exists":
        if not isinstance(operand, bool):
            raise InvalidParams(f"filter.{name}.$exists: expected true or false")
        return column.is_not(None) if operand else column.is_(None)
    if op in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise InvalidParams(f"filter.{name}.{op}: expected a list")
        if len(operand) > MAX_IN_VALUES:
            raise InvalidParams(f"filter.{name}.{op}: at most {MAX_IN_VALUES} values")
        values = decode_values(spec, operand, where=where)
        present = [value for value in values if value is not None]
        has_null = len(present) != len(values)
        if op == "$in":
            found = one_of(info, column, present) if present else sa.false()
            return sa.or_(found, column.is_(None)) if has_null else found
        # Like MongoDB: $nin also matches rows where the field is null, unless null is listed.
        missing = one_of(info, column, present, negate=True) if present else sa.true()
        if has_null:
            return sa.and_(missing, column.is_not(None))
        return sa.or_(missing, column.is_(None))
    check_comparison(name, op, operand)
    value = decode_value(spec, operand, where=where)
    if op == "$eq":
        return column.is_(None) if value is None else column == value
    if op == "$ne":
        # Like MongoDB: $ne matches rows where the field is null too.
        return column.is_not(None) if value is None else sa.or_(column != value, column.is_(None))
    if value is None:
        raise InvalidParams(f"filter.{name}.{op}: cannot compare with null")
    comparisons = {"$gt": column > value, "$gte": column >= value, "$lt": column < value}
    return comparisons.get(op, column <= value)


def sort_keys(
    info: TableInfo, order_by: Sequence[SortKey] | None, default_field: str | None
) -> list[SortKey]:
    """The requested order (or the collection's declared order), then the primary key."""
    keys = list(order_by) if order_by else []
    if not keys and default_field is not None:
        keys = [SortKey(default_field, "asc")]
    info.codec.check_fields((key.field for key in keys), what="orderBy field")
    seen: set[str] = set()
    unique: list[SortKey] = []
    for key in keys:
        if key.field not in seen:
            seen.add(key.field)
            unique.append(key)
    if info.pk not in seen:
        unique.append(SortKey(info.pk, unique[0].direction if unique else "asc"))
    return unique


def order_clauses(
    info: TableInfo, keys: Sequence[SortKey], *, reverse: bool = False
) -> list[ColumnElement[object]]:
    """ORDER BY clauses. NULLs sort first ascending and last descending on every engine."""
    clauses: list[ColumnElement[object]] = []
    for key in keys:
        column = info.table.c[key.field]
        descending = (key.direction == "desc") != reverse
        if info.spec(key.field).nullable and key.field != info.pk:
            rank = sa.case((column.is_(None), 0), else_=1)
            clauses.append(rank.desc() if descending else rank.asc())
        clauses.append(column.desc() if descending else column.asc())
    return clauses


def keyset_condition(
    info: TableInfo,
    keys: Sequence[SortKey],
    values: Sequence[object],
    *,
    after: bool,
) -> ColumnElement[bool]:
    """Rows strictly after (or before) the position ``values`` on the first ``len(values)``
    sort keys, in the listing order: (k1 > v1) OR (k1 = v1 AND k2 > v2) ..."""
    alternatives: list[ColumnElement[bool]] = []
    equal_so_far: list[ColumnElement[bool]] = []
    for key, value in zip(keys, values, strict=False):
        column = info.table.c[key.field]
        nullable = info.spec(key.field).nullable
        forward = (key.direction == "asc") == after
        alternatives.append(sa.and_(*equal_so_far, _beyond(column, value, forward, nullable)))
        equal_so_far.append(column.is_(None) if value is None else column == value)
    return sa.or_(*alternatives)


def _beyond(
    column: sa.ColumnClause[object] | sa.Column[object],
    value: object,
    greater: bool,
    nullable: bool,
) -> ColumnElement[bool]:
    """``column`` strictly greater (or smaller) than ``value`` where NULL is the smallest."""
    if value is None:
        return column.is_not(None) if greater else sa.false()
    if greater:
        return column > value
    return sa.or_(column < value, column.is_(None)) if nullable else column < value
