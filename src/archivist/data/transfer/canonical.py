"""The canonical text of a row, the same on every engine, and a batch's digest over it:
each database computes it in SQL (PostgreSQL, MariaDB/MySQL) or Python computes it from the
rows it read (SQLite), so two databases on different servers or engines can tell whether
they hold the same rows without sending the rows to one another.

A value's text depends on its kind only (docs/values.md): integers in decimal; decimals
exact, without trailing zeros; floats in their shortest round-trip form, written as
PostgreSQL writes them (``1e+20``, ``NaN``); booleans ``t``/``f``; dates ``YYYY-MM-DD``;
times ``HH:MM:SS.ffffff``; timestamps ``YYYY-MM-DD HH:MM:SS.ffffff``, instants in UTC; bytes
in lower-case hex; UUIDs in lower case; text and JSON as stored. A row's text is its values
in the source's column order joined by commas, NULL as ``~``, text, JSON and UUIDs as
``<length>:<text>``: the lengths make it unambiguous (NULL is not the empty string, and no
text can pass for two values), and the other kinds' texts never hold a comma or a ``~``.
A batch's digest is the MD5 of its rows' MD5s, sorted, so it does
not depend on how each engine orders the keys.

Equal digests mean identical rows. Different ones mean "compare row by row" (the values,
through the JSON encoding): texts may differ where values do not (a JSON document
re-spelled by PostgreSQL ``jsonb``, a float MariaDB writes as ``1e20``), never the other way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Final

from archivist.data.columns import ColumnSpec, Kind, decimal_text

NULL_TEXT: Final = "~"
"""A NULL's place in a row's text: never a value's text."""

PREFIXED: Final = frozenset({Kind.STRING, Kind.TEXT, Kind.OTHER, Kind.JSON, Kind.UUID})
"""Kinds whose text may hold any character, written after its length; and UUIDs, which
an archive may hold as text (both sides must write a value alike)."""

FLOAT_FIXED: Final = range(-4, 15)
"""Decimal exponents a float is written without an exponent for (PostgreSQL's ``float8out``
with ``extra_float_digits`` > 0: exponents below -4 or from 15 on are written ``1e+15``)."""


# --- Python ---------------------------------------------------------------------------------


def float_text(value: float) -> str:
    """A float as PostgreSQL writes it: the shortest text that reads back as the same float
    (Python's ``repr`` finds those digits), without an exponent from 1e-4 up to 1e15."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    power = exponent + len(digits) - 1  # the exponent of the first digit
    prefix = "-" if sign else ""
    if power not in FLOAT_FIXED:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    if power < 0:
        return f"{prefix}0.{'0' * (-power - 1)}{text}"
    if len(text) <= power + 1:
        return prefix + text + "0" * (power + 1 - len(text))
    return f"{prefix}{text[: power + 1]}.{text[power + 1 :]}"


TIMESTAMP_TEXT: Final = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", re.ASCII)
"""A timestamp's canonical text (UTC wall time for instants): how SQLite stores
SQLAlchemy's timestamps, so a value read as stored in this form is its own text."""


def _datetime_text(value: object) -> str:
    if type(value) is str:  # read as stored and found in this very form (`streamed`)
        return value
    assert isinstance(value, dt.datetime)
    if value.tzinfo is not None:
        if value.tzinfo is not dt.UTC:  # archivist reads instants in UTC already
            value = value.astimezone(dt.UTC)
        value = value.replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def _time_text(value: object) -> str:
    if isinstance(value, dt.timedelta):  # a MariaDB TIME read without conversion
        value = (dt.datetime.min + value).time()
    assert isinstance(value, dt.time)
    return value.replace(tzinfo=None).isoformat("microseconds")


def _date_text(value: object) -> str:
    if isinstance(value, dt.datetime):
        value = value.date()
    assert isinstance(value, dt.date)
    return value.isoformat()


def _decimal_text(value: object) -> str:
    if isinstance(value, float):
        value = Decimal(repr(value))
    return decimal_text(value if isinstance(value, Decimal) else Decimal(str(value)))


