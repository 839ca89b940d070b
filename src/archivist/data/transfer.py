"""Copies made by the daemon: ``data/copy`` copies a collection's next rows from one handle
to another without decoding them, and ``data/delete`` with ``matching`` deletes source rows
only where the other handle holds an identical row, compared by the database column by
column.

Two SQLite files (the destination attached to the source) and two MariaDB/MySQL databases
on one server reached with the same credentials are reached by one connection: rows never
leave the database. Two PostgreSQL databases are not, so rows pass from one to the other
as binary ``COPY`` data through the daemon, never decoded, and each server computes a
digest of its rows' text for the compare. Between any other pair of handles both commands
answer ``unsupported`` and the worker moves the rows itself: list, create, verify, delete.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeAlias

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, CursorResult
from sqlalchemy.exc import IntegrityError

from archivist.data.catalog import Catalog
from archivist.data.columns import Kind
from archivist.data.commands import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ListParams,
    ListQuery,
    Name,
    OrderByParam,
    cursor_position,
    parse_params,
    position_params,
)
from archivist.data.handles import Handle, driver_errors
from archivist.data.schema import TableInfo
from archivist.data.slicing import adaptive_slices, commits_without_sync, execute
from archivist.data.values import JSONObject, decode_values, decoder_for
from archivist.errors import Conflict, DatabaseError, InvalidParams, Unsupported

log = logging.getLogger(__name__)

DEST_SCHEMA: Final = "archivist_dest"
"""The schema name under which a SQLite source's connections attach the destination file."""
COPY_ALIAS: Final = "archivist_copy"
"""The destination table's alias in a delete's guard: never the source table's own name, so
no column reference inside the guard can resolve to the wrong table."""
KEY_CHUNK: Final = 5_000
PAGE_ALIAS: Final = "archivist_page"
"""The page's alias where MariaDB/MySQL read its keys joined in one value."""
EXACT_MAX: Final = frozenset({Kind.INTEGER, Kind.DECIMAL, Kind.DATE, Kind.DATETIME})
"""Order columns whose largest value on a page is, to the byte, the last row's: no collation
makes two different values of these kinds compare equal."""


class CopyParams(ListParams, kw_only=True):
    """``data/copy``: ``data/list``'s paging params (one ascending ``orderBy``, a cursor
    ``after``; no ``filter`` or ``fields``), and the handle to copy to."""

    dest_handle: Name
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT
    order_by: Annotated[list[OrderByParam], msgspec.Meta(max_length=1)] | None = None
    move: bool = False
    """Also delete the copied rows from the source, in the copy's transaction, where the
    daemon can (`MOVES`); the answer then says how many went (``deleted``)."""


@dataclass(frozen=True)
class Link:
    """How the daemon reaches both databases of a (source, destination) pair."""

    runner: Handle
    """A handle on the source, made for this link: its connections see the source as their
    own database and, unless piped, the destination as ``dest_schema``."""
    dest: Handle
    dest_schema: str | None
    """None when no connection reaches both (PostgreSQL): rows are piped by ``COPY``."""
    deleter: Handle
    """Where SQLite's deletes run: one thread, so always the same connection, which then
    sees no commit of this daemon's own deletes as another writer's (`slicing`); on the
    servers, the runner."""


def _sqlite_file(url: URL) -> str | None:
    """The file of a SQLite URL, or None for an in-memory database or a URI filename (whose
    options, such as ``mode=ro``, an attachment would not keep)."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or "uri" in url.query:
        return None
    return os.path.abspath(database)


def _server(url: URL) -> tuple[object, ...]:
    """What reaches a server as one user: everything in a URL but its database."""
    return (url.drivername, url.username, url.password, url.host, url.port, url.query)


def _link(source: Handle, dest: Handle) -> Link | str:
    """The link between two handles, or why there can be none."""
    if source.dialect_name != dest.dialect_name:
        return f"{source.dialect_name} and {dest.dialect_name} are different engines"
    attach: dict[str, str] = {}
    if source.dialect_name == "sqlite":
        path = _sqlite_file(dest.url)
        if path is None or _sqlite_file(source.url) is None:
            return "only a SQLite file named by its path can be attached"
        attach[DEST_SCHEMA] = path
        schema = DEST_SCHEMA
    elif source.dialect_name in ("mysql", "mariadb"):
        if not dest.url.database or _server(source.url) != _server(dest.url):
            return "they are not one server reached with the same credentials"
        schema = dest.url.database
    elif source.dialect_name == "postgresql":
        schema = None
    else:
        return f"one {source.dialect_name} connection cannot reach two databases"
    how = "copying inside the database" if schema else "copying with COPY"
    label = f"handles '{source.name}' and '{dest.name}' ({how})"
    name = f"{source.name}+{dest.name}"
    runner = Handle(name, source.url, threads=2, attach=attach, label=label)
    deleter = runner
    if attach:
        deleter = Handle(f"{name}-delete", source.url, threads=1, attach=attach, label=label)
    return Link(runner, dest, schema, deleter)


@dataclass(frozen=True)
class _Attached:
    """A collection's statements on a link whose connections reach both databases."""

    source: TableInfo
    copy: _ByKeys
    """Copies the rows of the keys from the source into the destination: SQLite overwrites
    older copies by key; MariaDB/MySQL inserts, and meets an older copy as a clash."""
    recopy: tuple[_ByKeys, ...]
    """MariaDB/MySQL, after a clash: delete the older copies by key, then insert."""
    delete: _ByKeys
    """Deletes the rows of the keys whose copy is identical."""
    present: _ByKeys
    """Which of the keys the source still holds."""
    take: _ByKeys | None = None
    """MariaDB/MySQL: `copy`, its source rows read with ``FOR UPDATE`` (`_move_rows`)."""
    remove: _ByKeys | None = None
    """MariaDB/MySQL: delete the source rows of the keys, unguarded (`_move_rows`)."""


