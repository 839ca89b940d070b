"""pyiceberg's row-filter expressions with plain signatures (its own are typed for pydantic's
validation, which mypy cannot follow): a column name and a literal value."""

from __future__ import annotations

from collections.abc import Iterable

from pyiceberg import expressions as _e
from pyiceberg.expressions import AlwaysFalse, AlwaysTrue, And, BooleanExpression, Not, Or

__all__ = [
    "AlwaysFalse",
    "AlwaysTrue",
    "And",
    "BooleanExpression",
    "Not",
    "Or",
    "eq",
    "ge",
    "gt",
    "is_in",
    "is_null",
    "le",
    "lt",
    "not_in",
    "not_null",
]


def _made(kind: str, *args: object) -> BooleanExpression:
    """pyiceberg's expression class ``kind`` over ``args``, typed."""
    result: BooleanExpression = getattr(_e, kind)(*args)
    return result


def eq(name: str, value: object) -> BooleanExpression:
    return _made("EqualTo", name, value)


def gt(name: str, value: object) -> BooleanExpression:
    return _made("GreaterThan", name, value)


def ge(name: str, value: object) -> BooleanExpression:
    return _made("GreaterThanOrEqual", name, value)


def lt(name: str, value: object) -> BooleanExpression:
    return _made("LessThan", name, value)


def le(name: str, value: object) -> BooleanExpression:
    return _made("LessThanOrEqual", name, value)


def is_in(name: str, values: Iterable[object]) -> BooleanExpression:
    return _made("In", name, set(values))


def not_in(name: str, values: Iterable[object]) -> BooleanExpression:
    return _made("NotIn", name, set(values))


def is_null(name: str) -> BooleanExpression:
    return _made("IsNull", name)


def not_null(name: str) -> BooleanExpression:
    return _made("NotNull", name)
