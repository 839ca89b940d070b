"""Column kinds (`archivist.data.columns`) as Iceberg and Arrow types, and values between the
database's Python form and Arrow, exactly (docs/values.md, docs/coldtier.md).

Kinds Iceberg has a type for keep it (integers, decimals with their scale, instants, naive
timestamps, dates, times, bytes, booleans, text); JSON documents, UUIDs and decimals without
a precision of at most 38 are kept as their exact text. The kinds travel with the table
(property ``archivist.columns``), so reading a table back yields the source's own kinds.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any, Final

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    IcebergType,
    IntegerType,
    LongType,
    StringType,
    TimestampType,
    TimestamptzType,
    TimeType,
)

from archivist.data.columns import ColumnSpec, Kind, decimal_text
from archivist.errors import SchemaError

COLUMNS_PROPERTY: Final = "archivist.columns"
"""The table property holding each column's kind, as the source table had it."""
MAX_DECIMAL_PRECISION: Final = 38


def iceberg_type(spec: ColumnSpec) -> IcebergType:
    """The Iceberg type of a source column; SchemaError for a kind it cannot hold exactly."""
    kind = spec.kind
    if kind is Kind.INTEGER:
        return LongType() if spec.int_bits > 32 else IntegerType()
    if kind is Kind.FLOAT:
        return DoubleType()
    if kind is Kind.DECIMAL:
        if decimal_as_text(spec):
            return StringType()
        assert spec.precision is not None and spec.scale is not None
        return DecimalType(spec.precision, spec.scale)
    if kind is Kind.BOOLEAN:
        return BooleanType()
    if kind in (Kind.STRING, Kind.TEXT, Kind.JSON, Kind.UUID):
        return StringType()
    if kind is Kind.DATE:
        return DateType()
    if kind is Kind.TIME:
        return TimeType()
    if kind is Kind.DATETIME:
        return TimestamptzType() if spec.timezone else TimestampType()
    if kind is Kind.BINARY:
        return BinaryType()
    raise SchemaError(
        f"column {spec.name} ({spec.type_name or spec.kind.value}) has a type an Iceberg "
        "archive cannot hold exactly"
    )


def decimal_as_text(spec: ColumnSpec) -> bool:
    """A decimal Iceberg cannot type exactly (no precision, or more than 38 digits): kept as
    its exact text."""
    return (
        spec.precision is None
        or spec.scale is None
        or not 0 < spec.precision <= MAX_DECIMAL_PRECISION
        or not 0 <= spec.scale <= spec.precision
    )


def specs_property(specs: Iterable[ColumnSpec]) -> str:
    """The ``archivist.columns`` property of a table of these columns."""
    names, given = ColumnSpec.__struct_fields__, ColumnSpec.__struct_defaults__
    defaults = dict(zip(names[len(names) - len(given) :], given, strict=True))
    return json.dumps(
        [
            {
                k: v
                for k, v in msgspec.structs.asdict(spec).items()
                if k in ("name", "kind") or v != defaults[k]
            }
            for spec in specs
        ],
        separators=(",", ":"),
    )


def specs_of(text: str) -> list[ColumnSpec]:
    """The column specs an ``archivist.columns`` property holds."""
    specs = []
    for raw in json.loads(text):
        raw["kind"] = Kind(raw["kind"])
        specs.append(ColumnSpec(**raw))
    return specs


# --- values: database (Python) -> Arrow ------------------------------------------------------


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _uuid_text(value: object) -> str:
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def _decimal_text(value: object) -> str:
    return decimal_text(value if isinstance(value, Decimal) else Decimal(str(value)))


def _naive(value: object) -> object:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _aware(value: object) -> object:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _time(value: object) -> object:
    if isinstance(value, dt.timedelta):  # a MySQL TIME read without conversion
        return (dt.datetime.min + value).time()
    if isinstance(value, dt.time) and value.tzinfo is not None:
        return value.replace(tzinfo=None)
    return value


def _bytes(value: object) -> object:
    return bytes(value) if isinstance(value, bytearray | memoryview) else value


def to_arrow_value(spec: ColumnSpec, value: object) -> object:
    """One database value as the Arrow column of ``spec`` takes it."""
    if value is None:
        return None
    kind = spec.kind
    if kind is Kind.JSON:
        return _json_text(value)
    if kind is Kind.UUID:
        return _uuid_text(value)
    if kind is Kind.DECIMAL:
        if decimal_as_text(spec):
            return _decimal_text(value)
        return value if isinstance(value, Decimal) else Decimal(str(value))
    if kind is Kind.DATETIME:
        return _aware(value) if spec.timezone else _naive(value)
    if kind is Kind.TIME:
        return _time(value)
    if kind is Kind.BINARY:
        return _bytes(value)
    if kind is Kind.INTEGER:
        return int(value)  # type: ignore[call-overload]
    if kind is Kind.FLOAT:
        return float(value)  # type: ignore[arg-type]
    if kind is Kind.BOOLEAN:
        return bool(value)
    return value


def _converter(spec: ColumnSpec) -> Callable[[object], object] | None:
    """How a column's database values become Arrow's, or None where pyarrow takes them as
    they are (integers, floats, booleans, text, dates; datetimes, which pyarrow converts to
    UTC itself for a column with a time zone)."""
    kind = spec.kind
    if kind is Kind.JSON:
        return _json_text
    if kind is Kind.UUID:
        return _uuid_text
    if kind is Kind.DECIMAL:
        return _decimal_text if decimal_as_text(spec) else None
    if kind is Kind.TIME:
        return _time
    if kind is Kind.BINARY:
        return _bytes
    if kind is Kind.DATETIME and not spec.timezone:
        return _naive
    return None