MOVES: Final = frozenset({"mysql", "mariadb"})
"""Engines on which ``data/copy`` with ``move`` deletes the rows in the copy's transaction,
when both tables are transactional (`_transactional`). SQLite's copy does not take the
source's write lock, to leave it to the application (its deletes go in short slices);
PostgreSQL's two databases are two connections."""

_TRANSACTIONAL: Final = (
    "SELECT count(*) FROM information_schema.TABLES AS t"
    " JOIN information_schema.ENGINES AS e ON e.ENGINE = t.ENGINE"
    " WHERE e.TRANSACTIONS = 'YES' AND t.TABLE_NAME = %s AND t.TABLE_SCHEMA IN (DATABASE(), %s)"
)


def _transactional(connection: Connection, table: str, dest_schema: str) -> bool:
    """Whether the source table and its copy in ``dest_schema`` both have transactions
    (InnoDB): on a table without them (MyISAM, Aria) each statement stands alone, the rows
    are not locked from their copy to their delete, and nothing can be taken back."""
    found = connection.exec_driver_sql(_TRANSACTIONAL, (table, dest_schema)).scalar_one()
    return int(found) == 2


@dataclass(frozen=True)
class _Piped:
    """A collection's statements between two PostgreSQL databases (psycopg's ``%s``)."""

    source: TableInfo
    copy_out: str
    """The rows of the keys ``%s``, as binary COPY data, from the source."""
    copy_direct: str
    """Binary COPY data straight into the destination table (while no older copy is met)."""
    stage: str
    copy_in: str
    """Binary COPY data into a session table of the destination with the source's columns."""
    upsert: str
    """From that session table into the destination table, overwriting by key."""
    digests: str
    """Each row's key and digest (of its columns as text), for the keys ``%s``."""
    delete: str
    """Delete the source rows whose digest is still the one given with their key."""
    present: str
    settings: str
    """Output settings under which a value's text is exact and the same on every server."""
    ranged: bool = False
    """Integer keys: the statements name them as one range and a list (`key_span`), whose
    parameters `keyed` makes; otherwise as one list."""

    def keyed(self, keys: Sequence[object]) -> tuple[object, ...]:
        """The parameters that name ``keys`` in these statements."""
        if not self.ranged:
            return (keys,)
        return key_span([int(key) for key in keys])  # type: ignore[call-overload]


_Statements: TypeAlias = _Attached | _Piped


def _compatible(source: TableInfo, dest: TableInfo, dialect: sa.Dialect) -> str | None:
    """Why the destination table cannot take the source's rows as they are stored, if so."""
    if dest.pk != source.pk:
        return f"its primary key is {dest.pk}, the source's {source.pk}"
    for column in source.table.c:
        other = dest.table.c.get(column.name)
        if other is None:
            return f"it has no column {column.name}"
        mine = column.type.compile(dialect=dialect)
        theirs = other.type.compile(dialect=dialect)
        if mine != theirs:
            return f"its column {column.name} is {theirs}, the source's {mine}"
    return None


def _statements(link: Link, source: TableInfo, *, moves: bool = False) -> _Statements:
    if link.dest_schema is None:
        return _piped(link, source)
    dialect = link.runner.engine.dialect
    table = source.table
    names = [column.name for column in table.c]
    pk = source.pk
    dest = sa.Table(
        table.name,
        sa.MetaData(),
        *(sa.Column(c.name, c.type, primary_key=c.name == pk) for c in table.c),
        schema=link.dest_schema,
    )
    keys: sa.BindParameter[Any] = sa.bindparam("keys", expanding=True)
    rows = sa.select(*table.c).where(table.c[pk].in_(keys))
    copy: sa.Insert
    recopy: list[sa.Insert | sa.Delete] = []
    take: sa.Insert | None = None
    remove: sa.Delete | None = None
    if dialect.name == "sqlite":
        upsert = sqlite_insert(dest).from_select(names, rows)
        others = {n: upsert.excluded[n] for n in names if n != pk}
        copy = (
            upsert.on_conflict_do_update(index_elements=[dest.c[pk]], set_=others)
            if others
            else upsert.on_conflict_do_nothing(index_elements=[dest.c[pk]])
        )
    else:
        # A plain insert; after a clash (an older copy, as a rerun meets), the older copies
        # go and the rows are inserted again. Not ON DUPLICATE KEY UPDATE: MariaDB applies
        # it to a clash on any unique index, and would overwrite another archived row that
        # shares a unique value with a new one (losing it). A clash that remains is a
        # conflict, and the transaction takes the delete back.
        copy = sa.insert(dest).from_select(names, rows)
        recopy = [sa.delete(dest).where(dest.c[pk].in_(keys)), copy]
        if moves:
            take = sa.insert(dest).from_select(names, rows.with_for_update())
            remove = sa.delete(table).where(table.c[pk].in_(keys))
    copied = dest.alias(COPY_ALIAS)
    guard = sa.exists().where(
        copied.c[pk] == table.c[pk],
        *(_same(table.c[n], copied.c[n], dialect.name) for n in names),
    )
    by_keys = functools.partial(_ByKeys.of, dialect=dialect)
    copy_by_keys = by_keys(copy, table.c[pk])
    return _Attached(
        source,
        copy_by_keys,
        tuple(
            copy_by_keys if statement is copy else by_keys(statement, dest.c[pk])
            for statement in recopy
        ),
        by_keys(sa.delete(table).where(table.c[pk].in_(keys), guard), table.c[pk]),
        by_keys(sa.select(table.c[pk]).where(table.c[pk].in_(keys)), table.c[pk]),
        by_keys(take, table.c[pk]) if take is not None else None,
        by_keys(remove, table.c[pk]) if remove is not None else None,
    )


