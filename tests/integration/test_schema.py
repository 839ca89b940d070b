"""Archive tables: created to mirror the source across engine pairs, and evolved safely."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from archivist.data.columns import ColumnSpec, Kind
from archivist.errors import SchemaError
from datasupport import CHAT_COLUMNS, ENGINES, create_table, run, sql, started

PAIRS = list(itertools.product(ENGINES, ENGINES))
PAIR_IDS = [f"{a}-to-{b}" for a, b in PAIRS]


@pytest.mark.parametrize(("source", "dest"), PAIRS, ids=PAIR_IDS)
def test_archive_table_is_created_mirroring_columns_key_and_order_index(
    source: str, dest: str, fresh_db: Callable[[str], str]
) -> None:
    source_url, dest_url = fresh_db(source), fresh_db(dest)
    create_table(source_url)

    async def go() -> None:
        async with started(source_url, dest_url) as daemon:
            await daemon.ensure_archive_table("chat_messages")
            src = await daemon.table_info("chat_messages", "primary")
            dst = await daemon.table_info("chat_messages", "archive")
            assert src is not None and dst is not None
            assert [(c.name, c.kind, c.timezone) for c in dst.columns] == [
                (c.name, c.kind, c.timezone) for c in src.columns
            ]
            assert dst.primary_key == ("id",)
            assert "created_at" in dst.indexed
            # Ensuring again is a no-op.
            await daemon.ensure_archive_table("chat_messages")

    run(go())


@pytest.mark.parametrize(("source", "dest"), PAIRS, ids=PAIR_IDS)
def test_archive_table_gains_a_column_the_source_gained(
    source: str, dest: str, fresh_db: Callable[[str], str]
) -> None:
    source_url, dest_url = fresh_db(source), fresh_db(dest)
    create_table(source_url)

    async def go() -> list[object]:
        async with started(source_url, dest_url) as daemon:
            await daemon.ensure_archive_table("chat_messages")
            quote = "`" if source == "mysql" else '"'
            column_type = {"sqlite": "TEXT", "postgresql": "TEXT", "mysql": "LONGTEXT"}[source]
            sql(
                source_url, f"ALTER TABLE chat_messages ADD COLUMN {quote}lang{quote} {column_type}"
            )
            await daemon.ensure_archive_table("chat_messages")
            item = {"id": 1, "room": "r", "created_at": "2024-01-01T00:00:00+00:00", "lang": "fr"}
            await daemon.execute(
                "data/create", {"collection": "chat_messages", "dbHandle": "primary", "data": item}
            )
            listed = await daemon.execute(
                "data/list", {"collection": "chat_messages", "dbHandle": "primary"}
            )
            await daemon.execute(
                "data/create",
                {"collection": "chat_messages", "dbHandle": "archive", "items": listed["items"]},
            )
            copied = await daemon.execute(
                "data/list",
                {"collection": "chat_messages", "dbHandle": "archive", "fields": ["lang"]},
            )
            return copied["items"]  # type: ignore[return-value]

    assert run(go()) == [{"lang": "fr"}]


@pytest.mark.parametrize("dest", ENGINES)
def test_narrowed_type_is_a_schema_error_and_nothing_changes(
    dest: str, fresh_db: Callable[[str], str]
) -> None:
    source_url, dest_url = fresh_db("postgresql"), fresh_db(dest)
    create_table(source_url)
    narrow = [
        ColumnSpec("room", Kind.STRING, length=5, nullable=False) if c.name == "room" else c
        for c in CHAT_COLUMNS
    ]
    create_table(dest_url, columns=narrow)

    async def go() -> str:
        async with started(source_url, dest_url) as daemon:
            with pytest.raises(SchemaError) as caught:
                await daemon.ensure_archive_table("chat_messages")
            return caught.value.message

    text = run(go())
    assert "room" in text and "narrower" in text


@pytest.mark.parametrize("dest", ENGINES)
def test_column_dropped_from_source_is_a_schema_error(
    dest: str, fresh_db: Callable[[str], str]
) -> None:
    source_url, dest_url = fresh_db("sqlite"), fresh_db(dest)
    create_table(source_url, columns=[c for c in CHAT_COLUMNS if c.name != "score"])
    create_table(dest_url)

    async def go() -> str:
        async with started(source_url, dest_url) as daemon:
            with pytest.raises(SchemaError) as caught:
                await daemon.ensure_archive_table("chat_messages")
            return caught.value.message

    assert "score" in run(go())


def test_wider_archive_column_is_accepted(fresh_db: Callable[[str], str]) -> None:
    source_url, dest_url = fresh_db("mysql"), fresh_db("postgresql")
    narrow = [
        ColumnSpec("id", Kind.INTEGER, int_bits=32, nullable=False) if c.name == "id" else c
        for c in CHAT_COLUMNS
    ]
    create_table(source_url, columns=narrow)
    create_table(dest_url)

    async def go() -> None:
        async with started(source_url, dest_url) as daemon:
            await daemon.ensure_archive_table("chat_messages")

    run(go())


def test_data_create_on_the_destination_creates_a_missing_archive_table(
    fresh_db: Callable[[str], str],
) -> None:
    source_url, dest_url = fresh_db("sqlite"), fresh_db("mysql")
    create_table(source_url)

    async def go() -> object:
        async with started(source_url, dest_url) as daemon:
            item = {"id": 7, "room": "r", "created_at": "2024-01-01T00:00:00+00:00"}
            await daemon.execute(
                "data/create", {"collection": "chat_messages", "dbHandle": "archive", "data": item}
            )
            return await daemon.execute(
                "data/count", {"collection": "chat_messages", "dbHandle": "archive"}
            )

    assert run(go()) == {"count": 1}
