"""The data/* commands against fresh SQLite, PostgreSQL and MariaDB databases."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import time
from collections.abc import Callable

import msgspec
import pytest
import sqlalchemy as sa

from archivist.data import DataDaemon, activity, delete, slicing
from archivist.data.handles import Handle, create_engine
from archivist.data.schema import TableInfo
from archivist.errors import (
    ArchivistError,
    Conflict,
    DatabaseError,
    Forbidden,
    InvalidParams,
    UnknownCollection,
    UnknownCommand,
    UnknownField,
    UnknownHandle,
)
from archivist.protocol import encode_json
from datasupport import BASE, application_write, create_table, message, run, sql, started


async def seed(daemon: DataDaemon, count: int, handle: str = "primary") -> None:
    await daemon.execute(
        "data/create",
        {
            "collection": "chat_messages",
            "dbHandle": handle,
            "items": [message(i) for i in range(1, count + 1)],
        },
    )


async def call(daemon: DataDaemon, name: str, **params: object) -> dict[str, object]:
    return await daemon.execute(
        name, {"collection": "chat_messages", "dbHandle": "primary", **params}
    )


def ids_of(result: dict[str, object]) -> list[object]:
    items = result["items"]
    assert isinstance(items, list)
    return [item["id"] for item in items]


def test_ping_answers_pong(sqlite_url: str) -> None:
    create_table(sqlite_url)

    async def go() -> dict[str, object]:
        async with started(sqlite_url) as daemon:
            return await daemon.execute("ping", {}, caller="worker")

    assert run(go()) == {"message": "pong"}


def test_list_count_create_delete_work_on_every_engine(any_url: str) -> None:
    create_table(any_url)

    async def go() -> None:
        async with started(any_url) as daemon:
            assert await call(daemon, "data/create", data=message(1)) == {"created": 1}
            assert await call(daemon, "data/create", items=[message(i) for i in range(2, 11)]) == {
                "created": 9
            }
            assert await call(daemon, "data/count") == {"count": 10}
            listed = await call(daemon, "data/list", limit=3)
            assert ids_of(listed) == [1, 2, 3]
            assert listed["count"] == 3
            assert listed["collection"] == "chat_messages"
            assert listed["primaryKey"] == "id"
            assert listed["orderBy"] == "created_at"
            assert listed["items"][0] == {  # type: ignore[index]
                **message(1),
                "created_at": "2024-01-01T00:00:01+00:00",
            }
            assert await call(daemon, "data/delete", id=1) == {"deleted": 1}
            assert await call(daemon, "data/delete", ids=[2, 3, 99]) == {"deleted": 2}
            assert await call(daemon, "data/count") == {"count": 7}

    run(go())


def test_list_without_order_uses_declared_order_then_primary_key(any_url: str) -> None:
    create_table(any_url)

    async def go() -> None:
        async with started(any_url) as daemon:
            same = BASE.isoformat()
            items = [message(i, created_at=same) for i in (5, 3, 4)] + [
                message(1, created_at=(BASE + dt.timedelta(days=1)).isoformat()),
                message(2, created_at=(BASE - dt.timedelta(days=1)).isoformat()),
            ]
            await call(daemon, "data/create", items=items)
            assert ids_of(await call(daemon, "data/list")) == [2, 3, 4, 5, 1]
            desc = await call(
                daemon, "data/list", orderBy=[{"field": "created_at", "direction": "desc"}]
            )
            assert ids_of(desc) == [1, 5, 4, 3, 2]

    run(go())


FILTER_CASES: list[tuple[str, dict[str, object], list[int]]] = [
    ("equality", {"room": "room1"}, [1, 4, 7, 10]),
    ("$eq", {"id": {"$eq": 3}}, [3]),
    ("$ne", {"room": {"$ne": "room1"}}, [2, 3, 5, 6, 8, 9]),
    ("$gt", {"id": {"$gt": 8}}, [9, 10]),
    ("$gte", {"id": {"$gte": 8}}, [8, 9, 10]),
    ("$lt", {"score": {"$lt": 0.5}}, [1]),
    ("$lte", {"score": {"$lte": 0.5}}, [1, 2]),
    ("$in", {"id": {"$in": [2, 4, 42]}}, [2, 4]),
    ("$nin", {"id": {"$nin": [1, 2, 3, 4, 5, 6, 7]}}, [8, 9, 10]),
    ("$exists true", {"body": {"$exists": True}}, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
    ("$exists false", {"body": {"$exists": False}}, [10]),
    ("null equality", {"body": None}, [10]),
    ("$ne includes null", {"body": {"$ne": "message 1 😀"}}, [2, 3, 4, 5, 6, 7, 8, 9, 10]),
    ("range on timestamps", {"created_at": {"$gte": "2024-01-01T02:00:09+02:00"}}, [9, 10]),
    ("several operators", {"id": {"$gt": 2, "$lt": 5}, "room": "room0"}, [3]),
    ("$in with null", {"body": {"$in": ["message 2 😀", None]}}, [2, 10]),
    ("$nin includes null", {"body": {"$nin": ["message 1 😀"]}}, [2, 3, 4, 5, 6, 7, 8, 9, 10]),
    (
        "$in on timestamps",
        {"created_at": {"$in": ["2024-01-01T00:00:03+00:00", "2024-01-01T02:00:05+02:00"]}},
        [3, 5],
    ),
]


@pytest.mark.parametrize(
    ("case", "filter_", "expected"), FILTER_CASES, ids=[c[0] for c in FILTER_CASES]
)
def test_filter_operator_selects_matching_rows(
    any_url: str, case: str, filter_: dict[str, object], expected: list[int]
) -> None:
    create_table(any_url)

    async def go() -> tuple[list[object], object]:
        async with started(any_url) as daemon:
            items = [message(i) for i in range(1, 10)] + [message(10, body=None)]
            await call(daemon, "data/create", items=items)
            listed = await call(daemon, "data/list", filter=filter_, orderBy=[{"field": "id"}])
            counted = await call(daemon, "data/count", filter=filter_)
            return ids_of(listed), counted["count"]

    listed, counted = run(go())
    assert listed == expected
    assert counted == len(expected)


def test_cursor_pages_over_ten_thousand_rows_in_both_directions(any_url: str) -> None:
    create_table(any_url)

    async def go() -> None:
        async with started(any_url) as daemon:
            # Pairs of rows share a timestamp, so the primary key must break the ties.
            items = [
                message(i, created_at=(BASE + dt.timedelta(seconds=i // 2)).isoformat())
                for i in range(1, 10_001)
            ]
            await call(daemon, "data/create", items=items)
            seen: list[object] = []
            cursor: dict[str, object] | None = None
            pages = 0
            while True:
                params: dict[str, object] = {"limit": 1000, "fields": ["id", "created_at"]}
                if cursor is not None:
                    params["cursor"] = cursor
                page = await call(daemon, "data/list", **params)
                page_items = page["items"]
                assert isinstance(page_items, list)
                if not page_items:
                    break
                pages += 1
                seen.extend(item["id"] for item in page_items)
                last = page_items[-1]
                cursor = {"field": "created_at", "value": last["created_at"], "id": last["id"]}
            assert pages == 10
            assert seen == list(range(1, 10_001))

            backwards: list[object] = []
            first = await call(
                daemon, "data/list", limit=1, orderBy=[{"field": "created_at", "direction": "desc"}]
            )
            top = first["items"][0]  # type: ignore[index]
            backwards.append(top["id"])
            cursor = {
                "field": "created_at",
                "value": top["created_at"],
                "id": top["id"],
                "direction": "before",
            }
            while True:
                page = await call(daemon, "data/list", limit=1000, cursor=cursor)
                page_items = page["items"]
                assert isinstance(page_items, list)
                if not page_items:
                    break
                # "before" returns the rows just before the cursor, still in listing order.
                backwards.extend(reversed([item["id"] for item in page_items]))
                head = page_items[0]
                cursor = {
                    "field": "created_at",
                    "value": head["created_at"],
                    "id": head["id"],
                    "direction": "before",
                }
            assert backwards == list(range(10_000, 0, -1))

    run(go())


def test_fields_projects_only_the_named_columns(any_url: str) -> None:
    create_table(any_url)

    async def go() -> dict[str, object]:
        async with started(any_url) as daemon:
            await seed(daemon, 2)
            return await call(daemon, "data/list", fields=["id", "body"], limit=1)

    assert run(go())["items"] == [{"id": 1, "body": "message 1 😀"}]


def test_create_identical_existing_row_counts_as_created(any_url: str) -> None:
    create_table(any_url)

    async def go() -> tuple[object, object]:
        async with started(any_url) as daemon:
            await seed(daemon, 3)
            again = await call(daemon, "data/create", items=[message(2), message(3), message(4)])
            return again, (await call(daemon, "data/count"))["count"]

    assert run(go()) == ({"created": 3}, 4)


def test_create_different_existing_row_is_a_conflict_naming_the_key_and_writes_nothing(
    any_url: str,
) -> None:
    create_table(any_url)

    async def go() -> tuple[str, object, object]:
        async with started(any_url) as daemon:
            await seed(daemon, 3)
            with pytest.raises(Conflict) as caught:
                await call(daemon, "data/create", items=[message(10), message(2, body="changed")])
            count = (await call(daemon, "data/count"))["count"]
            body = (await call(daemon, "data/list", filter={"id": 2}))["items"]
            return caught.value.message, count, body

    text, count, items = run(go())
    assert "id 2" in text and "conflict" in text
    assert count == 3
    assert items == [message(2, created_at="2024-01-01T00:00:02+00:00")]


def test_create_with_replace_overwrites_existing_rows(any_url: str) -> None:
    create_table(any_url)

    async def go() -> list[object]:
        async with started(any_url) as daemon:
            await seed(daemon, 2)
            result = await call(
                daemon,
                "data/create",
                items=[message(2, body="new"), message(3)],
                onConflict="replace",
            )
            assert result == {"created": 2}
            listed = await call(daemon, "data/list", fields=["id", "body"])
            return listed["items"]  # type: ignore[return-value]

    assert run(go()) == [
        {"id": 1, "body": "message 1 😀"},
        {"id": 2, "body": "new"},
        {"id": 3, "body": "message 3 😀"},
    ]


def test_delete_with_expected_skips_rows_changed_since_the_copy(any_url: str) -> None:
    create_table(any_url)

    async def go() -> tuple[dict[str, object], object]:
        async with started(any_url) as daemon:
            await seed(daemon, 4)
            copied = (await call(daemon, "data/list"))["items"]
            assert isinstance(copied, list)
            await call(
                daemon, "data/create", items=[message(2, body="edited")], onConflict="replace"
            )
            result = await call(daemon, "data/delete", expected=[*copied[:3], message(99)])
            remaining = ids_of(await call(daemon, "data/list"))
            return result, remaining

    result, remaining = run(go())
    assert result == {"deleted": 2, "skipped": [2, 99]}
    assert remaining == [2, 4]


def _sqlite_file(url: str) -> str:
    return url.removeprefix("sqlite:///")


async def seeded_and_listed(
    daemon: DataDaemon, count: int
) -> tuple[list[dict[str, object]], TableInfo, Handle]:
    """Seed ``count`` rows on the primary and list them: the items, the table, the handle."""
    await seed(daemon, count)
    copied = (await call(daemon, "data/list"))["items"]
    assert isinstance(copied, list)
    info = await daemon.table_info("chat_messages", "primary")
    assert info is not None
    return copied, info, daemon.handle("primary")


def test_sqlite_delete_compares_outside_the_write_lock(sqlite_url: str) -> None:
    """On SQLite the expected rows are compared before the write lock is taken: the compare
    completes while another connection holds the lock, and only the delete waits for it."""
    create_table(sqlite_url)

    async def go() -> tuple[int, int, list[object]]:
        async with started(sqlite_url) as daemon:
            copied, info, handle = await seeded_and_listed(daemon, 3)
            writer = sqlite3.connect(_sqlite_file(sqlite_url), isolation_level=None)
            writer.execute("BEGIN IMMEDIATE")  # another writer holds the lock meanwhile
            try:
                unchanged, skipped = await asyncio.wait_for(
                    handle.transaction(
                        delete._match_expected, info, [(i["id"], i) for i in copied]
                    ),
                    timeout=5,
                )
            finally:
                writer.execute("ROLLBACK")
                writer.close()
            deleted, kept, _ = await handle.run(
                delete._delete_unchanged, handle.engine, info, unchanged
            )
            return len(unchanged), deleted, [*skipped, *kept]

    assert run(go()) == (3, 3, [])


def test_sqlite_delete_keeps_rows_written_between_compare_and_delete(sqlite_url: str) -> None:
    """A row updated or deleted by the application after the compare, before the delete's
    lock, is kept (or reported gone), never deleted; the rest are deleted."""
    create_table(sqlite_url)
    path = _sqlite_file(sqlite_url)

    async def go() -> tuple[int, list[object], list[object]]:
        async with started(sqlite_url) as daemon:
            copied, info, handle = await seeded_and_listed(daemon, 5)
            unchanged, skipped = await handle.transaction(
                delete._match_expected, info, [(i["id"], i) for i in copied]
            )
            assert skipped == []
            with contextlib.closing(sqlite3.connect(path)) as app, app:
                app.execute("UPDATE chat_messages SET body = 'edited' WHERE id = 2")
                app.execute("UPDATE chat_messages SET meta = NULL WHERE id = 3")
                app.execute("DELETE FROM chat_messages WHERE id = 4")
            deleted, kept, _ = await handle.run(
                delete._delete_unchanged, handle.engine, info, unchanged
            )
            return deleted, kept, ids_of(await call(daemon, "data/list"))

    deleted, kept, remaining = run(go())
    assert deleted == 2
    assert sorted(kept) == [2, 3, 4]
    assert remaining == [2, 3]


def _delete_while_the_application_writes(
    sqlite_url: str, count: int
) -> tuple[dict[str, object], list[str]]:
    """Seed ``count`` rows, list them, and delete them as ``expected`` items while, as each
    DELETE statement begins, the application writes with a busy timeout of 0 (it will not
    wait at all); the answer, and what became of each of those writes."""
    create_table(sqlite_url)
    sql(sqlite_url, "CREATE TABLE app_log (n INTEGER)")
    path = _sqlite_file(sqlite_url)
    writes: list[str] = []

    def on_statement(statement: str) -> None:
        if statement.startswith("DELETE FROM"):
            writes.append(application_write(path))

    async def go() -> dict[str, object]:
        async with started(sqlite_url) as daemon:
            await seed(daemon, count)
            listed = (await call(daemon, "data/list", limit=count))["items"]
            engine = daemon.handle("primary").engine
            engine.dispose()  # new connections, traced from the start

            @sa.event.listens_for(engine, "connect")
            def trace(dbapi_connection: sqlite3.Connection, _record: object) -> None:
                dbapi_connection.set_trace_callback(on_statement)

            return await call(daemon, "data/delete", expected=listed)

    return run(go()), writes


def test_sqlite_delete_lets_application_writes_in_between_slices(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete of many rows does not hold SQLite's write lock from start to end: as each
    later slice begins, an application write that will not wait at all (busy timeout 0)
    gets through. (Every slice here is within its time, so none shrinks.)"""
    monkeypatch.setattr(slicing, "SLICE_HOLD", 60.0)
    count = 2 * slicing.SLICE_ROWS + 5
    answer, writes = _delete_while_the_application_writes(sqlite_url, count)
    assert answer == {"deleted": count, "skipped": []}
    assert writes == ["written"] * 3, writes