_KEY_MARKS: Final = "__[POSTCOMPILE_keys]"
"""Where SQLAlchemy compiles an expanding parameter ``keys`` (its marks are written in at
each call)."""

RUN: Final = 4
"""The fewest consecutive integer keys written in as one range (``BETWEEN``) rather than
one by one in the ``IN`` list."""


@dataclass(frozen=True)
class _ByKeys:
    """A statement whose one parameter is an expanding list of keys (``:keys``), compiled
    once, run with the keys as the driver's positional parameters: SQLAlchemy's expansion
    of a 1,000-key list at each call cost ~1.1 ms more of Python per statement on MariaDB
    (3.2 ms against 2.1 for a delete of 1,000 absent keys)."""

    text: str
    """The statement with `_KEY_MARKS` where the key marks go."""
    mark: str
    process: Callable[[Any], Any] | None
    """The key type's conversion to what the driver takes, if any."""
    inline: bool = False
    """Integer keys for a driver that writes parameters into the text itself (PyMySQL):
    written in as decimal literals, which is what the driver would send, without its
    escaping of each one in Python (~1.3 ms for 1,000 keys, against ~0.2 ms)."""
    column: str | None = None
    """With `inline`: the keyed column's text, when the statement names the keys once,
    as ``<column> IN (...)``. Runs of consecutive keys are then written in as ranges
    (`key_ranges`)."""

    @classmethod
    def of(
        cls, statement: sa.ClauseElement, key: sa.ColumnElement[Any], dialect: sa.Dialect
    ) -> _ByKeys:
        """``statement`` on ``:keys`` alone, which it compares with the column ``key``."""
        compiled = statement.compile(dialect=dialect)
        marks = {"qmark": "?", "format": "%s", "pyformat": "%s"}
        alone = set(compiled.params) == {"keys"} and _KEY_MARKS in compiled.string
        if not alone or dialect.paramstyle not in marks:
            raise AssertionError(f"not a statement on :keys alone: {compiled.string}")
        key_type = key.type
        process = key_type.dialect_impl(dialect).bind_processor(dialect)
        inline = (
            dialect.name in ("mysql", "mariadb")
            and isinstance(key_type, sa.Integer)
            and process is None
        )
        column = str(key.compile(dialect=dialect)) if inline else None
        text = compiled.string
        if text.count(_KEY_MARKS) != 1 or text.count(f"{column} IN ({_KEY_MARKS})") != 1:
            column = None  # the keys as one IN list
        return cls(text, marks[dialect.paramstyle], process, inline, column)

    def sized(self, count: int) -> str:
        """The statement's text for ``count`` keys. Written in at each call (~10 µs for
        1,000 keys), not kept per number of keys: the adaptive batch size makes many."""
        return self.text.replace(_KEY_MARKS, ", ".join([self.mark] * count))

    def bind(self, keys: Sequence[object]) -> list[object]:
        """The keys as the driver takes them."""
        process = self.process
        return list(keys) if process is None else [process(key) for key in keys]

    def run(self, connection: Connection, keys: Sequence[object]) -> CursorResult[Any]:
        if self.inline:
            # int() of an integer key is itself; of anything else, an error, not SQL.
            numbers = [int(key) for key in keys]  # type: ignore[call-overload]
            if self.column is not None:
                keyed = f"{self.column} IN ({_KEY_MARKS})"
                text = self.text.replace(keyed, key_ranges(self.column, numbers))
            else:
                text = self.text.replace(_KEY_MARKS, ", ".join(map(str, numbers)))
            return connection.exec_driver_sql(text, ())
        return connection.exec_driver_sql(self.sized(len(keys)), tuple(self.bind(keys)))


def _runs(ordered: Sequence[int]) -> list[tuple[int, int]]:
    """The runs of consecutive integers of ``ordered`` (sorted, distinct), as index spans
    ``(start, end)``; every integer from the first of a run to its last is in it."""
    count = len(ordered)
    bounds = [0, *[i for i in range(1, count) if ordered[i] != ordered[i - 1] + 1], count]
    return list(itertools.pairwise(bounds))


def key_ranges(column: str, keys: Sequence[int]) -> str:
    """A condition on ``column`` that holds for exactly the integer ``keys``: each run of at
    least `RUN` consecutive keys as one ``BETWEEN``, the others in one ``IN`` list. Every
    integer of a run is one of the keys, so a row outside them is never named, whatever
    rows lie between runs. A range is one descent of the key's index where the ``IN`` list
    takes one per key: on MariaDB, for a page of 1,000 consecutive keys of a 1,000,000-row
    table, the copy's statement took ~1.0 ms less and the guarded delete ~1.9 ms less, and
    the server's CPU fell ~4.8 ms a batch (from ~34 ms). Written in ~30 µs for 1,000
    consecutive keys; ~0.33 ms for 1,000 scattered ones, against ~0.12 ms for the bare
    ``IN`` list."""
    ordered = sorted(set(keys))
    if len(ordered) >= RUN and ordered[-1] - ordered[0] + 1 == len(ordered):
        return f"({column} BETWEEN {ordered[0]} AND {ordered[-1]})"
    spans = _runs(ordered)
    ranges = [
        f"{column} BETWEEN {ordered[start]} AND {ordered[end - 1]}"
        for start, end in spans
        if end - start >= RUN
    ]
    if not ranges:
        return f"({column} IN ({', '.join(map(str, ordered))}))" if ordered else "FALSE"
    single = [key for start, end in spans if end - start < RUN for key in ordered[start:end]]
    if single:
        ranges.append(f"{column} IN ({', '.join(map(str, single))})")
    return f"({' OR '.join(ranges)})"


