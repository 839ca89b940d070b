"""The missing-index warning on real databases: `--dry-run`'s plan and the daemon's start-up."""

from __future__ import annotations

import logging

import pytest

from archivist.data.handles import create_engine
from archivist.data.indexes import PRIMARY_KEY, order_index
from datasupport import chat_policy, create_table, run, sql, started


def _index(url: str, table: str, column: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return order_index(connection, table, column)
    finally:
        engine.dispose()


def test_the_index_on_order_by_is_found(any_url: str) -> None:
    create_table(any_url, index="created_at")
    assert _index(any_url, "chat_messages", "created_at") is not None

    async def plan() -> tuple[str | None, tuple[str, ...]]:
        async with started(any_url) as data:
            found = await data.plan("chat_messages")
            return found.index, found.warnings

    index, warnings = run(plan())
    assert index is not None
    assert not any("every batch scans" in w for w in warnings)


def test_no_index_is_warned_at_dry_run_and_start_up(
    any_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    create_table(any_url, index=None)
    assert _index(any_url, "chat_messages", "created_at") is None

    async def plan() -> tuple[str | None, tuple[str, ...]]:
        async with started(any_url) as data:
            found = await data.plan("chat_messages")
            return found.index, found.warnings

    with caplog.at_level(logging.WARNING, logger="archivist"):
        index, warnings = run(plan())
    assert index is None
    assert any("no index starts with created_at" in w for w in warnings)
    assert any("no index starts with created_at" in r.getMessage() for r in caplog.records)


def test_an_index_where_order_by_is_second_is_not_enough(any_url: str) -> None:
    create_table(any_url, index=None)
    sql(any_url, "CREATE INDEX ix_room_created ON chat_messages (room, created_at)")
    assert _index(any_url, "chat_messages", "created_at") is None
    sql(any_url, "CREATE INDEX ix_created_room ON chat_messages (created_at, room)")
    assert _index(any_url, "chat_messages", "created_at") == "ix_created_room"


def test_the_primary_key_serves_order_by_id(any_url: str) -> None:
    create_table(any_url, index=None)

    async def plan() -> str | None:
        async with started(any_url, policies=[chat_policy(order_by="id")]) as data:
            return (await data.plan("chat_messages")).index

    index = run(plan())
    assert index is not None
    # PostgreSQL names its key (chat_messages_pkey); SQLite and MariaDB do not.
    assert index == PRIMARY_KEY or index.endswith("pkey")


def test_a_unique_constraint_counts(any_url: str) -> None:
    create_table(any_url, index=None)
    sql(any_url, "CREATE UNIQUE INDEX ux_created ON chat_messages (created_at)")
    assert _index(any_url, "chat_messages", "created_at") == "ux_created"


def test_mariadb_foreign_key_index_counts(mysql_url: str) -> None:
    """InnoDB creates an index for each foreign key on its own: it serves ORDER BY too."""
    sql(mysql_url, "CREATE TABLE rooms (id INT PRIMARY KEY)")
    sql(
        mysql_url,
        "CREATE TABLE posts (id INT PRIMARY KEY, room_id INT,"
        " CONSTRAINT fk_posts_room FOREIGN KEY (room_id) REFERENCES rooms (id))",
    )
    assert _index(mysql_url, "posts", "room_id") == "fk_posts_room"
