"""Rows in their stored form: the values exactly as the driver returned them, beside the
typed values the codec encodes.

Two uses. A SQLite delete binds the stored form to delete a row only if it still holds it
(`archivist.data.delete`). And a copy between like tables (same engine, same columns)
binds the stored form of each listed row straight into the destination: `RecentRows` keeps
the stored form of recent listings, so that a ``data/create`` of those very items skips
decoding and SQLAlchemy's per-value type processing (the bulk path of a copy), and stores
byte for byte what the source held (a JSON document keeps the application's own text).

A row comes back from the worker as the very JSON the daemon sent for it; the daemon leaves
those rows raw when it reads the frame (`archivist.protocol.ROW_PARAMS`), and `RecentRows`
recognises each by its bytes, without decoding or comparing it field by field.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import NullType

from archivist.data.schema import TableInfo
from archivist.data.values import JSONObject
from archivist.protocol import encode_json

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


class StoredForm(msgspec.Struct, frozen=True):
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
    """The stored form of recently listed rows, by table layout and key, and by the JSON the
    listing sent for each.

    Only an item equal to what was listed is matched, so a stale or evicted entry can make
    a command slower, never different. Rows leave when deleted, or oldest first beyond
    ``max_rows``.
    """

    def __init__(self, max_rows: int = RECENT_ROWS) -> None:
        self.max_rows = max_rows
        self._rows: OrderedDict[tuple[int, object], Remembered] = OrderedDict()
        self._by_json: dict[tuple[int, bytes], Remembered] = {}
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
        items: Sequence[JSONObject],
        stored: Sequence[Stored],
    ) -> None:
        if info.dialect_name not in PASSTHROUGH_DIALECTS:
            return
        table, pk, rows, by_json = self._table(info), info.pk, self._rows, self._by_json
        for item, values in zip(items, stored, strict=True):
            key = (table, item.get(pk))
            old = rows.pop(key, None)
            if old is not None:
                by_json.pop((table, old.json), None)
            entry = Remembered(item, encode_json(item), values, handle)
            rows[key] = entry
            by_json[(table, entry.json)] = entry
        while len(rows) > self.max_rows:
            (old_table, _), old = rows.popitem(last=False)
            by_json.pop((old_table, old.json), None)

    def find(
        self, info: TableInfo, items: Sequence[object], *, handle: str | None = None
    ) -> list[Remembered | None]:
        """For each item, an identical row listed from a like table (from ``handle`` itself,
        if given). An item left raw (`msgspec.Raw`) is matched by its bytes, an object by
        its fields."""
        if info.dialect_name not in PASSTHROUGH_DIALECTS or not self._rows:
            return [None] * len(items)
        table, pk, rows, by_json = self._table(info), info.pk, self._rows, self._by_json
        found: list[Remembered | None] = []
        for item in items:
            entry: Remembered | None
            if isinstance(item, msgspec.Raw):
                entry = by_json.get((table, bytes(item)))
            elif isinstance(item, Mapping):
                key = item.get(pk)
                entry = rows.get((table, key)) if isinstance(key, int | str) else None
                if entry is not None and entry.item != item:
                    entry = None
            else:
                # Not an object: decoding it says what is wrong.
                entry = None
            if entry is not None and handle is not None and entry.handle != handle:
                entry = None
            found.append(entry)
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
        table, rows, by_json = self._table(info), self._rows, self._by_json
        for key in keys:
            old = rows.pop((table, key), None)
            if old is not None:
                by_json.pop((table, old.json), None)


@dataclass(frozen=True, slots=True)
class Remembered:
    """A listed row: its item, the item's JSON as the listing sent it, its stored form, and
    the handle it was listed from."""

    item: JSONObject
    json: bytes
    stored: Stored
    handle: str