def key_span(keys: Sequence[int]) -> tuple[int, int, list[int]]:
    """The integer ``keys`` as the first and last key of their longest run of consecutive
    keys and the other keys, for a statement of one shape at every call (PostgreSQL
    prepares it): ``pk BETWEEN first AND last OR pk = ANY(others)``. With no run of `RUN`
    keys, the range is empty (1, 0) and every key is in the list. On PostgreSQL, 1,000
    consecutive keys of a 1,000,000-row table, so named: the copy, the digests and the
    guarded delete took 26 ms a batch against 32 ms by ``= ANY`` alone, and the server's
    CPU 17 ms against 21 ms."""
    ordered = sorted(set(keys))
    if len(ordered) >= RUN and ordered[-1] - ordered[0] + 1 == len(ordered):
        return ordered[0], ordered[-1], []
    start, end = max(_runs(ordered), key=lambda run: run[1] - run[0])
    if end - start < RUN:
        return 1, 0, ordered
    return ordered[start], ordered[end - 1], ordered[:start] + ordered[end:]


PG_SETTINGS: Final = (
    "SELECT set_config('extra_float_digits', '3', true), set_config('DateStyle', 'ISO, MDY', "
    "true), set_config('IntervalStyle', 'postgres', true), set_config('bytea_output', 'hex', "
    "true), set_config('TimeZone', 'UTC', true)"
)
"""Every float printed exactly (its shortest round-trip form), dates, intervals and bytes
in one fixed format, for this transaction only: two different values never print alike."""


def _piped(link: Link, source: TableInfo) -> _Piped:
    dialect = link.runner.engine.dialect
    quote = dialect.identifier_preparer.quote
    table = source.table
    target = dialect.identifier_preparer.format_table(table)
    names = [quote(column.name) for column in table.c]
    columns = ", ".join(names)
    pk = quote(source.pk)
    key_type = table.c[source.pk].type
    sql_type = key_type.compile(dialect=dialect)
    keys = f"%s::{sql_type}[]"
    ranged = isinstance(key_type, sa.Integer)

    def keyed(column: str) -> str:
        if ranged:
            return f"({column} BETWEEN %s::{sql_type} AND %s::{sql_type} OR {column} = ANY({keys}))"
        return f"{column} = ANY({keys})"

    digest = "sha256(convert_to(ROW({})::text, 'UTF8'))"
    # A session table per table and column list: one made before the table gained a
    # column is never reused for the new list.
    shape = f"{target} ({columns})".encode()
    stage = quote(f"archivist_in_{hashlib.sha256(shape).hexdigest()[:16]}")
    others = ", ".join(f"{n} = EXCLUDED.{n}" for n in names if n != pk)
    on_conflict = f"DO UPDATE SET {others}" if others else "DO NOTHING"
    row = "archivist_row"
    return _Piped(
        source=source,
        copy_out=f"COPY (SELECT {columns} FROM {target} WHERE {keyed(pk)})"
        " TO STDOUT (FORMAT BINARY)",
        # Emptied by every commit (and a rollback takes back what it held): no TRUNCATE,
        # which cost 3 ms a batch.
        copy_direct=f"COPY {target} ({columns}) FROM STDIN (FORMAT BINARY)",
        stage=f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS"
        f" AS SELECT {columns} FROM {target} WITH NO DATA",
        copy_in=f"COPY {stage} ({columns}) FROM STDIN (FORMAT BINARY)",
        upsert=f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {stage}"
        f" ON CONFLICT ({pk}) {on_conflict}",
        digests=f"SELECT {pk}, {digest.format(columns)}::text FROM {target} WHERE {keyed(pk)}",
        # The keys twice: named as in the other statements too, the planner finds the rows
        # by the key's index (8 ms for 1,000 rows of 60,000) instead of hashing the whole
        # table (195 ms).
        delete=f"DELETE FROM {target} AS {row} USING unnest({keys}, %s::text[]) AS v(k, d)"
        f" WHERE {keyed(f'{row}.{pk}')} AND {row}.{pk} = v.k"
        f" AND {digest.format(', '.join(f'{row}.{n}' for n in names))}::text = v.d",
        present=f"SELECT {pk} FROM {target} WHERE {keyed(pk)}",
        settings=PG_SETTINGS,
        ranged=ranged,
    )


def _same(
    mine: sa.ColumnElement[Any], theirs: sa.ColumnElement[Any], dialect: str
) -> sa.ColumnElement[bool]:
    """Both values are the same, NULL included, byte for byte for text: a case-insensitive
    or space-padding collation must not call an updated row equal to its older copy."""
    if dialect == "sqlite":
        # As text, so any column type takes the collation (it only applies to text values).
        return sa.type_coerce(mine, sa.Text()).collate("BINARY").is_not_distinct_from(theirs)
    if isinstance(mine.type, sa.String | sa.JSON | sa.Enum):
        from sqlalchemy.dialects import mysql  # loaded with the engine

        return sa.cast(mine, mysql.BINARY()).is_not_distinct_from(sa.cast(theirs, mysql.BINARY()))
    return mine.is_not_distinct_from(theirs)


