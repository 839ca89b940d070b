"""A policy's age column: which columns can hold an age, and a cutoff instant in the column's
JSON form, the value a task's filter compares with (``{column: {"$lt": value}}``).

Text timestamps (SQLite applications store ISO-8601 text, and SQLite keeps DATETIME and
DATE as text) are compared as text, which orders them by time only when every value has
one layout: the column's values are checked before each task, and a column that mixes
layouts is refused rather than half-archived (docs/configuration.md).
"""

from __future__ import annotations

import datetime as dt
import math

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from archivist.data.columns import Kind
from archivist.data.schema import TableInfo
from archivist.data.values import encode_value
from archivist.errors import SchemaError

TEXT_KINDS = frozenset({Kind.STRING, Kind.TEXT})


def age_problem(info: TableInfo, column: str, time_unit: str | None) -> str | None:
    """Why ``column`` cannot hold an age (with ``time_unit``), or None."""
    if column not in info.column_names:
        return f"column '{column}' does not exist in table {info.name}"
    kind = info.spec(column).kind
    if kind is Kind.INTEGER:
        if time_unit is None:
            return (
                f"column '{column}' holds integers: say whether they are epoch seconds or "
                'milliseconds with time_unit = "s" or "ms"'
            )
        return None
    if kind in (Kind.DATETIME, Kind.DATE) or kind in TEXT_KINDS:
        if time_unit is not None:
            return f"time_unit is for integer columns; column '{column}' is {kind}"
        return None
    return (
        f"column '{column}' is {kind}: an age is read from a timestamp, DATETIME or DATE "
        "column, an integer of epoch seconds or milliseconds (with time_unit), or ISO-8601 "
        "text"
    )


def cutoff_value(
    connection: Connection, info: TableInfo, column: str, time_unit: str | None, cutoff: dt.datetime
) -> object:
    """``cutoff`` (aware, UTC) as a value of ``column``'s JSON form: a row is older when its
    value is below it. A DATE row is older when its whole day is before the cutoff's day; a
    timestamp without time zone is read as UTC."""
    spec = info.spec(column)
    cutoff = cutoff.astimezone(dt.UTC)
    if spec.kind is Kind.INTEGER:
        scale = 1000 if time_unit == "ms" else 1
        return math.ceil(cutoff.timestamp() * scale)  # v < ceil(t) <=> v < t, for integers
    stored_as_text = info.dialect_name == "sqlite" and spec.kind in (Kind.DATETIME, Kind.DATE)
    if spec.kind in TEXT_KINDS or stored_as_text:
        separator = text_layout(connection, info, column)
        if spec.kind is Kind.DATETIME and separator == "T":
            raise SchemaError(
                f"column '{column}' of {info.name} holds DATETIME values written as "
                "'YYYY-MM-DDTHH:MM:SS', which SQLite compares as text with the cutoff "
                "SQLAlchemy writes ('YYYY-MM-DD HH:MM:SS'): declare the column TEXT, or store "
                "'YYYY-MM-DD HH:MM:SS'"
            )
        if spec.kind in TEXT_KINDS:
            if separator is None:
                return cutoff.date().isoformat()
            return cutoff.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
    if spec.kind is Kind.DATE:
        return cutoff.date().isoformat()
    value = cutoff if spec.timezone else cutoff.replace(tzinfo=None)
    return encode_value(spec, value)


def text_layout(connection: Connection, info: TableInfo, column: str) -> str | None:
    """The separator between date and time in ``column``'s ISO-8601 text ("T" or " "; None
    when every value is a date alone); SchemaError when values are of several layouts, not
    ISO-8601, or carry an offset other than UTC, since text would then not compare as time."""
    # As text, whatever the declared type (SQLite keeps DATETIME and DATE as text).
    col = sa.type_coerce(info.table.c[column], sa.Text())
    date_only = sa.and_(sa.func.length(col) == 10, col.like("____-__-__"))
    rest = sa.func.substr(col, 20)
    utc = sa.not_(sa.or_(sa.and_(rest.like("%+%"), rest.not_like("%+00:00")), rest.like("%-%")))
    with_t = sa.and_(col.like("____-__-__T__:__:__%"), utc)
    with_space = sa.and_(col.like("____-__-__ __:__:__%"), utc)

    def counted(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    row = connection.execute(
        sa.select(
            sa.func.count(col), counted(date_only), counted(with_t), counted(with_space)
        ).select_from(info.table)
    ).one()
    total, dates, ts, spaces = (int(value) for value in row)
    if dates + ts + spaces < total:
        example = connection.execute(
            sa.select(col)
            .where(col.is_not(None), sa.not_(sa.or_(date_only, with_t, with_space)))
            .limit(1)
        ).scalar()
        raise SchemaError(
            f"column '{column}' of {info.name}: {total - dates - ts - spaces} value(s) are not "
            f"ISO-8601 in UTC (e.g. {example!r}); an age is read from text only when every "
            "value is 'YYYY-MM-DD', 'YYYY-MM-DD HH:MM:SS[.ffffff]' or "
            "'YYYY-MM-DDTHH:MM:SS[.ffffff]' with no offset, Z or +00:00"
        )
    if ts and spaces:
        raise SchemaError(
            f"column '{column}' of {info.name} mixes 'YYYY-MM-DDTHH:MM:SS' ({ts} rows) and "
            f"'YYYY-MM-DD HH:MM:SS' ({spaces} rows): as text they do not sort by time, so "
            "no age can be read from it; rewrite them to one layout"
        )
    if ts:
        return "T"
    return " " if spaces else None