def _binary_text(value: object) -> str:
    data: bytes = bytes(value)  # type: ignore[call-overload]
    return data.hex()


_TEXTS: Final[dict[Kind, Callable[[object], str]]] = {
    Kind.INTEGER: lambda value: str(int(value)),  # type: ignore[call-overload]
    Kind.FLOAT: lambda value: float_text(float(value)),  # type: ignore[arg-type]
    Kind.DECIMAL: _decimal_text,
    Kind.BOOLEAN: lambda value: "t" if value else "f",
    Kind.STRING: str,
    Kind.TEXT: str,
    Kind.OTHER: str,
    Kind.DATE: _date_text,
    Kind.TIME: _time_text,
    Kind.DATETIME: _datetime_text,
    Kind.BINARY: _binary_text,
    Kind.JSON: str,  # read as its stored text
    Kind.UUID: lambda value: str(value).lower(),
}


def value_text(spec: ColumnSpec, value: object) -> str | None:
    """The canonical text of one value read through archivist's types (JSON as its stored
    text); None for NULL."""
    return None if value is None else _TEXTS[spec.kind](value)


def row_text(specs: Sequence[ColumnSpec], row: Sequence[object]) -> str:
    """A row's canonical text: its values' texts joined by commas, NULL as ``~``, text and
    JSON as ``<length>:<text>``."""
    return row_writer(specs)(row)


def row_writer(specs: Sequence[ColumnSpec]) -> Callable[[Sequence[object]], str]:
    """`row_text` for rows of ``specs``, with each column's way chosen once (a batch's
    digest in Python writes every value of every row)."""
    columns = [(_TEXTS[spec.kind], spec.kind in PREFIXED) for spec in specs]

    def write(row: Sequence[object]) -> str:
        parts = []
        for (text_of, prefixed), value in zip(columns, row, strict=True):
            if value is None:
                parts.append(NULL_TEXT)
                continue
            text = value if type(value) is str and text_of is str else text_of(value)
            parts.append(f"{len(text)}:{text}" if prefixed else text)
        return ",".join(parts)

    return write


def digest_of_hashes(hashes: Iterable[str]) -> str:
    """A batch's digest from its rows' MD5s (hex), in any order."""
    return hashlib.md5("".join(sorted(hashes)).encode("ascii")).hexdigest()


def digest_rows(specs: Sequence[ColumnSpec], rows: Iterable[Sequence[object]]) -> tuple[str, int]:
    """A batch's digest and row count, computed in Python (SQLite)."""
    write, md5 = row_writer(specs), hashlib.md5
    hashes = [md5(write(row).encode("utf-8")).hexdigest() for row in rows]
    return digest_of_hashes(hashes), len(hashes)


# --- SQL ------------------------------------------------------------------------------------


def _pg_value(spec: ColumnSpec, column: str) -> str:
    kind = spec.kind
    if kind is Kind.DECIMAL:
        return f"trim_scale({column})::text"
    if kind is Kind.BOOLEAN:
        return f"CASE WHEN {column} THEN 't' WHEN NOT {column} THEN 'f' END"  # NULL stays NULL
    if kind is Kind.DATE:
        return f"to_char({column}, 'YYYY-MM-DD')"
    if kind is Kind.TIME:
        return f"to_char(DATE '2000-01-01' + {column}, 'HH24:MI:SS.US')"
    if kind is Kind.DATETIME:
        at = f"{column} AT TIME ZONE 'UTC'" if spec.timezone else column
        return f"to_char({at}, 'YYYY-MM-DD HH24:MI:SS.US')"
    if kind is Kind.BINARY:
        return f"encode({column}, 'hex')"
    if kind is Kind.UUID:
        return f"lower({column}::text)"
    if kind in (Kind.TEXT, Kind.STRING):
        return column
    return f"{column}::text"  # integer, float (extra_float_digits = 3), JSON


