"""The buffer `transfer.mysql_load` sends for ``LOAD DATA LOCAL INFILE``: its text, no I/O."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from archivist.data.transfer import mysql_load


def test_the_buffer_escapes_what_load_data_reads_as_separators_and_hexes_bytes() -> None:
    """The file's text: tabs between fields, a newline after each row, NULL as ``\\N``,
    the text ``\\N`` escaped; binary columns as hex for ``UNHEX``; a value of an unknown
    type is `Unwritable` (the batch then goes by inserts)."""
    load = mysql_load.LoadData("`t`", ["id", "s", "b"], [False, False, True], lambda n: n)
    data = load.buffer([(1, "a\tb\nc\\d", b"\t\n"), (2, None, None), (3, "\\N", b"")])
    assert data == b"1\ta\\tb\\nc\\\\d\t090a\n2\t\\N\t\\N\n3\t\\\\N\t\n"
    assert "SET b = UNHEX(@archivist_2)" in load.template
    with pytest.raises(mysql_load.Unwritable):
        load.buffer([(1, object(), None)])


def test_values_are_written_as_pymysql_writes_them_in_an_insert() -> None:
    """Decimals without exponent, floats in their shortest round trip, booleans as 1/0,
    timestamps as their wall time with microseconds only when not zero, times too."""
    load = mysql_load.LoadData("`t`", ["a"] * 9, [False] * 9, lambda n: n)
    row = (
        Decimal("1E+2"),
        1e20,
        True,
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 2, 3, 4, 5, 60),
        dt.date(999, 1, 2),
        dt.time(1, 2, 3, 250000),
        dt.timedelta(hours=-1, seconds=1),
        -7,
    )
    assert load.buffer([row]).decode().split("\t") == [
        "100",
        "1e+20",
        "1",
        "2024-01-02 03:04:05",
        "2024-01-02 03:04:05.000060",
        "0999-01-02",
        "01:02:03.250000",
        "-00:59:59",
        "-7\n",
    ]
    with pytest.raises(mysql_load.Unwritable):
        load.buffer([(float("nan"), *row[1:])])
