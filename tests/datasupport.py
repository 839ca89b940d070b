"""Helpers for database tests: portable source tables, a started DataDaemon, a sync runner."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import TypeVar

import sqlalchemy as sa

from archivist.config import ArchiveConfig, make_config
from archivist.data import DataDaemon
from archivist.data.columns import ColumnSpec, Kind
from archivist.data.handles import create_engine
from archivist.data.schema import build_info, index_name

T = TypeVar("T")

ENGINES = ("sqlite", "postgresql", "mysql")

CHAT_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("id", Kind.INTEGER, nullable=False),
    ColumnSpec("room", Kind.STRING, length=40, nullable=False),
    ColumnSpec("created_at", Kind.DATETIME, timezone=True, nullable=False),
    ColumnSpec("body", Kind.TEXT),
    ColumnSpec("score", Kind.FLOAT),
    ColumnSpec("meta", Kind.JSON),
)


BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def message(i: int, **overrides: object) -> dict[str, object]:
    """Row ``i`` of `CHAT_COLUMNS` as a JSON item: ids, instants and scores rise with ``i``."""
    row: dict[str, object] = {
        "id": i,
        "room": f"room{i % 3}",
        "created_at": (BASE + dt.timedelta(seconds=i)).isoformat(),
        "body": f"message {i} 😀",
        "score": i / 4,
        "meta": {"n": i},
    }
    row.update(overrides)
    return row


def run(coro: Coroutine[object, object, T]) -> T:
    return asyncio.run(coro)


def create_table(
    url: str,
    name: str = "chat_messages",
    columns: Sequence[ColumnSpec] = CHAT_COLUMNS,
    *,
    pk: Sequence[str] = ("id",),
    index: str | None = "created_at",
) -> None:
    """Create a table of portable columns on ``url`` (the way archivist maps types)."""
    engine = create_engine(url)
    try:
        info = build_info(name, engine.dialect.name, list(columns), list(pk))
        table = info.table
        if index is not None:
            sa.Index(index_name(name, index), table.c[index])
        with engine.begin() as connection:
            table.create(connection)
    finally:
        engine.dispose()


def sql(url: str, statement: str) -> list[tuple[object, ...]]:
    """Run raw SQL on ``url``; the rows it returns (if any)."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.exec_driver_sql(statement)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def application_write(path: str) -> str:
    """What an application that will not wait at all (busy timeout 0) gets when it writes a
    row to the SQLite file at ``path`` (table ``app_log``): "written", or the error."""
    with contextlib.closing(sqlite3.connect(path, timeout=0)) as app:
        try:
            with app:
                app.execute("INSERT INTO app_log VALUES (1)")
        except sqlite3.OperationalError as exc:
            return str(exc)
    return "written"


def chat_policy(**overrides: object) -> ArchiveConfig:
    values: dict[str, object] = {
        "collection": "chat_messages",
        "order_by": "created_at",
        "max_rows": 100,
        "rows_per_archive": 10,
    }
    values.update(overrides)
    return ArchiveConfig(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def started(
    primary: str, archive: str | None = None, policies: Sequence[ArchiveConfig] | None = None
) -> AsyncIterator[DataDaemon]:
    handles = {"primary": primary}
    if archive is not None:
        handles["archive"] = archive
    else:
        handles["archive"] = "sqlite://"
    config = make_config(handles, list(policies if policies is not None else [chat_policy()]))
    daemon = DataDaemon(config)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.close()
