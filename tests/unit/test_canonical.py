"""The canonical text of values and rows (`transfer.canonical`): what each kind becomes, the
row form that no two different rows share, and the batch digest's independence of order.
The SQL each server computes is checked against these on real servers in
tests/integration/test_streamed.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import uuid
from decimal import Decimal

import pytest

from archivist.data.columns import ColumnSpec, Kind
from archivist.data.transfer import canonical

UTC = dt.UTC


def spec(kind: Kind, **kw: object) -> ColumnSpec:
    return ColumnSpec("c", kind, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "text"),
    [  # as PostgreSQL 15 writes float8 with extra_float_digits = 3 (checked on a server)
        (0.1 + 0.2, "0.30000000000000004"),
        (1e20, "1e+20"),
        (1e15, "1e+15"),
        (1e14, "100000000000000"),
        (123456789012345.6, "123456789012345.6"),
        (1.0, "1"),
        (-1.5e-7, "-1.5e-07"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.2345678901234568e17, "1.2345678901234568e+17"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (0.0, "0"),
        (-0.0, "-0"),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
    ],
)
def test_a_float_is_written_as_postgresql_writes_it(value: float, text: str) -> None:
    assert canonical.float_text(value) == text
    if math.isfinite(value):
        assert float(text) == value  # exact: it reads back as the same float


@pytest.mark.parametrize(
    ("column", "value", "text"),
    [
        (spec(Kind.INTEGER), 2**63 - 1, "9223372036854775807"),
        (spec(Kind.DECIMAL, precision=12, scale=3), Decimal("1.500"), "1.5"),
        (spec(Kind.DECIMAL, precision=12, scale=3), Decimal("0.000"), "0"),
        (spec(Kind.DECIMAL, precision=12, scale=0), Decimal("100"), "100"),
        (spec(Kind.DECIMAL, precision=12, scale=3), Decimal("-12.050"), "-12.05"),
        (spec(Kind.BOOLEAN), True, "t"),
        (spec(Kind.BOOLEAN), 0, "f"),
        (spec(Kind.DATE), dt.date(999, 2, 3), "0999-02-03"),
        (spec(Kind.TIME), dt.time(13, 5, 0, 250000), "13:05:00.250000"),
        (spec(Kind.TIME), dt.timedelta(hours=13, minutes=5), "13:05:00.000000"),
        (spec(Kind.DATETIME), dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02 03:04:05.000000"),
        (
            spec(Kind.DATETIME, timezone=True),
            dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2024-01-02 01:04:05.000006",
        ),
        (spec(Kind.BINARY), b"\x00\xff", "00ff"),
        (spec(Kind.BINARY), memoryview(b""), ""),
        (spec(Kind.UUID), uuid.UUID(int=255), "00000000-0000-0000-0000-0000000000ff"),
        (
            spec(Kind.UUID),
            "ABCDEF00-0000-0000-0000-000000000000",
            "abcdef00-0000-0000-0000-000000000000",
        ),
        (spec(Kind.JSON), '{"a": 1}', '{"a": 1}'),
        (spec(Kind.TEXT), "", ""),
        (spec(Kind.TEXT), None, None),
    ],
)
def test_each_kind_has_one_canonical_text(column: ColumnSpec, value: object, text: str) -> None:
    assert canonical.value_text(column, value) == text


def test_a_rows_text_tells_null_from_empty_and_cannot_be_read_two_ways() -> None:
    specs = [spec(Kind.TEXT), spec(Kind.TEXT)]
    texts = {
        canonical.row_text(specs, row)
        for row in [(None, ""), ("", None), ("", ""), (None, None), ("~", ""), (",", ""), ("", ",")]
    }
    assert len(texts) == 7
    assert canonical.row_text(specs, ("a,1:b", None)) == "5:a,1:b,~"
    mixed = [spec(Kind.INTEGER), spec(Kind.DATE), spec(Kind.BOOLEAN), spec(Kind.JSON)]
    assert canonical.row_text(mixed, (7, None, False, "{}")) == "7,~,f,2:{}"
    # Characters, not bytes: every engine counts them alike.
    assert canonical.row_text(specs, ("😀", "é")) == "1:😀,1:é"


def test_a_batch_digest_does_not_depend_on_row_order_but_on_every_row() -> None:
    specs = [spec(Kind.INTEGER), spec(Kind.TEXT)]
    rows = [(1, "a"), (2, "b"), (3, None)]
    digest, count = canonical.digest_rows(specs, rows)
    assert count == 3
    assert canonical.digest_rows(specs, list(reversed(rows))) == (digest, 3)
    assert canonical.digest_rows(specs, rows[:2])[0] != digest
    assert canonical.digest_rows(specs, [(1, "a"), (2, "b"), (3, "")])[0] != digest
    assert canonical.digest_rows(specs, [])[0] == canonical.EMPTY_DIGEST
    hashes = [hashlib.md5(canonical.row_text(specs, r).encode()).hexdigest() for r in rows]
    assert canonical.digest_of_hashes(hashes) == digest


def test_a_digest_whose_joined_hashes_were_cut_matches_no_batch() -> None:
    assert canonical.read_digest(("x" * 32, 2, 64)) == ("x" * 32, 2)
    assert canonical.read_digest((b"y" * 32, 2, 40))[0] == "cut"
    assert canonical.read_digest((None, 0, None)) == (canonical.EMPTY_DIGEST, 0)
