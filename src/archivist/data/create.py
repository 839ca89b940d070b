"""``data/create``'s write: rows the table cannot store are refused (`storable`), then
`CreatePlan` finds existing rows by key, fails on any conflict before writing, and inserts
(PostgreSQL: ``COPY``) or, with replace, updates; rows just listed from a like table are
written in their stored form, never decoded.
"""

from __future__ import annotations

import contextlib
import operator
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import NullType

from archivist.data.filters import chunks, one_of
from archivist.data.handles import driver_errors
from archivist.data.schema import TableInfo
from archivist.data.storable import Unstorable, refusing_columns, unstorable
from archivist.data.stored import Stored
from archivist.data.values import JSONObject, RowCodec, decode_value
from archivist.errors import Conflict, UnstorableValue


@dataclass(frozen=True, slots=True)
class NewRow:
    """One item to create: decoded for binding, or with the stored form of an identical row
    of a like table (then ``item`` is in this table's own JSON form)."""

    item: Mapping[str, object]
    decoded: dict[str, object] | None
    stored: Stored | None

    def encoded(self, codec: RowCodec) -> Mapping[str, object]:
        return self.item if self.decoded is None else codec.encode_row(self.decoded)

    def values(self, codec: RowCodec) -> dict[str, object]:
        return self.decoded if self.decoded is not None else codec.decode_item(self.item)


def storable(
    info: TableInfo, rows: list[NewRow], *, skip: bool
) -> tuple[list[NewRow], list[Unstorable]]:
    """The rows the table can store, and those it cannot (with ``skip``; without, the first
    is an `UnstorableValue` and nothing is written)."""
    columns = refusing_columns(info.dialect_name, info.columns)
    if not columns:
        return rows, []
    kept: list[NewRow] = []
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


class CreatePlan:
    """One call's insert: find existing rows by key in a few statements, fail on any conflict
    before writing, then insert the rest with one executemany (and update, with replace)."""

    def __init__(self, info: TableInfo, rows: list[NewRow], *, replace: bool) -> None:
        self.info = info
        self.rows = rows
        self.replace = replace

    def run(self, connection: Connection) -> int:
        info, pk, codec = self.info, self.info.pk, self.info.codec
        pk_spec = info.spec(pk)
        # Keys compare in their JSON form, so 1.50 and 1.5 (or two spellings of one instant)
        # are the same key, as they are in the database.
        keyed: dict[object, NewRow] = {}
        bound: dict[object, object] = {}
        unkeyed: list[NewRow] = []
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
            if previous is not None and differs(row.encoded(codec), previous.encoded(codec)):
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
        inserts: list[NewRow] = list(unkeyed)
        updates: list[dict[str, object]] = []
        conflicts: list[object] = []
        for key, row in keyed.items():
            current = existing.get(key)
            if current is None:
                inserts.append(row)  # the usual case: no need to encode the row again
            elif differs(row.encoded(codec), current):
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
        for chunk in chunks(keys):
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


def differs(item: Mapping[str, object], current: Mapping[str, object]) -> bool:
    """True if a column the item names holds something else in ``current``."""
    return any(current.get(name) != value for name, value in item.items())


def _show(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
