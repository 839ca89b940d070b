"""The data commands on Iceberg handles: ``data/list``, ``data/count``, ``data/create`` and
``data/delete`` on an archive table, and ``data/copy`` into one, which gathers a task's
batches into large commits (`archivist.data.iceberg.staging`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from archivist.data import budget
from archivist.data.catalog import Catalog
from archivist.data.iceberg.expr import And, BooleanExpression, Or, eq, gt, is_in, lt
from archivist.data.iceberg.filters import literal, row_filter
from archivist.data.iceberg.lake import DEFAULT_PARTITION, Lake, LakeTable
from archivist.data.iceberg.staging import Stager, last_of_each_key
from archivist.data.iceberg.types import arrow_table, python_rows
from archivist.data.listing import ascending_field
from archivist.data.params import (
    CopyParams,
    CountParams,
    CreateParams,
    DeleteParams,
    ListParams,
    parse_params,
)
from archivist.data.registry import Entity
from archivist.data.values import JSONObject, decode_values
from archivist.errors import InvalidParams, SchemaError, UnstorableValue
from archivist.protocol import decode_raw

log = logging.getLogger(__name__)

DEFAULT_ROWS_PER_FILE = 250_000
FLUSH_AFTER = 2.0
"""Seconds without a ``data/copy`` of a collection after which its staged rows are
committed (a task's last batch, or one that stopped)."""


@dataclass(frozen=True)
class ColdSettings:
    """A policy's cold-tier keys (docs/configuration.md)."""

    partition: str = DEFAULT_PARTITION
    rows_per_file: int = DEFAULT_ROWS_PER_FILE


class LakeCommands:
    """The data commands of every Iceberg handle of one daemon."""

    def __init__(
        self,
        catalog: Catalog,
        lakes: Mapping[str, Lake],
        settings: Mapping[str, ColdSettings] | None = None,
        *,
        flush_after: float = FLUSH_AFTER,
    ) -> None:
        self.catalog = catalog
        self.lakes = lakes
        self.settings = dict(settings or {})
        self.flush_after = flush_after
        self._tables: dict[tuple[str, str], LakeTable] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._stagers: dict[tuple[str, str], Stager] = {}
        self.task_of: dict[str, str] = {}
        """The task now moving each collection (set by the archive daemon), for summaries."""

    def is_lake(self, name: object) -> bool:
        return isinstance(name, str) and name in self.lakes

    def lake(self, name: str) -> Lake:
        return self.lakes[name]

    def settings_of(self, collection: str) -> ColdSettings:
        entity = self.catalog.entity(collection)
        return self.settings.get(entity.parent or collection, ColdSettings())

    # --- tables -------------------------------------------------------------------------------

    async def ensure(self, entity: Entity) -> str:
        """Create or evolve the collection's Iceberg table from its source table."""
        lake = self.lake(entity.dest_handle)
        key = (lake.name, entity.collection)
        async with self._locks.setdefault(key, asyncio.Lock()):
            source_handle = self.catalog.handle(entity.source_handle)
            source = await self.catalog.reflect(source_handle, entity.collection, fresh=True)
            if source is None:
                raise SchemaError(
                    f"collection {entity.collection}: no table on source handle "
                    f"'{source_handle.name}'"
                )
            settings = self.settings_of(entity.collection)
            partition_by = (
                entity.rules.age_column(entity.order_by) if entity.parent is None else None
            )
            done = await lake.run(
                lake.ensure,
                entity.collection,
                source,
                entity.order_by,
                partition_by,
                settings.partition,
            )
            found = await lake.run(lake.table, entity.collection)
            assert found is not None
            self._tables[key] = found
            if key not in self._stagers:
                # First use of this table by this daemon: what a crashed writer left goes.
                await lake.run(lake.remove_orphans, found)
                stager = self._stagers[key] = Stager(
                    lake, entity.collection, settings.rows_per_file, self
                )
                stager.remove_leftovers()
            return done

    async def table(self, collection: str, handle: str) -> tuple[Entity, Lake, LakeTable]:
        entity = self.catalog.entity(collection)
        lake = self.lake(handle)
        found = self._tables.get((lake.name, collection))
        if found is None:
            if entity.dest_handle == handle:
                await self.ensure(entity)
                found = self._tables[(lake.name, collection)]
            else:
                table = await lake.run(lake.table, collection)
                if table is None:
                    raise SchemaError(f"collection {collection} has no table on handle '{handle}'")
                found = self._tables[(lake.name, collection)] = table
        return entity, lake, found

    async def plan(self, entity: Entity) -> str:
        """What the collection's Iceberg table needs, for ``--dry-run``."""
        lake = self.lake(entity.dest_handle)
        found = await lake.run(lake.table, entity.collection)
        if found is None:
            return "will be created (Iceberg)"
        source = await self.catalog.reflect(
            self.catalog.handle(entity.source_handle), entity.collection
        )
        have = set(found.names)
        new = [name for name in (source.column_names if source else []) if name not in have]
        return "will gain columns " + ", ".join(new) if new else "exists (Iceberg)"

    def stager(self, lake: Lake, collection: str) -> Stager:
        return self._stagers[(lake.name, collection)]

    # --- data/count and data/list ------------------------------------------------------------

    async def count(self, params: JSONObject) -> JSONObject:
        p = parse_params(params, CountParams)
        _, lake, found = await self.table(p.collection, p.db_handle)
        where = row_filter(found.specs, found.codec, p.filter)
        count = await lake.run(_count, found, where)
        # pyiceberg's scan counts whole files: a limit only bounds the answer here.
        return {"count": count if p.limit is None else min(count, p.limit)}

    async def list(self, params: JSONObject) -> JSONObject:
        p = parse_params(params, ListParams)
        entity, lake, found = await self.table(p.collection, p.db_handle)
        fields = list(dict.fromkeys(p.fields)) if p.fields is not None else None
        if fields is not None:
            found.codec.check_fields(fields, what="field in fields")
        where = row_filter(found.specs, found.codec, p.filter)
        order = [(o.field, o.direction) for o in p.order_by or []]
        if p.cursor is not None:
            found.codec.check_fields([p.cursor.field], what="cursor field")
            if order and order[0][0] != p.cursor.field:
                raise InvalidParams("invalid params: cursor.field must be the first orderBy field")
            if not order:
                order = [(p.cursor.field, "asc")]
            where = And(
                where,
                _cursor_filter(
                    found, p.cursor.field, p.cursor.value, p.cursor.id, p.cursor.direction
                ),
            )
        if not order:
            order = [(found.order_by, "asc")]
        for name, _ in order:
            found.codec.check_fields([name], what="field in orderBy")
        if found.pk not in [name for name, _ in order]:
            order.append((found.pk, order[0][1]))
        before = p.cursor is not None and p.cursor.direction == "before"
        rows = await lake.run(_page, found, where, order, p.limit, before)
        items = [found.codec.encode_row(row) for row in rows]
        if fields is not None:
            items = [{name: item[name] for name in fields} for item in items]
        extra: JSONObject = {}
        if p.max_bytes is not None:
            items, extra, _ = budget.bound(
                items,
                max_bytes=p.max_bytes,
                asked=p.limit,
                read=p.limit,
                pk=found.pk,
                order_field=ascending_field(p, entity.order_by),
            )
        return {
            "items": items,
            "count": len(items),
            "collection": entity.collection,
            "primaryKey": found.pk,
            "orderBy": entity.order_by,
            **extra,
        }

    # --- data/create and data/delete ---------------------------------------------------------

    async def create(self, params: JSONObject) -> JSONObject:
        """Rows given by the worker, committed at once (one commit per call: rows that travel
        through the worker are not gathered; `copy` is the path that gathers)."""
        p = parse_params(_decoded(params), CreateParams)
        if (p.data is None) == (p.items is None):
            raise InvalidParams("invalid params: give exactly one of data (one item) or items")
        raw = [p.data] if p.data is not None else list(p.items or [])
        _, lake, found = await self.table(p.collection, p.db_handle)
        where = "data." if p.data is not None else "items[{}]."
        decoded = [
            found.codec.decode_item(item, where=where.format(index))
            for index, item in enumerate(raw)
        ]
        for index, row in enumerate(decoded):
            if row.get(found.pk) is None:
                raise InvalidParams(f"{where.format(index)}{found.pk}: the primary key is needed")
        try:
            table = arrow_table(
                found.arrow_schema,
                found.specs,
                found.names,
                [[row.get(name) for name in found.names] for row in decoded],
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise UnstorableValue(
                f"{p.collection}: a row holds a value the Iceberg table cannot store exactly "
                f"({exc}); nothing was written"
            ) from None
        table = last_of_each_key(table, found.pk)
        summary = self.summary(p.collection, table, found.pk, "create")
        committed = await lake.run(
            lake.commit, found, table, summary, replace=p.on_conflict == "replace"
        )
        return {"created": committed.written + committed.already}

    async def delete(self, params: JSONObject) -> JSONObject:
        """Delete archived rows by ``ids`` (a restore's last step) in one commit."""
        p = parse_params(_decoded(params), DeleteParams)
        if p.expected is not None or p.matching is not None:
            raise InvalidParams(
                "invalid params: an Iceberg archive deletes by id or ids (no expected, matching)"
            )
        given = [p.id is not msgspec.UNSET, p.ids is not None]
        if given[0] == given[1]:
            raise InvalidParams("invalid params: give exactly one of id or ids")
        _, lake, found = await self.table(p.collection, p.db_handle)
        raw_ids = [p.id] if given[0] else list(p.ids or [])
        keys = decode_values(found.spec(found.pk), raw_ids, where="ids.")
        summary = {"archivist.operation": "delete", "archivist.rows": str(len(keys))}
        deleted = await lake.run(lake.delete_keys, found, keys, summary)
        return {"deleted": deleted}

    # --- data/copy: gathered commits -------------------------------------------------------

    async def copy(self, params: JSONObject) -> JSONObject:
        """List the source's next rows and stage them for the collection's next commit
        (`Stager`); with ``move``, the answer counts them as moved (``deleted``): they are
        deleted from the source after the commit that holds them is read back."""
        p = parse_params(params, CopyParams)
        if p.fields is not None:
            raise InvalidParams("invalid params: data/copy takes no fields")
        entity, lake, found = await self.table(p.collection, p.dest_handle)
        stager = self.stager(lake, entity.collection)
        return await stager.copy(entity, found, p)

    async def delete_matching(
        self, collection: str, source_name: str, dest_name: str, raw_ids: Sequence[object]
    ) -> JSONObject:
        """Delete the source rows of ``raw_ids`` whose identical copy the Iceberg table holds
        (after committing what is staged)."""
        entity, lake, found = await self.table(collection, dest_name)
        stager = self.stager(lake, entity.collection)
        return await stager.delete_matching(entity, found, source_name, raw_ids)

    async def settle(self, collection: str | None = None) -> None:
        """Commit what is staged (for ``collection``, or every one) and delete its rows from
        the source."""
        for (_, name), stager in list(self._stagers.items()):
            if collection is None or name == collection:
                await stager.settle()

    async def close(self) -> None:
        for stager in list(self._stagers.values()):
            try:
                await stager.close()
            except Exception as exc:  # closing must go on: the rows are still in the source
                log.warning("%s: staged rows not committed on closing: %s", stager.collection, exc)

    def summary(self, collection: str, rows: pa.Table, pk: str, operation: str) -> dict[str, str]:
        """A commit's snapshot summary: the task, the operation and the key range it holds."""
        bounds = pc.min_max(rows.column(pk))
        summary = {
            "archivist.operation": operation,
            "archivist.collection": collection,
            "archivist.rows": str(rows.num_rows),
            "archivist.key-min": str(bounds["min"].as_py()),
            "archivist.key-max": str(bounds["max"].as_py()),
        }
        task = self.task_of.get(collection)
        if task:
            summary["archivist.task"] = task
        return summary


def _decoded(params: JSONObject) -> JSONObject:
    return {
        name: decode_raw(value) if isinstance(value, msgspec.Raw) else value
        for name, value in params.items()
    }


def _count(found: LakeTable, where: BooleanExpression) -> int:
    return int(found.table.scan(row_filter=where, selected_fields=(found.pk,)).count())


def _cursor_filter(
    found: LakeTable, field: str, value: object, key: object, direction: str
) -> BooleanExpression:
    spec = found.spec(field)
    decoded = decode_values(spec, [value], where="cursor.value.")[0]
    bound = literal(spec, decoded)
    beyond: BooleanExpression = gt(field, bound) if direction == "after" else lt(field, bound)
    if key is msgspec.UNSET or key is None or field == found.pk:
        return beyond
    pk_spec = found.spec(found.pk)
    decoded_key = decode_values(pk_spec, [key], where="cursor.id.")[0]
    past_key: BooleanExpression = (
        gt(found.pk, literal(pk_spec, decoded_key))
        if direction == "after"
        else lt(found.pk, literal(pk_spec, decoded_key))
    )
    return Or(beyond, And(eq(field, bound), past_key))


def _page(
    found: LakeTable,
    where: BooleanExpression,
    order: list[tuple[str, Literal["asc", "desc"]]],
    limit: int,
    before: bool,
) -> list[dict[str, Any]]:
    """The page's rows: the order columns of every matching row are read and sorted (the
    only columns read whole), then the page's rows by key."""
    names = list(dict.fromkeys([name for name, _ in order] + [found.pk]))
    keys = found.scan(where, names)
    if keys.num_rows == 0 or limit == 0:
        return []
    sort = [
        (
            name,
            ("descending" if direction == "asc" else "ascending")
            if before
            else ("ascending" if direction == "asc" else "descending"),
        )
        for name, direction in order
    ]
    chosen = keys.sort_by(sort).slice(0, limit)
    wanted = python_rows(chosen.select([found.pk]), found.specs)
    key_values = [row[found.pk] for row in wanted]
    rows = found.rows(is_in(found.pk, found.key_literals(key_values)))
    position = {key: index for index, key in enumerate(key_values)}
    rows.sort(key=lambda row: position[row[found.pk]])
    if before:
        rows.reverse()
    return rows
