"""pyiceberg's row-filter expressions with plain signatures (its own are typed for pydantic's
validation, which mypy cannot follow): a column name and a literal value."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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

_any: Any = _e


def eq(name: str, value: object) -> BooleanExpression:
    result: BooleanExpression = _any.EqualTo(name, value)
    return result


def gt(name: str, value: object) -> BooleanExpression:
    result: BooleanExpression = _any.GreaterThan(name, value)
    return result


def ge(name: str, value: object) -> BooleanExpression:
    result: BooleanExpression = _any.GreaterThanOrEqual(name, value)
    return result


def lt(name: str, value: object) -> BooleanExpression:
    result: BooleanExpression = _any.LessThan(name, value)
    return result


def le(name: str, value: object) -> BooleanExpression:
    result: BooleanExpression = _any.LessThanOrEqual(name, value)
    return result


def is_in(name: str, values: Iterable[object]) -> BooleanExpression:
    result: BooleanExpression = _any.In(name, set(values))
    return result


def not_in(name: str, values: Iterable[object]) -> BooleanExpression:
    result: BooleanExpression = _any.NotIn(name, set(values))
    return result


def is_null(name: str) -> BooleanExpression:
    result: BooleanExpression = _any.IsNull(name)
    return result


def not_null(name: str) -> BooleanExpression:
    result: BooleanExpression = _any.NotNull(name)
    return result
