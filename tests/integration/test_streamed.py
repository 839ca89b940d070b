"""Rows between two servers or two engines, streamed by the daemon (`transfer.streamed`):
``data/copy`` reads them from one connection and writes them into the other, and
``data/delete`` with ``matching`` compares a digest each database computes over the rows'
canonical text (`transfer.canonical`), falling back to a row-by-row compare when the
digests differ. Every pair runs across two servers (``second_db``).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from archivist.config import make_config
from archivist.data import DataDaemon
from archivist.data.columns import ColumnSpec, Kind
from archivist.data.transfer import canonical, formatted, source_rows, streamed
from datasupport import chat_policy, create_table, run, sql

PAIRS = [
    ("postgresql", "postgresql"),
    ("mysql", "mysql"),
    ("postgresql", "mysql"),
    ("mysql", "postgresql"),
    ("sqlite", "postgresql"),
    ("postgresql", "sqlite"),
    ("sqlite", "mysql"),
    ("mysql", "sqlite"),
]

KINDS: tuple[ColumnSpec, ...] = (
    ColumnSpec("id", Kind.INTEGER, nullable=False),
    ColumnSpec("created_at", Kind.DATETIME, timezone=True, nullable=False),
    ColumnSpec("naive", Kind.DATETIME),
    ColumnSpec("day", Kind.DATE),
    ColumnSpec("at", Kind.TIME),
    ColumnSpec("price", Kind.DECIMAL, precision=12, scale=3),
    ColumnSpec("ratio", Kind.FLOAT),
    ColumnSpec("ok", Kind.BOOLEAN),
    ColumnSpec("name", Kind.STRING, length=40),
    ColumnSpec("body", Kind.TEXT),
    ColumnSpec("blob", Kind.BINARY),
    ColumnSpec("doc", Kind.JSON),
    ColumnSpec("ref", Kind.UUID),
    ColumnSpec("big", Kind.INTEGER),
)
BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
DIFFER = "digests differ"


def item(i: int) -> dict[str, object]:
    """Row ``i``: every kind, with the edges each kind has (NULL beside the empty string,
    decimals with and without their scale's zeros, microseconds, bytes that are not text)."""
    row: dict[str, object] = {
        "id": i,
        "created_at": (BASE + dt.timedelta(seconds=i, microseconds=i * 7)).isoformat(),
        "naive": f"2023-06-{1 + i % 28:02d}T12:34:56.{i:06d}",
        "day": f"20{10 + i % 50}-02-{1 + i % 28:02d}",
        "at": f"{i % 24:02d}:05:00.25",
        "price": ["1.500", "0", "-12.05", "123456789.123", "0.001"][i % 5],
        # Floats both servers write without an exponent (see the float test below).
        "ratio": [0.1, 12345678901234.5, -0.001, 2.0, 1 / 3][i % 5],
        "ok": i % 2 == 0,
        "name": ["", "héllo 😀", "a,b:c", "it's", "~"][i % 5],
        "body": None if i % 4 == 0 else f"message {i}\nline two \\ 'q' \"d\"",
        "blob": ["AP8=", "", "3q2+7w==", "AAAA"][i % 4],
        "doc": {"n": i, "tags": ["x", "y"], "nested": {"k": None}},
        "ref": str(uuid.UUID(int=i * 7919)),
        "big": [2**62, -(2**53) - 1, 0, 7][i % 4],
    }
    if i % 7 == 3:  # NULL in every nullable column
        row.update(dict.fromkeys(["naive", "day", "at", "price", "ratio", "ok", "name"], None))
        row.update({"blob": None, "doc": None, "ref": None, "big": None})
    return row


def daemon_for(primary: str, archive: str) -> DataDaemon:
    policy = chat_policy(collection="kinds", order_by="created_at")
    return DataDaemon(make_config({"primary": primary, "archive": archive}, [policy]))


async def call(daemon: DataDaemon, name: str, handle: str = "primary", **params: Any) -> Any:
    return await daemon.execute(
        name, {"collection": "kinds", "dbHandle": handle, **params}, caller="worker"
    )


async def listed(daemon: DataDaemon, handle: str) -> dict[object, dict[str, object]]:
    answer = await call(daemon, "data/list", handle, limit=100_000)
    return {row["id"]: row for row in answer["items"]}


def url(
    fresh_db: Callable[[str], str], second_db: Callable[[str], str], engine: str, n: int
) -> str:
    if engine == "sqlite" or n == 0:
        return fresh_db(engine)
    return second_db(engine)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("source", "dest"), PAIRS, ids=[f"{s}-{d}" for s, d in PAIRS])
