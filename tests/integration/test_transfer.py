"""Transfer by the daemon (`archivist.data.transfer`): ``data/copy`` and ``data/delete``
with ``matching``, on two SQLite files, two MariaDB databases of one server and two
PostgreSQL databases; to an in-memory SQLite database an ``unsupported`` answer that changes
nothing. Between servers and engines: test_streamed.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import sqlite3
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from msgspec.structs import replace

from archivist.data import DataDaemon, handles, slicing
from archivist.data.columns import ColumnSpec, Kind
from archivist.errors import Conflict, DatabaseError, InvalidParams, UnknownHandle, Unsupported
from datasupport import (
    BASE,
    CHAT_COLUMNS,
    application_write,
    chat_policy,
    create_table,
    message,
    run,
    sql,
    started,
)

LINKED = ["sqlite", "mysql", "postgresql"]


async def call(daemon: DataDaemon, name: str, handle: str = "primary", **params: Any) -> Any:
    return await daemon.execute(
        name, {"collection": "chat_messages", "dbHandle": handle, **params}, caller="worker"
    )


async def rows(daemon: DataDaemon, handle: str) -> dict[object, dict[str, object]]:
    listed = await call(daemon, "data/list", handle, limit=100_000)
    return {item["id"]: item for item in listed["items"]}


def pair(fresh_db: Callable[[str], str], engine: str) -> tuple[str, str]:
    primary, archive = fresh_db(engine), fresh_db(engine)
    create_table(primary)
    return primary, archive


@pytest.mark.parametrize("engine", LINKED)
def test_copy_moves_the_next_rows_inside_the_database_and_answers_only_their_keys(
    fresh_db: Callable[[str], str], engine: str
) -> None:
    primary, archive = pair(fresh_db, engine)

    async def go() -> tuple[list[dict[str, object]], ...]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 11)])
            first = await call(daemon, "data/copy", destHandle="archive", limit=4)
            cursor = first["cursor"]
            second = await call(daemon, "data/copy", destHandle="archive", limit=4, cursor=cursor)
            return first, second, await rows(daemon, "primary"), await rows(daemon, "archive")

    first, second, in_primary, in_archive = run(go())
    assert first["items"] == [{"id": i} for i in (1, 2, 3, 4)]
    assert first["cursor"] == {
        "field": "created_at",
        "value": (BASE + dt.timedelta(seconds=4)).isoformat(),
        "id": 4,
        "direction": "after",
    }
    assert (first["count"], first["copied"], first["primaryKey"]) == (4, 4, "id")
    assert first["orderBy"] == "created_at"
    assert [item["id"] for item in second["items"]] == [5, 6, 7, 8]
    # Copied, not moved: the delete is a separate step. Every copy reads back identical.
    assert len(in_primary) == 10
    assert sorted(in_archive) == list(range(1, 9))
    for key, item in in_archive.items():
        assert item == in_primary[key]


@pytest.mark.parametrize("engine", LINKED)
def test_a_move_copies_and_deletes_in_one_transaction_where_the_daemon_can(
    fresh_db: Callable[[str], str], engine: str
) -> None:
    """``move``: on two MariaDB databases of one server, the copy's transaction deletes the
    rows too, and on two PostgreSQL databases the rows are deleted and piped in one call
    whose digests agree; the answer says how many went. On SQLite it copies only, and the
    answer has no ``deleted`` (the delete stays a separate step)."""
    primary, archive = pair(fresh_db, engine)

    async def go() -> tuple[dict[str, Any], dict[str, Any], dict[object, Any], dict[object, Any]]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 11)])
            before = await rows(daemon, "primary")
            first = await call(daemon, "data/copy", destHandle="archive", limit=4, move=True)
            return before, first, await rows(daemon, "primary"), await rows(daemon, "archive")

    before, first, in_primary, in_archive = run(go())
    assert first["items"] == [{"id": i} for i in (1, 2, 3, 4)]
    assert first["cursor"]["id"] == 4
    assert sorted(in_archive) == [1, 2, 3, 4]
    assert all(item == before[key] for key, item in in_archive.items())
    if engine in ("mysql", "postgresql"):
        assert first["deleted"] == 4
        assert sorted(in_primary) == list(range(5, 11))
    else:
        assert "deleted" not in first
        assert in_primary == before


def test_a_move_on_a_table_without_transactions_only_copies(
    fresh_db: Callable[[str], str],
) -> None:
    """On MyISAM each statement stands alone: nothing locks the rows from their copy to
    their delete, and nothing could be taken back. ``move`` then copies only (no
    ``deleted``), and the delete stays the guarded one."""
    primary, archive = pair(fresh_db, "mysql")
    sql(primary, "ALTER TABLE chat_messages ENGINE=MyISAM")

    async def go() -> tuple[dict[str, Any], dict[object, Any], dict[object, Any]]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 6)])
            copied = await call(daemon, "data/copy", destHandle="archive", limit=3, move=True)
            return copied, await rows(daemon, "primary"), await rows(daemon, "archive")

    copied, in_primary, in_archive = run(go())
    assert copied["items"] == [{"id": i} for i in (1, 2, 3)]
    assert "deleted" not in copied
    assert sorted(in_primary) == [1, 2, 3, 4, 5]
    assert sorted(in_archive) == [1, 2, 3]


def test_a_move_waits_for_the_applications_change_and_moves_the_row_as_changed(
    fresh_db: Callable[[str], str],
) -> None:
    """The move reads the rows it copies ``FOR UPDATE``: a row the application is changing
    is moved once its change commits, as changed. Without the lock, on a server whose
    sessions are ``READ COMMITTED`` (as here), the copy would read the row as it was, then
    the delete would remove the changed row: the change would be lost."""
    primary, archive = pair(fresh_db, "mysql")
    application = sa.create_engine(primary)
    ((isolation,),) = sql(primary, "SELECT @@GLOBAL.tx_isolation")
    sql(primary, "SET GLOBAL TRANSACTION ISOLATION LEVEL READ COMMITTED")

    async def go() -> tuple[dict[str, Any], dict[object, Any], dict[object, Any]]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 6)])
            with application.connect() as connection:
                change = "UPDATE chat_messages SET body = 'changed' WHERE id = 2"
                connection.execute(sa.text(change))
                moving = asyncio.ensure_future(
                    call(daemon, "data/copy", destHandle="archive", limit=3, move=True)
                )
                waits = (  # the move's copy (or delete), held up by the application's lock
                    "SELECT count(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE"
                    " 'INSERT INTO%%chat_messages%%' OR INFO LIKE 'DELETE FROM chat_messages%%'"
                )
                for _ in range(500):  # until the move waits for the application's lock
                    if sql(primary, waits) != [(0,)]:
                        break
                    assert not moving.done(), await moving
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the move never waited for the application's lock")
                connection.commit()
            moved = await moving
            return moved, await rows(daemon, "primary"), await rows(daemon, "archive")

    try:
        moved, in_primary, in_archive = run(go())
    finally:
        application.dispose()
        sql(primary, f"SET GLOBAL TRANSACTION ISOLATION LEVEL {str(isolation).replace('-', ' ')}")
    assert moved["deleted"] == 3
    assert sorted(in_primary) == [4, 5]
    assert sorted(in_archive) == [1, 2, 3]
    assert in_archive[2]["body"] == "changed"


@pytest.mark.parametrize("engine", LINKED)
def test_a_copys_cursor_is_its_last_row_as_the_keys_were_read(
    fresh_db: Callable[[str], str], engine: str
) -> None:
    """``data/copy`` reads a page's keys, then its last row's order value (the cursor) in a
    second statement (on MariaDB, where the order column may hold NULLs, as here). The
    application moves that row's order value forward in between: the cursor is still the
    value the keys were read with, even on a server whose sessions default to READ
    COMMITTED (PostgreSQL's default; set here for MariaDB), so the next page cannot skip
    the rows between the old and the new value."""
    primary, archive = fresh_db(engine), fresh_db(engine)
    columns = [replace(c, nullable=True) if c.name == "created_at" else c for c in CHAT_COLUMNS]
    create_table(primary, columns=columns)
    later = f"{BASE + dt.timedelta(days=1):%Y-%m-%d %H:%M:%S}"
    moved: list[str] = []

    async def go() -> tuple[dict[str, object], dict[str, object]]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 11)])
            runner = daemon.transfers.link(daemon.handles["primary"], daemon.handles["archive"])

            @sa.event.listens_for(runner.runner.engine, "connect")
            def read_committed(dbapi_connection: Any, _record: object) -> None:
                if engine == "mysql":
                    with dbapi_connection.cursor() as cursor:
                        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")

            @sa.event.listens_for(runner.runner.engine, "before_cursor_execute")
            def move_the_last_row(*args: Any) -> None:
                statement = str(args[2])
                if statement.startswith("SELECT") and "ORDER BY" not in statement and not moved:
                    # The application's own connection, committed before the lookup runs.
                    sql(primary, f"UPDATE chat_messages SET created_at = '{later}' WHERE id = 4")
                    moved.append(statement)

            first = await call(daemon, "data/copy", destHandle="archive", limit=4)
            second = await call(
                daemon, "data/copy", destHandle="archive", limit=4, cursor=first["cursor"]
            )
            return first, second

    first, second = run(go())
    assert moved, "the page's last row was never looked up on its own"
    assert first["cursor"]["value"] == (BASE + dt.timedelta(seconds=4)).isoformat()
    assert first["cursor"]["id"] == 4
    assert [item["id"] for item in second["items"]] == [5, 6, 7, 8]


@pytest.mark.parametrize("engine", LINKED)
@pytest.mark.parametrize("order", ["created_at", "id"])
def test_copy_pages_follow_the_order_with_ties_broken_by_key(
    fresh_db: Callable[[str], str], engine: str, order: str
) -> None:
    """Page after page, ``data/copy`` answers the keys in the listing's order (ties on the
    order value broken by key) and a cursor on the page's last row; negative keys and keys
    near the 64-bit limits included (MariaDB reads a page's integer keys joined in one
    value, and writes them into its statements as literals)."""
    primary, archive = pair(fresh_db, engine)
    big = 2**63 - 1
    keys = [-big, -7, -1, 0, 2, 3, 5, 8, 13, 2**40, big - 1, big]
    # Three rows share each instant, in no particular key order.
    instants = {key: BASE + dt.timedelta(seconds=(i * 7) % 4) for i, key in enumerate(keys)}
    expected = sorted(keys, key=lambda k: (instants[k], k)) if order == "created_at" else keys

    async def go() -> tuple[list[object], list[dict[str, object]], dict[object, Any], Any]:
        async with started(primary, archive, [chat_policy(order_by=order)]) as daemon:
            items = [message(1, id=k, created_at=instants[k].isoformat()) for k in keys]
            await call(daemon, "data/create", items=items)
            copied: list[object] = []
            cursors: list[dict[str, object]] = []
            page = await call(daemon, "data/copy", destHandle="archive", limit=5)
            while page["items"]:
                copied += [int(item["id"]) for item in page["items"]]  # large ones as text
                cursors.append(page["cursor"])
                page = await call(
                    daemon, "data/copy", destHandle="archive", limit=5, cursor=page["cursor"]
                )
            return copied, cursors, await rows(daemon, "archive"), await rows(daemon, "primary")

    copied, cursors, in_archive, in_primary = run(go())
    assert copied == expected
    assert [int(cursor["id"]) for cursor in cursors] == [expected[4], expected[9], expected[11]]
    if order == "created_at":
        assert [cursor["value"] for cursor in cursors] == [
            instants[expected[i]].isoformat() for i in (4, 9, 11)
        ]
    assert in_archive == in_primary
    assert sorted(int(key) for key in in_archive) == sorted(keys)


@pytest.mark.parametrize("engine", LINKED)
def test_copy_pages_of_every_cursor_shape_in_any_order_are_right(
    fresh_db: Callable[[str], str], engine: str
) -> None:
    """The daemon keeps how to read a page by its shape (the order, and where the cursor's
    values are null) and sets the cursor and limit per call: pages asked for in any order,
    with a null cursor value or none, on a nullable order column and by key, in one daemon,
    are each the rows just after their own cursor."""
    primary, archive = fresh_db(engine), fresh_db(engine)
    columns = [replace(c, nullable=True) if c.name == "created_at" else c for c in CHAT_COLUMNS]
    create_table(primary, columns=columns)

    def at(i: int) -> dict[str, object]:
        return {"field": "created_at", "value": message(i)["created_at"], "id": i}

    null = {"field": "created_at", "value": None}
    asks: list[tuple[dict[str, object] | None, int, list[dict[str, str]] | None]] = [
        (at(5), 2, None),
        (None, 3, None),
        ({**null, "id": 2}, 2, None),
        (at(6), 10, None),
        ({**null, "id": 3}, 1, None),
        ({"field": "id", "value": 4}, 2, [{"field": "id"}]),
        ({"field": "id", "value": 1}, 3, [{"field": "id"}]),
        (None, 1, [{"field": "id"}]),
        (at(4), 3, None),
    ]

    async def go() -> list[list[int]]:
        async with started(primary, archive) as daemon:
            items = [message(i, **({"created_at": None} if i <= 3 else {})) for i in range(1, 9)]
            await call(daemon, "data/create", items=items)
            pages: list[list[int]] = []
            for cursor, limit, order_by in asks:
                extra: dict[str, object] = {"cursor": cursor} if cursor else {}
                if order_by:
                    extra["orderBy"] = order_by
                page = await call(daemon, "data/copy", destHandle="archive", limit=limit, **extra)
                pages.append([item["id"] for item in page["items"]])
            return pages

    assert run(go()) == [[6, 7], [1, 2, 3], [3, 4], [7, 8], [4], [5, 6], [2, 3, 4], [1], [5, 6, 7]]


def test_mariadb_reads_a_page_of_integer_keys_in_one_statement(
    fresh_db: Callable[[str], str],
) -> None:
    """On MariaDB/MySQL, with integer keys and an order column without NULLs, a page's keys
    come joined in one value, with the last row's order value, in one statement: no second
    read of the last row, no ``SET TRANSACTION`` before it. The keys are written into the
    copy as literals (no parameters), consecutive ones as one range."""
    primary, archive = pair(fresh_db, "mysql")
    statements: list[tuple[str, object]] = []

    async def go() -> dict[str, Any]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 11)])
            link = daemon.transfers.link(daemon.handles["primary"], daemon.handles["archive"])

            @sa.event.listens_for(link.runner.engine, "before_cursor_execute")
            def trace(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
                statements.append((statement, parameters))

            return await call(daemon, "data/copy", destHandle="archive", limit=4)  # type: ignore[no-any-return]

    copied = run(go())
    assert [item["id"] for item in copied["items"]] == [1, 2, 3, 4]
    assert copied["cursor"]["id"] == 4
    texts = [" ".join(text.split()) for text, _ in statements]
    reads = [text for text in texts if text.startswith("SELECT")]
    assert len(reads) == 1 and "GROUP_CONCAT" in reads[0], texts
    assert not [text for text in texts if text.startswith("SET")], texts
    (insert,) = [(t, p) for t, p in statements if t.startswith("INSERT")]
    assert insert[0].rstrip().endswith("WHERE (chat_messages.id BETWEEN 1 AND 4)"), insert
    assert not insert[1], insert


@pytest.mark.parametrize("engine", ["mysql", "postgresql"])
def test_runs_of_integer_keys_are_named_as_ranges_that_name_no_other_row(
    fresh_db: Callable[[str], str], engine: str
) -> None:
    """Copy and delete name runs of consecutive integer keys as ``BETWEEN`` ranges (MariaDB:
    every run of four keys or more; PostgreSQL: the longest, beside an ``= ANY`` list of
    the others). A page whose keys have a hole (row 6 comes last in the archive order, row
    12 after the page) is two runs and a lone key: rows 6 and 12 lie inside the keys' span
    but are neither copied nor deleted, and the delete names the changed row it kept."""
    primary, archive = pair(fresh_db, engine)
    late = (BASE + dt.timedelta(days=1)).isoformat()
    statements: list[tuple[str, Any]] = []

    async def go() -> tuple[Any, Any, dict[object, Any], dict[object, Any]]:
        async with started(primary, archive) as daemon:
            items = [message(i) for i in (*range(1, 6), *range(7, 12), 13)]
            items += [message(6, created_at=late), message(12, created_at=late)]
            await call(daemon, "data/create", items=items)
            link = daemon.transfers.link(daemon.handles["primary"], daemon.handles["archive"])

            @sa.event.listens_for(link.runner.engine, "before_cursor_execute")
            def trace(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
                statements.append((" ".join(statement.split()), parameters))

            copied = await call(daemon, "data/copy", destHandle="archive", limit=11)
            # Row 9 changes after its copy: the delete keeps it and names it.
            sql(primary, "UPDATE chat_messages SET body = 'edited' WHERE id = 9")
            ids = [item["id"] for item in copied["items"]]
            deleted = await call(daemon, "data/delete", ids=ids, matching="archive")
            return copied, deleted, await rows(daemon, "primary"), await rows(daemon, "archive")

    copied, deleted, in_primary, in_archive = run(go())
    moved = [1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 13]
    assert [item["id"] for item in copied["items"]] == moved
    assert sorted(in_archive) == moved
    assert deleted == {"deleted": 10, "skipped": [9]}
    assert sorted(in_primary) == [6, 9, 12]
    (delete, parameters) = next((t, p) for t, p in statements if t.startswith("DELETE"))
    if engine == "mysql":
        ranges = "(chat_messages.id BETWEEN 1 AND 5 OR chat_messages.id BETWEEN 7 AND 11"
        ranges += " OR chat_messages.id IN (13))"
        (insert,) = [text for text, _ in statements if text.startswith("INSERT")]
        assert insert.endswith(ranges), insert
        assert f"WHERE {ranges} AND (EXISTS" in delete, delete
    else:
        ranges = "(archivist_row.id BETWEEN %s::BIGINT AND %s::BIGINT"
        ranges += " OR archivist_row.id = ANY(%s::BIGINT[]))"
        assert f"WHERE {ranges} AND archivist_row.id = v.k" in delete, delete
        assert list(parameters)[2:] == [1, 5, [7, 8, 9, 10, 11, 13]], parameters


def test_mariadb_keys_that_do_not_fit_in_one_value_are_a_clear_error_and_copy_nothing(
    fresh_db: Callable[[str], str],
) -> None:
    """A server that cuts the joined keys short (here a session limit of 10 bytes; in life a
    small ``max_allowed_packet`` and a large batch) answers a database error that says what
    to do, and nothing is copied. The cut falls inside the last key ("10,11,12,1"), so the
    value still splits into as many keys as the page has rows: its length is what tells."""
    primary, archive = pair(fresh_db, "mysql")

    async def go() -> tuple[DatabaseError, dict[object, Any]]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(10, 14)])
            link = daemon.transfers.link(daemon.handles["primary"], daemon.handles["archive"])
            link.runner.engine.dispose()

            @sa.event.listens_for(link.runner.engine, "connect")
            def short(dbapi_connection: Any, _record: object) -> None:
                with dbapi_connection.cursor() as cursor:
                    cursor.execute("SET SESSION group_concat_max_len = 10")

            with pytest.raises(DatabaseError) as caught:
                await call(daemon, "data/copy", destHandle="archive", limit=4)
            return caught.value, await rows(daemon, "archive")

    error, in_archive = run(go())
    assert "smaller batch size" in error.message
    assert in_archive == {}


@pytest.mark.parametrize("engine", LINKED)
@pytest.mark.parametrize("kind", [Kind.STRING, Kind.UUID, Kind.DATETIME])
def test_copy_and_delete_matching_take_keys_of_any_type(
    fresh_db: Callable[[str], str], engine: str, kind: Kind
) -> None:
    """The keys go to the driver as positional parameters, converted as the key's type
    binds them, and any text, quotes and percent signs included, stays a value. A key read
    back from the database (PostgreSQL answers a UUID as a UUID object) is still matched to
    the key given: a row changed since its copy is named in ``skipped``."""
    primary, archive = fresh_db(engine), fresh_db(engine)
    columns = (
        ColumnSpec("ref", kind, length=40, timezone=True, nullable=False),
        ColumnSpec("n", Kind.INTEGER, nullable=False),
    )
    create_table(primary, columns=columns, pk=("ref",), index="n")
    if kind is Kind.STRING:
        refs: list[object] = ["it's", "50%", "a\\b", "%s", "%(keys)s", "?", "x"]
    elif kind is Kind.UUID:
        refs = [str(uuid.UUID(int=i * 7919)) for i in range(1, 8)]
    else:
        refs = [(BASE + dt.timedelta(seconds=i)).isoformat() for i in range(1, 8)]
    policy = chat_policy(order_by="n")

    async def go() -> tuple[list[object], dict[str, Any], list[object], list[object]]:
        async with started(primary, archive, [policy]) as daemon:
            items = [{"ref": ref, "n": n} for n, ref in enumerate(refs)]
            await call(daemon, "data/create", items=items)
            copied = await call(daemon, "data/copy", destHandle="archive", limit=100)
            keys = [item["ref"] for item in copied["items"]]
            sql(primary, "UPDATE chat_messages SET n = 100 WHERE n = 0")  # changed since
            deleted = await call(daemon, "data/delete", ids=keys, matching="archive")
            left = await call(daemon, "data/list", limit=100)
            archived = await call(daemon, "data/list", "archive", limit=100)
            return keys, deleted, left["items"], [item["ref"] for item in archived["items"]]

    keys, deleted, left, archived = run(go())
    assert keys == refs
    assert deleted == {"deleted": len(refs) - 1, "skipped": [refs[0]]}
    assert left == [{"ref": refs[0], "n": 100}]
    assert sorted(map(str, archived)) == sorted(map(str, refs))


@pytest.mark.parametrize("engine", LINKED)
def test_copy_overwrites_an_older_copy_by_key(fresh_db: Callable[[str], str], engine: str) -> None:
    """The source is authoritative: a copy left by an interrupted run, changed since, is
    overwritten rather than reported as a conflict."""
    primary, archive = pair(fresh_db, engine)

    async def go() -> tuple[dict[object, dict[str, object]], dict[object, dict[str, object]]]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 4)])
            await call(daemon, "data/create", "archive", items=[message(2, body="stale")])
            await call(daemon, "data/copy", destHandle="archive", limit=10)
            return await rows(daemon, "primary"), await rows(daemon, "archive")

    in_primary, in_archive = run(go())
    assert in_archive == in_primary


@pytest.mark.parametrize("engine", LINKED)
def test_a_copy_that_breaks_another_constraint_is_a_conflict_and_copies_nothing(
    fresh_db: Callable[[str], str], engine: str
) -> None:
    """An archive table with a unique index of its own (not the key) that a copied row
    breaks: ``conflict``, and none of the page is copied. On PostgreSQL the rows first go
    straight into the table, then (the error undone) through the upsert, which fails too."""
    primary, archive = pair(fresh_db, engine)

    async def go() -> tuple[str, dict[object, dict[str, object]]]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 4)])
            await call(daemon, "data/create", "archive", items=[message(100, room="room1")])
            sql(archive, "CREATE UNIQUE INDEX archive_room ON chat_messages (room)")
            with pytest.raises(Conflict) as raised:
                await call(daemon, "data/copy", destHandle="archive", limit=10)
            return raised.value.message, await rows(daemon, "archive")

    message_, in_archive = run(go())
    assert message_.startswith("conflict: a copied row breaks a constraint")
    assert list(in_archive) == [100]


@pytest.mark.parametrize("engine", LINKED)
def test_delete_matching_deletes_only_rows_whose_copy_is_identical(
    fresh_db: Callable[[str], str], engine: str
) -> None:
    """Compared by the database byte for byte, NULL equal to NULL: a change in case only, or
    in trailing spaces (equal under MariaDB's default collation), or in a float's last bit
    (alike when printed to 15 digits) keeps the row; so do a missing copy and a row updated
    in the source since its copy."""
    primary, archive = fresh_db(engine), fresh_db(engine)
    if engine == "mysql":  # as an application makes them: text compared case-insensitively
        for url in (primary, archive):
            sql(
                url,
                "CREATE TABLE chat_messages (id BIGINT PRIMARY KEY, room VARCHAR(40) NOT NULL, "
                "created_at DATETIME(6) NOT NULL COMMENT 'archivist:utc', body TEXT, "
                "score DOUBLE, meta JSON) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci",
            )
            sql(url, "CREATE INDEX ix_created ON chat_messages (created_at)")
            assert sql(url, "SELECT 'a' = 'A ' COLLATE utf8mb4_general_ci") == [(1,)]
    else:
        create_table(primary)

    async def go() -> tuple[dict[str, object], list[object], list[object]]:
        async with started(primary, archive) as daemon:
            # Row 1 holds NULLs: equal to its copy only under a NULL-safe compare.
            nulls = {"score": None, "meta": None}
            items = [message(i, **(nulls if i == 1 else {})) for i in range(1, 9)]
            await call(daemon, "data/create", items=items)
            await call(daemon, "data/copy", destHandle="archive", limit=8)
            await call(
                daemon, "data/create", items=[message(2, body="edited")], onConflict="replace"
            )
            changed = [message(3, body="MESSAGE 3 😀"), message(4, body="message 4 😀 ")]
            await call(daemon, "data/create", "archive", items=changed, onConflict="replace")
            await call(daemon, "data/delete", "archive", id=5)
            await call(daemon, "data/create", items=[message(6, score=0.5)], onConflict="replace")
            nearly = math.nextafter(7 / 4, 2.0)
            await call(
                daemon, "data/create", items=[message(7, score=nearly)], onConflict="replace"
            )
            result = await call(
                daemon, "data/delete", ids=[8, 1, 2, 3, 4, 5, 6, 7, 99], matching="archive"
            )
            left = sorted(await rows(daemon, "primary"))
            archived = sorted(await rows(daemon, "archive"))
            return result, left, archived

    result, left, archived = run(go())
    assert result == {"deleted": 2, "skipped": [2, 3, 4, 5, 6, 7]}
    assert left == [2, 3, 4, 5, 6, 7]
    assert archived == [1, 2, 3, 4, 6, 7, 8]


def test_a_sqlite_delete_matching_spans_slices_and_names_the_rows_it_kept(
    fresh_db: Callable[[str], str],
) -> None:
    primary, archive = pair(fresh_db, "sqlite")
    count = 450  # three slices of 200 keys
    changed = [3, 250, 449]

    async def go() -> tuple[dict[str, object], list[object]]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, count + 1)])
            await call(daemon, "data/copy", destHandle="archive", limit=count)
            for key in changed:
                sql(primary, f"UPDATE chat_messages SET body = 'later' WHERE id = {key}")
            result = await call(
                daemon, "data/delete", ids=list(range(1, count + 1)), matching="archive"
            )
            return result, sorted(await rows(daemon, "primary"))

    result, left = run(go())
    assert result == {"deleted": count - 3, "skipped": changed}
    assert left == changed


@pytest.mark.parametrize(
    ("source", "dest", "why"),
    [
        ("sqlite", "memory", "only a SQLite file named by its path"),
        ("postgresql", "memory", "only a SQLite file named by its path"),
    ],
)
def test_copy_between_databases_no_connection_reaches_is_unsupported_and_changes_nothing(
    fresh_db: Callable[[str], str], source: str, dest: str, why: str
) -> None:
    primary = fresh_db(source)
    archive = "sqlite://" if dest == "memory" else fresh_db(dest)
    create_table(primary)

    async def go() -> tuple[str, str, int]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 4)])
            with pytest.raises(Unsupported) as copy:
                await call(daemon, "data/copy", destHandle="archive", limit=10)
            with pytest.raises(Unsupported) as delete:
                await call(daemon, "data/delete", ids=[1, 2], matching="archive")
            counted = await call(daemon, "data/count")
            return copy.value.message, delete.value.message, counted["count"]

    copy_error, delete_error, left = run(go())
    assert copy_error.startswith("unsupported:") and why in copy_error
    assert why in delete_error
    assert left == 3


def test_copy_to_a_table_whose_columns_differ_is_unsupported(
    fresh_db: Callable[[str], str],
) -> None:
    """An archive table the daemon did not make alike (here a narrower column) could alter
    values on the way: the rows go through the worker instead, checked one by one."""
    primary, archive = pair(fresh_db, "mysql")
    sql(
        archive,
        "CREATE TABLE chat_messages (id BIGINT PRIMARY KEY, room VARCHAR(40) NOT NULL, "
        "created_at DATETIME(6) NOT NULL, body VARCHAR(10), score DOUBLE, meta LONGTEXT)",
    )

    async def go() -> str:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(1)])
            with pytest.raises(Unsupported) as failure:
                await call(daemon, "data/copy", destHandle="archive", limit=10)
            return failure.value.message

    error = run(go())
    assert "its column" in error and "body" in error
    assert sql(archive, "SELECT COUNT(*) FROM chat_messages") == [(0,)]


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"destHandle": "archive", "limit": 0}, InvalidParams),
        ({"destHandle": "archive", "limit": 10, "fields": ["id"]}, InvalidParams),
        ({"destHandle": "archive", "limit": 10, "move": "yes"}, InvalidParams),
        ({"destHandle": "primary", "limit": 10}, InvalidParams),
        ({"destHandle": "nowhere", "limit": 10}, UnknownHandle),
        ({"destHandle": "archive", "limit": 10, "orderBy": [{"field": "id; DROP"}]}, InvalidParams),
        (
            {"destHandle": "archive", "limit": 10, "cursor": {"field": "room", "value": "x"}},
            InvalidParams,
        ),
    ],
)
def test_invalid_copy_is_a_clear_error_and_changes_nothing(
    fresh_db: Callable[[str], str], params: dict[str, object], error: type[Exception]
) -> None:
    primary, archive = pair(fresh_db, "sqlite")

    async def go() -> int:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 4)])
            with pytest.raises(error):
                await call(daemon, "data/copy", **params)
            return len(await rows(daemon, "archive"))

    assert run(go()) == 0


@pytest.mark.parametrize(
    "params",
    [
        {"ids": [1], "matching": "archive", "expected": [message(1)]},
        {"id": 1, "matching": "archive"},
        {"matching": "archive"},
        {"ids": [None], "matching": "archive"},
    ],
)
def test_invalid_delete_matching_is_a_clear_error_and_deletes_nothing(
    fresh_db: Callable[[str], str], params: dict[str, object]
) -> None:
    primary, archive = pair(fresh_db, "sqlite")

    async def go() -> int:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 4)])
            await call(daemon, "data/copy", destHandle="archive", limit=10)
            with pytest.raises(InvalidParams):
                await call(daemon, "data/delete", **params)
            return len(await rows(daemon, "primary"))

    assert run(go()) == 3


def test_a_sqlite_copy_leaves_the_primary_free_for_the_applications_writes(
    fresh_db: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy writes the archive only: while the application holds the primary's write
    lock, a copy still runs (a write transaction on the attached pair would lock both
    files and wait), and the delete, which writes the primary, waits its turn."""
    monkeypatch.setattr(handles, "SQLITE_BUSY_TIMEOUT_MS", 200)
    primary, archive = pair(fresh_db, "sqlite")

    async def go() -> tuple[int, str]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 6)])
            application = sqlite3.connect(primary.removeprefix("sqlite:///"), isolation_level=None)
            try:
                application.execute("BEGIN IMMEDIATE")
                copied = await call(daemon, "data/copy", destHandle="archive", limit=10)
                with pytest.raises(DatabaseError) as locked:
                    await call(daemon, "data/delete", ids=[1, 2], matching="archive")
            finally:
                application.execute("ROLLBACK")
                application.close()
            return copied["copied"], locked.value.message

    copied, error = run(go())
    assert copied == 5
    assert "database is locked" in error


