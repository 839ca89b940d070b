"""Exact values: a row copied from any engine to any other with data/list then data/create
reads back equal, column by column (hypothesis-generated rows over every common column type)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archivist.config import ArchiveConfig, make_config
from archivist.data import DataDaemon
from archivist.data.columns import ColumnSpec, Kind
from archivist.data.handles import create_engine
from archivist.data.schema import TableInfo
from datasupport import ENGINES, create_table, sql

TABLE = "all_types"
COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("id", Kind.INTEGER, nullable=False),
    ColumnSpec("i16", Kind.INTEGER, int_bits=16),
    ColumnSpec("i32", Kind.INTEGER, int_bits=32),
    ColumnSpec("i64", Kind.INTEGER),
    ColumnSpec("f", Kind.FLOAT),
    ColumnSpec("d", Kind.DECIMAL, precision=38, scale=10),
    ColumnSpec("flag", Kind.BOOLEAN),
    ColumnSpec("s", Kind.STRING, length=100),
    ColumnSpec("t", Kind.TEXT),
    ColumnSpec("day", Kind.DATE),
    ColumnSpec("tod", Kind.TIME),
    ColumnSpec("naive", Kind.DATETIME),
    ColumnSpec("aware", Kind.DATETIME, timezone=True),
    ColumnSpec("blob", Kind.BINARY),
    ColumnSpec("doc", Kind.JSON),
    ColumnSpec("u", Kind.UUID),
)

# PostgreSQL text cannot hold NUL; surrogates are not UTF-8.
TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
EXTREMES_INT = st.sampled_from([-(2**63), 2**63 - 1, 2**53, -(2**53), 2**53 + 1, 0, -1])
JSON_DOC = st.recursive(
    st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(TEXT, max_size=10) | st.none(),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(TEXT, max_size=5), children, max_size=3)
    ),
    max_leaves=8,
).filter(lambda doc: doc is not None)
# MariaDB DATETIME/DATE hold years 1000 to 9999.
MIN_DT = dt.datetime(1000, 1, 2)
MAX_DT = dt.datetime(9999, 12, 30)
OFFSETS = st.sampled_from(
    [dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(-dt.timedelta(hours=8))]
)


def nullable(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | strategy


ROW_VALUES = st.fixed_dictionaries(
    {
        "i16": nullable(st.integers(-(2**15), 2**15 - 1)),
        "i32": nullable(st.integers(-(2**31), 2**31 - 1)),
        "i64": nullable(st.integers(-(2**63), 2**63 - 1) | EXTREMES_INT),
        "f": nullable(
            st.floats(allow_nan=False, allow_infinity=False)
            | st.sampled_from([1.7976931348623157e308, -2.2250738585072014e-308, 5e-324, 0.1])
        ),
        "d": nullable(
            st.decimals(
                min_value=-(10**28) + 1,
                max_value=10**28 - 1,
                places=10,
                allow_nan=False,
                allow_infinity=False,
            )
        ),
        "flag": nullable(st.booleans()),
        "s": nullable(st.text(TEXT, max_size=100) | st.sampled_from(["", " ", "a ", "😀👍🏽"])),
        "t": nullable(st.text(TEXT, max_size=300)),
        "day": nullable(st.dates(MIN_DT.date(), MAX_DT.date())),
        "tod": nullable(st.times()),
        "naive": nullable(st.datetimes(MIN_DT, MAX_DT)),
        "aware": nullable(st.datetimes(MIN_DT, MAX_DT, timezones=OFFSETS)),
        "blob": nullable(st.binary(max_size=64)),
        "doc": nullable(JSON_DOC),
        "u": nullable(st.uuids()),
    }
)
ROWS = st.lists(ROW_VALUES, min_size=1, max_size=4)

PAIRS = list(itertools.product(ENGINES, ENGINES))


def same_value(spec: ColumnSpec, original: object, read: object) -> bool:
    """Whether ``read`` is the value that was written as ``original``."""
    if original is None or read is None:
        return original is None and read is None
    if spec.kind is Kind.DECIMAL:
        return Decimal(str(original)) == read
    if spec.kind is Kind.FLOAT:
        return float(original) == read  # type: ignore[arg-type]
    if spec.kind is Kind.UUID:
        return str(original) == str(read)
    if spec.kind is Kind.DATETIME and spec.timezone:
        assert isinstance(original, dt.datetime) and isinstance(read, dt.datetime)
        return original == read and read.utcoffset() == dt.timedelta(0)
    return original == read


class RoundTrip:
    """A DataDaemon over a source and a destination database, run on one event loop."""

    def __init__(self, source_url: str, dest_url: str) -> None:
        create_table(source_url, TABLE, COLUMNS, index="naive")
        policy = ArchiveConfig(collection=TABLE, order_by="naive", max_rows=10, rows_per_archive=5)
        self.loop = asyncio.new_event_loop()
        self.daemon = DataDaemon(
            make_config({"primary": source_url, "archive": dest_url}, [policy])
        )
        self.run(self.daemon.start())
        self.run(self.daemon.ensure_archive_table(TABLE))
        self.next_id = itertools.count(1)

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def close(self) -> None:
        self.run(self.daemon.close())
        self.loop.close()

    def execute(self, name: str, **params: object) -> dict[str, object]:
        return self.run(self.daemon.execute(name, {"collection": TABLE, **params}))  # type: ignore[return-value]

    def read_raw(self, handle: str) -> list[dict[str, object]]:
        """Rows as SQLAlchemy reads them with archivist's exact types, by id."""
        info = self.run(self.daemon.table_info(TABLE, handle))
        assert isinstance(info, TableInfo)
        engine = self.daemon.handle(handle).engine
        with engine.connect() as connection:
            query = info.table.select().order_by(info.table.c.id)
            return [dict(row) for row in connection.execute(query).mappings()]


