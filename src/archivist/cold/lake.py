"""An Iceberg archive (an ``iceberg+...`` handle) as the cold operations see it.

Rows are listed, counted and deleted through the handle's data commands
(`archivist.data.iceberg`), like an SQL archive's; a restore's delete of a batch is one
Iceberg commit. Expiry is its own: one delete commit for every row past retention (pyiceberg
drops whole data files, so whole partitions, where the filter covers them, and rewrites only
the files it cuts through), then every snapshot older than that commit is expired and the
files only they referenced are removed, so that the rows really go.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from archivist.cold.archives import ArchiveTable, Expired, list_rows
from archivist.data import DataDaemon
from archivist.data.columns import Kind
from archivist.data.registry import Entity
from archivist.data.values import JSONObject, encode_value
from archivist.errors import BadAnswer, SchemaError

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from archivist.data.iceberg.lake import Lake, LakeTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swept:
    """What an expiry commit and the snapshot expiry after it did to the table's files."""

    rows: int
    files_dropped: int
    """Data files removed whole by the delete (whole partitions, where it covered them)."""
    files_rewritten: int
    """Data files the delete cut through, rewritten without the expired rows."""
    snapshots: int
    """Snapshots expired after the delete."""
    removed: int
    """Files (data, manifests, manifest lists) that only expired snapshots referenced,
    removed from the warehouse."""

    def detail(self) -> str:
        return (
            f"{self.files_dropped} data file(s) dropped whole, {self.files_rewritten} rewritten; "
            f"{self.snapshots} older snapshot(s) expired, {self.removed} file(s) removed"
        )


class IcebergArchive:
    """An archive that is an Iceberg table (`archivist.data.iceberg`)."""

    kind = "iceberg"

    def __init__(self, data: DataDaemon, entity: Entity) -> None:
        self.data = data
        self.entity = entity
        self.handle = entity.dest_handle
        self.lake: Lake = data.lakes.lake_commands.lake(self.handle)

    def __repr__(self) -> str:
        return f"IcebergArchive({self.entity.collection!r} on {self.handle!r})"

    async def _table(self) -> LakeTable | None:
        # The catalog's table now, never created (data/list on the handle would create it).
        return await self.lake.run(self.lake.table, self.entity.collection)

    async def info(self) -> ArchiveTable | None:
        found = await self._table()
        return None if found is None else ArchiveTable(tuple(found.specs), found.pk)

    async def cutoff(self, column: str, time_unit: str | None, before: dt.datetime) -> object:
        found = await self._table()
        if found is None:
            raise SchemaError(f"{self.entity.collection} has no Iceberg table yet")
        spec = found.spec(column)
        before = before.astimezone(dt.UTC)
        if spec.kind is Kind.INTEGER:
            scale = 1000 if time_unit == "ms" else 1
            return math.ceil(before.timestamp() * scale)
        if spec.kind is Kind.DATE:
            return before.date().isoformat()
        if spec.kind is Kind.DATETIME:
            return encode_value(spec, before if spec.timezone else before.replace(tzinfo=None))
        raise SchemaError(
            f"{self.entity.collection}: retention on an Iceberg archive reads a timestamp, "
            f"date or epoch column; {column} is {spec.kind}"
        )

    async def rows(self, params: JSONObject) -> list[JSONObject]:
        return await list_rows(self.data, self.entity.collection, self.handle, params)

    async def count(self, filter_: dict[str, object] | None) -> int:
        return await self.data.count(self.entity.collection, self.handle, filter_)

    async def remove(self, items: list[JSONObject]) -> tuple[int, list[object]]:
        """One commit deleting the rows by key: nothing but archivist, under the collection's
        mover lock, writes an archive table, so a key names the row that was copied."""
        if not items:
            return 0, []
        info = await self.info()
        if info is None:
            return 0, [item.get(self.entity.order_by) for item in items]
        answer = await self.data.execute(
            "data/delete",
            {
                "collection": self.entity.collection,
                "dbHandle": self.handle,
                "ids": [item[info.pk] for item in items],
            },
        )
        deleted = answer.get("deleted")
        if not isinstance(deleted, int):
            raise BadAnswer(f"data/delete of {self.entity.collection} answered {answer!r}")
        return deleted, []

    async def expire(
        self,
        filter_: dict[str, object],
        *,
        dry_run: bool,
        progress: Callable[[int], None] | None = None,
    ) -> Expired:
        found = await self._table()
        if found is None:
            return Expired(0, "no Iceberg table yet")
        rows = await self.count(filter_)
        if dry_run or rows == 0:
            return Expired(rows)
        from archivist.data.iceberg.filters import row_filter

        # The handle's own table object: this process's later reads and commits then see
        # the snapshot that remains, not one whose files are gone.
        commands = self.data.lakes.lake_commands
        _, _, cached = await commands.table(self.entity.collection, self.handle)
        where = row_filter(cached.specs, cached.codec, filter_)
        swept = await self.lake.run(_sweep, cached.table, where, self.entity.collection)
        if progress is not None:
            progress(swept.rows)
        return Expired(swept.rows, swept.detail())


def _sweep(table: Table, where: object, collection: str) -> Swept:
    """Delete the rows ``where`` matches in one commit, expire every older snapshot, and
    remove the files only those referenced."""
    table.refresh()
    mentioned = _files(table, live_only=False)
    live_before = _live(table)
    table.delete(where, snapshot_properties={"archivist.operation": "expire"})  # type: ignore[arg-type]
    live_after = _live(table)
    current = table.current_snapshot()
    assert current is not None
    older = [s.snapshot_id for s in table.snapshots() if s.snapshot_id != current.snapshot_id]
    if older:
        table.maintenance.expire_snapshots().by_ids(older).commit()
    gone = sorted(mentioned - _files(table, live_only=True))
    for path in gone:
        table.io.delete(path)
    rows = sum(live_before.values()) - sum(live_after.values())
    removed = len(live_before.keys() - live_after.keys())
    added = len(live_after.keys() - live_before.keys())
    log.info(
        "%s: retention deleted %d row(s) from its Iceberg table; %d old snapshot(s) and "
        "%d file(s) removed",
        collection,
        rows,
        len(older),
        len(gone),
    )
    # A file the delete cut through is replaced by one without the expired rows.
    return Swept(rows, removed - min(added, removed), added, len(older), len(gone))


def _live(table: Table) -> dict[str, int]:
    """The data files the current snapshot reads, with their rows."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return {}
    return {
        entry.data_file.file_path: entry.data_file.record_count
        for manifest in snapshot.manifests(table.io)
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
    }


def _files(table: Table, *, live_only: bool) -> set[str]:
    """Every file the table's snapshots reference: manifest lists, manifests and data files
    (with ``live_only``, only the data files a snapshot reads, not those it deleted)."""
    files: set[str] = set()
    for snapshot in table.snapshots():
        files.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            files.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=live_only):
                files.add(entry.data_file.file_path)
    return files