@pytest.mark.parametrize("engine", LINKED)
def test_a_copy_after_the_source_gained_a_column_copies_that_column_too(
    fresh_db: Callable[[str], str], engine: str
) -> None:
    """The statements (and PostgreSQL's session table, kept per connection) follow the
    table's columns: after the archive table gains the new column, copies carry it."""
    primary, archive = pair(fresh_db, engine)

    async def go() -> tuple[dict[object, dict[str, object]], dict[object, dict[str, object]]]:
        async with started(primary, archive) as daemon:
            await call(daemon, "data/create", items=[message(i) for i in range(1, 5)])
            await call(daemon, "data/copy", destHandle="archive", limit=2)
            sql(primary, "ALTER TABLE chat_messages ADD COLUMN mood VARCHAR(10)")
            sql(primary, "UPDATE chat_messages SET mood = 'calm' WHERE id > 2")
            await daemon.ensure_archive_table("chat_messages")
            listed = await call(daemon, "data/copy", destHandle="archive", limit=10)
            assert [item["id"] for item in listed["items"]] == [1, 2, 3, 4]
            return await rows(daemon, "primary"), await rows(daemon, "archive")

    in_primary, in_archive = run(go())
    assert in_archive == in_primary
    assert in_archive[3]["mood"] == "calm"


