"""How the daemon reads a batch's rows from the source for a move between two servers or
engines (`streamed`): the hashed take (a server deleting each row and hashing it),
SQLite's rows as stored, the statements that read rows by key, and how a statement names
its keys on each engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.types import NullType

from archivist.data.columns import ColumnSpec, Kind
from archivist.data.filters import chunks
from archivist.data.handles import driver_errors
from archivist.data.schema import TableInfo
from archivist.data.transfer import canonical
from archivist.data.transfer.keys import key_ranges

Prepare = Callable[[object], object]
"""A value as read from the source -> as the destination's driver takes it."""

SERVERS: Final = frozenset({"postgresql", "mysql", "mariadb"})
"""Engines that compute a batch's digest themselves, in SQL."""


def keyed(
    connection: Connection, info: TableInfo, statement: str, keys: Sequence[object]
) -> tuple[str, tuple[object, ...]]:
    """``statement`` with its ``{keys}`` condition on ``keys``, and its parameters."""
    dialect = connection.dialect
    if dialect.name == "postgresql":
        sql_type = info.table.c[info.pk].type.compile(dialect=dialect)
        return statement.replace("{keys}", f"= ANY(%s::{sql_type}[])"), (list(keys),)
    if info.spec(info.pk).kind is Kind.INTEGER:
        quoted = dialect.identifier_preparer.quote(info.pk)
        where = key_ranges(quoted, [int(k) for k in keys])  # type: ignore[call-overload]
        return statement.replace(f"{quoted} {{keys}}", where), ()
    column = info.table.c[info.pk]
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    bound = tuple(keys if process is None else [process(key) for key in keys])
    return statement.replace("{keys}", f"IN ({', '.join(['%s'] * len(keys))})"), bound


class HashedTake(msgspec.Struct, frozen=True):
    """A move's delete on a server that answers each row deleted with the MD5 of its
    canonical text (`canonical.row_text_sql`), computed by the server from the very row it
    deletes: the batch's digest is then the digest of those hashes, and Python writes no
    row's text. Timestamps going into PostgreSQL come as their canonical text, which
    ``COPY`` reads as it is (sessions in UTC), not parsed into datetimes by PyMySQL and
    written back out.

    Not from MariaDB/MySQL with a float column: it writes floats in another form than
    PostgreSQL (`canonical`), and every such batch would fall back to the row-by-row
    compare; Python's digest of the rows is used there, as before."""

    statement: str
    """``{keys}`` where the keys go; the columns in `Streamed.specs` order, then the hash."""
    types: tuple[tuple[int, sa.types.TypeEngine[Any]], ...]
    """Per column but those read as text: its type, whose result processor (the one
    SQLAlchemy would apply, for the type the driver reports) reads it as `Streamed.read`."""

    @classmethod
    def of(
        cls,
        info: TableInfo,
        dialect: sa.Dialect,
        specs: Sequence[ColumnSpec],
        dest: TableInfo,
        dest_dialect: sa.Dialect,
    ) -> HashedTake | None:
        name = dialect.name
        if name not in SERVERS:  # whether it deletes with RETURNING: `move_rows` asks
            return None
        if name != "postgresql" and any(spec.kind is Kind.FLOAT for spec in specs):
            return None
        quote = dialect.identifier_preparer.quote
        target = dialect.identifier_preparer.format_table(info.table)
        columns: list[str] = []
        types: list[tuple[int, sa.types.TypeEngine[Any]]] = []
        for index, (spec, column) in enumerate(
            zip(specs, columns_of(info, dialect, specs), strict=True)
        ):
            quoted = quote(spec.name)
            if spec.kind is Kind.JSON:
                columns.append(f"{quoted}::text" if name == "postgresql" else quoted)
                continue
            if (
                spec.kind is Kind.DATETIME
                and name != "postgresql"
                and dest_dialect.name == "postgresql"
                and dest.spec(spec.name).kind is Kind.DATETIME
            ):
                columns.append(f"DATE_FORMAT({quoted}, '%%Y-%%m-%%d %%H:%%i:%%s.%%f')")
                continue
            columns.append(quoted)
            types.append((index, column.type.dialect_impl(dialect)))
        text = canonical.row_text_sql(name, specs, quote)
        hashed = f"md5({text})" if name == "postgresql" else f"MD5(CONVERT({text} USING utf8mb4))"
        statement = (
            f"DELETE FROM {target} WHERE {quote(info.pk)} {{keys}}"
            f" RETURNING {', '.join(columns)}, {hashed}"
        )
        return cls(statement, tuple(types))

    def run(
        self, connection: Connection, info: TableInfo, keys: Sequence[object]
    ) -> tuple[list[Sequence[object]], tuple[str, int]]:
        """Delete the rows of ``keys``; answer them (as `Streamed.read` reads them, but
        timestamps bound for PostgreSQL as text) and their digest."""
        rows: list[Sequence[object]] = []
        hashes: list[str] = []
        steps: list[tuple[int, Prepare]] = []
        dialect = connection.dialect
        for chunk in chunks(keys):
            statement, params = keyed(connection, info, self.statement, chunk)
            result = connection.exec_driver_sql(statement, params)
            if not steps and result.cursor is not None and result.cursor.description:
                described = result.cursor.description
                for index, type_ in self.types:
                    process = type_.result_processor(dialect, described[index][1])
                    if process is not None:
                        steps.append((index, process))
            for row in result:
                *values, hashed = row
                hashes.append(hashed.decode("ascii") if isinstance(hashed, bytes) else hashed)
                rows.append(values)
        rows = _converted(rows, tuple(steps))
        return rows, (canonical.digest_of_hashes(hashes), len(hashes))