def test_rows_stream_between_servers_and_engines_exactly_and_go_only_where_identical(
    fresh_db: Callable[[str], str],
    second_db: Callable[[str], str],
    source: str,
    dest: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two pages copied across servers; every value reads back identical through the JSON
    encoding; the delete takes the whole batch by its digests; a row the application
    updated after its copy stays (the digests differ, and the row-by-row compare keeps only
    that row)."""
    primary, archive = url(fresh_db, second_db, source, 0), url(fresh_db, second_db, dest, 1)
    create_table(primary, "kinds", KINDS)
    items = [item(i) for i in range(1, 21)]

    async def go() -> tuple[Any, ...]:
        daemon = daemon_for(primary, archive)
        await daemon.start()
        try:
            await call(daemon, "data/create", items=items)
            before = await listed(daemon, "primary")
            first = await call(daemon, "data/copy", destHandle="archive", limit=10)
            second = await call(
                daemon, "data/copy", destHandle="archive", limit=10, cursor=first["cursor"]
            )
            copies = await listed(daemon, "archive")
            with caplog.at_level(logging.INFO, logger=streamed.__name__):
                whole = await call(
                    daemon, "data/delete", ids=list(range(1, 11)), matching="archive"
                )
            by_digest = DIFFER not in caplog.text
            sql(primary, "UPDATE kinds SET body = 'changed' WHERE id = 15")
            with caplog.at_level(logging.INFO, logger=streamed.__name__):
                part = await call(
                    daemon, "data/delete", ids=list(range(11, 21)), matching="archive"
                )
            by_rows = DIFFER in caplog.text
            after = await listed(daemon, "primary")
            return before, first, second, copies, whole, part, after, by_digest, by_rows
        finally:
            await daemon.close()

    before, first, second, copies, whole, part, after, by_digest, by_rows = run(go())
    assert [row["id"] for row in first["items"]] == list(range(1, 11))
    assert [row["id"] for row in second["items"]] == list(range(11, 21))
    assert copies == before
    assert whole == {"deleted": 10, "skipped": []}
    if (source, dest) != ("postgresql", "postgresql"):  # that pair compares row digests
        assert by_digest, "the first batch's digests should have agreed"
        assert by_rows, "the updated row should have made the digests differ"
    assert part == {"deleted": 9, "skipped": [15]}
    assert list(after) == [15]
    assert after[15]["body"] == "changed"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_each_engine_computes_the_same_digest_as_python_for_every_kind(
    fresh_db: Callable[[str], str], engine: str
) -> None:
    """The digest a server computes in SQL over rows of every kind equals the one Python
    computes from the same rows as archivist reads them: the canonical text agrees."""
    primary = fresh_db(engine)
    create_table(primary, "kinds", KINDS)
    items = [item(i) for i in range(1, 15)]

    async def go() -> tuple[tuple[str, int], tuple[str, int]]:
        daemon = daemon_for(primary, fresh_db("sqlite"))
        await daemon.start()
        try:
            await call(daemon, "data/create", items=items)
            _, handle, info = await daemon.catalog.table("kinds", "primary")
            read = streamed.reading(info, handle.engine.dialect)
            statement = streamed.digest_statement(info, info.columns, handle.engine.dialect)
            keys = list(range(1, 15))

            def both(connection: sa.Connection) -> tuple[tuple[str, int], tuple[str, int]]:
                rows = connection.execute(read, {"keys": keys}).all()
                in_python = canonical.digest_rows(info.columns, rows)
                in_sql = streamed.digest(connection, info, info.columns, statement, read, keys)
                return in_python, in_sql

            return await handle.transaction(both)
        finally:
            await daemon.close()

    in_python, in_sql = run(go())
    assert in_python == in_sql
    assert in_python[1] == 14


FLOATS = [1e20, -1.5e-7, 1e15, 5e-324, 1.7976931348623157e308, 0.1, -0.0]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("source", "dest"),
    [("postgresql", "mysql"), ("mysql", "postgresql")],
    ids=["postgresql-mysql", "mysql-postgresql"],
)
def test_digests_that_differ_where_values_do_not_fall_back_to_rows_and_judge_them_right(
    fresh_db: Callable[[str], str],
    second_db: Callable[[str], str],
    source: str,
    dest: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Floats PostgreSQL writes with an exponent and MariaDB without (or the other way) make
    the two digests differ although every value is the same: the row-by-row compare then
    deletes them all. A copy altered in the archive makes them differ too, and that row
    alone stays."""
    primary, archive = fresh_db(source), second_db(dest)
    create_table(primary, "kinds", KINDS)
    items = [{**item(i), "ratio": FLOATS[i % len(FLOATS)]} for i in range(1, 15)]

    async def go() -> tuple[Any, ...]:
        daemon = daemon_for(primary, archive)
        await daemon.start()
        try:
            await call(daemon, "data/create", items=items)
            await call(daemon, "data/copy", destHandle="archive", limit=100)
            sql(archive, "UPDATE kinds SET name = 'altered' WHERE id = 9")
            with caplog.at_level(logging.INFO, logger=streamed.__name__):
                deleted = await call(
                    daemon, "data/delete", ids=list(range(1, 15)), matching="archive"
                )
            return deleted, await listed(daemon, "primary"), await listed(daemon, "archive")
        finally:
            await daemon.close()

    deleted, left, copies = run(go())
    assert DIFFER in caplog.text
    assert deleted == {"deleted": 13, "skipped": [9]}
    assert list(left) == [9]
    assert {key: row["ratio"] for key, row in copies.items()} == {
        row["id"]: row["ratio"] for row in items
    }


MOVERS = [
    ("postgresql", "postgresql"),
    ("mysql", "mysql"),
    ("postgresql", "mysql"),
    ("mysql", "postgresql"),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("floats", [True, False], ids=["floats", "no-floats"])
@pytest.mark.parametrize(("source", "dest"), MOVERS, ids=[f"{s}-{d}" for s, d in MOVERS])
def test_a_move_deletes_what_it_copied_in_one_call_unless_the_digests_differ(
    fresh_db: Callable[[str], str],
    second_db: Callable[[str], str],
    source: str,
    dest: str,
    floats: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``data/copy`` with ``move``: the rows are deleted from the source (``DELETE ...
    RETURNING``), written into the archive, and the delete stands because the archive's
    digest of its copies equals the digest of the rows deleted. Then a trigger in the
    archive alters every row it takes: the digests differ, the delete is taken back (no
    ``deleted`` in the answer), and the copy stays for the row-by-row compare.

    Between engines the source's server hashes each row as it deletes it (`HashedTake`),
    timestamps bound for PostgreSQL come as text; not from MariaDB with a float column.
    Between two PostgreSQL servers of one version no digest is computed: the rows deleted
    and their copies read back are compared as binary COPY data, byte for byte. Into
    MariaDB (no float column) the source's server formats the rows as LOAD DATA reads them
    (`formatted`); from a MariaDB server of the archive's version the copies are read back
    as the same lines and compared byte for byte, and no row is hashed."""
    caplog.set_level(logging.INFO, logger="archivist.data.transfer")
    primary, archive = fresh_db(source), second_db(dest)
    columns = KINDS if floats else tuple(c for c in KINDS if c.kind is not Kind.FLOAT)
    create_table(primary, "kinds", columns)
    names = {c.name for c in columns}
    items = [{k: v for k, v in item(i).items() if k in names} for i in range(1, 21)]

    async def go() -> tuple[Any, ...]:
        daemon = daemon_for(primary, archive)
        await daemon.start()
        try:
            await call(daemon, "data/create", items=items)
            _, handle, info = await daemon.catalog.table("kinds", "primary")
            _, into, copy = await daemon.catalog.table("kinds", "archive")
            hashed = streamed.HashedTake.of(
                info, handle.engine.dialect, info.columns, copy, into.engine.dialect
            )
            formatted = streamed._formatted(
                info, handle.engine.dialect, info.columns, copy, into.engine.dialect
            )
            before = await listed(daemon, "primary")
            moved = await call(daemon, "data/copy", destHandle="archive", limit=10, move=True)
            after_move = await listed(daemon, "primary")
            copies = await listed(daemon, "archive")
            for statement in ALTERING[dest]:
                sql(archive, statement)
            altered = await call(
                daemon,
                "data/copy",
                destHandle="archive",
                limit=10,
                move=True,
                cursor=moved["cursor"],
            )
            after = await listed(daemon, "primary")
            return before, moved, after_move, copies, altered, after, hashed, formatted
        finally:
            await daemon.close()

    before, moved, after_move, copies, altered, after, hashed, formatted = run(go())
    if source != dest:
        assert (hashed is not None) == (source == "postgresql" or not floats)
    assert (formatted is not None) == (dest == "mysql" and not floats)
    assert moved["deleted"] == 10
    assert [row["id"] for row in moved["items"]] == list(range(1, 11))
    assert sorted(after_move) == list(range(11, 21))
    assert copies == {key: before[key] for key in range(1, 11)}
    assert "deleted" not in altered
    assert [row["id"] for row in altered["items"]] == list(range(11, 21))
    assert sorted(after) == list(range(11, 21))
    compared = "differ from their copies read back" in caplog.text
    assert compared == (source == dest == "postgresql"), caplog.text
    assert (DIFFER in caplog.text) != compared
    assert ("formatted by the source's server" in caplog.text) == (formatted is not None)
    assert ("lines read back" in caplog.text) == (source == dest == "mysql" and not floats)


ALTERING = {
    "mysql": ["CREATE TRIGGER alter_name BEFORE INSERT ON kinds FOR EACH ROW SET NEW.name = 'x'"],
    "postgresql": [
        "CREATE FUNCTION alter_name() RETURNS trigger AS $$ BEGIN NEW.name := 'x'; RETURN NEW;"
        " END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER alter_name BEFORE INSERT ON kinds FOR EACH ROW EXECUTE FUNCTION"
        " alter_name()",
    ],
}
"""A trigger that changes every row the archive table takes."""


TRICKY = ["", "NULL", "\\N", "tab\there", "new\nline\r\n", "back\\slash\\", "\\t", "é😀", "x" * 300]
"""Texts LOAD DATA would misread unescaped: its separators, its escape, its NULL."""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", ["mysql", "postgresql"])
def test_rows_the_source_formats_for_load_data_arrive_exactly(
    fresh_db: Callable[[str], str], second_db: Callable[[str], str], source: str
) -> None:
    """Into MariaDB on another server the source's server writes each row as a LOAD DATA line:
    separators, backslashes and the text ``\\N`` in a text, bytes that are tabs and
    newlines, NULL beside the empty string, arrive as they were, a page in one move; an
    older copy in the archive is replaced; from MariaDB a page whose lines do not fit in one
    value (``group_concat_max_len``: 10 rows of 500 kB) moves by the hashed take, as
    exactly (PostgreSQL's ``string_agg`` has no such limit)."""
    primary, archive = fresh_db(source), second_db("mysql")
    columns = tuple(c for c in KINDS if c.kind is not Kind.FLOAT)
    create_table(primary, "kinds", columns)
    names = {c.name for c in columns}
    items = []
    for i in range(1, 41):
        row = {k: v for k, v in item(i).items() if k in names}
        row["name"] = TRICKY[i % len(TRICKY)][:40]
        row["body"] = None if i % 10 == 0 else TRICKY[(i + 3) % len(TRICKY)]
        if i > 30:
            row["body"] = "é" * 250_000
        row["blob"] = ["CQo=", "XA==", "", "AAkKXE4="][i % 4]  # tab newline; \; none; 0 tab nl \N
        items.append(row)

    async def go() -> tuple[Any, ...]:
        daemon = daemon_for(primary, archive)
        await daemon.start()
        try:
            for start in range(0, 40, 10):
                await call(daemon, "data/create", items=items[start : start + 10])
            before = await listed(daemon, "primary")
            await call(daemon, "data/copy", destHandle="archive", limit=10)
            sql(archive, "UPDATE kinds SET name = 'older' WHERE id <= 10")  # older copies
            moves, cursor = [], None
            for _ in range(4):
                params: dict[str, Any] = {"cursor": cursor} if cursor else {}
                moved = await call(
                    daemon, "data/copy", destHandle="archive", limit=10, move=True, **params
                )
                moves.append(moved.get("deleted"))
                cursor = moved["cursor"]
            return moves, before, await listed(daemon, "primary"), await listed(daemon, "archive")
        finally:
            await daemon.close()

    moves, before, left, copies = run(go())
    assert moves == [10, 10, 10, 10]
    assert left == {}
    assert copies == before


@pytest.mark.timeout(60)
def test_a_postgresql_page_with_a_date_mariadb_does_not_hold_is_not_formatted(
    fresh_db: Callable[[str], str], second_db: Callable[[str], str]
) -> None:
    """PostgreSQL holds dates before year 1000, past 9999 and infinite, and a decimal's NaN;
    MariaDB's columns do not: the formatted read flags a page holding one
    (`lines_and_digest` answers None, and the hashed take moves that page, its values
    judged one by one), and no other page."""
    primary, archive = fresh_db("postgresql"), second_db("mysql")
    columns = tuple(c for c in KINDS if c.kind is not Kind.FLOAT)
    create_table(primary, "kinds", columns)
    names = {c.name for c in columns}
    items = [{k: v for k, v in item(i).items() if k in names} for i in range(1, 6)]

    async def go() -> dict[int, object]:
        daemon = daemon_for(primary, archive)
        await daemon.start()
        try:
            await call(daemon, "data/create", items=items)
            sql(primary, "UPDATE kinds SET day = '0999-12-31' WHERE id = 2")
            sql(primary, "UPDATE kinds SET naive = '10000-01-01 00:00:00' WHERE id = 3")
            sql(primary, "UPDATE kinds SET created_at = 'infinity' WHERE id = 4")
            sql(primary, "UPDATE kinds SET price = 'NaN' WHERE id = 5")
            await call(daemon, "data/copy", destHandle="archive", limit=1)  # the archive table
            _, handle, info = await daemon.catalog.table("kinds", "primary")
            _, into, copy = await daemon.catalog.table("kinds", "archive")
            take = streamed._formatted(
                info, handle.engine.dialect, info.columns, copy, into.engine.dialect
            )
            assert take is not None
            found: dict[int, object] = {}
            with handle.engine.connect() as connection:
                for key in (1, 2, 3, 4, 5):
                    statement, params = source_rows.keyed(connection, info, take.read, [key])
                    row = connection.exec_driver_sql(statement, params).one()
                    found[key] = formatted.lines_and_digest(row)
                    connection.rollback()
            return found
        finally:
            await daemon.close()

    found = run(go())
    assert found[1] is not None and found[1][1][1] == 1
    assert [found[key] for key in (2, 3, 4, 5)] == [None, None, None, None]


INTO_PG = [("sqlite", "postgresql"), ("mysql", "postgresql")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("source", "dest"), INTO_PG, ids=[f"{s}-{d}" for s, d in INTO_PG])
def test_a_page_over_older_copies_in_postgresql_replaces_them_in_a_second_transaction(
    fresh_db: Callable[[str], str], second_db: Callable[[str], str], source: str, dest: str
) -> None:
    """Into PostgreSQL the rows go straight in by COPY; where an interrupted run left older
    copies of some of them, that COPY fails on their keys and is taken back whole, and the
    page goes again through a session table that overwrites by key: the copies then equal
    their rows, none is doubled, and the move (from MariaDB) deletes the page."""
    primary, archive = url(fresh_db, second_db, source, 0), url(fresh_db, second_db, dest, 1)
    create_table(primary, "kinds", KINDS)

    async def go() -> tuple[Any, ...]:
        daemon = daemon_for(primary, archive)
        await daemon.start()
        try:
            await call(daemon, "data/create", items=[item(i) for i in range(1, 31)])
            before = await listed(daemon, "primary")
            await call(daemon, "data/copy", destHandle="archive", limit=10)
            sql(archive, "UPDATE kinds SET name = 'older' WHERE id <= 5")
            sql(archive, "DELETE FROM kinds WHERE id > 7")  # some copies, not all of them
            again = await call(daemon, "data/copy", destHandle="archive", limit=20, move=True)
            return before, again, await listed(daemon, "archive"), await listed(daemon, "primary")
        finally:
            await daemon.close()

    before, again, copies, left = run(go())
    assert again["copied"] == 20
    assert set(copies) == set(range(1, 21))
    assert {key: copies[key] for key in copies} == {key: before[key] for key in range(1, 21)}
    if source == "mysql":  # a move deletes the page; from SQLite the copy is kept apart
        assert again["deleted"] == 20
        assert set(left) == set(range(21, 31))