class Transfers:
    """``data/copy`` and the ``matching`` form of ``data/delete`` over one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._links: dict[tuple[str, str], Link | str] = {}
        self._statements: dict[tuple[str, str, str], _Statements] = {}
        self._pages: dict[tuple[str, str, str, tuple[bool, ...]], tuple[_Statements, _Pages]] = {}
        """How `copy` reads a page, by the page's shape (`ListQuery.build` with ``bound``),
        with the statements it was made for: building it anew took ~0.7 ms of ~14 a batch."""

    def link(self, source: Handle, dest: Handle) -> Link:
        key = (source.name, dest.name)
        if key not in self._links:
            self._links[key] = _link(source, dest)
            if isinstance(self._links[key], Link):
                log.info("rows are copied by the daemon from '%s' to '%s'", *key)
        found = self._links[key]
        if isinstance(found, str):
            raise Unsupported(
                f"unsupported: the daemon cannot copy rows from handle "
                f"'{source.name}' to '{dest.name}': {found}"
            )
        return found

    def describe(
        self, source: Handle, dest: Handle, info: TableInfo, copy: TableInfo | None
    ) -> str:
        """How a task's rows would move between these handles, for people (``--dry-run``);
        ``copy`` is the destination table, None while it is still to be created alike."""
        try:
            link = self.link(source, dest)
        except Unsupported:
            return f"through the worker ({self._links[(source.name, dest.name)]})"
        problem = None if copy is None else _compatible(info, copy, link.runner.engine.dialect)
        if problem is not None:
            return f"through the worker (the archive table differs: {problem})"
        how = "inside the database" if link.dest_schema else "by binary COPY between the databases"
        return f"copied by the daemon {how}, each row deleted where its copy is identical"

    async def close(self) -> None:
        for link in self._links.values():
            if isinstance(link, Link):
                await link.runner.close()
                if link.deleter is not link.runner:
                    await link.deleter.close()
        self._links.clear()
        self._statements.clear()
        self._pages.clear()

    async def _prepare(self, collection: str, source_name: str, dest_name: str) -> _Prepared:
        entity, source, info = await self.catalog.table(collection, source_name)
        if dest_name == source.name:
            raise InvalidParams("invalid params: the destination must be another handle")
        link = self.link(source, self.catalog.handle(dest_name))
        _, dest, dest_info = await self.catalog.table(collection, dest_name)
        key = (collection, source.name, dest.name)
        statements = self._statements.get(key)
        if statements is None or statements.source is not info:
            problem = _compatible(info, dest_info, link.runner.engine.dialect)
            if problem is not None:
                raise Unsupported(
                    f"unsupported: {collection} on handle '{dest.name}' cannot take the rows "
                    f"as stored: {problem}"
                )
            moves = False
            if link.dest_schema is not None and link.runner.dialect_name in MOVES:
                moves = await source.transaction(_transactional, info.table.name, link.dest_schema)
                if not moves:
                    log.info(
                        "%s: a table has no transactions; each batch is copied, then deleted "
                        "where its copy is identical",
                        collection,
                    )
            statements = self._statements[key] = _statements(link, info, moves=moves)
        return _Prepared(entity.order_by, link, statements)

    # --- data/copy ------------------------------------------------------------------------

    async def copy(self, params: JSONObject) -> JSONObject:
        """Copy the source's next rows (``limit``, in the collection's archive order or
        ``orderBy``, after ``cursor``) to ``destHandle``, overwriting older copies by key;
        answer their keys as ``items``, and the ``cursor`` just past the last one."""
        p = parse_params(params, CopyParams)
        if p.filter is not None or p.fields is not None:
            raise InvalidParams("invalid params: data/copy takes neither filter nor fields")
        prepared = await self._prepare(p.collection, p.db_handle, p.dest_handle)
        info = prepared.statements.source
        order = p.order_by[0].field if p.order_by else prepared.order_by
        info.codec.check_fields([order], what="field in orderBy")
        if p.order_by and p.order_by[0].direction != "asc":
            raise InvalidParams("invalid params: data/copy copies in ascending order only")
        if p.cursor is not None and (p.cursor.field != order or p.cursor.direction != "after"):
            raise InvalidParams("invalid params: the cursor must be after, on the orderBy field")
        names = list(dict.fromkeys([info.pk, order]))
        statements, link = prepared.statements, prepared.link
        position = [] if p.cursor is None else cursor_position(info, p.cursor)
        shape = (p.collection, link.runner.name, order, tuple(v is None for v in position))
        cached = self._pages.get(shape)
        if cached is None or cached[0] is not statements:
            cached = self._pages[shape] = (statements, _pages(info, p, prepared.order_by, link))
        pages = dataclasses.replace(cached[1], params=position_params(position, p.limit))
        moved: int | None = None
        if isinstance(statements, _Piped):
            keys, last = await link.runner.transaction(
                _copy_piped, pages, link.dest.engine, statements
            )
        elif p.move and statements.take is not None and statements.remove is not None:
            keys, last, moved = await link.runner.transaction(
                _move_rows, pages, statements, write=True
            )
        else:
            # Not a write transaction for SQLite's sake: BEGIN IMMEDIATE would take the
            # write lock of every attached database, the source's too, for the whole copy;
            # the INSERT takes the destination's alone.
            keys, last = await link.runner.transaction(_copy_rows, pages, statements)
        # Only the keys, and where the next page starts: encoding every row's order value
        # (a timestamp, say) cost more than the rest of the command.
        items = info.codec.encode_column(info.pk, keys)
        result: JSONObject = {
            "items": items,
            "count": len(items),
            "copied": len(items),
            "collection": info.name,
            "primaryKey": info.pk,
            "orderBy": order,
        }
        if moved is not None:
            result["deleted"] = moved
        end = info.codec.encode_tuples(names, [last])[0] if last is not None else {}
        if end.get(order) is not None:  # past a NULL, the worker lists from the start
            result["cursor"] = {
                "field": order,
                "value": end[order],
                "id": end[info.pk],
                "direction": "after",
            }
        return result

    # --- data/delete with matching ------------------------------------------------------

    async def delete_matching(
        self, collection: str, source_name: str, dest_name: str, raw_ids: Sequence[object]
    ) -> JSONObject:
        """Delete the rows of ``raw_ids`` whose identical copy is in ``dest_name``; the others
        stay and are answered as ``skipped`` (their keys, in the order given)."""
        prepared = await self._prepare(collection, source_name, dest_name)
        info = prepared.statements.source
        spec = info.spec(info.pk)
        keys = list(dict.fromkeys(decode_values(spec, raw_ids, where="ids.")))
        if any(key is None for key in keys):
            raise InvalidParams("invalid params: an id must not be null")
        runner, statements = prepared.link.runner, prepared.statements
        if isinstance(statements, _Piped):
            # The driver answers keys as it reads them (a UUID as uuid.UUID): decoded like
            # the keys given, they compare equal.
            same = decoder_for(spec)
            digests = await prepared.link.dest.transaction(_digests, statements, keys, same)
            deleted, left = await runner.transaction(
                _delete_piped, statements, keys, digests, same, write=True
            )
        elif runner.dialect_name == "sqlite":
            deleter = prepared.link.deleter
            deleted, left = await deleter.run(_delete_sqlite, deleter.engine, statements, keys)
        else:
            deleted, left = await runner.transaction(_delete_server, statements, keys, write=True)
        kept = set(left)
        skipped = [info.codec.encode_field(info.pk, key) for key in keys if key in kept]
        return {"deleted": deleted, "skipped": skipped}


@dataclass(frozen=True)
class _Prepared:
    order_by: str
    link: Link
    statements: _Statements


@dataclass(frozen=True)
class _Pages:
    """How ``data/copy`` reads the next page: its keys alone, then the last row's key and
    order value (the cursor), both in one snapshot of the source."""

    keys: sa.Select[Any]
    last: sa.Select[Any] | None
    """The page's last row (key, order value) by ``:key``; None when the order is the key.
    Only the last row's order value is needed, and decoding every row's (a timestamp,
    parsed in Python by PyMySQL) cost a quarter of MariaDB's copy."""
    snapshot: str | None
    """Sent first on a server, so both reads see one snapshot whatever the server's default
    isolation: a row changed in between must not move the cursor past rows not copied."""
    joined: sa.Select[str, Any, int, int] | None = None
    """Instead of both (`_joined_page`): the keys joined in one value, the last row's order
    value and the page's size, in one statement (so in one snapshot)."""
    params: Mapping[str, object] = dataclasses.field(default_factory=dict)
    """Which page: the parameters of `keys` and `joined` (`position_params`)."""

    def read(self, connection: Connection) -> tuple[list[object], Sequence[object] | None]:
        """The page's keys and its last row (None on an empty page)."""
        if self.joined is not None:
            row = connection.execute(self.joined, self.params).one()
            return _split_page(row, by_key=self.last is None)
        if self.snapshot is not None:
            connection.exec_driver_sql(self.snapshot)
        keys: list[object] = list(connection.execute(self.keys, self.params).scalars())
        if not keys:
            return keys, None
        if self.last is None:
            return keys, (keys[-1],)
        return keys, connection.execute(self.last, {"key": keys[-1]}).first()


