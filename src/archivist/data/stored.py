"""Rows in their stored form: the values exactly as the driver returned them, beside the
typed values the codec encodes.

Two uses. A SQLite delete binds the stored form to delete a row only if it still holds it
(`commands._delete_in_slices`). And a copy between like tables (same engine, same columns)
binds the stored form of each listed row straight into the destination: `RecentRows` keeps
the stored form of recent listings, so that a ``data/create`` of those very items skips
decoding and SQLAlchemy's per-value type processing (the bulk path of a copy), and stores
byte for byte what the source held (a JSON document keeps the application's own text).
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import NullType

from archivist.data.schema import TableInfo
from archivist.data.values import JSONObject

PASSTHROUGH_DIALECTS: Final = frozenset({"sqlite"})
"""Engines where reading the stored form costs next to nothing: sqlite3 returns stored
values as they are, and binds them back unchanged. (PyMySQL would parse each timestamp a
second time in Python, and psycopg returns JSON documents as objects it does not bind back
as JSON: measured slower on MariaDB, so both keep the decoding path.)"""
RECENT_ROWS: Final = 20_000
"""Listed rows remembered, across all tables: the batches in flight of a few concurrent
tasks (a deleted row is forgotten at once)."""

Stored: TypeAlias = tuple[object, ...]
Layout: TypeAlias = tuple[object, ...]


@dataclass(frozen=True)
class StoredForm:
    """How to read a table's rows in both forms: its columns, then again, without type
    processing, each column the dialect converts on reading (timestamps, JSON)."""

    width: int
    extra: tuple[sa.ColumnElement[Any], ...]
    pick: Callable[[Sequence[object]], Stored]
    """From a row read with ``extra`` appended, its stored form (in column order)."""

    @classmethod
    def of(cls, table: sa.Table, dialect: Dialect) -> StoredForm:
        columns = list(table.c)
        converted = [
            i
            for i, column in enumerate(columns)
            if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None
        ]
        extra = tuple(
            sa.type_coerce(columns[i], NullType()).label(f"_stored_{i}") for i in converted
        )
        at = {i: len(columns) + k for k, i in enumerate(converted)}
        positions = [at.get(i, i) for i in range(len(columns))]
        if len(positions) == 1:
            only = positions[0]
            return cls(len(columns), extra, lambda row: (row[only],))
        return cls(len(columns), extra, operator.itemgetter(*positions))

    def split(self, row: Sequence[object]) -> tuple[Sequence[object], Stored]:
        """A row read with ``extra`` appended: its typed values and its stored form."""
        return row[: self.width], self.pick(row)


def layout(info: TableInfo) -> Layout:
    """What must match for one table's stored values to mean the same in another."""
    return (
        info.dialect_name,
        info.name,
        tuple(
            (s.name, s.kind, s.int_bits, s.length, s.precision, s.scale, s.timezone, s.jsonb)
            for s in info.columns
        ),
    )


class RecentRows:
    """The stored form of recently listed rows, by table layout and key (JSON form).

    Only an item equal to what was listed is matched, so a stale or evicted entry can make
    a command slower, never different. Rows leave when deleted, or oldest first beyond
    ``max_rows``.
    """

    def __init__(self, max_rows: int = RECENT_ROWS) -> None:
        self.max_rows = max_rows
        self._rows: OrderedDict[tuple[int, object], _Entry] = OrderedDict()
        self._layouts: dict[Layout, int] = {}
        """A small number per table layout: rows are keyed by it (a layout is a deep tuple,
        slow to hash once per row)."""

    def __len__(self) -> int:
        return len(self._rows)

    def _table(self, info: TableInfo) -> int:
        return self._layouts.setdefault(layout(info), len(self._layouts))

    def remember(
        self,
        info: TableInfo,
        handle: str,
        items: Sequence[Mapping[str, object]],
        stored: Sequence[Stored],
    ) -> None:
        if info.dialect_name not in PASSTHROUGH_DIALECTS:
            return
        table, pk, rows = self._table(info), info.pk, self._rows
        for item, values in zip(items, stored, strict=True):
            key = (table, item.get(pk))
            rows[key] = _Entry(item, values, handle)
            rows.move_to_end(key)
        while len(rows) > self.max_rows:
            rows.popitem(last=False)

    def find(
        self, info: TableInfo, items: Sequence[Mapping[str, object]], *, handle: str | None = None
    ) -> list[Stored | None]:
        """For each item, the stored form of an identical row listed from a like table (from
        ``handle`` itself, if given)."""
        if info.dialect_name not in PASSTHROUGH_DIALECTS or not self._rows:
            return [None] * len(items)
        table, pk, rows = self._table(info), info.pk, self._rows
        found: list[Stored | None] = []
        for item in items:
            # An item that is not an object finds nothing; decoding it then says what is wrong.
            key = item.get(pk) if isinstance(item, Mapping) else None
            entry = rows.get((table, key)) if isinstance(key, int | str) else None
            if entry is None or (handle is not None and entry.handle != handle):
                found.append(None)
            else:
                found.append(entry.stored if entry.item == item else None)
        return found

    def covers(self, info: TableInfo, keys: Sequence[object]) -> bool:
        """Whether a row of a like table is remembered under each of these keys."""
        if info.dialect_name not in PASSTHROUGH_DIALECTS or not keys or not self._rows:
            return False
        table, rows = self._table(info), self._rows
        return all(isinstance(key, int | str) and (table, key) in rows for key in keys)

    def items_for(self, info: TableInfo, stored: Sequence[Stored]) -> list[JSONObject] | None:
        """The items of rows read in their stored form, when each holds exactly the stored
        form of a remembered row of a like table (the same key, the same values); else None."""
        table, rows = self._table(info), self._rows
        at = info.column_names.index(info.pk)
        items: list[JSONObject] = []
        for values in stored:
            key = values[at]
            entry = rows.get((table, key)) if isinstance(key, int | str) else None
            if entry is None or entry.stored != values:
                return None
            items.append(dict(entry.item))
        return items

    def forget(self, info: TableInfo, keys: Sequence[object]) -> None:
        table, rows = self._table(info), self._rows
        for key in keys:
            rows.pop((table, key), None)


@dataclass(frozen=True, slots=True)
class _Entry:
    item: Mapping[str, object]
    stored: Stored
    handle: str