def _mysql_value(spec: ColumnSpec, column: str) -> str:
    kind = spec.kind
    if kind is Kind.DECIMAL:
        text = f"CAST({column} AS CHAR)"
        return (
            f"IF(LOCATE('.', {text}) > 0, TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM {text})),"
            f" {text})"
        )
    if kind is Kind.BOOLEAN:
        return f"CASE WHEN {column} <> 0 THEN 't' WHEN {column} = 0 THEN 'f' END"
    if kind is Kind.DATE:
        return f"DATE_FORMAT({column}, '%%Y-%%m-%%d')"
    if kind is Kind.TIME:
        return f"TIME_FORMAT({column}, '%%H:%%i:%%s.%%f')"
    if kind is Kind.DATETIME:  # instants are stored as their UTC wall time; sessions in UTC
        return f"DATE_FORMAT({column}, '%%Y-%%m-%%d %%H:%%i:%%s.%%f')"
    if kind is Kind.BINARY:
        return f"LOWER(HEX({column}))"
    if kind is Kind.UUID:
        return f"LOWER(CAST({column} AS CHAR))"
    return f"CAST({column} AS CHAR)"  # integer, float, text, JSON


def row_text_sql(
    dialect_name: str, specs: Sequence[ColumnSpec], quote: Callable[[str], str]
) -> str:
    """SQL for `row_text` on PostgreSQL or MariaDB/MySQL (``%`` doubled for the driver's
    ``format`` marks); the columns named by ``quote``."""
    parts = []
    for spec in specs:
        column = quote(spec.name)
        if dialect_name == "postgresql":
            text = _pg_value(spec, column)
            if spec.kind in PREFIXED:
                text = f"length({text})::text || ':' || {text}"
        else:
            text = _mysql_value(spec, column)
            if spec.kind in PREFIXED:
                text = f"CONCAT(CHAR_LENGTH({text}), ':', {text})"
        parts.append(f"COALESCE({text}, '{NULL_TEXT}')")
    if dialect_name == "postgresql":
        return " || ',' || ".join(parts)  # no CONCAT_WS: a function takes at most 100 arguments
    return f"CONCAT_WS(',', {', '.join(parts)})"


def digest_sql(
    dialect_name: str, specs: Sequence[ColumnSpec], quote: Callable[[str], str], source: str
) -> str:
    """A statement answering (digest, rows, length of the joined hashes) over the rows that
    ``source`` (a FROM clause with its WHERE) names."""
    text = row_text_sql(dialect_name, specs, quote)
    if dialect_name == "postgresql":
        # string_agg is never cut. OFFSET 0 keeps the subquery from being merged into the
        # aggregate, which evaluated each row's text once per aggregate.
        return (
            "SELECT md5(string_agg(h, '' ORDER BY h)), count(*), 32 * count(*)"
            f' FROM (SELECT md5({text}) COLLATE "C" AS h FROM {source} OFFSET 0)'
            " AS archivist_rows"
        )
    # The joined hashes are bounded by the session's group_concat_max_len: its length is
    # read too, so a cut value is never taken for the batch's digest.
    return (
        "SELECT MD5(joined), counted, LENGTH(joined) FROM (SELECT GROUP_CONCAT(h ORDER BY h"
        " SEPARATOR '') AS joined, COUNT(*) AS counted FROM (SELECT"
        f" MD5(CONVERT({text} USING utf8mb4)) AS h FROM {source}) AS archivist_rows)"
        " AS archivist_joined"
    )


EMPTY_DIGEST: Final = hashlib.md5(b"").hexdigest()


def read_digest(row: Sequence[object]) -> tuple[str, int]:
    """(digest, rows) from a `digest_sql` row; a digest no batch has when the joined hashes
    were cut short."""
    digest, count, length = row
    rows = int(count or 0)  # type: ignore[call-overload]
    if rows == 0:
        return EMPTY_DIGEST, 0
    if int(length or 0) != 32 * rows:  # type: ignore[call-overload]
        return "cut", rows
    text = digest.decode("ascii") if isinstance(digest, bytes) else str(digest)
    return text, rows