def _pages(info: TableInfo, p: CopyParams, default_order: str, link: Link) -> _Pages:
    """How to read the pages of ``p``'s shape (its parameters are set per page)."""
    listing = ListQuery.build(info, p, default_order, bound=True).query
    order = p.order_by[0].field if p.order_by else default_order
    pk = info.table.c[info.pk]
    by_key = order == info.pk
    joined = _joined_page(listing, info, order, link.runner.engine.dialect)
    return _Pages(
        keys=listing.with_only_columns(pk),
        last=None
        if by_key
        else sa.select(pk, info.table.c[order]).where(pk == sa.bindparam("key")),
        snapshot=None if by_key or joined is not None else _SNAPSHOT.get(link.runner.dialect_name),
        joined=joined,
    )


def _joined_page(
    listing: sa.Select[Any], info: TableInfo, order: str, dialect: sa.Dialect
) -> sa.Select[str, Any, int, int] | None:
    """MariaDB/MySQL, integer keys, and an order column with no NULLs whose largest value on
    a page is the last row's (`EXACT_MAX`): the page's keys in one text value
    (``GROUP_CONCAT``, in the listing's order), its largest order value, its size and the
    length its keys' text must have; None elsewhere. PyMySQL parses each row of a result in
    Python: a page of 1,000 one-key rows took 3.7-5.4 ms of the daemon's CPU, then the last
    row a round trip more; the joined read takes ~1.3 ms, SQLAlchemy included.

    The sessions allow ``GROUP_CONCAT`` values of `handles.GROUP_CONCAT_MAX_LEN` bytes."""
    if dialect.name not in ("mysql", "mariadb") or info.spec(info.pk).kind is not Kind.INTEGER:
        return None
    by_key = order == info.pk
    spec = info.spec(order)
    if not by_key and (spec.nullable or spec.kind not in EXACT_MAX):
        return None
    table = info.table
    page = listing.with_only_columns(*dict.fromkeys([table.c[info.pk], table.c[order]]))
    page_alias = page.subquery(PAGE_ALIAS)
    quote = dialect.identifier_preparer.quote
    key = f"{PAGE_ALIAS}.{quote(info.pk)}"
    ordering = key if by_key else f"{PAGE_ALIAS}.{quote(order)}, {key}"
    joined: sa.ColumnClause[str] = sa.literal_column(
        f"GROUP_CONCAT({key} ORDER BY {ordering} SEPARATOR ',')"
    )
    key_column = page_alias.c[info.pk]
    return sa.select(
        joined,
        sa.func.max(page_alias.c[order]),
        sa.func.count(),
        sa.func.sum(sa.func.char_length(key_column)),
    ).select_from(page_alias)