class StoredRows(msgspec.Struct, frozen=True):
    """A SQLite table's rows read straight from the driver's cursor, as stored, with no
    per-row type processing: a column's result processor (the one SQLAlchemy would apply)
    runs only where a stored value is not already what the digest and the writer take. A
    timestamp stored in its canonical text (`canonical.TIMESTAMP_TEXT`, SQLAlchemy's own
    storage form) is its own canonical text, and PostgreSQL's ``COPY`` reads it as it is
    (sessions in UTC, where instants are stored as their UTC wall time); parsing it into a
    datetime and writing it back out was most of a SQLite batch's time in the daemon."""

    by_keys: str
    """The rows of ``{marks}`` keys (the columns in `Streamed.specs` order)."""
    columns: tuple[sa.ColumnElement[Any], ...]
    """The same columns, untyped: a page's rows read with the page's own listing."""
    names: tuple[str, ...]
    key_index: int
    bind_key: Prepare | None
    """A key as the table stores it (None: as given)."""
    read_key: Prepare | None
    """A stored key as archivist reads it (None: as stored)."""
    steps: tuple[tuple[int, Prepare], ...]
    """Per column that needs it: a stored value -> the value the digest takes."""
    write_steps: tuple[tuple[int, Prepare], ...]
    """Per column that needs it: a stored value -> the value the destination's writer takes
    (timestamps as their text only into PostgreSQL)."""
    processors: dict[str, Prepare]
    """Each column's result processor, by name (a page's last order value)."""

    @classmethod
    def of(
        cls,
        info: TableInfo,
        dialect: sa.Dialect,
        specs: Sequence[ColumnSpec],
        *,
        into: TableInfo | None = None,
        into_dialect: sa.Dialect | None = None,
    ) -> StoredRows:
        quote = dialect.identifier_preparer.quote
        target = dialect.identifier_preparer.format_table(info.table)
        names = ", ".join(quote(spec.name) for spec in specs)
        typed = columns_of(info, dialect, specs)
        processors: dict[str, Prepare] = {}
        steps: list[tuple[int, Prepare]] = []
        write_steps: list[tuple[int, Prepare]] = []
        for index, (spec, column) in enumerate(zip(specs, typed, strict=True)):
            process = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if process is None:
                continue
            processors[spec.name] = process
            step: Prepare = process
            if spec.kind is Kind.DATETIME:
                step = _as_text_or(process)
            steps.append((index, step))
            as_text = (
                into_dialect is not None
                and into_dialect.name == "postgresql"
                and into is not None
                and into.spec(spec.name).kind is Kind.DATETIME
            )
            write_steps.append((index, step if as_text else process))
        pk = info.table.c[info.pk]
        return cls(
            by_keys=f"SELECT {names} FROM {target} WHERE {quote(info.pk)} IN ({{marks}})",
            columns=tuple(sa.type_coerce(info.table.c[spec.name], NullType()) for spec in specs),
            names=tuple(spec.name for spec in specs),
            key_index=[spec.name for spec in specs].index(info.pk),
            bind_key=pk.type.dialect_impl(dialect).bind_processor(dialect),
            read_key=processors.get(info.pk),
            steps=tuple(steps),
            write_steps=tuple(write_steps),
            processors=processors,
        )

    def read(self, connection: Connection, keys: Sequence[object]) -> list[Sequence[object]]:
        """The stored rows of ``keys``, in no particular order."""
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        bind = self.bind_key
        found: list[Sequence[object]] = []
        for chunk in chunks(keys):
            bound = list(chunk) if bind is None else [bind(key) for key in chunk]
            statement = self.by_keys.format(marks=", ".join(["?"] * len(bound)))
            with driver_errors(connection.dialect, statement):
                found.extend(cursor.execute(statement, bound).fetchall())
        return found

    def for_digest(self, rows: list[Sequence[object]]) -> list[Sequence[object]]:
        return _converted(rows, self.steps)

    def for_writer(self, rows: list[Sequence[object]]) -> list[Sequence[object]]:
        return _converted(rows, self.write_steps)

    def keys_of(self, rows: Sequence[Sequence[object]]) -> list[object]:
        index, process = self.key_index, self.read_key
        if process is None:
            return [row[index] for row in rows]
        return [process(row[index]) for row in rows]


