"""The archive of a collection as the cold operations see it: a kind of storage behind the
policy's ``dest_handle``.

An SQL-table archive is reached through the data commands (``data/list``, ``data/count``,
``data/delete``), like any handle; what differs between kinds is how rows are expired
(batched deletes, or whole partitions and snapshot expiry) and how DuckDB reads them
(`archivist.cold.query`). `archive_of` picks the kind from the handle's URL.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from archivist.data import DataDaemon
from archivist.data.age import cutoff_value
from archivist.data.columns import ColumnSpec
from archivist.data.registry import Entity
from archivist.data.schema import TableInfo
from archivist.data.values import JSONObject
from archivist.errors import BadAnswer, SchemaError

log = logging.getLogger(__name__)

EXPIRE_BATCH: Final = 5_000
"""Archived rows one expiry statement deletes at most: short transactions, so that the
archive's own readers and the archiving task's inserts wait little."""


@dataclass(frozen=True)
class ArchiveTable:
    """An archive's table as the cold operations need it: its columns (kinds) and key."""

    columns: tuple[ColumnSpec, ...]
    pk: str

    @property
    def column_names(self) -> list[str]:
        return [spec.name for spec in self.columns]

    def spec(self, name: str) -> ColumnSpec:
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise SchemaError(f"the archive table has no column {name}")


@dataclass(frozen=True)
class Expired:
    """What an expiry did (or would do, in a dry run)."""

    rows: int
    """Rows deleted (or that would be)."""
    detail: str = ""
    """How, where the kind has more to say (partitions dropped, snapshots expired)."""


class ColdArchive(Protocol):
    """One collection's archive, of some kind."""

    kind: str
    """``"sql"`` or ``"iceberg"``: how the archive stores rows."""

    async def info(self) -> ArchiveTable | None:
        """The archive table as archivist reads it (None: there is none yet)."""
        ...

    async def cutoff(self, column: str, time_unit: str | None, before: dt.datetime) -> object:
        """``before`` in ``column``'s JSON form: a row is past retention when below it."""
        ...

    async def rows(self, params: JSONObject) -> list[JSONObject]:
        """``data/list`` on the archive: items in their JSON form."""
        ...

    async def count(self, filter_: dict[str, object] | None) -> int: ...

    async def remove(self, items: list[JSONObject]) -> tuple[int, list[object]]:
        """Delete the archived rows still equal to ``items``; answers how many went, and
        the keys of those that did not (changed or gone since)."""
        ...

    async def expire(
        self,
        filter_: dict[str, object],
        *,
        dry_run: bool,
        progress: Callable[[int], None] | None = None,
    ) -> Expired:
        """Delete every archived row ``filter_`` matches (the rows past retention)."""
        ...


class SQLArchive:
    """An archive that is an SQL table on a handle (SQLite, PostgreSQL, MariaDB)."""

    kind = "sql"

    def __init__(self, data: DataDaemon, entity: Entity) -> None:
        self.data = data
        self.entity = entity
        self.handle = entity.dest_handle

    def __repr__(self) -> str:
        return f"SQLArchive({self.entity.collection!r} on {self.handle!r})"

    async def _table(self) -> TableInfo | None:
        # Read without data/list, which would create a missing archive table.
        return await self.data.table_info(self.entity.collection, self.handle)

    async def info(self) -> ArchiveTable | None:
        table = await self._table()
        return None if table is None else ArchiveTable(tuple(table.columns), table.pk)

    async def cutoff(self, column: str, time_unit: str | None, before: dt.datetime) -> object:
        table = await self._table()
        if table is None:
            raise SchemaError(f"{self.entity.collection} has no archive table yet")
        handle = self.data.handle(self.handle)
        return await handle.transaction(cutoff_value, table, column, time_unit, before)

    async def rows(self, params: JSONObject) -> list[JSONObject]:
        return await list_rows(self.data, self.entity.collection, self.handle, params)

    async def count(self, filter_: dict[str, object] | None) -> int:
        return await self.data.count(self.entity.collection, self.handle, filter_)

    async def remove(self, items: list[JSONObject]) -> tuple[int, list[object]]:
        if not items:
            return 0, []
        answer = await self.data.execute(
            "data/delete",
            {"collection": self.entity.collection, "dbHandle": self.handle, "expected": items},
        )
        deleted, skipped = answer.get("deleted"), answer.get("skipped", [])
        if not isinstance(deleted, int) or not isinstance(skipped, list):
            raise BadAnswer(f"data/delete of {self.entity.collection} answered {answer!r}")
        return deleted, skipped

    async def expire(
        self,
        filter_: dict[str, object],
        *,
        dry_run: bool,
        progress: Callable[[int], None] | None = None,
    ) -> Expired:
        info = await self.info()
        if info is None:
            return Expired(0, "no archive table yet")
        if dry_run:
            return Expired(await self.count(filter_))
        deleted = 0
        collection = self.entity.collection
        while True:
            # Keys first, then a delete by key: each batch one short transaction on every
            # engine (a DELETE ... LIMIT is not portable).
            page = await self.rows({"filter": filter_, "fields": [info.pk], "limit": EXPIRE_BATCH})
            if not page:
                break
            answer = await self.data.execute(
                "data/delete",
                {
                    "collection": collection,
                    "dbHandle": self.handle,
                    "ids": [item[info.pk] for item in page],
                },
            )
            gone = answer.get("deleted")
            if not isinstance(gone, int):
                raise BadAnswer(f"data/delete of {collection} answered {answer!r}")
            deleted += gone
            if progress is not None:
                progress(gone)
            if len(page) < EXPIRE_BATCH:
                break
        return Expired(deleted)


async def list_rows(
    data: DataDaemon, collection: str, handle: str, params: JSONObject
) -> list[JSONObject]:
    """``data/list`` on ``handle``: its items."""
    answer = await data.execute(
        "data/list", {"collection": collection, "dbHandle": handle, **params}
    )
    items = answer.get("items")
    if not isinstance(items, list):
        raise BadAnswer(f"data/list of {collection} answered without items")
    return items


ICEBERG_SCHEME: Final = "iceberg+"
"""How a handle's URL names an Iceberg catalog (``iceberg+sqlite:///catalog.db?...``)."""


def kind_of(url: str) -> str:
    """The kind of archive a handle's URL names: ``"iceberg"`` or ``"sql"``."""
    return "iceberg" if url.startswith(ICEBERG_SCHEME) else "sql"


def archive_of(data: DataDaemon, collection: str) -> ColdArchive:
    """The archive of ``collection``'s policy, of the kind its ``dest_handle`` names."""
    entity = data.entity(collection)
    if entity.rules.mode == "purge":
        raise SchemaError(f"{collection}: its policy purges rows; it has no archive")
    url = data.config.handles.get(entity.dest_handle, "")
    if kind_of(url) == "iceberg":
        from archivist.cold.lake import IcebergArchive

        return IcebergArchive(data, entity)
    return SQLArchive(data, entity)