def test_a_dry_run_says_how_rows_would_move(fresh_db: Callable[[str], str]) -> None:
    sqlite_primary, pg_primary = fresh_db("sqlite"), fresh_db("postgresql")
    create_table(sqlite_primary)
    create_table(pg_primary)

    async def path(primary: str, archive: str) -> str:
        async with started(primary, archive) as daemon:
            return (await daemon.plan("chat_messages")).path

    across = run(path(sqlite_primary, fresh_db("postgresql")))
    piped = run(path(pg_primary, fresh_db("postgresql")))
    assert across.startswith("copied by the daemon streaming them from one connection")
    memory = run(path(sqlite_primary, "sqlite://"))
    assert memory.startswith("through the worker (only a SQLite file named by its path")
    assert piped.startswith("copied by the daemon by binary COPY between the databases")


def test_a_sqlite_delete_matching_slices_only_while_others_write(
    fresh_db: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the application writes, the delete goes in slices of 200 (each its own
    transaction: an application write that will not wait at all, busy timeout 0, gets
    through as a slice begins); once nobody else has written for `QUIET_AFTER` seconds,
    the whole batch is one statement. (Slices that hold the lock too long shrink: not here,
    every slice is within its time.)"""
    monkeypatch.setattr(slicing, "QUIET_AFTER", 0.3)
    monkeypatch.setattr(slicing, "SLICE_HOLD", 60.0)
    primary, archive = pair(fresh_db, "sqlite")
    sql(primary, "CREATE TABLE app_log (n INTEGER)")
    count = 2 * slicing.SLICE_ROWS + 5
    writes: list[str] = []
    deletes: list[str] = []

    def on_statement(statement: str) -> None:
        if not statement.startswith("DELETE FROM"):
            return
        deletes.append(statement)
        if len(deletes) > 2:  # the application writes as the first two slices begin
            return
        writes.append(application_write(primary.removeprefix("sqlite:///")))

    async def go() -> list[tuple[dict[str, object], int]]:
        async with started(primary, archive) as daemon:
            items = [message(i) for i in range(1, 3 * count + 1)]
            await call(daemon, "data/create", items=items)
            await call(daemon, "data/copy", destHandle="archive", limit=3 * count)
            link = daemon.commands.transfers.link(
                daemon.handle("primary"), daemon.handle("archive")
            )
            link.deleter.engine.dispose()  # new connections, traced from the start

            @sa.event.listens_for(link.deleter.engine, "connect")
            def trace(dbapi_connection: sqlite3.Connection, _record: object) -> None:
                dbapi_connection.set_trace_callback(on_statement)

            done: list[tuple[dict[str, object], int]] = []
            for batch in range(3):
                if batch == 2:
                    await asyncio.sleep(0.4)  # nobody has written for longer than 0.3 s
                before = len(deletes)
                ids = list(range(batch * count + 1, (batch + 1) * count + 1))
                result = await call(daemon, "data/delete", ids=ids, matching="archive")
                done.append((result, len(deletes) - before))
            return done

    writing, recently, quiet = run(go())
    assert writes == ["written"] * 2
    assert writing == ({"deleted": count, "skipped": []}, 3)
    assert recently == ({"deleted": count, "skipped": []}, 3)  # the last write was < 0.3 s ago
    assert quiet == ({"deleted": count, "skipped": []}, 1)


def test_a_sqlite_delete_matching_shrinks_its_slices_while_they_hold_the_lock_too_long(
    fresh_db: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the application writes, a slice that held the lock longer than `SLICE_HOLD`
    makes the next ones smaller, down to the smallest size, and the connection keeps that
    size for its next delete; every row still goes."""
    monkeypatch.setattr(slicing, "QUIET_AFTER", 60.0)
    monkeypatch.setattr(slicing, "SLICE_HOLD", 1e-9)  # no slice is ever quick enough
    primary, archive = pair(fresh_db, "sqlite")
    sql(primary, "CREATE TABLE app_log (n INTEGER)")
    first, second = slicing.SLICE_ROWS + 35, 25
    smallest = slicing.SLICE_LADDER[0]
    deletes: list[str] = []

    def on_statement(statement: str) -> None:
        if not statement.startswith("DELETE FROM"):
            return
        deletes.append(statement)
        # The application writes as each slice begins (it gets through: the slice has not
        # taken the lock yet), so the next look always finds another writer.
        sql(primary, "INSERT INTO app_log VALUES (1)")

    async def go() -> list[tuple[dict[str, object], int]]:
        async with started(primary, archive) as daemon:
            items = [message(i) for i in range(1, first + second + 1)]
            await call(daemon, "data/create", items=items)
            await call(daemon, "data/copy", destHandle="archive", limit=first + second)
            link = daemon.commands.transfers.link(
                daemon.handle("primary"), daemon.handle("archive")
            )
            link.deleter.engine.dispose()

            @sa.event.listens_for(link.deleter.engine, "connect")
            def trace(dbapi_connection: sqlite3.Connection, _record: object) -> None:
                dbapi_connection.set_trace_callback(on_statement)

            done: list[tuple[dict[str, object], int]] = []
            for ids in (range(1, first + 1), range(first + 1, first + second + 1)):
                before = len(deletes)
                result = await call(daemon, "data/delete", ids=list(ids), matching="archive")
                done.append((result, len(deletes) - before))
            return done

    shrinking, kept_small = run(go())
    # One slice of SLICE_ROWS, then slices of the smallest size for the 35 rows left.
    assert shrinking == ({"deleted": first, "skipped": []}, 1 + -(-35 // smallest))
    assert kept_small == ({"deleted": second, "skipped": []}, -(-second // smallest))
    assert sql(primary, "SELECT count(*) FROM chat_messages") == [(0,)]
    assert sql(primary, "SELECT count(*) FROM app_log") == [(len(deletes),)]