def test_sqlite_delete_shrinks_its_slices_while_the_application_writes(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows sent back by the worker are deleted as the daemon's own copies are: while the
    application writes, a slice that held the lock longer than `SLICE_HOLD` makes the next
    ones smaller; every row still goes."""
    monkeypatch.setattr(slicing, "SLICE_HOLD", 1e-9)  # no slice is ever quick enough
    count = slicing.SLICE_ROWS + 35
    answer, writes = _delete_while_the_application_writes(sqlite_url, count)
    assert answer == {"deleted": count, "skipped": []}
    # One slice of SLICE_ROWS, then slices of the smallest size: a write before each.
    assert writes == ["written"] * (1 + -(-35 // slicing.SLICE_LADDER[0])), writes


def test_sqlite_delete_spans_several_slices(sqlite_url: str) -> None:
    """Rows changed in any slice, the last one (padded) included, are left and reported;
    every other row of every slice is deleted."""
    create_table(sqlite_url)
    count = 2 * slicing.SLICE_ROWS + 3
    changed = [2, slicing.SLICE_ROWS + 2, count]
    path = _sqlite_file(sqlite_url)

    async def go() -> tuple[dict[str, object], list[object]]:
        async with started(sqlite_url) as daemon:
            await seed(daemon, count)
            listed = (await call(daemon, "data/list", limit=count))["items"]
            assert isinstance(listed, list) and len(listed) == count
            with contextlib.closing(sqlite3.connect(path)) as app, app:
                app.executemany(
                    "UPDATE chat_messages SET body = 'edited' WHERE id = ?",
                    [(key,) for key in changed],
                )
            answer = await call(daemon, "data/delete", expected=listed)
            return answer, ids_of(await call(daemon, "data/list"))

    answer, remaining = run(go())
    assert answer == {"deleted": count - len(changed), "skipped": changed}
    assert remaining == changed


def test_sqlite_delete_matches_the_applications_own_text_forms(sqlite_url: str) -> None:
    """Rows the application wrote with its own JSON spelling are still deleted: the guard
    binds the stored text as read, not archivist's re-encoding of it."""
    create_table(sqlite_url)
    sql(
        sqlite_url,
        "INSERT INTO chat_messages (id, room, created_at, body, score, meta) VALUES "
        "(1, 'r', '2024-01-01 00:00:01.000000', 'b', 0.5, '{ \"n\" :1,\"k\":[1, 2]}')",
    )

    async def go() -> tuple[dict[str, object], list[object]]:
        async with started(sqlite_url) as daemon:
            copied = (await call(daemon, "data/list"))["items"]
            result = await call(daemon, "data/delete", expected=copied)
            return result, ids_of(await call(daemon, "data/list"))

    assert run(go()) == ({"deleted": 1, "skipped": []}, [])


APP_JSON = '{ "n" :1,"k":[1, 2]}'
"""A JSON document as an application might have written it: not json.dumps's spelling."""


@pytest.mark.parametrize("engine", ["sqlite", "postgresql", "mysql"])
def test_a_copy_between_like_tables_stores_what_the_source_held(
    engine: str, fresh_db: Callable[[str], str]
) -> None:
    """Listed items created unchanged in a like SQLite table are bound in their stored form
    (the source's own JSON text arrives byte for byte); an item changed after the listing is
    decoded and stored as given. Every engine stores the same values."""
    source, dest = fresh_db(engine), fresh_db(engine)
    create_table(source)
    stamp = "'2024-01-01 00:00:01'"
    for i in (1, 2):
        sql(
            source,
            "INSERT INTO chat_messages (id, room, created_at, body, score, meta) VALUES "
            f"({i}, 'r', {stamp}, 'b{i}', 0.1, '{APP_JSON}')",
        )

    archive = {"collection": "chat_messages", "dbHandle": "archive"}

    async def go() -> tuple[bool, object]:
        async with started(source, dest) as daemon:
            await daemon.ensure_archive_table("chat_messages")
            listed = (await call(daemon, "data/list"))["items"]
            assert isinstance(listed, list)
            changed = {**listed[1], "body": "changed", "meta": {"n": 2}}
            # As the daemon's frame decoding leaves them: the array of rows, undecoded.
            rows = msgspec.Raw(encode_json([listed[0], changed]))
            await daemon.execute("data/create", {**archive, "items": rows})
            copies = await daemon.execute("data/list", archive)
            return [listed[0], changed] == copies["items"], copies["items"]

    equal, copies = run(go())
    assert equal, copies
    texts = sql(dest, "SELECT id, body, meta FROM chat_messages ORDER BY id")
    if engine == "sqlite":
        assert texts == [(1, "b1", APP_JSON), (2, "changed", '{"n": 2}')]
    else:  # server engines decode and bind: same values, the JSON text respelled
        assert [row[:2] for row in texts] == [(1, "b1"), (2, "changed")]


@pytest.mark.parametrize("engine", ["sqlite", "mysql"])
def test_reading_a_copy_back_shows_what_the_archive_holds_not_what_was_listed(
    engine: str, fresh_db: Callable[[str], str]
) -> None:
    """The verify step's listing by keys reports the archive's own rows: one changed after
    the copy (or gone) shows changed (or missing), whatever the daemon remembers."""
    source, dest = fresh_db(engine), fresh_db(engine)
    create_table(source)
    archive = {"collection": "chat_messages", "dbHandle": "archive"}

    async def go() -> tuple[list[object], list[object], list[object]]:
        async with started(source, dest) as daemon:
            await seed(daemon, 4)
            await daemon.ensure_archive_table("chat_messages")
            listed = (await call(daemon, "data/list"))["items"]
            assert isinstance(listed, list)
            await daemon.execute("data/create", {**archive, "items": listed})
            by_keys = {**archive, "filter": {"id": {"$in": [1, 2, 3, 4]}}}
            intact = (await daemon.execute("data/list", by_keys))["items"]
            sql(dest, "UPDATE chat_messages SET body = 'tampered' WHERE id = 2")
            sql(dest, "DELETE FROM chat_messages WHERE id = 4")
            after = (await daemon.execute("data/list", by_keys))["items"]
            assert isinstance(intact, list) and isinstance(after, list)
            return listed, intact, after

    listed, intact, after = run(go())
    assert intact == listed
    assert after == [listed[0], {**listed[1], "body": "tampered"}, listed[2]]


def test_sqlite_delete_detects_a_case_only_change_under_a_nocase_collation(
    sqlite_url: str,
) -> None:
    """The delete's guard compares text byte for byte, whatever the column's collation: a
    row whose body changed only in case since it was listed is kept."""
    sql(
        sqlite_url,
        "CREATE TABLE chat_messages (id INTEGER PRIMARY KEY, room VARCHAR(40) NOT NULL, "
        "created_at TIMESTAMP WITH TIME ZONE NOT NULL, body TEXT COLLATE NOCASE, "
        "score REAL, meta JSON)",
    )
    sql(sqlite_url, "CREATE INDEX ix_created ON chat_messages (created_at)")
    for i in (1, 2):
        sql(
            sqlite_url,
            "INSERT INTO chat_messages VALUES "
            f"({i}, 'r', '2024-01-01 00:00:0{i}.000000', 'Hello', 0.5, NULL)",
        )

    async def go() -> tuple[dict[str, object], list[object]]:
        async with started(sqlite_url) as daemon:
            listed = (await call(daemon, "data/list"))["items"]
            sql(sqlite_url, "UPDATE chat_messages SET body = 'hello' WHERE id = 2")
            result = await call(daemon, "data/delete", expected=listed)
            return result, ids_of(await call(daemon, "data/list"))

    assert run(go()) == ({"deleted": 1, "skipped": [2]}, [2])


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_bulk_create_that_breaks_a_constraint_is_a_conflict_and_writes_nothing(
    engine: str, fresh_db: Callable[[str], str]
) -> None:
    """Many items written at once (COPY on PostgreSQL) that break a unique constraint other
    than the key are a conflict naming the table, and none of them is written; a value too
    long for its column is a database error naming the handle."""
    url = fresh_db(engine)
    create_table(url)
    sql(url, "CREATE UNIQUE INDEX ux_body ON chat_messages (body)")

    async def go() -> tuple[ArchivistError, ArchivistError, int]:
        async with started(url) as daemon:
            with pytest.raises(Conflict) as duplicate:
                await call(
                    daemon, "data/create", items=[message(1), message(2, body="message 1 😀")]
                )
            too_long = "x" * 41 if engine == "postgresql" else None
            failure: ArchivistError = Conflict("unused")
            if too_long is not None:
                with pytest.raises(DatabaseError) as error:
                    await call(daemon, "data/create", items=[message(3), message(4, room=too_long)])
                failure = error.value
            counted = await call(daemon, "data/count")
            return duplicate.value, failure, int(counted["count"])  # type: ignore[call-overload]

    duplicate, failure, count = run(go())
    assert "chat_messages" in duplicate.message and "nothing was written" in duplicate.message
    if engine == "postgresql":
        assert failure.code == "db_error" and "'primary'" in failure.message
    assert count == 0


def test_items_that_are_not_objects_are_invalid_params_after_a_listing_too(
    sqlite_url: str,
) -> None:
    """Once the daemon remembers listed rows, a create still checks each item: one that is
    not a JSON object is invalid_params naming it, not an internal error."""
    create_table(sqlite_url)

    async def go() -> ArchivistError:
        async with started(sqlite_url) as daemon:
            await seed(daemon, 2)
            await call(daemon, "data/list")
            with pytest.raises(InvalidParams) as error:
                await call(daemon, "data/create", items=[message(5), "not an object", 7])
            return error.value

    assert "items[1]" in run(go()).message


INVALID_CALLS: list[tuple[str, str, dict[str, object], type[ArchivistError]]] = [
    ("unknown handle", "data/list", {"dbHandle": "nope"}, UnknownHandle),
    ("unknown collection", "data/list", {"collection": "users"}, UnknownCollection),
    ("unknown field in filter", "data/list", {"filter": {"nope": 1}}, UnknownField),
    ("unknown field in orderBy", "data/list", {"orderBy": [{"field": "nope"}]}, UnknownField),
    ("unknown field in fields", "data/list", {"fields": ["id", "nope"]}, UnknownField),
    ("unknown field in item", "data/create", {"data": {"id": 1, "nope": 2}}, UnknownField),
    ("unknown param", "data/list", {"fitler": {"id": 1}}, InvalidParams),
    ("limit too large", "data/list", {"limit": 100_001}, InvalidParams),
    ("wrong type", "data/list", {"limit": "10"}, InvalidParams),
    ("unknown operator", "data/count", {"filter": {"id": {"$regex": "1"}}}, InvalidParams),
    ("bad value", "data/create", {"data": {"id": "one"}}, InvalidParams),
    ("data and items", "data/create", {"data": {"id": 1}, "items": []}, InvalidParams),
    ("neither id nor ids", "data/delete", {}, InvalidParams),
    (
        "injection in collection",
        "data/list",
        {"collection": "x; DROP TABLE chat_messages"},
        InvalidParams,
    ),
    ("injection in field", "data/list", {"fields": ["id; DROP TABLE chat_messages"]}, UnknownField),
    (
        "injection in filter key",
        "data/count",
        {"filter": {"id = 1 OR 1=1; DROP TABLE chat_messages --": 1}},
        UnknownField,
    ),
    (
        "injection in orderBy",
        "data/list",
        {"orderBy": [{"field": "id; DROP TABLE chat_messages"}]},
        UnknownField,
    ),
    (
        "injection in handle",
        "data/list",
        {"dbHandle": "primary; DROP TABLE chat_messages"},
        UnknownHandle,
    ),
]


@pytest.mark.parametrize(
    ("case", "command", "params", "error"), INVALID_CALLS, ids=[c[0] for c in INVALID_CALLS]
)
def test_invalid_call_is_a_clear_error_and_changes_nothing(
    any_url: str, case: str, command: str, params: dict[str, object], error: type[ArchivistError]
) -> None:
    create_table(any_url)

    async def go() -> ArchivistError:
        async with started(any_url) as daemon:
            await seed(daemon, 3)
            with pytest.raises(error) as caught:
                await call(daemon, command, **params)
            assert (await call(daemon, "data/count"))["count"] == 3
            return caught.value

    raised = run(go())
    assert raised.code == error.code
    assert raised.message
    assert sql(any_url, "SELECT count(*) FROM chat_messages") == [(3,)]


def test_injection_in_filter_value_is_bound_not_executed(any_url: str) -> None:
    create_table(any_url)

    async def go() -> object:
        async with started(any_url) as daemon:
            await seed(daemon, 3)
            hostile = "x'; DROP TABLE chat_messages; --"
            result = await call(daemon, "data/list", filter={"room": hostile})
            await call(daemon, "data/create", data=message(4, body=hostile))
            return result["items"], (await call(daemon, "data/list", filter={"body": hostile}))

    items, found = run(go())
    assert items == []
    assert ids_of(found) == [4]  # type: ignore[arg-type]


def test_worker_may_run_only_allowlisted_commands(sqlite_url: str) -> None:
    create_table(sqlite_url)

    async def go() -> None:
        async with started(sqlite_url) as daemon:
            daemon.bus.register("admin/reset", lambda params: call(daemon, "data/count"))
            with pytest.raises(Forbidden):
                await daemon.execute("admin/reset", {}, caller="worker")
            assert await daemon.execute("admin/reset", {}) == {"count": 0}
            with pytest.raises(UnknownCommand):
                await daemon.execute("data/nope", {})

    run(go())


def test_table_missing_on_a_handle_is_unknown_collection_not_a_fallback(
    sqlite_url: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    create_table(sqlite_url)
    other = f"sqlite:///{tmp_path / 'other.db'}"

    async def go() -> None:
        config_handles = {"primary": sqlite_url, "archive": "sqlite://", "other": other}
        from archivist.config import make_config
        from datasupport import chat_policy

        daemon = DataDaemon(make_config(config_handles, [chat_policy()]))
        await daemon.start()
        try:
            with pytest.raises(UnknownCollection, match="other"):
                await daemon.execute(
                    "data/list", {"collection": "chat_messages", "dbHandle": "other"}
                )
        finally:
            await daemon.close()

    run(go())


def test_database_error_names_the_handle_and_hides_the_password(sqlite_url: str) -> None:
    create_table(sqlite_url)

    async def go() -> None:
        from archivist.config import make_config
        from datasupport import chat_policy

        config = make_config(
            {"primary": sqlite_url, "archive": "postgresql://someone:s3cret@127.0.0.1:1/none"},
            [chat_policy()],
        )
        daemon = DataDaemon(config)
        await daemon.start()
        try:
            with pytest.raises(DatabaseError) as caught:
                await daemon.execute(
                    "data/count", {"collection": "chat_messages", "dbHandle": "archive"}
                )
            assert "'archive'" in caught.value.message
            assert "s3cret" not in caught.value.message
        finally:
            await daemon.close()

    run(go())


def test_many_items_are_created_in_few_statements(sqlite_url: str) -> None:
    create_table(sqlite_url)
    statements: list[str] = []

    async def go() -> None:
        from sqlalchemy import event

        async with started(sqlite_url) as daemon:
            engine = daemon.handle("primary").engine

            @event.listens_for(engine, "before_cursor_execute")
            def count(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
                statements.append(statement)

            await seed(daemon, 1000)
            await call(daemon, "data/delete", ids=list(range(1, 1001)))

    run(go())
    writes = [
        s for s in statements if s.lstrip().upper().startswith(("INSERT", "DELETE", "SELECT"))
    ]
    assert len(writes) <= 4, writes


def test_a_cancelled_command_returns_only_once_its_transaction_has_ended(
    sqlite_url: str,
) -> None:
    """A command whose caller goes away (its connection closed) cannot stop the thread that
    runs its transaction; the cancellation waits for that transaction to end, so whoever
    comes next (the recount before a task is queued again) sees what it did."""
    create_table(sqlite_url)

    def slow_insert(connection: sa.Connection) -> None:
        time.sleep(0.3)
        connection.exec_driver_sql(
            "INSERT INTO chat_messages (id, room, created_at, body) "
            "VALUES (1, 'r', '2024-01-01 00:00:00.000000', 'b')"
        )

    async def go() -> int:
        handle = Handle("primary", sqlite_url)
        try:
            command = asyncio.ensure_future(handle.transaction(slow_insert, write=True))
            await asyncio.sleep(0.05)
            command.cancel()
            with pytest.raises(asyncio.CancelledError):
                await command
            with contextlib.closing(sqlite3.connect(_sqlite_file(sqlite_url))) as db:
                (rows,) = db.execute("SELECT count(*) FROM chat_messages").fetchone()
            return int(rows)
        finally:
            await handle.close()

    assert run(go()) == 1


def test_sqlite_delete_waits_between_slices_only_while_others_write(sqlite_url: str) -> None:
    """The gap between slices is taken when another connection has committed since this one
    last looked (an application that writes may be waiting), not for this connection's own
    commits, and not when nobody else writes. Only a commit that none of the daemon's own
    connections can have made is taken for the application's (what archivist yields to)."""
    create_table(sqlite_url)
    engine = create_engine(sqlite_url)  # archivist's: autocommit unless told otherwise
    insert = (
        "INSERT INTO chat_messages (id, room, created_at, body) "
        "VALUES (?, 'r', '2024-01-01 00:00:00.000000', 'b')"
    )
    seen: list[tuple[bool, bool]] = []
    try:
        with engine.connect() as connection, engine.connect() as own_other:
            raw = connection.connection.dbapi_connection
            other_raw = own_other.connection.dbapi_connection
            assert raw is not None and other_raw is not None

            def look() -> None:
                found = activity.look(connection, raw)
                seen.append((found.changed, found.by_others))

            look()  # first time: assume a change, by nobody known
            look()  # nobody wrote
            with activity.own_commit(connection):
                raw.execute(insert, (1,))  # this connection's own commit
            look()
            with contextlib.closing(sqlite3.connect(_sqlite_file(sqlite_url))) as app, app:
                app.execute(insert, (2,))  # the application's
            look()
            look()
            with activity.own_commit(own_other):
                other_raw.execute(insert, (3,))  # another of the daemon's own connections
            look()
            assert activity.others(connection) == 1  # the application, seen just now
    finally:
        engine.dispose()
    assert seen == [
        (True, False),
        (False, False),
        (False, False),
        (True, True),
        (False, False),
        (True, False),
    ]


def test_a_sqlite_copy_of_listed_rows_overwrites_by_key_without_reading_first(
    fresh_db: Callable[[str], str],
) -> None:
    """A batch's create (rows just listed, as raw JSON like the worker sends them) is one
    upsert by key: a stale copy left by an interrupted run is overwritten with no read of
    the destination, and any other constraint still fails the whole call."""
    source, dest = fresh_db("sqlite"), fresh_db("sqlite")
    create_table(source)
    archive = {"collection": "chat_messages", "dbHandle": "archive"}
    statements: list[str] = []

    def record(*args: object) -> None:
        statements.append(" ".join(str(args[2]).split()[:4]))

    async def go() -> list[tuple[object, ...]]:
        async with started(source, dest) as daemon:
            await seed(daemon, 3)
            await daemon.ensure_archive_table("chat_messages")
            sql(dest, "CREATE UNIQUE INDEX one_body ON chat_messages (body)")
            sql(
                dest,
                "INSERT INTO chat_messages (id, room, created_at, body) VALUES "
                "(1, 'stale', '2024-01-01 00:00:00.000000', 'stale copy'), "
                "(99, 'other', '2024-01-01 00:00:00.000000', 'message 3 😀')",
            )
            listed = (await call(daemon, "data/list"))["items"]
            assert isinstance(listed, list)
            rows = [msgspec.Raw(encode_json(item)) for item in listed]
            sa.event.listen(daemon.handles["archive"].engine, "before_cursor_execute", record)
            created = await daemon.execute(
                "data/create",
                {**archive, "items": msgspec.Raw(encode_json(listed[:2])), "onConflict": "replace"},
            )
            assert created == {"created": 2}
            reads = [s for s in statements if s.upper().startswith("SELECT") and "chat" in s]
            assert not reads and any("INSERT" in s for s in statements), statements
            with pytest.raises(Conflict):  # id 3's body is taken by id 99: nothing written
                await daemon.execute(
                    "data/create", {**archive, "items": rows, "onConflict": "replace"}
                )
        return sql(dest, "SELECT id, room, body FROM chat_messages ORDER BY id")

    assert run(go()) == [
        (1, "room1", "message 1 😀"),
        (2, "room2", "message 2 😀"),
        (99, "other", "message 3 😀"),
    ]


def test_a_sqlite_delete_of_rows_sent_back_as_raw_json_keeps_those_changed_since(
    sqlite_url: str,
) -> None:
    """Rows sent back byte for byte as listed are deleted by their listed stored form; a row
    changed since is kept and reported, and a row whose JSON text differs by a space is
    compared field by field (and still deleted: it says the same)."""
    path = sqlite_url.removeprefix("sqlite:///")
    create_table(sqlite_url)

    async def go() -> tuple[dict[str, object], list[object]]:
        async with started(sqlite_url) as daemon:
            await seed(daemon, 4)
            listed = (await call(daemon, "data/list"))["items"]
            assert isinstance(listed, list)
            with contextlib.closing(sqlite3.connect(path)) as app, app:
                app.execute("UPDATE chat_messages SET body = 'edited' WHERE id = 2")
            rows = [msgspec.Raw(encode_json(item)) for item in listed]
            rows[3] = msgspec.Raw(encode_json(listed[3]).replace(b":", b": ", 1))
            answer = await call(daemon, "data/delete", expected=rows)
            return answer, ids_of(await call(daemon, "data/list"))

    assert run(go()) == ({"deleted": 3, "skipped": [2]}, [2])
