"""The commands the daemon executes for the worker (PROTOCOL.md): ``ping``, ``data/load``,
``data/list``, ``data/count``, ``data/create`` and ``data/delete`` (and the daemon's own
``data/size``), each one short transaction; `DataCommands` checks their params and hands
the work to the module that owns it.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from archivist.data import budget
from archivist.data.catalog import Catalog
from archivist.data.create import CreatePlan, NewRow, storable
from archivist.data.delete import delete_expected, delete_expected_sqlite, delete_listed
from archivist.data.filters import compile_filter
from archivist.data.handles import Handle
from archivist.data.listing import ListQuery, ascending_field, keys_of_filter
from archivist.data.load import probe_load
from archivist.data.params import (
    CountParams,
    CreateParams,
    DeleteParams,
    ListParams,
    LoadParams,
    SizeParams,
    parse_params,
)
from archivist.data.relations import guarded, with_kept
from archivist.data.schema import TableInfo
from archivist.data.size import measure
from archivist.data.stored import PASSTHROUGH_DIALECTS as PASSTHROUGH
from archivist.data.stored import RecentRows
from archivist.data.transfer.commands import Transfers
from archivist.data.values import JSONObject, decode_value, decode_values
from archivist.errors import InvalidParams
from archivist.protocol import ROW_PARAMS, decode_raw, split_rows, with_rows_decoded

_Items: TypeAlias = list[JSONObject]


class DataCommands:
    """The data commands over one catalog; register them on a CommandBus with ``register``."""

    def __init__(self, catalog: Catalog, transfers: Transfers) -> None:
        self.catalog = catalog
        self.recent = RecentRows()
        self.transfers = transfers
        """Where ``data/delete`` with ``matching`` goes."""
        self.widths = budget.Widths()
        """How wide each table's rows were when last listed on a byte budget."""

    async def ping(self, params: JSONObject) -> JSONObject:
        return {"message": "pong"}

    def _rows(self, params: JSONObject) -> JSONObject:
        """``params`` with the arrays of rows the frame left raw made ready: rows on a
        handle whose listed rows this daemon remembers stay raw, one by one, to be
        recognised by their bytes; any other array is decoded at once (the faster way to
        decode many rows)."""
        handle = self.catalog.handles.get(str(params.get("dbHandle")))
        if handle is None or handle.dialect_name not in PASSTHROUGH:
            return with_rows_decoded(params)
        return {
            name: split_rows(value)
            if name in ROW_PARAMS and isinstance(value, msgspec.Raw)
            else value
            for name, value in params.items()
        }

    # --- data/load ------------------------------------------------------------------------

    async def load(self, params: JSONObject) -> JSONObject:
        """How busy a database is (`archivist.data.load.probe_load`)."""
        p = parse_params(params, LoadParams)
        return await probe_load(self.catalog.handle(p.db_handle))

    # --- data/list ------------------------------------------------------------------------

    async def list(self, params: JSONObject) -> JSONObject:
        p = parse_params(params, ListParams)
        entity, handle, info = await self.catalog.table(p.collection, p.db_handle)
        fields = list(dict.fromkeys(p.fields)) if p.fields is not None else None
        if fields is not None:
            info.codec.check_fields(fields, what="field in fields")
        # A plain listing (no filter, every field) is what a copy starts from: remember its
        # rows' stored form, so creating the same items in a like table binds them as read.
        remember = p.filter is None and fields is None and handle.dialect_name in PASSTHROUGH
        asked = p.limit
        if p.max_bytes is not None:
            if not self.widths.known(handle.name, info.table.name):
                await self._sample_width(handle, info, entity.order_by, p)
            limit = self.widths.rows(handle.name, info.table.name, asked, p.max_bytes)
            p = msgspec.structs.replace(p, limit=limit)
        query = ListQuery.build(info, p, entity.order_by, stored=remember)
        items = await self._list_remembered(handle, info, query, p) if fields is None else None
        if items is None:
            names, rows, stored = await handle.transaction(query.run)
            items = info.codec.encode_tuples(names, rows)
            if stored is not None:
                self.recent.remember(info, handle.name, items, stored)
        if fields is not None:
            items = [{name: item[name] for name in fields} for item in items]
        extra: JSONObject = {}
        if p.max_bytes is not None:
            items, extra, measured = budget.bound(
                items,
                max_bytes=p.max_bytes,
                asked=asked,
                read=p.limit,
                pk=info.pk,
                order_field=ascending_field(p, entity.order_by),
            )
            self.widths.learn(
                handle.name, info.table.name, measured.measured, measured.measured_size
            )
        return {
            "items": items,
            "count": len(items),
            "collection": entity.collection,
            "primaryKey": info.pk,
            "orderBy": entity.order_by,
            **extra,
        }

    async def _sample_width(
        self, handle: Handle, info: TableInfo, order_by: str, p: ListParams
    ) -> None:
        """Learn how wide a table's rows are from the first row of this listing, read
        alone: one row is all a table of rows too wide for a page costs the daemon's
        memory, and a narrow table's first page is then as long as asked."""
        query = ListQuery.build(info, msgspec.structs.replace(p, limit=1), order_by)
        names, rows, _ = await handle.transaction(query.run)
        items = info.codec.encode_tuples(names, rows)
        if items:
            measured = budget.fit(items, p.max_bytes or 0)
            self.widths.learn(handle.name, info.table.name, 1, measured.measured_size)

    async def _list_remembered(
        self, handle: Handle, info: TableInfo, query: ListQuery, p: ListParams
    ) -> _Items | None:
        """A listing by keys of rows that all hold the stored form of rows just listed from
        a like table (a copy being verified): their items are those rows' items, with no
        type processing or encoding. None when any row differs: then list as usual.

        Equal stored values mean equal items (the encoding is a function of them), so this
        checks the copy byte for byte, more strictly than comparing items.
        """
        keys = keys_of_filter(p.filter, info.pk)
        if keys is None or not self.recent.covers(info, keys):
            return None
        stored = await handle.transaction(query.run_stored_only)
        return self.recent.items_for(info, stored)

    # --- data/count -----------------------------------------------------------------------

    async def count(self, params: JSONObject) -> JSONObject:
        p = parse_params(params, CountParams)
        _, handle, info = await self.catalog.table(p.collection, p.db_handle)
        where = compile_filter(info, p.filter)
        query = sa.select(sa.func.count()).select_from(info.table).where(where)
        if p.limit is not None:
            # Counted through a bounded subquery: the scan stops at ``limit`` matching rows.
            rows = sa.select(sa.literal(1)).select_from(info.table).where(where).limit(p.limit)
            query = sa.select(sa.func.count()).select_from(rows.subquery())
        count = await handle.transaction(_scalar, query)
        assert isinstance(count, int)
        return {"count": count}

    # --- data/size (daemon-internal) -----------------------------------------------------

    async def size(self, params: JSONObject) -> JSONObject:
        """How many rows a policy's table holds, without reading all of it where it can
        (`archivist.data.size.measure`): ``{"rows", "exact", "method"}``."""
        p = parse_params(params, SizeParams)
        entity, handle, info = await self.catalog.table(p.collection, p.db_handle)
        where = compile_filter(info, p.filter)
        size = await handle.transaction(measure, info, entity.order_by, where, p.max_rows)
        return size.wire()

    # --- data/create ----------------------------------------------------------------------

    async def create(self, params: JSONObject) -> JSONObject:
        p = parse_params(self._rows(params), CreateParams)
        if (p.data is None) == (p.items is None):
            raise InvalidParams("invalid params: give exactly one of data (one item) or items")
        raw_items = [p.data] if p.data is not None else list(p.items or [])
        _, handle, info = await self.catalog.table(p.collection, p.db_handle)
        where = "data." if p.data is not None else "items[{}]."
        # Items equal to rows just listed from a like table need no decoding: their stored
        # form is bound as it was read.
        rows = [
            NewRow(found.item, None, found.stored)
            if found is not None
            else NewRow(
                item := _json_value(raw),
                info.codec.decode_item(item, where=where.format(index)),
                None,
            )
            for index, (raw, found) in enumerate(
                zip(raw_items, self.recent.find(info, raw_items), strict=True)
            )
        ]
        rows, refused = storable(info, rows, skip=p.on_unstorable == "skip")
        answer: JSONObject = {"created": 0}
        if refused:
            answer["unstorable"] = [each.wire() for each in refused]
        if rows:
            plan = CreatePlan(info, rows, replace=p.on_conflict == "replace")
            answer["created"] = await handle.transaction(plan.run, write=True)
        return answer

    # --- data/delete ----------------------------------------------------------------------

    async def delete(self, params: JSONObject) -> JSONObject:
        p = parse_params(self._rows(params), DeleteParams)
        given = [p.id is not msgspec.UNSET, p.ids is not None, p.expected is not None]
        if p.matching is not None:
            if given != [False, True, False]:
                raise InvalidParams(
                    "invalid params: matching needs ids, and neither id nor expected"
                )
            ids = list(p.ids or [])
            return await self.transfers.delete_matching(p.collection, p.db_handle, p.matching, ids)
        entity, handle, info = await self.catalog.table(p.collection, p.db_handle)
        refs = guarded(info.referenced_by, entity.on_children)
        pk_spec = info.spec(info.pk)
        if p.expected is not None:
            # Rows this daemon listed from this table, as it listed them: their stored form
            # is what the delete must still find (SQLite). Any other is decoded and compared.
            found = self.recent.find(info, p.expected, handle=handle.name)
            expected = [
                entry.item if entry is not None else _json_value(raw)
                for raw, entry in zip(p.expected, found, strict=True)
            ]
            keys: list[object] = []
            for index, item in enumerate(expected):
                if not isinstance(item, dict) or item.get(info.pk) is None:
                    raise InvalidParams(f"expected[{index}]: needs its primary key {info.pk}")
                keys.append(decode_value(pk_spec, item[info.pk], where=f"expected[{index}]."))
            if given[0] or given[1]:
                ids = [p.id] if given[0] else list(p.ids or [])
                decoded = set(decode_values(pk_spec, ids, where="ids."))
                if decoded != set(keys):
                    raise InvalidParams("invalid params: ids must name the same rows as expected")
            pairs = list(zip(keys, expected, strict=True))
            if handle.dialect_name == "sqlite":
                stored = [entry.stored if entry is not None else None for entry in found]
                return await delete_expected_sqlite(self.recent, handle, info, pairs, stored, refs)
            deleted, skipped, kept = await handle.transaction(
                delete_expected, info, pairs, refs, write=True
            )
            return with_kept({"deleted": deleted, "skipped": skipped}, kept, refs)
        if given[0] == given[1]:
            raise InvalidParams("invalid params: give exactly one of id or ids")
        raw_ids = [p.id] if given[0] else list(p.ids or [])
        ids = list(dict.fromkeys(decode_values(pk_spec, raw_ids, where="ids.")))
        if any(value is None for value in ids):
            raise InvalidParams("invalid params: an id must not be null")
        deleted, kept = await handle.transaction(delete_listed, info, ids, refs, write=True)
        return with_kept({"deleted": deleted}, kept, refs)


def _json_value(item: object) -> Any:
    """An item as a JSON value: a row the frame left raw (`archivist.protocol.ROW_PARAMS`)
    is decoded here, where it is used."""
    return decode_raw(item) if isinstance(item, msgspec.Raw) else item


def _scalar(connection: Connection, query: sa.Select[Any]) -> object:
    return connection.execute(query).scalar_one()
