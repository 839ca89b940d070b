"""The JSON value encoding (docs/values.md), without a database."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archivist.data.columns import ColumnSpec, Kind
from archivist.data.values import RowCodec, decode_value, decode_values, encode_value
from archivist.errors import InvalidParams, UnknownField

INT = ColumnSpec("n", Kind.INTEGER)
FLOAT = ColumnSpec("f", Kind.FLOAT)
DEC = ColumnSpec("d", Kind.DECIMAL, precision=38, scale=10)
AWARE = ColumnSpec("ts", Kind.DATETIME, timezone=True)
NAIVE = ColumnSpec("ts", Kind.DATETIME)
BIN = ColumnSpec("b", Kind.BINARY)


@pytest.mark.parametrize(
    ("spec", "value", "encoded"),
    [
        (INT, 2**53 - 1, 2**53 - 1),
        (INT, 2**53, "9007199254740992"),
        (INT, -(2**63), "-9223372036854775808"),
        (FLOAT, math.nan, "NaN"),
        (FLOAT, -math.inf, "-Infinity"),
        (DEC, Decimal("1.5000000000"), "1.5"),
        (DEC, Decimal("100"), "100"),
        (DEC, Decimal("-0.000"), "0"),
        (
            AWARE,
            dt.datetime(2024, 1, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2024-01-01T00:00:00+00:00",
        ),
        (NAIVE, dt.datetime(2024, 1, 1, 0, 0, 0, 5), "2024-01-01T00:00:00.000005"),
        (ColumnSpec("d", Kind.DATE), dt.date(1999, 12, 31), "1999-12-31"),
        (ColumnSpec("t", Kind.TIME), dt.timedelta(hours=1, microseconds=7), "01:00:00.000007"),
        (BIN, b"\x00\xff", "AP8="),
        (ColumnSpec("j", Kind.JSON), {"a": [1, None]}, {"a": [1, None]}),
        (ColumnSpec("flag", Kind.BOOLEAN), 1, True),
    ],
)
def test_value_encodes_to_its_documented_json_form(
    spec: ColumnSpec, value: object, encoded: object
) -> None:
    assert encode_value(spec, value) == encoded


@given(st.integers(-(2**63), 2**63 - 1))
def test_integers_round_trip_through_json(n: int) -> None:
    wire = json.loads(json.dumps(encode_value(INT, n)))
    assert decode_value(INT, wire) == n


@given(st.floats())
def test_floats_round_trip_through_json(x: float) -> None:
    wire = json.loads(json.dumps(encode_value(FLOAT, x)))
    back = decode_value(FLOAT, wire)
    assert (math.isnan(x) and math.isnan(back)) or back == x  # type: ignore[arg-type]


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_decimals_encode_deterministically_and_exactly(d: Decimal) -> None:
    text = encode_value(DEC, d)
    assert isinstance(text, str) and "E" not in text.upper()
    assert Decimal(text) == d
    assert encode_value(DEC, decode_value(DEC, text)) == text


@given(st.datetimes(timezones=st.timezones()))
def test_aware_timestamps_encode_as_the_same_utc_instant(moment: dt.datetime) -> None:
    try:
        text = encode_value(AWARE, moment)
    except OverflowError:
        return
    assert isinstance(text, str) and text.endswith("+00:00")
    assert decode_value(AWARE, text) == moment.astimezone(dt.UTC)


@given(st.binary())
def test_binary_round_trips_as_base64(data: bytes) -> None:
    assert decode_value(BIN, encode_value(BIN, data)) == data


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (INT, True),
        (INT, "12a"),
        (FLOAT, "1.5"),
        (AWARE, "2024-01-01T00:00:00"),
        (NAIVE, "2024-01-01T00:00:00+01:00"),
        (BIN, "not base64!"),
        (ColumnSpec("flag", Kind.BOOLEAN), 1),
        (ColumnSpec("s", Kind.TEXT), 5),
    ],
)
def test_value_that_does_not_fit_its_column_is_invalid_params_naming_it(
    spec: ColumnSpec, value: object
) -> None:
    with pytest.raises(InvalidParams, match=spec.name):
        decode_value(spec, value)


def test_item_with_unknown_field_is_rejected() -> None:
    codec = RowCodec([INT], "t")
    with pytest.raises(UnknownField, match="'x'"):
        codec.decode_item({"n": 1, "x": 2})


@given(st.lists(st.one_of(st.none(), st.integers(), st.text(), st.floats(), st.booleans())))
def test_decode_values_is_decode_value_of_each_or_its_first_error(values: list[object]) -> None:
    """A key list is decoded with one decoder: the same values, or the error the first
    value that does not fit would raise on its own."""
    expected: list[object] = []
    error: str | None = None
    for value in values:
        try:
            expected.append(decode_value(INT, value, where="ids."))
        except InvalidParams as exc:
            error = exc.message
            break
    if error is None:
        assert decode_values(INT, values, where="ids.") == expected
    else:
        with pytest.raises(InvalidParams) as raised:
            decode_values(INT, values, where="ids.")
        assert raised.value.message == error
        assert raised.value.message.startswith("ids.")


@given(
    st.lists(
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.integers(-(2**53), 2**53),
            st.none(),
            st.booleans(),
        )
    )
)
def test_a_column_of_integers_encodes_as_each_value_alone(values: list[object]) -> None:
    """`RowCodec.encode_column` (a copy's keys) answers what encoding each value on its own
    does, whether or not every value is a plain int in JSON's safe range."""
    codec = RowCodec([INT], "t")
    expected = [{"n": None if value is None else encode_value(INT, value)} for value in values]
    assert codec.encode_column("n", iter(values)) == expected
