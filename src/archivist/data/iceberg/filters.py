"""``data/list`` and ``data/count`` filters (`archivist.data.filters`' language) as pyiceberg
row filters, so scans prune files by their statistics and partitions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from archivist.data.columns import ColumnSpec, Kind
from archivist.data.filters import check_comparison, terms
from archivist.data.iceberg.expr import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    Not,
    Or,
    eq,
    ge,
    gt,
    is_in,
    is_null,
    le,
    lt,
    not_in,
    not_null,
)
from archivist.data.iceberg.types import to_arrow_value
from archivist.data.values import RowCodec, decode_value, encode_value
from archivist.errors import InvalidParams


def literal(spec: ColumnSpec, value: object) -> object:
    """A decoded value as a pyiceberg literal of its column: temporal values as their ISO
    text (which pyiceberg parses for its own type), the rest as the column holds them."""
    if spec.kind in (Kind.DATE, Kind.TIME, Kind.DATETIME):
        return encode_value(spec, value)
    return to_arrow_value(spec, value)


def row_filter(specs: Sequence[ColumnSpec], codec: RowCodec, spec: object) -> BooleanExpression:
    """The row filter of a ``filter`` param (None: every row)."""
    if spec is None:
        return AlwaysTrue()
    if not isinstance(spec, Mapping):
        raise InvalidParams("filter: must be a JSON object")
    codec.check_fields(spec.keys())
    by_name = {s.name: s for s in specs}
    result: BooleanExpression = AlwaysTrue()
    for name, op, operand in terms(spec):
        result = And(result, _operator(by_name[name], op, operand))
    return result


def _operator(spec: ColumnSpec, op: str, operand: object) -> BooleanExpression:
    name, where = spec.name, f"filter.{spec.name}."
    if op == "$exists":
        if not isinstance(operand, bool):
            raise InvalidParams(f"filter.{name}.$exists: expected true or false")
        return not_null(name) if operand else is_null(name)
    if op in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise InvalidParams(f"filter.{name}.{op}: expected a list")
        values = [decode_value(spec, value, where=where) for value in operand]
        present = {literal(spec, value) for value in values if value is not None}
        has_null = len(present) != len(values) or None in values
        if op == "$in":
            found: BooleanExpression = is_in(name, present) if present else AlwaysFalse()
            return Or(found, is_null(name)) if has_null else found
        missing: BooleanExpression = not_in(name, present) if present else AlwaysTrue()
        return And(missing, not_null(name)) if has_null else Or(missing, is_null(name))
    check_comparison(name, op, operand)
    value = decode_value(spec, operand, where=where)
    if op == "$eq":
        return is_null(name) if value is None else eq(name, literal(spec, value))
    if op == "$ne":
        if value is None:
            return not_null(name)
        return Or(Not(eq(name, literal(spec, value))), is_null(name))
    if value is None:
        raise InvalidParams(f"filter.{name}.{op}: cannot compare with null")
    bound = literal(spec, value)
    if op == "$gt":
        return gt(name, bound)
    if op == "$gte":
        return ge(name, bound)
    if op == "$lt":
        return lt(name, bound)
    return le(name, bound)
