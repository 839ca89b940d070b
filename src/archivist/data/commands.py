"""The commands the daemon executes for the worker (PROTOCOL.md): ``ping``, ``data/list``,
``data/count``, ``data/create`` and ``data/delete``, each one short transaction.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeAlias, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import NullType

from archivist.data.activity import others
from archivist.data.catalog import Catalog
from archivist.data.filters import (
    SortKey,
    compile_filter,
    keyset_condition,
    one_of,
    order_clauses,
    sort_keys,
)
from archivist.data.handles import Handle, driver_errors
from archivist.data.schema import TableInfo
from archivist.data.slicing import adaptive_slices, commits_without_sync, execute
from archivist.data.storable import Unstorable, refusing_columns, unstorable
from archivist.data.stored import PASSTHROUGH_DIALECTS as PASSTHROUGH
from archivist.data.stored import RecentRows, Stored, StoredForm
from archivist.data.values import JSONObject, RowCodec, decode_value, decode_values
from archivist.errors import Conflict, InvalidParams, UnstorableValue
from archivist.protocol import ROW_PARAMS, decode_raw, split_rows, with_rows_decoded

if TYPE_CHECKING:
    from archivist.data.transfer import Transfers

log = logging.getLogger(__name__)

DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 100_000
MAX_ITEMS: Final = 100_000
# Bound parameters per IN list: well under every driver's limit (SQLite 32766, PostgreSQL 65535).
IN_CHUNK: Final = 5_000

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class _Params(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    collection: Name
    db_handle: Name


class OrderByParam(msgspec.Struct, forbid_unknown_fields=True):
    field: Name
    direction: Literal["asc", "desc"] = "asc"


class CursorParam(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    field: Name
    value: Any
    direction: Literal["after", "before"] = "after"
    # Extension: the primary key of the row at the cursor, so rows sharing ``value`` are not
    # skipped (a tuple cursor). The field name ``id`` is used whatever the key column is called.
    id: Any = msgspec.UNSET


class ListParams(_Params):
    filter: dict[str, Any] | None = None
    order_by: list[OrderByParam] | None = None
    limit: Annotated[int, msgspec.Meta(ge=0, le=MAX_LIMIT)] = DEFAULT_LIMIT
    cursor: CursorParam | None = None
    fields: list[Name] | None = None


class LoadParams(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    db_handle: Name


# Per engine: what counts as busy, and the query that reads it (one row, one integer).
BUSY_METRICS: Final = {
    "postgresql": (
        "active backends",
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid()",
    ),
    "mysql": ("threads running", "SHOW GLOBAL STATUS LIKE 'Threads_running'"),
    "mariadb": ("threads running", "SHOW GLOBAL STATUS LIKE 'Threads_running'"),
}


def _probe(connection: Connection, busy_query: str | None) -> tuple[int | None, int]:
    """The engine's busy count (None where it has none), and the sessions besides
    archivist's using the database (`archivist.data.activity.others`)."""
    connection.exec_driver_sql("SELECT 1").scalar()
    active = None
    if busy_query is not None:
        row = connection.exec_driver_sql(busy_query).one()
        active = int(row[-1]) - (1 if busy_query.startswith("SHOW") else 0)
    return active, others(connection)


class CountParams(_Params):
    filter: dict[str, Any] | None = None


class CreateParams(_Params):
    data: dict[str, Any] | None = None
    # Items are checked one by one when decoded (a typed list would copy every item).
    items: Annotated[list[Any], msgspec.Meta(max_length=MAX_ITEMS)] | None = None
    on_conflict: Literal["error", "replace"] = "error"
    # Extension: "skip" writes the other items and names the unstorable ones in the answer.
    on_unstorable: Literal["error", "skip"] = "error"


class DeleteParams(_Params):
    id: Any = msgspec.UNSET
    ids: Annotated[list[Any], msgspec.Meta(max_length=MAX_ITEMS)] | None = None
    expected: Annotated[list[Any], msgspec.Meta(max_length=MAX_ITEMS)] | None = None
    # Extension: delete only rows with an identical copy on this handle (`Transfers`).
    matching: Name | None = None


P = TypeVar("P", bound=msgspec.Struct)
_Items: TypeAlias = list[JSONObject]


