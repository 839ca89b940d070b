"""An Iceberg handle (`Lake`): its pyiceberg SQL catalog, one table per collection (created
and evolved from the source table), scans, verified commits and orphan clean-up. Blocking
work runs in the handle's own threads, as a database handle's does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import fs as pafs
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.manifest import ManifestEntryStatus
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform, MonthTransform, Transform
from pyiceberg.types import NestedField

from archivist.data.columns import ColumnSpec, Kind
from archivist.data.handles import run_to_the_end
from archivist.data.iceberg.expr import AlwaysTrue, And, BooleanExpression, ge, is_in, le
from archivist.data.iceberg.filters import literal
from archivist.data.iceberg.types import (
    COLUMNS_PROPERTY,
    from_arrow_values,
    iceberg_type,
    python_rows,
    specs_of,
    specs_property,
)
from archivist.data.iceberg.url import LakeURL
from archivist.data.schema import TableInfo, incompatibility
from archivist.data.values import RowCodec
from archivist.errors import ArchivistError, DatabaseError, SchemaError, VerifyMismatch

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

PK_PROPERTY: Final = "archivist.primary-key"
ORDER_PROPERTY: Final = "archivist.order-by"
PARTITIONS: Final = ("day", "month", "none")
DEFAULT_PARTITION: Final = "month"
ORPHAN_AGE: Final = 60.0
"""Seconds a data file no snapshot references must be old before it is removed: a writer's
file is unreferenced until its commit, which follows within seconds."""


@dataclass(frozen=True)
class LakeTable:
    """A collection's Iceberg table as archivist reads it: the source's column kinds, its
    primary key, and the Arrow schema its files hold."""

    table: Table
    specs: tuple[ColumnSpec, ...]
    pk: str
    order_by: str
    codec: RowCodec
    arrow_schema: pa.Schema

    @classmethod
    def of(cls, table: Table) -> LakeTable:
        props = table.properties
        specs = tuple(specs_of(props[COLUMNS_PROPERTY]))
        return cls(
            table=table,
            specs=specs,
            pk=props[PK_PROPERTY],
            order_by=props.get(ORDER_PROPERTY, props[PK_PROPERTY]),
            codec=RowCodec(specs, table.name()[-1]),
            arrow_schema=schema_to_pyarrow(table.schema(), include_field_ids=False),
        )

    def spec(self, name: str) -> ColumnSpec:
        return next(spec for spec in self.specs if spec.name == name)

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    def key_literals(self, keys: Sequence[object]) -> set[Any]:
        """Primary-key values (as Arrow reads them) as literals of an ``In`` filter."""
        spec = self.spec(self.pk)
        return {literal(spec, key) for key in keys}

    def scan(self, row_filter: BooleanExpression, fields: Sequence[str] | None = None) -> pa.Table:
        selected = tuple(fields) if fields is not None else ("*",)
        return self.table.scan(row_filter=row_filter, selected_fields=selected).to_arrow()

    def schema_empty(self) -> pa.Table:
        return self.arrow_schema.empty_table()

    def rows(self, row_filter: BooleanExpression) -> list[dict[str, object]]:
        """Matching rows as dicts of Python values in the source's forms."""
        return python_rows(self.scan(row_filter), self.specs)


@dataclass(frozen=True)
class Committed:
    """What a commit wrote, and the rows it found already archived."""

    snapshot: int | None
    written: int
    already: int
    """Rows already in the table, identical: not written again."""
    replaced: int
    """Rows already in the table with other values (an older copy): overwritten."""
    rows: pa.Table
    """Every committed row (written or already there), as read back from the table's files."""


