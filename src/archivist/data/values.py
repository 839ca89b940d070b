"""The JSON encoding of column values (docs/values.md), driven by each column's portable kind.

Encoding is deterministic: the same value read from any engine encodes to the same JSON, so a
copy can be verified by comparing items. Decoding parses the JSON form back for binding.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final, TypeAlias, cast

from archivist.data.columns import ColumnSpec, Kind, decimal_text
from archivist.errors import InvalidParams, UnknownField

JSONValue: TypeAlias = object
JSONObject: TypeAlias = dict[str, object]

MAX_SAFE_INTEGER: Final = 2**53 - 1

Encoder: TypeAlias = Callable[[object], JSONValue]
Decoder: TypeAlias = Callable[[object], object]


class _Invalid(Exception):
    """A JSON value that does not fit its column; becomes InvalidParams naming the field."""


# --- encoding: database value -> JSON -------------------------------------------------------


def _enc_integer(value: object) -> JSONValue:
    number = int(value)  # type: ignore[call-overload]
    return number if -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER else str(number)


def _enc_float(value: object) -> JSONValue:
    number = float(value)  # type: ignore[arg-type]
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return number


def _enc_decimal(value: object) -> JSONValue:
    if isinstance(value, float):
        value = Decimal(repr(value))
    return decimal_text(value if isinstance(value, Decimal) else Decimal(str(value)))


def _enc_bool(value: object) -> JSONValue:
    return bool(value)


def _enc_text(value: object) -> JSONValue:
    return value if isinstance(value, str) else str(value)


def _enc_date(value: object) -> JSONValue:
    if isinstance(value, dt.datetime):
        value = value.date()
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _enc_time(value: object) -> JSONValue:
    if isinstance(value, dt.timedelta):  # a MySQL TIME read without conversion
        value = (dt.datetime.min + value).time()
    if isinstance(value, dt.time):
        return value.replace(tzinfo=None).isoformat()
    return str(value)


def _enc_naive_datetime(value: object) -> JSONValue:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.isoformat()
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat()
    return str(value)


def _enc_aware_datetime(value: object) -> JSONValue:
    if isinstance(value, dt.datetime):
        if value.tzinfo is dt.UTC:  # the usual case (UTCDateTime reads): no conversion
            return value.isoformat()
        aware = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
        return aware.astimezone(dt.UTC).isoformat()
    return str(value)


def _enc_binary(value: object) -> JSONValue:
    return base64.b64encode(bytes(value)).decode("ascii")  # type: ignore[call-overload]


def _enc_json(value: object) -> JSONValue:
    return value


def _enc_uuid(value: object) -> JSONValue:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(value)


_ENCODERS: Final[dict[Kind, Encoder]] = {
    Kind.INTEGER: _enc_integer,
    Kind.FLOAT: _enc_float,
    Kind.DECIMAL: _enc_decimal,
    Kind.BOOLEAN: _enc_bool,
    Kind.STRING: _enc_text,
    Kind.TEXT: _enc_text,
    Kind.DATE: _enc_date,
    Kind.TIME: _enc_time,
    Kind.BINARY: _enc_binary,
    Kind.JSON: _enc_json,
    Kind.UUID: _enc_uuid,
    Kind.OTHER: _enc_text,
}


def encoder_for(spec: ColumnSpec) -> Encoder:
    if spec.kind is Kind.DATETIME:
        return _enc_aware_datetime if spec.timezone else _enc_naive_datetime
    return _ENCODERS[spec.kind]


def encode_value(spec: ColumnSpec, value: object) -> JSONValue:
    """The JSON form of one database value of column ``spec``."""
    return None if value is None else encoder_for(spec)(value)


# --- decoding: JSON -> value to bind --------------------------------------------------------


def _dec_integer(value: object) -> object:
    if isinstance(value, bool):
        raise _Invalid("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit() and text.isascii():
            return int(text)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Invalid(f"expected an integer, got {_show(value)}")


_FLOAT_WORDS: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _dec_float(value: object) -> object:
    if isinstance(value, bool):
        raise _Invalid("expected a number, got a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value in _FLOAT_WORDS:
        return _FLOAT_WORDS[value]
    if isinstance(value, Decimal):
        return float(value)
    raise _Invalid(f"expected a number, got {_show(value)}")


def _dec_decimal(value: object) -> object:
    if isinstance(value, bool):
        raise _Invalid("expected a decimal, got a boolean")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            pass
    raise _Invalid(f"expected a decimal string, got {_show(value)}")


def _dec_bool(value: object) -> object:
    if isinstance(value, bool):
        return value
    raise _Invalid(f"expected a boolean, got {_show(value)}")


def _dec_text(value: object) -> object:
    if isinstance(value, str):
        return value
    if isinstance(value, uuid.UUID):  # a UUID archived into a text column
        return str(value)
    raise _Invalid(f"expected a string, got {_show(value)}")


def _dec_date(value: object) -> object:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise _Invalid(f"expected a date YYYY-MM-DD, got {_show(value)}")


def _dec_time(value: object) -> object:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, str):
        try:
            parsed = dt.time.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                return parsed
    raise _Invalid(f"expected a time HH:MM:SS[.ffffff], got {_show(value)}")


def _parse_datetime(value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    raise _Invalid(f"expected an ISO 8601 timestamp, got {_show(value)}")


def _dec_naive_datetime(value: object) -> object:
    parsed = _parse_datetime(value)
    if parsed.tzinfo is not None:
        raise _Invalid(f"expected a timestamp without time zone, got {_show(value)}")
    return parsed


def _dec_aware_datetime(value: object) -> object:
    parsed = _parse_datetime(value)
    if parsed.tzinfo is None:
        raise _Invalid(f"expected a timestamp with a UTC offset, got {_show(value)}")
    return parsed.astimezone(dt.UTC)


def _dec_binary(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise _Invalid(f"expected base64 text, got {_show(value)}")


def _dec_json(value: object) -> object:
    return value


def _dec_uuid(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise _Invalid(f"expected a UUID string, got {_show(value)}")


_DECODERS: Final[dict[Kind, Decoder]] = {
    Kind.INTEGER: _dec_integer,
    Kind.FLOAT: _dec_float,
    Kind.DECIMAL: _dec_decimal,
    Kind.BOOLEAN: _dec_bool,
    Kind.STRING: _dec_text,
    Kind.TEXT: _dec_text,
    Kind.DATE: _dec_date,
    Kind.TIME: _dec_time,
    Kind.BINARY: _dec_binary,
    Kind.JSON: _dec_json,
    Kind.UUID: _dec_uuid,
    Kind.OTHER: _dec_text,
}


def decoder_for(spec: ColumnSpec) -> Decoder:
    if spec.kind is Kind.DATETIME:
        return _dec_aware_datetime if spec.timezone else _dec_naive_datetime
    return _DECODERS[spec.kind]


def decode_value(spec: ColumnSpec, value: object, *, where: str = "") -> object:
    """The Python value to bind for the JSON ``value`` of column ``spec``; InvalidParams if it
    does not fit. ``where`` prefixes the message (e.g. ``items[3].``)."""
    if value is None:
        return None
    try:
        return decoder_for(spec)(value)
    except _Invalid as exc:
        raise InvalidParams(f"{where}{spec.name}: {exc}") from None


def decode_values(spec: ColumnSpec, values: Iterable[object], *, where: str = "") -> list[object]:
    """`decode_value` of each of ``values`` (a key list, say), with one decoder."""
    decode = decoder_for(spec)
    try:
        return [None if value is None else decode(value) for value in values]
    except _Invalid as exc:
        raise InvalidParams(f"{where}{spec.name}: {exc}") from None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- rows -----------------------------------------------------------------------------------


class RowCodec:
    """Encodes rows and decodes items of one table, with one encoder/decoder per column."""

    def __init__(self, specs: Sequence[ColumnSpec], table_name: str) -> None:
        self.table_name = table_name
        self.specs = {spec.name: spec for spec in specs}
        self._encoders = {spec.name: encoder_for(spec) for spec in specs}
        self._decoders = {spec.name: decoder_for(spec) for spec in specs}

    def encode_field(self, name: str, value: object) -> JSONValue:
        """The JSON form of one value of column ``name``."""
        return None if value is None else self._encoders[name](value)

    def encode_column(self, name: str, values: Iterable[object]) -> list[JSONObject]:
        """Encode the values of one column as rows of that column alone."""
        encode = self._encoders[name]
        if encode is _enc_integer:
            numbers = list(values)
            # Python ints in JSON's safe range are their own JSON value (a page's keys, say:
            # encoding them one by one was a measurable part of a batch's copy).
            if all(type(n) is int for n in numbers):
                ints = cast("list[int]", numbers)
                if not ints or -MAX_SAFE_INTEGER <= min(ints) <= max(ints) <= MAX_SAFE_INTEGER:
                    return [{name: n} for n in ints]
            values = numbers
        return [{name: None if value is None else encode(value)} for value in values]

    def encode_tuples(
        self, names: Sequence[str], rows: Iterable[Sequence[object]]
    ) -> list[JSONObject]:
        """Encode rows given as tuples in the order of ``names`` (the fast path of a listing)."""
        encoders = [self._encoders[name] for name in names]
        columns = list(zip(names, encoders, strict=True))
        return [
            {
                name: None if value is None else encode(value)
                for (name, encode), value in zip(columns, row, strict=True)
            }
            for row in rows
        ]

    def check_fields(self, fields: Iterable[str], *, what: str = "field") -> None:
        """Raise UnknownField for the first name that is not a column."""
        for name in fields:
            if name not in self.specs:
                raise UnknownField(
                    f"unknown {what} '{_clip(name)}': not a column of {self.table_name}"
                )

    def encode_row(
        self, row: Mapping[Any, object], fields: Sequence[str] | None = None
    ) -> JSONObject:
        names = fields if fields is not None else row.keys()
        out: JSONObject = {}
        for name in names:
            value = row[name]
            out[name] = None if value is None else self._encoders[name](value)
        return out

    def decode_item(self, item: Mapping[str, object], *, where: str = "") -> dict[str, object]:
        if not isinstance(item, Mapping):
            raise InvalidParams(f"{where.rstrip('.')}: an item must be a JSON object")
        decoders = self._decoders
        if not decoders.keys() >= item.keys():
            self.check_fields(item.keys())
        try:
            return {
                name: None if value is None else decoders[name](value)
                for name, value in item.items()
            }
        except _Invalid:
            # Say which field: the slow path names it.
            return {
                name: decode_value(self.specs[name], value, where=where)
                for name, value in item.items()
            }

    def normalize_item(self, item: Mapping[str, object], *, where: str = "") -> JSONObject:
        """The item as this table would encode it after a write (``"1.50"`` -> ``"1.5"``)."""
        decoded = self.decode_item(item, where=where)
        return {
            name: None if value is None else self._encoders[name](value)
            for name, value in decoded.items()
        }


def _clip(name: str) -> str:
    return name if len(name) <= 64 else name[:61] + "..."