def _split_page(
    row: Sequence[Any], *, by_key: bool
) -> tuple[list[object], Sequence[object] | None]:
    """The keys and the last row of a page read by `_joined_page`."""
    joined, last_order, size, digits = row
    if not size:
        return [], None
    if isinstance(joined, bytes):  # a binary string on servers that type it so
        joined = joined.decode("ascii")
    # A value cut short (a server's GROUP_CONCAT or packet limit) may still split into the
    # right number of keys, the last one cut: its length tells.
    if len(joined) != int(digits) + size - 1:
        raise DatabaseError(
            f"database error: the keys of a page of {size} rows did not fit in one value "
            "(group_concat_max_len or max_allowed_packet on the server); use a smaller "
            "batch size"
        )
    keys: list[object] = [int(key) for key in joined.split(",")]
    return keys, (keys[-1],) if by_key else (keys[-1], last_order)


_SNAPSHOT: Final = dict.fromkeys(
    ("postgresql", "mysql", "mariadb"), "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
)
"""SQLite's reads in one transaction see one snapshot already."""


def _copy_rows(
    connection: Connection, pages: _Pages, statements: _Attached
) -> tuple[list[object], Sequence[object] | None]:
    """One transaction: the next rows' keys, then their copy by key (in the database)."""
    keys, last = pages.read(connection)
    try:
        for start in range(0, len(keys), KEY_CHUNK):
            chunk = keys[start : start + KEY_CHUNK]
            try:
                statements.copy.run(connection, chunk)
            except IntegrityError:
                if not statements.recopy:
                    raise
                # The failed statement is undone (InnoDB), or its rows go with the older
                # copies (a table without transactions).
                for statement in statements.recopy:
                    statement.run(connection, chunk)
    except IntegrityError as exc:
        raise _conflict(exc) from None
    return keys, last


def _move_rows(
    connection: Connection, pages: _Pages, statements: _Attached
) -> tuple[list[object], Sequence[object] | None, int]:
    """One transaction (MariaDB/MySQL): the next rows' keys, their copy, and their delete
    from the source; also the rows deleted.

    The copy reads the source rows ``FOR UPDATE``: from then until the commit, nobody else
    can change or delete them, so the delete that follows removes exactly the rows copied,
    as they were copied, and no guard comparing each row with its copy is needed (that
    guard was a third of the server's work a batch). Should the delete remove other rows
    than the copy wrote (a row inserted under a key of the page in between, which the
    locks of ``READ COMMITTED`` do not prevent), the transaction is taken back whole. A
    crash before the commit leaves every row where it was."""
    take, remove = statements.take, statements.remove
    assert take is not None and remove is not None
    keys, last = pages.read(connection)
    copied = deleted = 0
    try:
        for start in range(0, len(keys), KEY_CHUNK):
            chunk = keys[start : start + KEY_CHUNK]
            try:
                copied += max(take.run(connection, chunk).rowcount, 0)
            except IntegrityError:
                # Older copies (a rerun's): they go, and the rows are copied again.
                for statement in statements.recopy[:-1]:
                    statement.run(connection, chunk)
                copied += max(take.run(connection, chunk).rowcount, 0)
            deleted += max(remove.run(connection, chunk).rowcount, 0)
    except IntegrityError as exc:
        raise _conflict(exc) from None
    if deleted != copied:
        raise DatabaseError(
            f"database error: a move deleted {deleted} rows but copied {copied}; it was "
            "taken back (a row was written under a key of the page meanwhile)"
        )
    return keys, last, deleted


def _delete_server(
    connection: Connection, statements: _Attached, keys: list[object]
) -> tuple[int, list[object]]:
    """One transaction (MariaDB/MySQL): delete the rows whose copy is identical, then read
    which of the keys are still there (changed since their copy, or never copied)."""
    deleted = 0
    left: list[object] = []
    for start in range(0, len(keys), KEY_CHUNK):
        chunk = keys[start : start + KEY_CHUNK]
        result = statements.delete.run(connection, chunk)
        deleted += max(result.rowcount, 0)
        if result.rowcount < len(chunk):
            found = statements.present.run(connection, chunk)
            left.extend(_still_held(chunk, statements.present.bind(chunk), found))
    return deleted, left


