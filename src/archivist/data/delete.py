"""``data/delete``'s deletes: by ids, and of rows still equal to the items the caller
copied (``expected``): compared under row locks on the servers; on SQLite compared outside
the write lock, then deleted in short guarded slices (`delete_in_slices`, which the
daemon's own copies' deletes use too).
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeAlias

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from archivist.data.create import differs
from archivist.data.filters import chunks, one_of
from archivist.data.handles import Handle
from archivist.data.relations import (
    ForeignKey,
    guard_clause,
    guard_sql,
    lock_for_delete,
    set_read_committed,
    with_kept,
)
from archivist.data.schema import TableInfo
from archivist.data.slicing import Slice, adaptive_slices, commits_without_sync, execute
from archivist.data.stored import RecentRows, Stored, StoredForm
from archivist.data.values import JSONObject

_Unchanged: TypeAlias = tuple[object, tuple[object, ...]]
"""A row found equal to its expected item: its key (JSON form) and its values as stored."""
_Current: TypeAlias = tuple[JSONObject, tuple[object, ...]]
"""A row as read now: its item (JSON form) and its values as stored, in column order."""


async def delete_expected_sqlite(
    recent: RecentRows,
    handle: Handle,
    info: TableInfo,
    pairs: list[tuple[object, dict[str, object]]],
    remembered: list[Stored | None],
    refs: tuple[ForeignKey, ...] = (),
) -> JSONObject:
    """SQLite locks the whole database for a write, so the comparing happens outside the
    lock and the delete under it removes only rows still holding the very values compared,
    in short slices that let the application's writers in between (`_delete_unchanged`).

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
    deleted, left, referenced = await handle.run(
        _delete_unchanged, handle.engine, info, unchanged, refs
    )
    recent.forget(info, [key for key, _ in unchanged])
    skipped.extend(left)
    if len(skipped) > 1:  # rare: report them in the order of expected
        position = {_hashable(item[info.pk]): index for index, (_, item) in enumerate(pairs)}
        skipped.sort(key=lambda key: position.get(_hashable(key), len(position)))
    return with_kept({"deleted": deleted, "skipped": skipped}, referenced, refs)


def _hashable(value: object) -> object:
    return value if isinstance(value, int | str | float) else repr(value)


def delete_ids(
    connection: Connection, info: TableInfo, ids: list[object], refs: tuple[ForeignKey, ...] = ()
) -> int:
    """Delete the rows of ``ids`` that no row references through ``refs``."""
    pk_column = info.table.c[info.pk]
    guard = guard_clause(info.table, refs)
    deleted = 0
    for chunk in chunks(ids):
        result = connection.execute(
            sa.delete(info.table).where(one_of(info, pk_column, chunk), *guard)
        )
        deleted += max(result.rowcount, 0)
    return deleted


def delete_listed(
    connection: Connection, info: TableInfo, ids: list[object], refs: tuple[ForeignKey, ...]
) -> tuple[int, int]:
    """``data/delete`` by ``ids`` alone: the rows deleted, and those kept for ``refs``."""
    if not refs:
        return delete_ids(connection, info, ids), 0
    lock_for_delete(connection, info.table, info.pk, ids)
    present = len(_current_rows(connection, info, ids, lock=False, stored=False))
    deleted = delete_ids(connection, info, ids, refs)
    return deleted, present - deleted


def delete_expected(
    connection: Connection,
    info: TableInfo,
    expected: list[tuple[object, dict[str, object]]],
    refs: tuple[ForeignKey, ...] = (),
) -> tuple[int, list[object], int]:
    """Delete only rows still equal to what the caller copied and that no row references
    through ``refs``; report the others as skipped (changed) or kept (referenced).

    ``expected`` pairs each row's key (bound form) with the item as the caller has it. The
    rows are read under row locks (``FOR UPDATE``), so none can change before the delete
    and the guard sees every referencing row committed before them (`lock_for_delete`): a
    row equal to its copy that is not deleted is one still referenced.
    """
    if refs:
        set_read_committed(connection)
    current = _current_rows(connection, info, [key for key, _ in expected], lock=True, stored=False)
    matched, skipped = _compare_expected(info, current, expected)
    deleted = delete_ids(connection, info, [key for key, _ in matched], refs) if matched else 0
    return deleted, skipped, len(matched) - deleted


def _match_expected(
    connection: Connection, info: TableInfo, expected: list[tuple[object, dict[str, object]]]
) -> tuple[list[_Unchanged], list[object]]:
    """The first half of a delete outside the write lock (SQLite): which rows are still equal
    to what the caller copied, with the values they hold as stored, for `_delete_unchanged`."""
    current = _current_rows(connection, info, [key for key, _ in expected], lock=False, stored=True)
    matched, skipped = _compare_expected(info, current, expected)
    return [(encoded_key, stored) for _, (encoded_key, stored) in matched], skipped