def arrow_table(
    schema: pa.Schema, specs: Sequence[ColumnSpec], names: Sequence[str], rows: Sequence[Any]
) -> pa.Table:
    """Rows (tuples in ``names`` order) as an Arrow table of ``schema``; a value that does not
    fit its column exactly (a decimal with more digits than its scale) raises."""
    columns = [list(values) for values in zip(*rows, strict=True)] if rows else []
    return arrow_columns(schema, specs, names, columns or [[] for _ in names], len(rows))


def arrow_columns(
    schema: pa.Schema,
    specs: Sequence[ColumnSpec],
    names: Sequence[str],
    columns: Sequence[list[object]],
    count: int,
) -> pa.Table:
    """Columns of ``count`` values (in ``names`` order) as an Arrow table of ``schema``; a
    value that does not fit its column exactly (a decimal with more digits than its scale)
    raises."""
    position = {name: index for index, name in enumerate(names)}
    arrays = []
    for spec in specs:
        field = schema.field(spec.name)
        index = position.get(spec.name)
        if index is None:
            arrays.append(pa.nulls(count, field.type))
            continue
        values = columns[index]
        convert = _converter(spec)
        if convert is not None:
            values = [None if v is None else convert(v) for v in values]
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def stored_array(
    spec: ColumnSpec,
    type_: pa.DataType,
    values: Sequence[object],
    process: Callable[[object], object] | None,
    *,
    sqlite: bool,
) -> pa.Array:
    """A column as the driver returned it (``values``, before ``process``: the result
    processor SQLAlchemy applies) as an Arrow array of ``type_``: the same values that
    `arrow_columns` makes of the processed ones. From SQLite, timestamps are parsed column
    at a time (`_sqlite_timestamps`) and JSON documents go from their stored text to their
    compact text in one step (`_sqlite_json`)."""
    if sqlite and process is not None:
        if spec.kind is Kind.DATETIME:
            parsed = _sqlite_timestamps(values, type_)
            if parsed is not None:
                return parsed
        elif spec.kind is Kind.JSON:
            return pa.array(_sqlite_json(values, process), type=type_)
    typed = list(values) if process is None else [process(v) for v in values]
    convert = _converter(spec)
    if convert is not None:
        typed = [None if v is None else convert(v) for v in typed]
    return pa.array(typed, type=type_)


SQLITE_TIMESTAMP: Final = "%Y-%m-%d %H:%M:%S"
"""SQLAlchemy's SQLite DATETIME storage (``2024-01-01 00:00:05.357000``), as Arrow's
``strftime`` writes a microsecond timestamp (its ``%S`` has the fraction)."""


def _sqlite_timestamps(values: Sequence[object], type_: pa.DataType) -> pa.Array | None:
    """SQLite DATETIME text as Arrow timestamps, parsed by Arrow; None unless every value is
    text in SQLAlchemy's storage form exactly (each parsed value written back is its text),
    so that the result is what SQLAlchemy's processor reads, a stored naive value being
    UTC for a column with a time zone (`archivist.data.columns.UTCDateTime`)."""
    if not pa.types.is_timestamp(type_) or type_.unit != "us":
        return None
    if not all(type(v) is str or v is None for v in values):
        return None
    text = pa.array(values, type=pa.string())
    try:
        parsed = pc.cast(text, pa.timestamp("us"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    written = pc.strftime(parsed, format=SQLITE_TIMESTAMP)
    same = pc.equal(written, text)
    if same.null_count != text.null_count or not pc.all(same).as_py():
        return None
    return parsed.cast(type_)


def _sqlite_json(values: Sequence[object], process: Callable[[object], object]) -> list[str | None]:
    """SQLite JSON text as each document's compact text: decoded and encoded again by
    msgspec (a float's shortest exact form, ``1e16`` where json writes ``1e+16``); what
    msgspec refuses (NaN, a number beyond a double) goes through ``process`` and
    `_json_text`, as `arrow_columns` takes it."""
    decode, encode = msgspec.json.decode, msgspec.json.encode
    out: list[str | None] = []
    append = out.append
    for value in values:
        if value is None:
            append(None)
            continue
        try:
            document = decode(value)  # type: ignore[call-overload]
        except (msgspec.DecodeError, TypeError):
            document = process(value)
            append(None if document is None else _json_text(document))
            continue
        append(None if document is None else encode(document).decode())
    return out


# --- values: Arrow -> database (Python) ------------------------------------------------------


def from_arrow_values(spec: ColumnSpec, column: pa.ChunkedArray | pa.Array) -> list[object]:
    """An Arrow column's values in the Python form the source's codec encodes."""
    values: list[object] = column.to_pylist()
    kind = spec.kind
    if kind is Kind.JSON:
        return [None if v is None else _json_load(str(v)) for v in values]
    if kind is Kind.DECIMAL and decimal_as_text(spec):
        return [None if v is None else Decimal(str(v)) for v in values]
    return values


def _json_load(text: str) -> object:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def python_rows(table: pa.Table, specs: Sequence[ColumnSpec]) -> list[dict[str, object]]:
    """An Arrow table's rows as dicts of Python values, by the columns it has."""
    present = [spec for spec in specs if spec.name in table.column_names]
    columns = [from_arrow_values(spec, table.column(spec.name)) for spec in present]
    names = [spec.name for spec in present]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