def _delete_sqlite(
    engine: sa.Engine, statements: _Attached, keys: list[object]
) -> tuple[int, list[object]]:
    """Delete in slices, each one statement in its own transaction that takes the write
    lock, deletes and commits with no return to Python while the lock is held: short ones
    with a gap between them while others write, long ones while nobody does
    (`archivist.data.slicing.adaptive_slices`)."""
    bound = statements.delete.bind(keys)
    with engine.connect() as connection:
        raw: Any = connection.connection.dbapi_connection
        largest = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        deleted = 0
        left: list[object] = []
        with commits_without_sync(raw):
            for part in adaptive_slices(connection, raw, len(keys), largest):
                start, size = part.start, part.size
                values = bound[start : start + size]
                # A short slice is padded with NULL keys, which match nothing, so each
                # size's text is prepared once per connection.
                padded = [*values, *([None] * (size - len(values)))]
                delete = statements.delete.sized(size)
                began = time.perf_counter()
                removed = int(execute(raw, delete, padded).rowcount)
                part.held = time.perf_counter() - began
                deleted += removed
                if removed < len(values):
                    present = statements.present.sized(size)
                    found = execute(raw, present, padded).fetchall()
                    left.extend(_still_held(keys[start : start + size], values, found))
    return deleted, left


def _still_held(
    keys: Sequence[object], bound: Sequence[object], found: Iterable[Sequence[object]]
) -> list[object]:
    """The keys (as given) that the source still holds: ``found`` are the rows the driver
    read back, each key as the driver reads it, which compares with the key as bound (a
    timestamp with time zone comes back naive on MariaDB), not always with the key given."""
    held = {row[0] for row in found}
    return [key for key, value in zip(keys, bound, strict=True) if value in held]


def _copy_piped(
    connection: Connection, pages: _Pages, dest: sa.Engine, piped: _Piped
) -> tuple[list[object], Sequence[object] | None]:
    """PostgreSQL: the next rows' keys, then their rows as binary COPY data from the source
    into the destination table; the destination commits before this returns.

    Straight into the table first (under a savepoint): most batches meet no older copy,
    and that costs ~3 ms a batch less than the way that overwrites by key. A key that is
    already there (an interrupted run's copy) undoes that, and the rows go through a
    session table and an upsert instead."""
    keys, last = pages.read(connection)
    if not keys:
        return keys, last
    named = piped.keyed(keys)
    with dest.connect() as target, target.begin():
        try:
            with target.begin_nested():
                _pipe(connection, target, piped.copy_out, piped.copy_direct, named)
        except IntegrityError:
            target.exec_driver_sql(piped.stage)
            _pipe(connection, target, piped.copy_out, piped.copy_in, named)
            try:
                target.exec_driver_sql(piped.upsert)
            except IntegrityError as exc:
                raise _conflict(exc) from None
    return keys, last


def _pipe(
    source: Connection, dest: Connection, copy_out: str, copy_in: str, params: Sequence[object]
) -> None:
    """The rows ``copy_out`` reads with ``params`` (the keys), as binary COPY data from
    ``source`` into ``dest``, never decoded; a driver error is raised as SQLAlchemy would
    raise it."""
    reader = source.connection.driver_connection
    writer = dest.connection.driver_connection
    assert reader is not None and writer is not None
    with (
        driver_errors(source.dialect, copy_in),
        reader.cursor() as out_cursor,
        writer.cursor() as in_cursor,
        out_cursor.copy(copy_out, params) as out,
        in_cursor.copy(copy_in) as into,
    ):
        for block in out:
            into.write(block)


def _digests(
    connection: Connection, piped: _Piped, keys: list[object], same: Callable[[object], object]
) -> dict[object, str]:
    """The destination's copies of these keys, each as its digest (PostgreSQL); ``same``
    makes a key read back comparable to the keys given."""
    connection.exec_driver_sql(piped.settings)
    found: dict[object, str] = {}
    for start in range(0, len(keys), KEY_CHUNK):
        chunk = keys[start : start + KEY_CHUNK]
        found.update(
            (same(key), digest)
            for key, digest in connection.exec_driver_sql(piped.digests, piped.keyed(chunk))
        )
    return found


def _delete_piped(
    connection: Connection,
    piped: _Piped,
    keys: list[object],
    digests: dict[object, str],
    same: Callable[[object], object],
) -> tuple[int, list[object]]:
    """Delete the source rows whose digest equals their copy's (PostgreSQL). The delete
    locks each row it removes and, if another transaction changed the row meanwhile,
    compares the changed row instead: an update since the copy keeps the row."""
    connection.exec_driver_sql(piped.settings)
    copied = [key for key in keys if key in digests]
    deleted = 0
    for start in range(0, len(copied), KEY_CHUNK):
        chunk = copied[start : start + KEY_CHUNK]
        digested = [digests[key] for key in chunk]
        result = connection.exec_driver_sql(piped.delete, (chunk, digested, *piped.keyed(chunk)))
        deleted += max(result.rowcount, 0)
    left: list[object] = []
    if deleted < len(keys):
        for start in range(0, len(keys), KEY_CHUNK):
            chunk = keys[start : start + KEY_CHUNK]
            present = connection.exec_driver_sql(piped.present, piped.keyed(chunk)).scalars()
            left.extend(same(key) for key in present)
    return deleted, left


def _conflict(exc: IntegrityError) -> Conflict:
    return Conflict(
        "conflict: a copied row breaks a constraint of the destination table; nothing was "
        f"copied ({str(exc.orig).strip().splitlines()[0]})"
    )