def parse_params(params: object, type_: type[P]) -> P:
    """Validate ``params`` into ``type_``; errors are InvalidParams naming the path."""
    try:
        return msgspec.convert(params, type_, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid params: {exc}") from None


def _chunks(values: Sequence[object], size: int = IN_CHUNK) -> Iterator[Sequence[object]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class DataCommands:
    """The data commands over one catalog; register them on a CommandBus with ``register``."""

    def __init__(self, catalog: Catalog, transfers: Transfers) -> None:
        self.catalog = catalog
        self.recent = RecentRows()
        self.transfers = transfers
        """Where ``data/delete`` with ``matching`` goes."""

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
        """How busy a database is: a probe query's latency, the engine's busy count, and
        how many sessions besides archivist's are using it (``others``: the application).

        The latency counts the whole path a batch's statements take (thread hand-off, pool,
        server), so it rises with any kind of load, on every engine.
        """
        p = parse_params(params, LoadParams)
        handle = self.catalog.handle(p.db_handle)
        metric = BUSY_METRICS.get(handle.dialect_name)
        started = time.perf_counter()
        active, others_using = await handle.transaction(_probe, metric[1] if metric else None)
        result: JSONObject = {"latencyMs": round((time.perf_counter() - started) * 1000, 3)}
        if metric is not None and active is not None:
            result["active"] = active
            result["metric"] = metric[0]
        result["others"] = others_using
        return result

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
        query = ListQuery.build(info, p, entity.order_by, stored=remember)
        items = await self._list_remembered(handle, info, query, p) if fields is None else None
        if items is None:
            names, rows, stored = await handle.transaction(query.run)
            items = info.codec.encode_tuples(names, rows)
            if stored is not None:
                self.recent.remember(info, handle.name, items, stored)
        if fields is not None:
            items = [{name: item[name] for name in fields} for item in items]
        return {
            "items": items,
            "count": len(items),
            "collection": entity.collection,
            "primaryKey": info.pk,
            "orderBy": entity.order_by,
        }

    async def _list_remembered(
        self, handle: Handle, info: TableInfo, query: ListQuery, p: ListParams
    ) -> _Items | None:
        """A listing by keys of rows that all hold the stored form of rows just listed from
        a like table (a copy being verified): their items are those rows' items, with no
        type processing or encoding. None when any row differs: then list as usual.

        Equal stored values mean equal items (the encoding is a function of them), so this
        checks the copy byte for byte, more strictly than comparing items.
        """
        keys = _keys_of_filter(p.filter, info.pk)
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
        count = await handle.transaction(_scalar, query)
        assert isinstance(count, int)
        return {"count": count}

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
            _NewRow(found.item, None, found.stored)
            if found is not None
            else _NewRow(
                item := _json_value(raw),
                info.codec.decode_item(item, where=where.format(index)),
                None,
            )
            for index, (raw, found) in enumerate(
                zip(raw_items, self.recent.find(info, raw_items), strict=True)
            )
        ]
        rows, refused = _storable(info, rows, skip=p.on_unstorable == "skip")
        answer: JSONObject = {"created": 0}
        if refused:
            answer["unstorable"] = [each.wire() for each in refused]
        if rows:
            plan = _CreatePlan(info, rows, replace=p.on_conflict == "replace")
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
        _, handle, info = await self.catalog.table(p.collection, p.db_handle)
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
                return await _delete_sqlite(self.recent, handle, info, pairs, stored)
            deleted, skipped = await handle.transaction(_delete_expected, info, pairs, write=True)
            return {"deleted": deleted, "skipped": skipped}
        if given[0] == given[1]:
            raise InvalidParams("invalid params: give exactly one of id or ids")
        raw_ids = [p.id] if given[0] else list(p.ids or [])
        ids = list(dict.fromkeys(decode_values(pk_spec, raw_ids, where="ids.")))
        if any(value is None for value in ids):
            raise InvalidParams("invalid params: an id must not be null")
        deleted = await handle.transaction(_delete_ids, info, ids, write=True)
        return {"deleted": deleted}


def _json_value(item: object) -> Any:
    """An item as a JSON value: a row the frame left raw (`archivist.protocol.ROW_PARAMS`)
    is decoded here, where it is used."""
    return decode_raw(item) if isinstance(item, msgspec.Raw) else item


def _keys_of_filter(filter_: dict[str, Any] | None, pk: str) -> list[object] | None:
    """The keys a filter of the form ``{pk: {"$in": [...]}}`` names, else None."""
    if filter_ is None or list(filter_) != [pk]:
        return None
    condition = filter_[pk]
    if isinstance(condition, dict) and list(condition) == ["$in"]:
        keys = condition["$in"]
        return keys if isinstance(keys, list) else None
    return None


def _scalar(connection: Connection, query: sa.Select[Any]) -> object:
    return connection.execute(query).scalar_one()


# --- list -------------------------------------------------------------------------------------


def cursor_position(info: TableInfo, cursor: CursorParam) -> list[object]:
    """The cursor's position, decoded: its value, then the key of its row where the cursor
    is not on the key and names one (``id``)."""
    value = decode_value(info.spec(cursor.field), cursor.value, where="cursor.")
    if cursor.field == info.pk or cursor.id is msgspec.UNSET:
        return [value]
    return [value, decode_value(info.spec(info.pk), cursor.id, where="cursor.")]


def position_params(position: Sequence[object], limit: int) -> dict[str, object]:
    """The parameters of a listing built with ``bound`` (`ListQuery.build`) for a cursor at
    ``position`` and a page of ``limit`` rows."""
    params: dict[str, object] = {f"cursor_{i}": v for i, v in enumerate(position) if v is not None}
    params["page_limit"] = limit
    return params


@dataclass(frozen=True)
class ListQuery:
    query: sa.Select[Any]
    reverse: bool
    table: sa.Table
    stored: bool
    """Also read each row's stored form."""
    params: Mapping[str, object] = field(default_factory=dict)
    """The query's parameters, when built with ``bound``."""

    @classmethod
    def build(
        cls,
        info: TableInfo,
        p: ListParams,
        default_order: str,
        *,
        stored: bool = False,
        bound: bool = False,
    ) -> ListQuery:
        """The listing ``p`` asks for. With ``bound``, the cursor's values and the limit are
        the parameters ``cursor_<i>`` and ``page_limit`` (`position_params`), so the query
        serves every page of its shape: the same order, and a cursor whose values are null
        at the same places (or none)."""
        requested = [SortKey(o.field, o.direction) for o in p.order_by or []]
        cursor = p.cursor
        if cursor is not None:
            info.codec.check_fields([cursor.field], what="cursor field")
            if requested and requested[0].field != cursor.field:
                raise InvalidParams("invalid params: cursor.field must be the first orderBy field")
            extra = [k.field for k in requested[1:] if k.field != info.pk]
            if extra:
                raise InvalidParams(
                    "invalid params: with a cursor, orderBy may name only the cursor field"
                )
            if not requested:
                requested = [SortKey(cursor.field, "asc")]
        keys = sort_keys(info, requested, default_order)
        where = compile_filter(info, p.filter)
        reverse = False
        position = [] if cursor is None else cursor_position(info, cursor)
        params: Mapping[str, object] = {}
        limit: int | sa.BindParameter[int] = p.limit
        if bound:
            params = position_params(position, p.limit)
            limit = sa.bindparam("page_limit", p.limit, type_=sa.Integer())
        if cursor is not None:
            if bound:
                position = [
                    value
                    if value is None
                    else sa.bindparam(f"cursor_{i}", value, type_=info.table.c[key.field].type)
                    for i, (key, value) in enumerate(zip(keys, position, strict=False))
                ]
            after = cursor.direction == "after"
            where = sa.and_(where, keyset_condition(info, keys, position, after=after))
            reverse = not after
        query = (
            sa.select(info.table)
            .where(where)
            .order_by(*order_clauses(info, keys, reverse=reverse))
            .limit(limit)
        )
        return cls(query, reverse, info.table, stored, params)

    def run(
        self, connection: Connection
    ) -> tuple[list[str], list[Sequence[object]], list[Stored] | None]:
        """The column names, the rows, and (if asked) the rows' stored forms."""
        if not self.stored:
            result = connection.execute(self.query, self.params)
            rows: list[Sequence[object]] = list(result.all())
            if self.reverse:
                rows.reverse()  # a page before the cursor still comes in the listing order
            return list(result.keys()), rows, None
        form = StoredForm.of(self.table, connection.dialect)
        result = connection.execute(self.query.add_columns(*form.extra), self.params)
        split = [form.split(row) for row in result.all()]
        if self.reverse:
            split.reverse()
        names = list(result.keys())[: form.width]
        return names, [typed for typed, _ in split], [values for _, values in split]

    def run_stored_only(self, connection: Connection) -> list[Stored]:
        """The listing's rows in their stored form only (no type processing)."""
        raw = [sa.type_coerce(column, NullType()) for column in self.table.c]
        query = self.query.with_only_columns(*raw)
        rows = [tuple(row) for row in connection.execute(query, self.params)]
        if self.reverse:
            rows.reverse()
        return rows


# --- create -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _NewRow:
    """One item to create: decoded for binding, or with the stored form of an identical row
    of a like table (then ``item`` is in this table's own JSON form)."""

    item: Mapping[str, object]
    decoded: dict[str, object] | None
    stored: Stored | None

    def encoded(self, codec: RowCodec) -> Mapping[str, object]:
        return self.item if self.decoded is None else codec.encode_row(self.decoded)

    def values(self, codec: RowCodec) -> dict[str, object]:
        return self.decoded if self.decoded is not None else codec.decode_item(self.item)


def _storable(
    info: TableInfo, rows: list[_NewRow], *, skip: bool
) -> tuple[list[_NewRow], list[Unstorable]]:
    """The rows the table can store, and those it cannot (with ``skip``; without, the first
    is an `UnstorableValue` and nothing is written)."""
    columns = refusing_columns(info.dialect_name, info.columns)
    if not columns:
        return rows, []
    kept: list[_NewRow] = []
    refused: list[Unstorable] = []
    for row in rows:
        found = unstorable(info.dialect_name, columns, row.item, row.item.get(info.pk))
        if found is None:
            kept.append(row)
        elif not skip:
            raise UnstorableValue(f"{info.name} row {found.describe(info.pk)}; nothing was written")
        else:
            refused.append(found)
    return kept, refused


class _CreatePlan:
    """One call's insert: find existing rows by key in a few statements, fail on any conflict
    before writing, then insert the rest with one executemany (and update, with replace)."""

    def __init__(self, info: TableInfo, rows: list[_NewRow], *, replace: bool) -> None:
        self.info = info
        self.rows = rows
        self.replace = replace

    def run(self, connection: Connection) -> int:
        info, pk, codec = self.info, self.info.pk, self.info.codec
        pk_spec = info.spec(pk)
        # Keys compare in their JSON form, so 1.50 and 1.5 (or two spellings of one instant)
        # are the same key, as they are in the database.
        keyed: dict[object, _NewRow] = {}
        bound: dict[object, object] = {}
        unkeyed: list[_NewRow] = []
        for row in self.rows:
            if row.decoded is None:
                key = row.item[pk]
                value = decode_value(pk_spec, key)
            elif row.decoded.get(pk) is None:
                unkeyed.append(row)
                continue
            else:
                value = row.decoded[pk]
                key = codec.encode_field(pk, value)
            previous = keyed.get(key)
            if previous is not None and _differs(row.encoded(codec), previous.encoded(codec)):
                raise Conflict(
                    f"conflict: items with {pk}={_show(key)} differ within one call; "
                    "nothing was written"
                )
            keyed[key] = row
            bound[key] = value
        stored = [row.stored for row in keyed.values() if row.stored is not None]
        if self.replace and not unkeyed and len(stored) == len(keyed) and _upserts(connection):
            # A copy of rows just listed (the usual create of a batch): written by key in
            # one statement, with no read of what the destination holds first.
            with self._constraints():
                self._write_stored(connection, stored, upsert=True)
            return len(self.rows)
        existing = self._existing(connection, list(bound.values()))
        inserts: list[_NewRow] = list(unkeyed)
        updates: list[dict[str, object]] = []
        conflicts: list[object] = []
        for key, row in keyed.items():
            current = existing.get(key)
            if current is None:
                inserts.append(row)  # the usual case: no need to encode the row again
            elif _differs(row.encoded(codec), current):
                if self.replace:
                    updates.append(row.values(codec))
                else:
                    conflicts.append(key)
        if conflicts:
            shown = ", ".join(_show(key) for key in conflicts[:10])
            more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
            raise Conflict(
                f"conflict: {info.name} already holds different rows with {pk} {shown}{more}; "
                "nothing was written"
            )
        with self._constraints():
            self._write_stored(connection, [r.stored for r in inserts if r.stored is not None])
            self._insert(connection, [r.decoded for r in inserts if r.decoded is not None])
            self._update(connection, updates)
        return len(self.rows)

    @contextlib.contextmanager
    def _constraints(self) -> Iterator[None]:
        """A write the database refuses for a key or constraint is a `Conflict` (the call's
        transaction then writes nothing)."""
        try:
            yield
        except IntegrityError as exc:
            raise Conflict(
                f"conflict: {self.info.name}: a row with the same key was written concurrently "
                f"or a constraint failed; nothing was written ({_first_line(exc.orig)})"
            ) from None

    def _existing(self, connection: Connection, keys: list[object]) -> dict[object, JSONObject]:
        info = self.info
        pk_column = info.table.c[info.pk]
        found: dict[object, JSONObject] = {}
        for chunk in _chunks(keys):
            query = sa.select(info.table).where(one_of(info, pk_column, chunk))
            result = connection.execute(query)
            for encoded in info.codec.encode_tuples(list(result.keys()), result.all()):
                found[encoded[info.pk]] = encoded
        return found

    def _write_stored(
        self, connection: Connection, rows: list[Stored], *, upsert: bool = False
    ) -> None:
        """Insert rows given in their stored form, straight through the driver's executemany
        (the values are already in its own form, in the table's column order). With
        ``upsert`` (SQLite), a row whose key exists is overwritten, column by column; any
        other constraint still fails the statement."""
        if not rows:
            return
        table = self.info.table
        columns = list(table.c)
        values = {c.name: sa.bindparam(f"_s{i}", type_=NullType()) for i, c in enumerate(columns)}
        statement: sa.Insert = sa.insert(table).values(values)
        if upsert:
            upserting = sqlite_insert(table).values(values)
            excluded = upserting.excluded
            others = {c.name: excluded[c.name] for c in columns if c.name != self.info.pk}
            key = [table.c[self.info.pk]]
            statement = (
                upserting.on_conflict_do_update(index_elements=key, set_=others)
                if others
                else upserting.on_conflict_do_nothing(index_elements=key)
            )
        compiled = statement.compile(dialect=connection.dialect)
        if compiled.positiontup is not None:
            order = [int(name[2:]) for name in compiled.positiontup]
            positional = _in_order(rows, order)
            connection.exec_driver_sql(compiled.string, positional)
        else:
            named = [{f"_s{i}": value for i, value in enumerate(row)} for row in rows]
            connection.exec_driver_sql(compiled.string, named)

    def _insert(self, connection: Connection, rows: list[dict[str, object]]) -> None:
        if not rows:
            return
        # executemany needs one key set: group rows by their columns (normally one group).
        groups: dict[tuple[str, ...], list[dict[str, object]]] = {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(row)
        for names, group in groups.items():
            if connection.dialect.name == "postgresql" and len(group) > 1:
                _copy_in(connection, self.info.table, names, group)
            else:
                connection.execute(sa.insert(self.info.table), group)

    def _update(self, connection: Connection, rows: list[dict[str, object]]) -> None:
        if not rows:
            return
        table, pk = self.info.table, self.info.pk
        groups: dict[tuple[str, ...], list[dict[str, object]]] = {}
        for row in rows:
            groups.setdefault(tuple(name for name in row if name != pk), []).append(row)
        for names, group in groups.items():
            if not names:
                continue
            statement = (
                sa.update(table)
                .where(table.c[pk] == sa.bindparam("_archivist_pk"))
                .values({name: sa.bindparam(f"_v_{i}") for i, name in enumerate(names)})
            )
            params = [
                {"_archivist_pk": row[pk], **{f"_v_{i}": row[n] for i, n in enumerate(names)}}
                for row in group
            ]
            connection.execute(statement, params)


def _copy_in(
    connection: Connection, table: sa.Table, names: tuple[str, ...], rows: list[dict[str, object]]
) -> None:
    """PostgreSQL's bulk path: ``COPY ... FROM STDIN`` on the transaction's own connection.

    Values go through each column's SQLAlchemy bind processing (JSON to text, timestamps to
    UTC), then psycopg writes them in COPY's text format and the server parses each by its
    column's type, as it would a parameter.
    """
    dialect = connection.dialect
    quote = dialect.identifier_preparer
    processors = [
        table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    ]
    target = f"{quote.format_table(table)} ({', '.join(quote.quote(name) for name in names)})"
    statement = f"COPY {target} FROM STDIN"
    driver = connection.connection.driver_connection
    assert driver is not None
    # A failure is raised as SQLAlchemy would (IntegrityError for a duplicate key...), so the
    # caller maps it to conflict or db_error like any other statement's failure.
    with (
        driver_errors(dialect, statement),
        driver.cursor() as cursor,
        cursor.copy(statement) as copy,
    ):
        for row in rows:
            copy.write_row(
                [
                    value if value is None or process is None else process(value)
                    for value, process in zip((row[n] for n in names), processors, strict=True)
                ]
            )


def _upserts(connection: Connection) -> bool:
    """Whether a copy may overwrite by key without reading first: SQLite, whose upsert
    (``INSERT ... ON CONFLICT (key) DO UPDATE``) the bundled library has had since 3.24."""
    return connection.dialect.name == "sqlite" and sqlite3.sqlite_version_info >= (3, 24)


def _in_order(rows: list[Stored], order: list[int]) -> Sequence[Stored]:
    """Stored rows with their values in a statement's parameter order."""
    if order == list(range(len(order))):
        return rows  # the usual case: parameters in column order
    pick = operator.itemgetter(*order)
    return [tuple(pick(row)) if len(order) > 1 else (pick(row),) for row in rows]


def _differs(item: Mapping[str, object], current: Mapping[str, object]) -> bool:
    """True if a column the item names holds something else in ``current``."""
    return any(current.get(name) != value for name, value in item.items())


def _show(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- delete -----------------------------------------------------------------------------------


async def _delete_sqlite(
    recent: RecentRows,
    handle: Handle,
    info: TableInfo,
    pairs: list[tuple[object, dict[str, object]]],
    remembered: list[Stored | None],
) -> JSONObject:
    """SQLite locks the whole database for a write, so the comparing happens outside the
    lock and the delete under it removes only rows still holding the very values compared,
    in short slices that let the application's writers in between (`_delete_in_slices`).

    An expected item equal to a row this daemon listed from this table (``remembered``
    holds that row's stored form) needs no comparing: its stored form at listing time is
    what the delete must still find.
    """
    unchanged: list[_Unchanged] = [
        (item[info.pk], stored)
        for (_, item), stored in zip(pairs, remembered, strict=True)
        if stored is not None
    ]
    rest = [pair for pair, stored in zip(pairs, remembered, strict=True) if stored is None]
    skipped: list[object] = []
    if rest:
        compared, skipped = await handle.transaction(_match_expected, info, rest)
        unchanged += compared
    if not unchanged:
        return {"deleted": 0, "skipped": skipped}
    deleted, kept = await handle.run(_delete_in_slices, handle.engine, info, unchanged)
    recent.forget(info, [key for key, _ in unchanged])
    skipped.extend(kept)
    if len(skipped) > 1:  # rare: report them in the order of expected
        position = {_hashable(item[info.pk]): index for index, (_, item) in enumerate(pairs)}
        skipped.sort(key=lambda key: position.get(_hashable(key), len(position)))
    return {"deleted": deleted, "skipped": skipped}


def _hashable(value: object) -> object:
    return value if isinstance(value, int | str | float) else repr(value)


def _delete_ids(connection: Connection, info: TableInfo, ids: list[object]) -> int:
    pk_column = info.table.c[info.pk]
    deleted = 0
    for chunk in _chunks(ids):
        result = connection.execute(sa.delete(info.table).where(one_of(info, pk_column, chunk)))
        deleted += max(result.rowcount, 0)
    return deleted


def _delete_expected(
    connection: Connection, info: TableInfo, expected: list[tuple[object, dict[str, object]]]
) -> tuple[int, list[object]]:
    """Delete only rows still equal to what the caller copied; report the others as skipped.

    ``expected`` pairs each row's key (bound form) with the item as the caller has it. The
    rows are read under row locks (``FOR UPDATE``), so none can change before the delete.
    """
    current = _current_rows(connection, info, [key for key, _ in expected], lock=True, stored=False)
    matched, skipped = _compare_expected(info, current, expected)
    deleted = _delete_ids(connection, info, [key for key, _ in matched]) if matched else 0
    return deleted, skipped


def _match_expected(
    connection: Connection, info: TableInfo, expected: list[tuple[object, dict[str, object]]]
) -> tuple[list[_Unchanged], list[object]]:
    """The first half of a delete outside the write lock (SQLite): which rows are still equal
    to what the caller copied, with the values they hold as stored, for `_delete_in_slices`."""
    current = _current_rows(connection, info, [key for key, _ in expected], lock=False, stored=True)
    matched, skipped = _compare_expected(info, current, expected)
    return [(encoded_key, stored) for _, (encoded_key, stored) in matched], skipped


def _delete_in_slices(
    engine: sa.Engine, info: TableInfo, rows: list[_Unchanged]
) -> tuple[int, list[object]]:
    """Delete rows that still hold exactly the stored values they were compared with (SQLite);
    returns the rows deleted and the keys of those left (changed or gone since).

    Every column's stored value is named (``col IS value COLLATE BINARY``), bound as the
    driver returned it, so a row written in between (whatever the application's text
    formats) is kept. The rows go in slices, each one statement in its own transaction:
    SQLite takes the write lock, deletes and commits inside that one call, with no round
    trip into Python (and its GIL) while the lock is held. While the application writes,
    slices are short (about `SLICE_HOLD` of the lock each) with the lock free for
    `SLICE_GAP` between them; while nobody else writes, they are long: as the daemon's own
    copy deletes (`archivist.data.slicing.adaptive_slices`).
    A slice is first read with the same guard, without the lock, so the answer can say
    which rows were left (all but a row that another writer deletes in the instant between
    that read and the delete).

    The commits do not wait for the disk (``synchronous=NORMAL``, for these statements
    only): a delete lost in a power cut leaves rows that are in the archive too, and the
    next run deletes them again; the copy they depend on was committed durably before.
    """
    with engine.connect() as connection:
        raw: Any = connection.connection.dbapi_connection
        width = len(info.table.c)
        largest = max(1, raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
        deleted = 0
        left: list[object] = []
        with commits_without_sync(raw):
            for part in adaptive_slices(connection, raw, len(rows), largest):
                statement = _GuardedDelete.of(connection, info, part.size)
                chunk = rows[part.start : part.start + part.size]
                stored = [values for _, values in chunk]
                matched = set(statement.matching(raw, stored))
                began = time.perf_counter()
                removed = statement.delete(raw, stored)
                part.held = time.perf_counter() - began
                deleted += removed
                if removed < len(matched):  # rare: a row changed in the instant since it was read
                    matched -= set(statement.present(raw, list(matched)))
                pk_at = statement.pk_at
                left.extend(key for key, values in chunk if values[pk_at] not in matched)
    return deleted, left


@dataclass(frozen=True)
class _GuardedDelete:
    """Statements over a fixed number of rows of stored values (SQLite): which rows still
    hold them, and the delete of those. ``(VALUES (...), ...) AS g JOIN t ON t.pk = g.pk``
    finds each row by its key (the key's own index); the guard then asks for the very stored
    value of every column, the key included, byte for byte.

    A short slice is padded with NULL rows, which match nothing, so each size's text is
    always the same and SQLite prepares it once per connection, not under the lock.
    """

    target: str
    key: str
    select: str
    delete_sql: str
    rows: int
    width: int
    pk_at: int

    @classmethod
    def of(cls, connection: Connection, info: TableInfo, rows: int) -> _GuardedDelete:
        preparer = connection.dialect.identifier_preparer
        table = info.table
        pk_at = next(i for i, column in enumerate(table.c) if column.name == info.pk)
        names = tuple(preparer.quote(column.name) for column in table.c)
        target = preparer.format_table(table)
        select, delete = _guarded_sql(target, names, pk_at, rows)
        return cls(target, names[pk_at], select, delete, rows, len(names), pk_at)

    def _params(self, stored: list[Stored]) -> list[object]:
        flat = [value for row in stored for value in row]
        flat.extend((None,) * (self.width * (self.rows - len(stored))))
        return flat

    def matching(self, raw: Any, stored: list[Stored]) -> list[object]:
        """The keys (stored form) of the rows that hold these values now."""
        return [key for (key,) in self._run(raw, self.select, stored).fetchall()]

    def delete(self, raw: Any, stored: list[Stored]) -> int:
        """Delete the rows that hold these values now, in one transaction; how many went."""
        return int(self._run(raw, self.delete_sql, stored).rowcount)

    def present(self, raw: Any, keys: list[object]) -> list[object]:
        """Which of these keys (stored form) are in the table now."""
        marks = ", ".join(["?"] * len(keys))
        sql = f"SELECT {self.key} FROM {self.target} WHERE {self.key} IN ({marks})"
        return [key for (key,) in self._execute(raw, sql, keys).fetchall()]

    def _run(self, raw: Any, sql: str, stored: list[Stored]) -> Any:
        return self._execute(raw, sql, self._params(stored))

    @staticmethod
    def _execute(raw: Any, sql: str, params: list[object]) -> Any:
        return execute(raw, sql, params)


@functools.lru_cache(maxsize=64)
def _guarded_sql(target: str, names: tuple[str, ...], pk_at: int, rows: int) -> tuple[str, str]:
    values = ", ".join(["(" + ", ".join(["?"] * len(names)) + ")"] * rows)
    guard = " AND ".join(
        f"t.{name} IS g.column{i + 1} COLLATE BINARY" for i, name in enumerate(names)
    )
    key = names[pk_at]
    select = (
        f"SELECT t.{key} FROM (VALUES {values}) AS g"
        f" JOIN {target} AS t ON t.{key} = g.column{pk_at + 1} WHERE {guard}"
    )
    return select, f"DELETE FROM {target} WHERE {key} IN ({select})"


_Unchanged: TypeAlias = tuple[object, tuple[object, ...]]
"""A row found equal to its expected item: its key (JSON form) and its values as stored."""
_Current: TypeAlias = tuple[JSONObject, tuple[object, ...]]
"""A row as read now: its item (JSON form) and its values as stored, in column order."""


def _current_rows(
    connection: Connection, info: TableInfo, keys: list[object], *, lock: bool, stored: bool
) -> dict[object, _Current]:
    """The rows with these keys now, by JSON key: encoded and, with ``stored``, in their
    stored form (else an empty tuple); with ``lock``, locked for update."""
    codec, pk, table = info.codec, info.pk, info.table
    form = StoredForm.of(table, connection.dialect) if stored else None
    names = info.column_names
    current: dict[object, _Current] = {}
    for chunk in _chunks(keys):
        query = sa.select(table).where(one_of(info, table.c[pk], chunk))
        if lock:
            query = query.with_for_update()
        if form is not None:
            query = query.add_columns(*form.extra)
        rows = connection.execute(query).all()
        split = [form.split(row) for row in rows] if form is not None else [(r, ()) for r in rows]
        encoded = codec.encode_tuples(names, (typed for typed, _ in split))
        for item, (_, values) in zip(encoded, split, strict=True):
            current[item[pk]] = (item, values)
    return current


def _compare_expected(
    info: TableInfo,
    current: dict[object, _Current],
    expected: list[tuple[object, dict[str, object]]],
) -> tuple[list[tuple[object, _Unchanged]], list[object]]:
    """Split expected rows into those still equal now (bound key, (JSON key, stored values))
    and the JSON keys of those changed or gone.

    Items normally come from this table's own listing, so they compare as they are; only
    one that differs is normalised (``"1.50"`` -> ``"1.5"``) and compared again.
    """
    codec, pk = info.codec, info.pk
    matched: list[tuple[object, _Unchanged]] = []
    skipped: list[object] = []
    for key, item in expected:
        json_key = item[pk]
        found = current.get(json_key)
        if found is None or _differs(item, found[0]):
            normal = codec.normalize_item(item)
            json_key = normal[pk]
            found = current.get(json_key)
            if found is None or _differs(normal, found[0]):
                skipped.append(json_key)
                continue
        matched.append((key, (json_key, found[1])))
    return matched, skipped
