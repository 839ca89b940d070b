"""Gathers a task's batches into one Iceberg commit (`Stager`): each ``data/copy`` lists the
source's next rows and appends them to a local Parquet staging file; at ``rows_per_file``
rows, at the end of the source, before a listing from the start, after a pause, or when
the daemon stops, the staged rows are committed in one snapshot, read back from its data
files and compared, and only then deleted from the source, each row only while it is
still equal to its committed copy (docs/coldtier.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.types import NullType

from archivist.data.catalog import Catalog
from archivist.data.columns import Kind
from archivist.data.delete import delete_expected, delete_ids
from archivist.data.filters import chunks, one_of
from archivist.data.iceberg.expr import is_in
from archivist.data.iceberg.lake import Committed, Lake, LakeTable
from archivist.data.iceberg.types import arrow_columns, from_arrow_values, stored_array
from archivist.data.listing import ListQuery
from archivist.data.params import CopyParams
from archivist.data.registry import Entity
from archivist.data.relations import (
    ForeignKey,
    guarded,
    set_read_committed,
    with_kept,
)
from archivist.data.schema import TableInfo
from archivist.data.slicing import execute
from archivist.data.stored import PASSTHROUGH_DIALECTS, Stored
from archivist.data.values import JSONObject, decode_value, decode_values
from archivist.errors import InvalidParams, UnstorableValue

log = logging.getLogger(__name__)

DIGEST = "__archivist_digest"
"""The staging file's column of each row's digest (`digest`)."""
DELETE_CHUNK = 5_000
"""Rows the source deletes in one transaction after a commit (each checked against its
committed copy under row locks)."""

_sequence = itertools.count(1)


class Owner(Protocol):
    """What a stager needs of the Iceberg commands that own it."""

    catalog: Catalog
    flush_after: float

    async def table(self, collection: str, handle: str) -> tuple[Entity, Lake, LakeTable]: ...

    def summary(
        self, collection: str, rows: pa.Table, pk: str, operation: str
    ) -> dict[str, str]: ...


class Stager:
    """The rows of one collection staged for its next Iceberg commit."""

    def __init__(self, lake: Lake, collection: str, rows_per_file: int, owner: Owner) -> None:
        self.lake = lake
        self.collection = collection
        self.rows_per_file = rows_per_file
        self.owner = owner
        self.lock = asyncio.Lock()
        self.rows = 0
        self.path: Path | None = None
        self.writer: pq.ParquetWriter | None = None
        self.source_name: str | None = None
        self.move = False
        self._generation = 0
        self._timer: asyncio.TimerHandle | None = None
        self._idle: set[asyncio.Task[None]] = set()
        self._deleting: asyncio.Task[None] | None = None
        """The deletes after the last commit, which run beside the next batches' staging."""

    # --- staging files ----------------------------------------------------------------------

    def remove_leftovers(self) -> None:
        """Staging files a crashed daemon left for this collection: their rows are still in
        the source (they were never committed, or were and are found again), so they go."""
        folder = self.lake.url.staging
        if not folder.is_dir():
            return
        for path in folder.glob(f"{self.collection}.*.parquet"):
            pid = path.name.split(".")[1]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    path.unlink()
                    log.info(
                        "%s: removed staging file %s of a stopped daemon", self.collection, path
                    )

    def _write(self, table: pa.Table) -> None:
        if self.writer is None:
            folder = self.lake.url.staging
            folder.mkdir(parents=True, exist_ok=True)
            self.path = folder / f"{self.collection}.{os.getpid()}.{next(_sequence)}.parquet"
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="lz4")
        self.writer.write_table(table)

    def _read(self) -> pa.Table:
        assert self.writer is not None and self.path is not None
        self.writer.close()
        self.writer = None
        return pq.read_table(self.path)

    def _discard(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.writer, self.path, self.rows = None, None, 0

    # --- data/copy ------------------------------------------------------------------------

    async def copy(self, entity: Entity, found: LakeTable, p: CopyParams) -> JSONObject:
        catalog = self.owner.catalog
        async with self.lock:
            self._generation += 1
            if p.cursor is None:
                # A listing from the start would find the staged rows again (they are still
                # in the source): commit them first, and let their deletes end.
                await self._settle()
                await self._deleted()
            _, source, info = await catalog.table(p.collection, p.db_handle)
            # No more than the commit has room for: a file holds rows_per_file rows; the
            # answer is then "truncated", so the worker knows rows may follow.
            limit = max(1, min(p.limit, self.rows_per_file - self.rows))
            query = ListQuery.build(
                info,
                msgspec.structs.replace(p, limit=limit),
                entity.order_by,
                stored=source.dialect_name in PASSTHROUGH_DIALECTS,
            )
            names = [column.name for column in query.table.c]
            try:
                if query.stored:
                    # Read straight from the driver's cursor, and typed column by column
                    # (`_staged_stored`).
                    stored, processors = await source.transaction(_list_stored, query)
                    count = len(stored)
                    table, pk_values, last = await self.lake.run(
                        _staged_stored, found, names, stored, processors, source.dialect_name
                    )
                else:
                    names, rows, listed = await source.transaction(query.run)
                    count = len(rows)
                    columns = [list(values) for values in zip(*rows, strict=True)]
                    stored = [tuple(row) for row in rows] if listed is None else listed
                    if not rows:
                        columns = [[] for _ in names]
                    if count:
                        table = await self.lake.run(_staged, found, names, columns, stored)
                    pk_values = columns[names.index(info.pk)]
                    last = tuple(c[-1] for c in columns) if count else None
            except pa.ArrowException as exc:
                raise UnstorableValue(
                    f"{p.collection}: a row holds a value the Iceberg table cannot store "
                    f"exactly ({exc}); nothing was staged"
                ) from None
            if count:
                await self.lake.run(self._write, table)
                self.rows += count
                self.source_name, self.move = source.name, p.move
            order = p.order_by[0].field if p.order_by else entity.order_by
            keys = info.codec.encode_column(info.pk, pk_values)
            answer: JSONObject = {
                "items": keys,
                "count": len(keys),
                "copied": len(keys),
                "collection": info.name,
                "primaryKey": info.pk,
                "orderBy": order,
            }
            if p.move:
                # Staged, and deleted after their commit is read back: moved, as far as the
                # task is concerned (docs/coldtier.md says why the count comes first).
                answer["deleted"] = len(keys)
            if last is not None:
                end = info.codec.encode_tuples(names, [last])[0]
                if end.get(order) is not None:
                    answer["cursor"] = {
                        "field": order,
                        "value": end[order],
                        "id": end[info.pk],
                        "direction": "after",
                    }
            if limit < p.limit and count == limit:
                answer["truncated"] = True
            if self.rows >= self.rows_per_file or count < limit:
                await self._settle()
            elif self.rows:
                self._arm()
            return answer

    def _arm(self) -> None:
        """Commit the staged rows if no copy of this collection comes within the pause."""
        if self._timer is not None:
            self._timer.cancel()
        generation = self._generation
        loop = asyncio.get_running_loop()

        def fire() -> None:
            task = loop.create_task(self._settle_idle(generation))
            self._idle.add(task)
            task.add_done_callback(self._idle.discard)

        self._timer = loop.call_later(self.owner.flush_after, fire)

    async def _settle_idle(self, generation: int) -> None:
        async with self.lock:
            if generation != self._generation or not self.rows:
                return
            try:
                await self._settle()
            except Exception as exc:
                log.warning(
                    "%s: staged rows not committed (%s); they stay in the source",
                    self.collection,
                    exc,
                )

    async def settle(self) -> None:
        """Commit what is staged, and wait for the source's deletes."""
        async with self.lock:
            await self._settle()
            await self._deleted()

    async def _deleted(self) -> None:
        """Wait for the deletes after the last commit (a failure is logged: those rows stay
        in the source, committed, and the next task deletes them)."""
        task, self._deleting = self._deleting, None
        if task is None:
            return
        try:
            await task
        except Exception as exc:
            log.warning(
                "%s: deleting committed rows from the source failed (%s); they stay there, "
                "and the next task deletes them",
                self.collection,
                exc,
            )

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._idle):
            task.cancel()
        async with self.lock:
            try:
                await self._settle()
            finally:
                self._discard()
                await self._deleted()

    async def _settle(self) -> None:
        """Commit the staged rows, read the commit back, and delete the committed rows from
        the source where they are still equal to their copy. On any failure the staged rows
        are dropped: they are all still in the source (none is deleted before its commit)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._deleted()  # one commit's deletes at a time, in commit order
        if not self.rows:
            return
        rows = self.rows
        started = time.monotonic()
        try:
            staged = await self.lake.run(self._read)
            _, lake, found = await self.owner.table(self.collection, self.lake.name)
            # A row listed twice (a listing still running for a task that is gone, beside
            # the next task's) is committed once, as listed last.
            staged = await self.lake.run(last_of_each_key, staged, found.pk)
            guards = staged.select([found.pk, DIGEST])
            staged = staged.drop_columns([DIGEST])
            summary = self.owner.summary(self.collection, staged, found.pk, "archive")
            committed: Committed = await lake.run(lake.commit, found, staged, summary)
            del staged
            took = time.monotonic() - started
            log.info(
                "%s: Iceberg snapshot %s holds %d row(s) (%d already archived, %d replaced), "
                "written and read back in %.2f s",
                self.collection,
                committed.snapshot,
                rows,
                committed.already,
                committed.replaced,
                took,
            )
            if self.move and self.source_name is not None:
                # The deletes run beside the next batches' staging (the copy that committed
                # answers now); the next commit, count or listing from the start waits.
                self._deleting = asyncio.create_task(
                    self._delete_and_log(found, self.source_name, guards)
                )
        finally:
            self._discard()

    async def _delete_and_log(self, found: LakeTable, source_name: str, guards: pa.Table) -> None:
        started = time.monotonic()
        entity = self.owner.catalog.entity(self.collection)
        deleted, skipped, kept = await self._delete_source(entity, found, source_name, guards)
        log.info(
            "%s: %d committed row(s) deleted from the source in %.2f s",
            self.collection,
            deleted,
            time.monotonic() - started,
        )
        if skipped or kept:
            log.info(
                "%s: %d committed row(s) changed in the source since they were listed "
                "and %d are still referenced: they stay there",
                self.collection,
                skipped,
                kept,
            )

    async def _delete_source(
        self, entity: Entity, found: LakeTable, source_name: str, guards: pa.Table
    ) -> tuple[int, int, int]:
        """Delete the committed rows from the source, a chunk per transaction, each only if
        it still holds what was listed (its stored form's digest): what was listed is what
        the commit holds, compared value by value when it was read back."""
        _, source, info = await self.owner.catalog.table(self.collection, source_name)
        refs = guarded(info.referenced_by, entity.on_children)
        pk_spec = found.spec(found.pk)
        # Integer keys are the same numbers on both sides: no round trip through the codec.
        same_integers = pk_spec.kind is Kind.INTEGER and info.spec(info.pk).kind is Kind.INTEGER
        deleted = skipped = kept = 0
        for offset in range(0, guards.num_rows, DELETE_CHUNK):
            chunk = guards.slice(offset, DELETE_CHUNK)
            keys: list[object] = (
                chunk.column(found.pk).to_pylist()
                if same_integers
                else [
                    decode_value(info.spec(info.pk), found.codec.encode_field(found.pk, key))
                    for key in from_arrow_values(pk_spec, chunk.column(found.pk))
                ]
            )
            digests = chunk.column(DIGEST).to_pylist()
            gone, held, matched = await source.transaction(
                delete_unchanged, info, keys, digests, refs, write=True
            )
            deleted, kept = deleted + gone, kept + held
            skipped += len(keys) - matched
        return deleted, skipped, kept

    async def delete_matching(
        self, entity: Entity, found: LakeTable, source_name: str, raw_ids: Sequence[object]
    ) -> JSONObject:
        await self.settle()
        _, source, info = await self.owner.catalog.table(self.collection, source_name)
        keys = list(dict.fromkeys(decode_values(info.spec(info.pk), raw_ids, where="ids.")))
        if any(key is None for key in keys):
            raise InvalidParams("invalid params: an id must not be null")
        rows = await self.lake.run(found.rows, is_in(found.pk, found.key_literals(keys)))
        refs = guarded(info.referenced_by, entity.on_children)
        pairs = _expected(info, found, rows)
        deleted, left, kept = await source.transaction(
            delete_expected, info, pairs, refs, write=True
        )
        copied = {key for key, _ in pairs}
        skipped = [key for key in keys if key not in copied] + list(left)
        answer: JSONObject = {
            "deleted": deleted,
            "skipped": [info.codec.encode_field(info.pk, key) for key in skipped],
        }
        return with_kept(answer, kept, refs)


def last_of_each_key(table: pa.Table, pk: str) -> pa.Table:
    """``table`` with one row per key: the last one (in order otherwise)."""
    keys = table.column(pk)
    if len(pc.unique(keys)) == table.num_rows:
        return table
    numbered = table.append_column("__archivist_row", pa.array(range(table.num_rows)))
    last = numbered.group_by(pk).aggregate([("__archivist_row", "max")])
    rows = pc.sort_indices(last.column("__archivist_row_max"))
    return table.take(pc.take(last.column("__archivist_row_max"), rows))


_packer = msgspec.msgpack.Encoder()


def digest(stored: Sequence[object]) -> int:
    """A row's values in column order (as stored on SQLite, as typed elsewhere) as a 64-bit
    number: equal while the row is unchanged, within one process (the staged rows are
    deleted by the process that listed them; a stopped daemon's staging files are removed).
    Packed by msgspec (typed: an integer, a float, text and bytes differ even where their
    text would not), or as their repr where msgspec cannot pack a value (an integer beyond
    64 bits, a driver's own type); then Python's keyed hash of those bytes (SipHash, its key
    drawn per process), four times as fast as a blake2b of them: a row changed between its
    listing and its delete is taken for unchanged with a chance of 2**-64."""
    values = tuple(stored)
    try:
        packed = b"p" + _packer.encode(values)
    except (TypeError, OverflowError, msgspec.EncodeError):
        packed = b"r" + repr(values).encode()
    return hash(packed)


def row_digests(rows: Sequence[Stored]) -> list[int]:
    """`digest` of each row (tuples, as a cursor returns them), in one pass."""
    encode = _packer.encode
    try:
        return [hash(b"p" + encode(row)) for row in rows]
    except (TypeError, OverflowError, msgspec.EncodeError):
        return [digest(row) for row in rows]


def _staged(
    found: LakeTable,
    names: Sequence[str],
    columns: Sequence[list[object]],
    stored: Sequence[Sequence[object]],
) -> pa.Table:
    """Listed rows (typed, column by column) as the staging file holds them: the table's
    columns, and each row's digest (`DIGEST`) of its stored form, which its delete checks."""
    table = arrow_columns(found.arrow_schema, found.specs, names, columns, len(stored))
    return table.append_column(
        DIGEST, pa.array([digest(values) for values in stored], type=pa.int64())
    )


Processor = Callable[[object], object] | None


def _list_stored(connection: Connection, query: ListQuery) -> tuple[list[Stored], list[Processor]]:
    """The listing's rows as stored (`ListQuery.run_raw`) and each column's result processor
    (the one SQLAlchemy would apply), to be typed column by column."""
    stored = query.run_raw(connection)
    dialect = connection.dialect
    processors: list[Processor] = [
        column.type.dialect_impl(dialect).result_processor(dialect, None)
        for column in query.table.c
    ]
    return stored, processors


def _staged_stored(
    found: LakeTable,
    names: Sequence[str],
    stored: Sequence[Stored],
    processors: Sequence[Processor],
    dialect_name: str,
) -> tuple[pa.Table, list[object], tuple[object, ...] | None]:
    """Rows as stored (tuples in ``names`` order) as the staging file holds them (`_staged`),
    typed column by column (`stored_array`); with the primary key's values and the last row,
    typed as the listing types them, for the answer."""
    count = len(stored)
    raw = list(zip(*stored, strict=True)) if count else [() for _ in names]
    position = {name: index for index, name in enumerate(names)}
    sqlite = dialect_name == "sqlite"
    arrays = []
    for spec in found.specs:
        type_ = found.arrow_schema.field(spec.name).type
        index = position.get(spec.name)
        if index is None:
            arrays.append(pa.nulls(count, type_))
            continue
        arrays.append(stored_array(spec, type_, raw[index], processors[index], sqlite=sqlite))
    table = pa.Table.from_arrays(arrays, schema=found.arrow_schema)
    table = table.append_column(DIGEST, pa.array(row_digests(stored), type=pa.int64()))
    at = position[found.pk]
    process = processors[at]
    keys = list(raw[at]) if process is None else [process(v) for v in raw[at]]
    last = (
        tuple(v if p is None else p(v) for v, p in zip(stored[-1], processors, strict=True))
        if count
        else None
    )
    return table, keys, last


def delete_unchanged(
    connection: Connection,
    info: TableInfo,
    keys: list[object],
    digests: list[int],
    refs: tuple[ForeignKey, ...],
) -> tuple[int, int, int]:
    """Delete the rows of ``keys`` whose stored form still has the digest it was listed
    with, reading them under row locks first (`delete_expected`'s discipline); the rows
    deleted, those kept for ``refs``, and those that matched."""
    if (
        connection.dialect.name == "sqlite"
        and not refs
        and all(type(key) is int for key in keys)
        and info.spec(info.pk).kind is Kind.INTEGER
    ):
        return _delete_unchanged_sqlite(connection, info, keys, digests)
    table = info.table
    pk_column = table.c[info.pk]
    # The form the listing digested: as stored where reading it costs nothing (SQLite),
    # else as typed.
    passthrough = connection.dialect.name in PASSTHROUGH_DIALECTS
    raw = (
        [sa.type_coerce(column, NullType()) for column in table.c] if passthrough else list(table.c)
    )
    # Without type processing, the driver's rows are the stored form as they are: fetched
    # from its cursor (not one SQLAlchemy row at a time), the key typed by the result
    # processor SQLAlchemy would apply.
    dialect = connection.dialect
    at = list(table.c).index(pk_column)
    typed = pk_column.type.dialect_impl(dialect).result_processor(dialect, None)

    def encoded(key: object) -> object:
        return repr(info.codec.encode_field(info.pk, key))

    # Integer keys (the common case) are their own text: no encoding per row. A current
    # key of another type then matches nothing, and its row stays (never a wrong delete).
    text = (lambda key: key) if all(type(key) is int for key in keys) else encoded

    wanted = {text(key): (key, value) for key, value in zip(keys, digests, strict=True)}
    if refs:
        # The rows are locked by the read below, so the guard sees every child committed
        # before them (`archivist.data.relations.lock_for_delete`).
        set_read_committed(connection)
    matched: list[object] = []
    for chunk in chunks(keys):
        if passthrough:
            query = sa.select(*raw).where(one_of(info, pk_column, chunk)).with_for_update()
            result = connection.execute(query)
            try:
                found: list[Sequence[object]] = list(result.cursor.fetchall())
            finally:
                result.close()
            pairs = [(row[at] if typed is None else typed(row[at]), row) for row in found]
        else:
            query = sa.select(pk_column, *raw).where(one_of(info, pk_column, chunk))
            pairs = [(row[0], row[1:]) for row in connection.execute(query.with_for_update())]
        for current, values in pairs:
            key, expected = wanted.get(text(current), (None, None))
            if expected is not None and expected == digest(values):
                matched.append(key)
    if not matched:
        return 0, 0, 0
    deleted = delete_ids(connection, info, matched, refs)
    return deleted, len(matched) - deleted, len(matched)


SQLITE_KEYS: Final = 500
"""Keys per statement of `_delete_unchanged_sqlite` (a short last one padded with NULL keys,
which match nothing, so the statement's text is prepared once)."""


def _delete_unchanged_sqlite(
    connection: Connection, info: TableInfo, keys: list[object], digests: list[int]
) -> tuple[int, int, int]:
    """`delete_unchanged` on SQLite for integer keys and no references to guard: in the
    write transaction (BEGIN IMMEDIATE: no other writer until it commits), the rows are read
    as stored through the driver's own cursor, each compared with its digest, and those that
    match are deleted, both by statements of fixed text on the raw connection (SQLAlchemy
    renders an IN list of a thousand keys anew on every call)."""
    preparer = connection.dialect.identifier_preparer
    table = preparer.format_table(info.table)
    pk = preparer.quote(info.pk)
    names = ", ".join(preparer.quote(column.name) for column in info.table.c)
    at = [column.name for column in info.table.c].index(info.pk)
    marks = ", ".join("?" * SQLITE_KEYS)
    select = f"SELECT {names} FROM {table} WHERE {pk} IN ({marks})"
    delete = f"DELETE FROM {table} WHERE {pk} IN ({marks})"
    raw = connection.connection.driver_connection
    assert raw is not None
    wanted = dict(zip(keys, digests, strict=True))
    matched: list[object] = []
    deleted = 0
    for start in range(0, len(keys), SQLITE_KEYS):
        part: list[object] = list(keys[start : start + SQLITE_KEYS])
        part += [None] * (SQLITE_KEYS - len(part))
        rows = execute(raw, select, part).fetchall()
        ours: list[object] = [
            row[at]
            for row, now in zip(rows, row_digests(rows), strict=True)
            if type(row[at]) is int and wanted.get(row[at]) == now
        ]
        if ours:
            bound = ours + [None] * (SQLITE_KEYS - len(ours))
            deleted += int(execute(raw, delete, bound).rowcount)
            matched += ours
    return deleted, 0, len(matched)


def _expected(
    info: TableInfo, found: LakeTable, rows: list[dict[str, object]]
) -> list[tuple[object, dict[str, object]]]:
    """Committed rows as ``delete_expected`` takes them: the source key and the item the
    source row must still equal (in the source's columns)."""
    names = set(info.column_names)
    pk_spec = info.spec(info.pk)
    pairs = []
    for row in rows:
        item = found.codec.encode_row({k: v for k, v in row.items() if k in names})
        pairs.append((decode_value(pk_spec, item[info.pk]), item))
    return pairs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