def _delete_unchanged(
    engine: sa.Engine, info: TableInfo, rows: list[_Unchanged], refs: tuple[ForeignKey, ...] = ()
) -> tuple[int, list[object], int]:
    """Delete rows that still hold exactly the stored values they were compared with (SQLite)
    and that no row references through ``refs``; returns the rows deleted, the keys of
    those left (changed or gone since) and how many were kept for their references (SQLite
    has one writer: the guard inside each slice's one statement sees every committed row).

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
    """

    kept = 0

    def delete_slice(connection: Connection, raw: Any, part: Slice) -> tuple[int, list[object]]:
        nonlocal kept
        statement = _GuardedDelete.of(connection, info, part.size, refs)
        chunk = rows[part.start : part.start + part.size]
        stored = [values for _, values in chunk]
        matched = set(statement.matching(raw, stored))
        referenced: set[object] = set()
        if refs:
            referenced = set(statement.matching(raw, stored, guard=False)) - matched
            kept += len(referenced)
        began = time.perf_counter()
        removed = statement.delete(raw, stored)
        part.held = time.perf_counter() - began
        if removed < len(matched):  # rare: a row changed in the instant since it was read
            matched -= set(statement.present(raw, list(matched)))
        pk_at = statement.pk_at
        return removed, [
            key
            for key, values in chunk
            if values[pk_at] not in matched and values[pk_at] not in referenced
        ]

    deleted, left = delete_in_slices(engine, len(rows), len(info.table.c), delete_slice)
    return deleted, left, kept


SliceDelete: TypeAlias = Callable[[Connection, Any, Slice], tuple[int, list[object]]]
"""Deletes one `Slice` (its statement in its own transaction, on the raw sqlite3 connection
given, setting the slice's ``held``); returns the rows deleted and the keys left."""


def delete_in_slices(
    engine: sa.Engine, total: int, width: int, delete_slice: SliceDelete
) -> tuple[int, list[object]]:
    """SQLite's guarded delete of ``total`` rows, ``width`` bound values each, in slices
    (`archivist.data.slicing.adaptive_slices`), each deleted by ``delete_slice`` in its own
    transaction; returns the rows deleted and the keys of those left.

    The commits do not wait for the disk (``synchronous=NORMAL``, for these
    statements only): a delete lost in a power cut leaves rows that are in the archive
    too, and the next run deletes them again; the copy they depend on was committed
    durably before.
    """
    with engine.connect() as connection:
        raw: Any = connection.connection.dbapi_connection
        largest = max(1, raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
        deleted = 0
        left: list[object] = []
        with commits_without_sync(raw):
            for part in adaptive_slices(connection, raw, total, largest):
                removed, kept = delete_slice(connection, raw, part)
                deleted += removed
                left.extend(kept)
    return deleted, left


class _GuardedDelete(msgspec.Struct, frozen=True):
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
    unreferenced: str = ""
    """``select`` without the guard of references (empty: there are none)."""

    @classmethod
    def of(
        cls, connection: Connection, info: TableInfo, rows: int, refs: tuple[ForeignKey, ...] = ()
    ) -> _GuardedDelete:
        preparer = connection.dialect.identifier_preparer
        table = info.table
        pk_at = next(i for i, column in enumerate(table.c) if column.name == info.pk)
        names = tuple(preparer.quote(column.name) for column in table.c)
        target = preparer.format_table(table)
        references = guard_sql(preparer.quote, refs, "t")
        select, delete = _guarded_sql(target, names, pk_at, rows, references)
        plain = _guarded_sql(target, names, pk_at, rows, "")[0] if refs else ""
        return cls(target, names[pk_at], select, delete, rows, len(names), pk_at, plain)

    def _params(self, stored: list[Stored]) -> list[object]:
        flat = [value for row in stored for value in row]
        flat.extend((None,) * (self.width * (self.rows - len(stored))))
        return flat

    def matching(self, raw: Any, stored: list[Stored], *, guard: bool = True) -> list[object]:
        """The keys (stored form) of the rows that hold these values now (and, with
        ``guard``, that no row references)."""
        sql = self.select if guard or not self.unreferenced else self.unreferenced
        return [key for (key,) in self._run(raw, sql, stored).fetchall()]

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
def _guarded_sql(
    target: str, names: tuple[str, ...], pk_at: int, rows: int, references: str
) -> tuple[str, str]:
    values = ", ".join(["(" + ", ".join(["?"] * len(names)) + ")"] * rows)
    guard = " AND ".join(
        f"t.{name} IS g.column{i + 1} COLLATE BINARY" for i, name in enumerate(names)
    )
    if references:
        guard = f"{guard} AND {references}"
    key = names[pk_at]
    select = (
        f"SELECT t.{key} FROM (VALUES {values}) AS g"
        f" JOIN {target} AS t ON t.{key} = g.column{pk_at + 1} WHERE {guard}"
    )
    return select, f"DELETE FROM {target} WHERE {key} IN ({select})"


def _current_rows(
    connection: Connection, info: TableInfo, keys: list[object], *, lock: bool, stored: bool
) -> dict[object, _Current]:
    """The rows with these keys now, by JSON key: encoded and, with ``stored``, in their
    stored form (else an empty tuple); with ``lock``, locked for update."""
    codec, pk, table = info.codec, info.pk, info.table
    form = StoredForm.of(table, connection.dialect) if stored else None
    names = info.column_names
    current: dict[object, _Current] = {}
    for chunk in chunks(keys):
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
        if found is None or differs(item, found[0]):
            normal = codec.normalize_item(item)
            json_key = normal[pk]
            found = current.get(json_key)
            if found is None or differs(normal, found[0]):
                skipped.append(json_key)
                continue
        matched.append((key, (json_key, found[1])))
    return matched, skipped
