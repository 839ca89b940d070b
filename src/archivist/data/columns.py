"""Portable column kinds: what a reflected column holds, and the SQLAlchemy type that reads and
writes it exactly on each engine (SQLite, PostgreSQL, MariaDB/MySQL).

Engine differences live here (and in ``schema.py``), nowhere else.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from decimal import Decimal
from types import ModuleType
from typing import Any, Final, cast

import msgspec
import sqlalchemy as sa
from msgspec.structs import replace
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.type_api import _BindProcessorType, _ResultProcessorType
from sqlalchemy.types import TypeDecorator, TypeEngine, UserDefinedType

# Marks a DATETIME column on MariaDB/MySQL as holding UTC instants (a timestamp with time zone).
UTC_COMMENT: Final = "archivist:utc"
# SQLite keeps declared type names verbatim; this one marks UTC instants there.
SQLITE_TZ_TYPE: Final = "TIMESTAMP WITH TIME ZONE"
# SQLite's NUMERIC affinity rounds decimals to 15 digits; this declared type has TEXT
# affinity (it contains "TEXT"), so exact decimals are kept verbatim.
SQLITE_DECIMAL_TYPE: Final = "DECIMAL_TEXT"
# Indexable text on MariaDB: utf8mb4 keys may be at most 3072 bytes.
MYSQL_INDEXABLE_TEXT: Final = 768


class Kind(enum.StrEnum):
    INTEGER = "integer"
    FLOAT = "float"
    DECIMAL = "decimal"
    BOOLEAN = "boolean"
    STRING = "string"  # bounded length
    TEXT = "text"
    DATE = "date"
    TIME = "time"
    DATETIME = "datetime"
    BINARY = "binary"
    JSON = "json"
    UUID = "uuid"
    OTHER = "other"  # read as text, cannot be mirrored into an archive table


class ColumnSpec(msgspec.Struct, frozen=True):
    """One column, engine-neutral: enough to encode its values and to recreate it elsewhere."""

    name: str
    kind: Kind
    nullable: bool = True
    length: int | None = None  # STRING, BINARY
    precision: int | None = None  # DECIMAL
    scale: int | None = None  # DECIMAL
    int_bits: int = 64  # INTEGER: 16, 32 or 64
    timezone: bool = False  # DATETIME
    jsonb: bool = False  # JSON stored as PostgreSQL jsonb
    type_name: str = ""  # the engine's own name, for messages

    def describe(self) -> str:
        if self.kind is Kind.INTEGER:
            return f"integer({self.int_bits} bit)"
        if self.kind is Kind.DECIMAL:
            return f"decimal({self.precision}, {self.scale})"
        if self.kind in (Kind.STRING, Kind.BINARY) and self.length is not None:
            return f"{self.kind.value}({self.length})"
        if self.kind is Kind.DATETIME:
            return "datetime with time zone" if self.timezone else "datetime"
        return self.kind.value


# --- classification of reflected columns --------------------------------------------------

_SQLITE_DECL_RE: Final = re.compile(r"^\s*([A-Za-z_ ]+?)\s*(?:\((.*)\))?\s*$")


def classify(
    name: str,
    type_: TypeEngine[object],
    *,
    dialect_name: str,
    nullable: bool = True,
    comment: str | None = None,
    declared: str | None = None,
    json_checked: bool = False,
) -> ColumnSpec:
    """The portable spec of a reflected column.

    ``declared`` is SQLite's declared type text; ``json_checked`` says MariaDB guards the column
    with ``json_valid()`` (its JSON type is LONGTEXT with that check).
    """
    spec = ColumnSpec(
        name=name, kind=Kind.OTHER, nullable=nullable, type_name=str(type_.__class__.__name__)
    )
    if dialect_name == "sqlite" and declared is not None:
        match = _SQLITE_DECL_RE.match(declared)
        name_part = " ".join(match.group(1).upper().split()) if match else ""
        if name_part == SQLITE_TZ_TYPE:
            return replace(spec, kind=Kind.DATETIME, timezone=True, type_name=declared)
        if name_part == SQLITE_DECIMAL_TYPE and match:
            args = [int(a) for a in (match.group(2) or "").replace(" ", "").split(",") if a]
            precision = args[0] if args else None
            scale = args[1] if len(args) > 1 else (0 if args else None)
            return replace(
                spec, kind=Kind.DECIMAL, precision=precision, scale=scale, type_name=declared
            )
    is_mysql = dialect_name in ("mysql", "mariadb")
    if json_checked or isinstance(type_, sa.JSON):
        jsonb = dialect_name == "postgresql" and isinstance(type_, _postgresql().JSONB)
        return replace(spec, kind=Kind.JSON, jsonb=jsonb)
    if isinstance(type_, sa.Boolean) or (
        is_mysql
        and isinstance(type_, _mysql().TINYINT)
        and getattr(type_, "display_width", None) == 1
    ):
        return replace(spec, kind=Kind.BOOLEAN)
    if isinstance(type_, sa.Integer):
        return replace(spec, kind=Kind.INTEGER, int_bits=_int_bits(type_, dialect_name))
    if isinstance(type_, sa.Float):
        return replace(spec, kind=Kind.FLOAT)
    if isinstance(type_, sa.Numeric):
        return replace(spec, kind=Kind.DECIMAL, precision=type_.precision, scale=type_.scale)
    if isinstance(type_, sa.Uuid) or type(type_).__name__ == "UUID":
        return replace(spec, kind=Kind.UUID)
    if isinstance(type_, sa.Text | sa.Enum):
        return replace(spec, kind=Kind.TEXT)
    if isinstance(type_, sa.String):
        if type_.length is None:
            return replace(spec, kind=Kind.TEXT)
        return replace(spec, kind=Kind.STRING, length=type_.length)
    if isinstance(type_, sa.DateTime):
        aware = bool(type_.timezone) or comment == UTC_COMMENT
        if is_mysql and isinstance(type_, _mysql().TIMESTAMP):
            aware = True  # an instant, read in the session time zone, which is UTC
        return replace(spec, kind=Kind.DATETIME, timezone=aware)
    if isinstance(type_, sa.Date):
        return replace(spec, kind=Kind.DATE)
    if isinstance(type_, sa.Time):
        return replace(spec, kind=Kind.TIME)
    if isinstance(type_, sa.LargeBinary | sa.types._Binary):
        return replace(spec, kind=Kind.BINARY, length=getattr(type_, "length", None))
    return spec


def _postgresql() -> ModuleType:
    """PostgreSQL's types, imported on first use (not cheap): a configuration without
    PostgreSQL never pays for them (SQLAlchemy imports them with a PostgreSQL engine)."""
    from sqlalchemy.dialects import postgresql

    return postgresql


def _mysql() -> ModuleType:
    """MariaDB/MySQL's types, imported on first use, as PostgreSQL's are."""
    from sqlalchemy.dialects import mysql

    return mysql


def _int_bits(type_: sa.Integer, dialect_name: str) -> int:
    if dialect_name == "sqlite":
        return 64  # every SQLite INTEGER is a 64-bit integer
    if isinstance(type_, sa.BigInteger):
        return 64
    if isinstance(type_, sa.SmallInteger):
        return 16
    if dialect_name in ("mysql", "mariadb") and isinstance(type_, _mysql().TINYINT):
        return 16
    return 32


# --- types that read and write exactly -----------------------------------------------------


def decimal_text(value: Decimal) -> str:
    """The exact decimal as plain text without exponent or trailing zeros (``1.50`` -> ``1.5``)."""
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_zero():
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


class SQLiteDecimal(UserDefinedType[Decimal]):
    """An exact decimal on SQLite, stored as text in a ``DECIMAL_TEXT(p, s)`` column; reads
    also accept the numbers SQLite stores in plain DECIMAL/NUMERIC columns."""

    cache_ok = True

    def __init__(self, precision: int | None = None, scale: int | None = None) -> None:
        self.precision = precision
        self.scale = scale

    def get_col_spec(self, **kw: object) -> str:
        if self.precision is None:
            return SQLITE_DECIMAL_TYPE
        return f"{SQLITE_DECIMAL_TYPE}({self.precision}, {self.scale or 0})"

    def bind_processor(self, dialect: Dialect) -> _BindProcessorType[Decimal]:
        def process(value: Decimal | None) -> str | None:
            return None if value is None else decimal_text(value)

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> _ResultProcessorType[Decimal]:
        def process(value: object) -> Decimal | None:
            if value is None:
                return None
            # repr of a float is the shortest text that reads back as the same float, which is
            # the text SQLite converted from (it converts only when 15 digits keep it exact).
            return Decimal(repr(value) if isinstance(value, float) else str(value))

        return process


class SQLiteUTCDateTime(sqlite.DATETIME):
    """SQLite DATETIME storage under the declared type ``TIMESTAMP WITH TIME ZONE``."""

    __visit_name__ = "SQLITE_UTC_DATETIME"


@compiles(SQLiteUTCDateTime, "sqlite")
def _compile_sqlite_utc(type_: SQLiteUTCDateTime, compiler: object, **kw: object) -> str:
    return SQLITE_TZ_TYPE


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp with time zone everywhere: native on PostgreSQL, UTC in DATETIME(6) on
    MariaDB (column comment ``archivist:utc``) and in ``TIMESTAMP WITH TIME ZONE`` on SQLite.
    Reads always return aware datetimes in UTC."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[dt.datetime]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(_postgresql().TIMESTAMP(timezone=True))
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(_mysql().DATETIME(fsp=6))
        if dialect.name == "sqlite":
            return dialect.type_descriptor(SQLiteUTCDateTime())  # type: ignore[no-untyped-call]
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("a timestamp with time zone needs an offset")
        utc = value.astimezone(dt.UTC)
        return utc if dialect.name == "postgresql" else utc.replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def column_type(
    spec: ColumnSpec, dialect_name: str, *, indexed: bool = False
) -> TypeEngine[object]:
    """The SQLAlchemy type of ``spec`` on ``dialect_name``: used both for DDL and for reading
    and writing values, so what is written is what is read back."""
    is_mysql = dialect_name in ("mysql", "mariadb")
    mysql = _mysql() if is_mysql else None
    kind = spec.kind
    result: TypeEngine[Any]
    if kind is Kind.INTEGER:
        result = {16: sa.SmallInteger(), 32: sa.Integer()}.get(spec.int_bits, sa.BigInteger())
    elif kind is Kind.FLOAT:
        result = sqlite.REAL() if dialect_name == "sqlite" else sa.Double()
    elif kind is Kind.DECIMAL:
        if dialect_name == "sqlite":
            result = SQLiteDecimal(spec.precision, spec.scale)
        elif is_mysql and spec.precision is None:
            result = sa.Numeric(65, 30, asdecimal=True)
        else:
            result = sa.Numeric(spec.precision, spec.scale, asdecimal=True)
    elif kind is Kind.BOOLEAN:
        result = sa.Boolean(create_constraint=False)
    elif kind is Kind.STRING:
        result = sa.String(spec.length)
    elif kind is Kind.TEXT or kind is Kind.OTHER:
        if mysql is not None:
            result = sa.String(MYSQL_INDEXABLE_TEXT) if indexed else mysql.LONGTEXT()
        else:
            result = sa.Text()
    elif kind is Kind.DATE:
        result = sa.Date()
    elif kind is Kind.TIME:
        result = mysql.TIME(fsp=6) if mysql is not None else sa.Time()
    elif kind is Kind.DATETIME:
        if spec.timezone:
            result = UTCDateTime()
        else:
            result = mysql.DATETIME(fsp=6) if mysql is not None else sa.DateTime()
    elif kind is Kind.BINARY:
        if mysql is not None:
            result = mysql.VARBINARY(spec.length) if spec.length else mysql.LONGBLOB()
        else:
            result = sa.LargeBinary()
    elif kind is Kind.JSON:
        if dialect_name == "postgresql" and spec.jsonb:
            result = _postgresql().JSONB(none_as_null=True)
        else:
            result = sa.JSON(none_as_null=True)
    elif kind is Kind.UUID:
        result = sa.Uuid() if dialect_name == "postgresql" else sa.String(36)
    else:  # pragma: no cover - Kind is exhaustive
        raise AssertionError(kind)
    return cast(TypeEngine[object], result)


def column_comment(spec: ColumnSpec, dialect_name: str) -> str | None:
    """The comment that marks a column's meaning where the type cannot (MariaDB UTC)."""
    if spec.kind is Kind.DATETIME and spec.timezone and dialect_name in ("mysql", "mariadb"):
        return UTC_COMMENT
    return None