@pytest.fixture(params=PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def roundtrip(
    request: pytest.FixtureRequest, fresh_db: Callable[[str], str]
) -> Iterator[RoundTrip]:
    source_engine, dest_engine = request.param
    trip = RoundTrip(fresh_db(source_engine), fresh_db(dest_engine))
    yield trip
    trip.close()


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=ROWS)
def test_row_copied_between_engines_reads_back_equal_column_by_column(
    roundtrip: RoundTrip, rows: list[dict[str, object]]
) -> None:
    originals = [{"id": next(roundtrip.next_id), **row} for row in rows]
    ids = [row["id"] for row in originals]
    created = roundtrip.execute("data/create", dbHandle="primary", items=originals)
    assert created == {"created": len(originals)}
    listed = roundtrip.execute("data/list", dbHandle="primary", filter={"id": {"$in": ids}})
    items = listed["items"]
    assert isinstance(items, list) and len(items) == len(originals)
    assert roundtrip.execute("data/create", dbHandle="archive", items=items) == {
        "created": len(items)
    }
    copied = roundtrip.execute("data/list", dbHandle="archive", filter={"id": {"$in": ids}})
    assert copied["items"] == items

    source_raw = {row["id"]: row for row in roundtrip.read_raw("primary")}
    dest_raw = {row["id"]: row for row in roundtrip.read_raw("archive")}
    for original in originals:
        for spec in COLUMNS:
            name = spec.name
            value = original[name]
            assert same_value(spec, value, source_raw[original["id"]][name]), (name, value)
            assert same_value(spec, value, dest_raw[original["id"]][name]), (name, value)

    # Idempotent: the same copy again counts as created and changes nothing.
    assert roundtrip.execute("data/create", dbHandle="archive", items=items)["created"] == len(
        items
    )
    for handle in ("primary", "archive"):
        assert roundtrip.execute("data/delete", dbHandle=handle, ids=ids) == {"deleted": len(ids)}