class Lake:
    """One ``iceberg+...`` handle: its catalog, its tables and the threads that work on them."""

    dialect_name: Final = "iceberg"

    def __init__(self, name: str, url: str, *, threads: int = 2) -> None:
        self.name = name
        self.label = f"handle '{name}'"
        self.url = LakeURL.parse(url)
        self._catalog: SqlCatalog | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=f"archivist-lake-{name}"
        )
        self._closed = False
        self._cleaned: set[str] = set()

    def __repr__(self) -> str:
        return f"Lake({self.name!r}, {self.url.shown!r})"

    # --- threads --------------------------------------------------------------------------

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking ``fn`` in this handle's threads; library errors become DatabaseError."""
        if self._closed:
            raise DatabaseError(f"{self.label} is closed")
        # A commit cannot be stopped half way: it ends before the caller goes on.
        return await run_to_the_end(
            self._executor, functools.partial(self._guarded, fn, *args, **kwargs)
        )

    def _guarded(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except ArchivistError:
            raise
        except Exception as exc:  # Arrow, OS, pyiceberg and SQLAlchemy errors alike
            log.debug("Iceberg error on %s", self.label, exc_info=True)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseError(f"Iceberg error on {self.label}: {text}") from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._dispose)
        self._executor.shutdown(wait=True)

    def _dispose(self) -> None:
        if self._catalog is not None:
            self._catalog.engine.dispose()

    async def identity(self) -> tuple[str, ...]:
        return ("iceberg", self.url.catalog_url, self.url.namespace)

    # --- catalog and tables (blocking: call through `run`) ----------------------------------

    @property
    def catalog(self) -> SqlCatalog:
        if self._catalog is None:
            if "://" not in self.url.warehouse:
                Path(self.url.warehouse).mkdir(parents=True, exist_ok=True)
            if self.url.catalog_url.startswith("sqlite:///"):
                Path(self.url.catalog_url[len("sqlite:///") :]).parent.mkdir(
                    parents=True, exist_ok=True
                )
            catalog = SqlCatalog(
                "archivist", uri=self.url.catalog_url, warehouse=self.url.warehouse_uri
            )
            catalog.create_namespace_if_not_exists(self.url.namespace)
            self._catalog = catalog
        return self._catalog

    def identifier(self, collection: str) -> tuple[str, str]:
        return (self.url.namespace, collection)

    def table(self, collection: str) -> LakeTable | None:
        """The collection's table as it is now, or None if there is none."""
        try:
            return LakeTable.of(self.catalog.load_table(self.identifier(collection)))
        except NoSuchTableError:
            return None

    def ensure(
        self,
        collection: str,
        source: TableInfo,
        order_by: str,
        partition_by: str | None,
        partition: str,
    ) -> str:
        """Create the collection's table from its source table, or add the columns the
        source gained; what was done, for logs. A column whose kind changed is a SchemaError."""
        found = self.table(collection)
        if found is None:
            self._create(collection, source, order_by, partition_by, partition)
            return "created"
        problems = []
        added = []
        have = {spec.name: spec for spec in found.specs}
        for spec in source.columns:
            old = have.get(spec.name)
            if old is None:
                added.append(spec)
                continue
            problem = incompatibility(spec, old)
            if problem is None and spec.kind is not old.kind:
                problem = f"{old.describe()} in the archive, {spec.describe()} in the source"
            if problem:
                problems.append(f"{spec.name}: {problem}")
        if problems:
            raise SchemaError(
                f"the Iceberg table of {collection} cannot take the source's rows: "
                + "; ".join(problems)
            )
        if not added:
            return "exists"
        for spec in added:
            iceberg_type(spec)  # a kind it cannot hold fails before anything changes
        with found.table.transaction() as tx:
            with tx.update_schema() as update:
                for spec in added:
                    update.add_column(spec.name, iceberg_type(spec))
            tx.set_properties({COLUMNS_PROPERTY: specs_property([*found.specs, *added])})
        names = ", ".join(spec.name for spec in added)
        log.info("%s: the Iceberg table gained column(s) %s", collection, names)
        return f"gained {names}"

    def _create(
        self,
        collection: str,
        source: TableInfo,
        order_by: str,
        partition_by: str | None,
        partition: str,
    ) -> None:
        fields = [
            NestedField(
                field_id=index,
                name=spec.name,
                field_type=iceberg_type(spec),
                required=spec.name == source.pk,
            )
            for index, spec in enumerate(source.columns, start=1)
        ]
        schema = Schema(
            *fields, identifier_field_ids=[fields[source.column_names.index(source.pk)].field_id]
        )
        spec = UNPARTITIONED_PARTITION_SPEC
        if partition != "none" and partition_by is not None:
            column = source.spec(partition_by)
            if column.kind in (Kind.DATE, Kind.DATETIME):
                transform: Transform[Any, Any] = (
                    DayTransform() if partition == "day" else MonthTransform()
                )
                source_id = fields[source.column_names.index(partition_by)].field_id
                spec = PartitionSpec(
                    PartitionField(
                        source_id=source_id,
                        field_id=1000,
                        transform=transform,
                        name=f"{partition_by}_{partition}",
                    )
                )
            else:
                log.warning(
                    "%s: %s is not a date or timestamp, so the Iceberg table is not "
                    "partitioned by it",
                    collection,
                    partition_by,
                )
        self.catalog.create_table(
            self.identifier(collection),
            schema=schema,
            partition_spec=spec,
            properties={
                COLUMNS_PROPERTY: specs_property(source.columns),
                PK_PROPERTY: source.pk,
                ORDER_PROPERTY: order_by,
                "format-version": "2",
                "write.parquet.compression-codec": "zstd",
                # One manifest per commit would make every scan (a commit's look for its
                # keys) read more manifests as the table grows: merge them.
                "commit.manifest-merge.enabled": "true",
            },
        )
        log.info("%s: Iceberg table %s.%s created", collection, self.url.namespace, collection)

    # --- commits ------------------------------------------------------------------------------

    def commit(
        self,
        lake: LakeTable,
        rows: pa.Table,
        summary: Mapping[str, str],
        *,
        replace: bool = True,
    ) -> Committed:
        """Append ``rows`` in one commit, then read the commit back from its data files and
        check it holds them, value by value. Rows the table already holds identical are not
        written again; rows it holds with other values are overwritten in the same commit
        (with ``replace``; else a Conflict). ``summary`` goes into the snapshot's summary."""
        from archivist.errors import Conflict

        pk = lake.pk
        rows = _with_columns(rows, lake.arrow_schema)
        if len(pc.unique(rows.column(pk))) != rows.num_rows:
            raise VerifyMismatch(
                f"{lake.table.name()[-1]}: a commit must hold each {pk} once; nothing was written"
            )
        if rows.num_rows == 0:
            return Committed(None, 0, 0, 0, rows)
        keys = rows.column(pk)
        bounds = pc.min_max(keys)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        spec = lake.spec(pk)
        span = And(ge(pk, literal(spec, low)), le(pk, literal(spec, high)))
        # The key column alone first (files pruned by their key statistics): usually none
        # of the keys is there yet, and nothing else is read.
        present = lake.scan(span, [pk]).column(pk)
        present = present.filter(pc.is_in(present, value_set=keys.combine_chunks()))
        existing = (
            lake.schema_empty()
            if len(present) == 0
            else lake.scan(is_in(pk, lake.key_literals(from_arrow_values(spec, present))))
        )
        already: list[object] = []
        replaced: list[object] = []
        if existing.num_rows:
            old = {row[pk]: row for row in python_rows(existing, lake.specs)}
            for row in python_rows(
                rows.filter(pc.is_in(keys, value_set=existing.column(pk).combine_chunks())),
                lake.specs,
            ):
                if lake.codec.encode_row(row) == lake.codec.encode_row(old[row[pk]]):
                    already.append(row[pk])
                else:
                    replaced.append(row[pk])
        if replaced and not replace:
            raise Conflict(
                f"conflict: the Iceberg table {lake.table.name()[-1]} already holds different "
                f"rows with {pk} {', '.join(repr(k) for k in replaced[:10])}; nothing was written"
            )
        fresh = rows
        if already:
            fresh = rows.filter(
                pc.invert(pc.is_in(keys, value_set=pa.array(already, type=keys.type)))
            )
        snapshot = None
        if fresh.num_rows:
            snapshot = self._append(lake, fresh, replaced, summary)
            self._check(lake, snapshot, fresh)
        return Committed(snapshot, fresh.num_rows, len(already), len(replaced), rows)

    def _append(
        self, lake: LakeTable, rows: pa.Table, replaced: list[object], summary: Mapping[str, str]
    ) -> int:
        props = dict(summary)
        for attempt in range(3):
            table = lake.table
            try:
                with table.transaction() as tx:
                    if replaced:
                        tx.delete(
                            is_in(lake.pk, lake.key_literals(replaced)), snapshot_properties=props
                        )
                    tx.append(rows.cast(lake.arrow_schema), snapshot_properties=props)
                snapshot = table.current_snapshot()
                assert snapshot is not None
                return snapshot.snapshot_id
            except CommitFailedException:
                if attempt == 2:
                    raise
                table.refresh()  # another writer committed first: append on top of it
        raise AssertionError("unreachable")

    def _check(self, lake: LakeTable, snapshot_id: int, rows: pa.Table) -> None:
        """Read the snapshot's new data files back and compare them with ``rows``."""
        table = lake.table
        snapshot = table.snapshot_by_id(snapshot_id)
        assert snapshot is not None
        paths = [
            entry.data_file.file_path
            for manifest in snapshot.manifests(table.io)
            if manifest.added_snapshot_id == snapshot_id
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
            if entry.status == ManifestEntryStatus.ADDED and entry.snapshot_id == snapshot_id
        ]
        read = read_files(paths, lake.arrow_schema)
        pk = lake.pk
        ours = rows.cast(lake.arrow_schema).sort_by(pk)
        theirs = read.sort_by(pk)
        if not theirs.equals(ours):
            raise VerifyMismatch(
                f"the Iceberg commit {snapshot_id} of {table.name()[-1]} does not read back as "
                f"written ({theirs.num_rows} rows read, {ours.num_rows} written); nothing was "
                "deleted from the source"
            )

    def delete_keys(
        self, lake: LakeTable, keys: Sequence[object], summary: Mapping[str, str]
    ) -> int:
        """Delete the rows of ``keys`` (as the codec decodes them) in one commit; how many
        went."""
        if not keys:
            return 0
        spec = lake.spec(lake.pk)
        literals = {literal(spec, key) for key in keys}
        present = lake.table.scan(
            row_filter=is_in(lake.pk, literals), selected_fields=(lake.pk,)
        ).count()
        if present:
            lake.table.delete(is_in(lake.pk, literals), snapshot_properties=dict(summary))
        return present

    # --- orphans ------------------------------------------------------------------------------

    def remove_orphans(self, lake: LakeTable, older_than: float = ORPHAN_AGE) -> int:
        """Remove data files under the table's data folder that no snapshot references and
        that are older than ``older_than`` seconds (a crashed writer's); how many went."""
        table = lake.table
        referenced: set[str] = set()
        manifests = {
            manifest.manifest_path: manifest
            for snapshot in table.snapshots()
            for manifest in snapshot.manifests(table.io)
        }  # each manifest once: snapshots share most of theirs
        for manifest in manifests.values():
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                referenced.add(_plain(entry.data_file.file_path))
        filesystem, root = pafs.FileSystem.from_uri(table.location().rstrip("/") + "/data")
        try:
            infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        except FileNotFoundError:
            return 0
        cutoff = time.time() - older_than
        removed = 0
        for info in infos:
            if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
                continue
            if _plain(info.path) in referenced:
                continue
            mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
            if mtime > cutoff:
                continue
            filesystem.delete_file(info.path)
            removed += 1
        if removed:
            log.info(
                "%s: removed %d data file(s) no snapshot references", table.name()[-1], removed
            )
        return removed


def _with_columns(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` with the table's columns in its order: a column the table gained since the
    rows were staged is null in them."""
    present = set(rows.column_names)
    return pa.Table.from_arrays(
        [
            rows.column(field.name)
            if field.name in present
            else pa.nulls(rows.num_rows, field.type)
            for field in schema
        ],
        schema=schema,
    )


def _plain(path: str) -> str:
    """A file's path without its scheme, as two spellings of one file compare."""
    return path.split("://", 1)[1] if "://" in path else path


def read_files(paths: Sequence[str], schema: pa.Schema) -> pa.Table:
    """Data files read straight with pyarrow, as ``schema`` types them."""
    import pyarrow.parquet as pq

    tables = []
    for path in paths:
        filesystem, inner = pafs.FileSystem.from_uri(path if "://" in path else "file://" + path)
        read = pq.read_table(inner, filesystem=filesystem)
        tables.append(read.select(schema.names).cast(schema))
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def everything() -> BooleanExpression:
    return AlwaysTrue()


def keys_of(table: pa.Table, lake: LakeTable) -> list[object]:
    return from_arrow_values(lake.spec(lake.pk), table.column(lake.pk))