def _as_text_or(process: Prepare) -> Prepare:
    """A stored timestamp kept as its text when it is canonical, else processed."""
    match = canonical.TIMESTAMP_TEXT.fullmatch

    def step(value: object) -> object:
        if type(value) is str and match(value):
            return value
        return process(value)

    return step


def _converted(
    rows: list[Sequence[object]], steps: tuple[tuple[int, Prepare], ...]
) -> list[Sequence[object]]:
    if not steps:
        return rows
    converted: list[Sequence[object]] = []
    for row in rows:
        values = list(row)
        for index, step in steps:
            value = values[index]
            if value is not None:
                values[index] = step(value)
        converted.append(values)
    return converted


def reading(
    info: TableInfo, dialect: sa.Dialect, specs: Sequence[ColumnSpec] | None = None
) -> sa.Select[Any]:
    """The rows of ``:keys`` (an expanding list) of ``info``'s table, the columns of
    ``specs`` (by default its own) in their order, JSON as its stored text: what the digest
    hashes, and what is written into the other database."""
    columns = columns_of(info, dialect, specs if specs is not None else info.columns)
    keys: sa.BindParameter[Any] = sa.bindparam("keys", expanding=True)
    return sa.select(*columns).where(info.table.c[info.pk].in_(keys))


def columns_of(
    info: TableInfo, dialect: sa.Dialect, specs: Sequence[ColumnSpec]
) -> list[sa.ColumnElement[Any]]:
    table = info.table
    columns: list[sa.ColumnElement[Any]] = []
    for spec in specs:
        column = table.c[spec.name]
        if spec.kind is Kind.JSON:
            # psycopg would parse it (json and jsonb alike) unless cast.
            columns.append(
                sa.cast(column, sa.Text())
                if dialect.name == "postgresql"
                else sa.type_coerce(column, sa.Text())
            )
        else:
            columns.append(column)
    return columns