SAME_ENGINE = [(engine, engine) for engine in ENGINES]


@pytest.fixture(params=SAME_ENGINE, ids=[f"{a}-to-{b}" for a, b in SAME_ENGINE])
def same_engine_trip(
    request: pytest.FixtureRequest, fresh_db: Callable[[str], str]
) -> Iterator[tuple[str, str, str, RoundTrip]]:
    engine = request.param[0]
    source_url, dest_url = fresh_db(engine), fresh_db(engine)
    trip = RoundTrip(source_url, dest_url)
    yield engine, source_url, dest_url, trip
    trip.close()


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(ROW_VALUES, min_size=5, max_size=20))
def test_copy_within_one_engine_compares_equal_in_sql(
    same_engine_trip: tuple[str, str, str, RoundTrip], rows: list[dict[str, object]]
) -> None:
    """Source and archive on one engine: the database itself finds no differing row."""
    engine, source_url, dest_url, trip = same_engine_trip
    originals = [{"id": next(trip.next_id), **row} for row in rows]
    ids = [row["id"] for row in originals]
    trip.execute("data/create", dbHandle="primary", items=originals)
    items = trip.execute("data/list", dbHandle="primary", filter={"id": {"$in": ids}})["items"]
    trip.execute("data/create", dbHandle="archive", items=items)
    assert _sql_difference(engine, source_url, dest_url) == 0
    quote = "`" if engine == "mysql" else '"'
    sql(dest_url, f"UPDATE {TABLE} SET {quote}t{quote} = 'changed' WHERE id = {ids[0]}")
    assert _sql_difference(engine, source_url, dest_url) == 1
    for handle in ("primary", "archive"):
        trip.execute("data/delete", dbHandle=handle, ids=ids)


def _sql_difference(engine: str, source_url: str, dest_url: str) -> int:
    """Rows of the source with no identical row in the archive, counted by the database."""
    quote = "`" if engine == "mysql" else '"'
    names = ", ".join(
        f"{quote}{spec.name}{quote}" for spec in COLUMNS if spec.kind is not Kind.JSON
    )
    if engine == "sqlite":
        dest_file = dest_url.removeprefix("sqlite:///")
        eng = create_engine(source_url)
        try:
            with eng.connect() as connection:
                connection.exec_driver_sql(f"ATTACH DATABASE '{dest_file}' AS dest")
                return int(
                    connection.exec_driver_sql(
                        f"SELECT count(*) FROM (SELECT {names}, doc FROM main.{TABLE} "
                        f"EXCEPT SELECT {names}, doc FROM dest.{TABLE})"
                    ).scalar_one()
                )
        finally:
            eng.dispose()
    if engine == "mysql":
        source_db = source_url.rsplit("/", 1)[1].split("?", maxsplit=1)[0]
        dest_db = dest_url.rsplit("/", 1)[1].split("?", maxsplit=1)[0]
        (count,) = sql(
            source_url,
            f"SELECT count(*) FROM (SELECT {names}, CAST(doc AS CHAR) FROM `{source_db}`.{TABLE} "
            f"EXCEPT SELECT {names}, CAST(doc AS CHAR) FROM `{dest_db}`.{TABLE}) AS diff",
        )[0]
        return int(count)  # type: ignore[call-overload]
    # PostgreSQL cannot query across databases: compare each row's own text form, as rendered
    # by PostgreSQL on both sides.
    query = f"SELECT id, md5(CAST(ROW({names}, doc) AS text)) FROM {TABLE}"
    source_rows = set(sql(source_url, query))
    dest_rows = set(sql(dest_url, query))
    return len(source_rows - dest_rows)


def test_uuid_values_are_canonical_strings() -> None:
    from archivist.data.values import encode_value

    value = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert encode_value(ColumnSpec("u", Kind.UUID), value.hex) == str(value)
