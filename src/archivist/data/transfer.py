"""In-database transfer: ``data/copy`` copies a collection's next rows from one handle to
another inside the database, and ``data/delete`` with ``matching`` deletes source rows only
where the other handle holds an identical row, compared by the database column by column.

Both need one connection that reaches the two databases: two SQLite files (the destination
attached to the source) or two MariaDB/MySQL databases on one server reached with the same
credentials. Rows then never pass through Python nor the socket. Between any other pair of
handles (PostgreSQL's databases among them) both answer ``unsupported`` and the worker moves
the rows itself: list, create, verify, delete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import NullType

from archivist.data.catalog import Catalog
from archivist.data.filters import SortKey, keyset_condition, order_clauses, sort_keys
from archivist.data.handles import Handle
from archivist.data.schema import TableInfo
from archivist.data.slicing import SLICE_ROWS, commits_without_sync, execute, slices
from archivist.data.values import JSONObject, decode_value
from archivist.errors import Conflict, InvalidParams, Unsupported

log = logging.getLogger(__name__)

DEST_SCHEMA: Final = "archivist_dest"
"""The schema name under which a SQLite source's connections attach the destination file."""
COPY_ALIAS: Final = "archivist_copy"
"""The destination table's alias in a delete's guard: never the source table's own name, so
no column reference inside the guard can resolve to the wrong table."""
MAX_LIMIT: Final = 100_000
KEY_CHUNK: Final = 5_000

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class CopyOrder(msgspec.Struct, forbid_unknown_fields=True):
    field: Name
    direction: Literal["asc"] = "asc"


class CopyCursor(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    field: Name
    value: Any
    direction: Literal["after"] = "after"
    id: Any = msgspec.UNSET


class CopyParams(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    collection: Name
    db_handle: Name
    dest_handle: Name
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]
    order_by: Annotated[list[CopyOrder], msgspec.Meta(max_length=1)] | None = None
    cursor: CopyCursor | None = None


@dataclass(frozen=True)
class Link:
    """How one connection reaches both databases of a (source, destination) pair."""

    runner: Handle
    """A handle whose connections see the source as their own database and the destination
    as ``dest_schema``."""
    dest_schema: str


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
    else:
        return f"one {source.dialect_name} connection cannot reach two databases"
    runner = Handle(
        f"{source.name}+{dest.name}",
        source.url,
        threads=2,
        attach=attach,
        label=f"handles '{source.name}' and '{dest.name}' (copying inside the database)",
    )
    return Link(runner, schema)


@dataclass(frozen=True)
class _Statements:
    """A collection's statements on one link, built once."""

    source: TableInfo
    copy: sa.Insert
    """Upserts the rows of ``:keys`` from the source into the destination."""
    guard: sa.Exists
    """True where the destination holds a row identical to the source row."""
    dest: sa.Table


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


def _statements(link: Link, source: TableInfo) -> _Statements:
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
    rows = sa.select(*table.c).where(table.c[pk].in_(sa.bindparam("keys", expanding=True)))
    copy: sa.Insert
    if dialect.name == "sqlite":
        upsert = sqlite_insert(dest).from_select(names, rows)
        others = {n: upsert.excluded[n] for n in names if n != pk}
        copy = (
            upsert.on_conflict_do_update(index_elements=[dest.c[pk]], set_=others)
            if others
            else upsert.on_conflict_do_nothing(index_elements=[dest.c[pk]])
        )
    else:
        upsert_my = mysql_insert(dest).from_select(names, rows)
        copy = upsert_my.on_duplicate_key_update(
            {n: upsert_my.inserted[n] for n in names if n != pk} or {pk: upsert_my.inserted[pk]}
        )
    copied = dest.alias(COPY_ALIAS)
    guard = sa.exists().where(
        copied.c[pk] == table.c[pk],
        *(_same(table.c[n], copied.c[n], dialect.name) for n in names),
    )
    return _Statements(source, copy, guard, dest)


def _same(
    mine: sa.ColumnElement[Any], theirs: sa.ColumnElement[Any], dialect: str
) -> sa.ColumnElement[bool]:
    """Both values are the same, NULL included, byte for byte for text: a case-insensitive
    or space-padding collation must not call an updated row equal to its older copy."""
    if dialect == "sqlite":
        # As text, so any column type takes the collation (it only applies to text values).
        return sa.type_coerce(mine, sa.Text()).collate("BINARY").is_not_distinct_from(theirs)
    if isinstance(mine.type, sa.String | sa.JSON | sa.Enum):
        return sa.cast(mine, mysql.BINARY()).is_not_distinct_from(sa.cast(theirs, mysql.BINARY()))
    return mine.is_not_distinct_from(theirs)


class Transfers:
    """``data/copy`` and the ``matching`` form of ``data/delete`` over one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._links: dict[tuple[str, str], Link | str] = {}
        self._statements: dict[tuple[str, str, str], _Statements] = {}

    def link(self, source: Handle, dest: Handle) -> Link:
        key = (source.name, dest.name)
        if key not in self._links:
            self._links[key] = _link(source, dest)
            if isinstance(self._links[key], Link):
                log.info("in-database transfer from '%s' to '%s' is possible", *key)
        found = self._links[key]
        if isinstance(found, str):
            raise Unsupported(
                f"unsupported: rows cannot move inside the database from handle "
                f"'{source.name}' to '{dest.name}': {found}"
            )
        return found

    async def close(self) -> None:
        for link in self._links.values():
            if isinstance(link, Link):
                await link.runner.close()
        self._links.clear()
        self._statements.clear()

    async def _prepare(self, collection: str, source_name: str, dest_name: str) -> _Prepared:
        entity, source, info = await self.catalog.table(collection, source_name)
        if dest_name == source.name:
            raise InvalidParams("invalid params: the destination must be another handle")
        _, dest, dest_info = await self.catalog.table(collection, dest_name)
        link = self.link(source, dest)
        key = (collection, source.name, dest.name)
        statements = self._statements.get(key)
        if statements is None or statements.source is not info:
            problem = _compatible(info, dest_info, link.runner.engine.dialect)
            if problem is not None:
                raise Unsupported(
                    f"unsupported: {collection} on handle '{dest.name}' cannot take the rows "
                    f"as stored: {problem}"
                )
            statements = self._statements[key] = _statements(link, info)
        return _Prepared(entity.order_by, link, statements)

    # --- data/copy ------------------------------------------------------------------------

    async def copy(self, params: JSONObject) -> JSONObject:
        """Copy the source's next rows (``limit``, in the collection's archive order or
        ``orderBy``, after ``cursor``) to ``destHandle``, overwriting older copies by key;
        answer their keys and order values as ``items``."""
        try:
            p = msgspec.convert(params, CopyParams, strict=True)
        except msgspec.ValidationError as exc:
            raise InvalidParams(f"invalid params: {exc}") from None
        prepared = await self._prepare(p.collection, p.db_handle, p.dest_handle)
        info = prepared.statements.source
        order = p.order_by[0].field if p.order_by else prepared.order_by
        info.codec.check_fields([order], what="field in orderBy")
        keys_query = _keys_query(info, order, p)
        names = list(dict.fromkeys([info.pk, order]))
        rows = await prepared.link.runner.transaction(
            _copy_rows, keys_query, prepared.statements.copy, write=True
        )
        items = info.codec.encode_tuples(names, rows)
        return {
            "items": items,
            "count": len(items),
            "copied": len(items),
            "collection": info.name,
            "primaryKey": info.pk,
            "orderBy": order,
        }

    # --- data/delete with matching ------------------------------------------------------

    async def delete_matching(
        self, collection: str, source_name: str, dest_name: str, raw_ids: Sequence[object]
    ) -> JSONObject:
        """Delete the rows of ``raw_ids`` whose identical copy is in ``dest_name``; the others
        stay and are answered as ``skipped`` (their keys, in the order given)."""
        prepared = await self._prepare(collection, source_name, dest_name)
        info = prepared.statements.source
        spec = info.spec(info.pk)
        keys = list(dict.fromkeys(decode_value(spec, v, where="ids.") for v in raw_ids))
        if any(key is None for key in keys):
            raise InvalidParams("invalid params: an id must not be null")
        runner = prepared.link.runner
        if runner.dialect_name == "sqlite":
            deleted, left = await runner.run(
                _delete_sqlite, runner.engine, prepared.statements, keys
            )
        else:
            deleted, left = await runner.transaction(
                _delete_server, prepared.statements, keys, write=True
            )
        kept = set(left)
        skipped = [info.codec.encode_field(info.pk, key) for key in keys if key in kept]
        return {"deleted": deleted, "skipped": skipped}


@dataclass(frozen=True)
class _Prepared:
    order_by: str
    link: Link
    statements: _Statements


def _keys_query(info: TableInfo, order: str, p: CopyParams) -> sa.Select[Any]:
    table = info.table
    keys = sort_keys(info, [SortKey(order, "asc")], order)
    where: sa.ColumnElement[bool] = sa.true()
    if p.cursor is not None:
        if p.cursor.field != order:
            raise InvalidParams("invalid params: cursor.field must be the orderBy field")
        position = [decode_value(info.spec(order), p.cursor.value, where="cursor.")]
        if order != info.pk and p.cursor.id is not msgspec.UNSET:
            position.append(decode_value(info.spec(info.pk), p.cursor.id, where="cursor."))
        where = keyset_condition(info, keys, position, after=True)
    columns = [table.c[name] for name in dict.fromkeys([info.pk, order])]
    return sa.select(*columns).where(where).order_by(*order_clauses(info, keys)).limit(p.limit)


def _copy_rows(
    connection: Connection, keys_query: sa.Select[Any], copy: sa.Insert
) -> list[Sequence[object]]:
    """One transaction: the next rows' keys, then their copy by key (in the database)."""
    rows: list[Sequence[object]] = list(connection.execute(keys_query).all())
    keys = [row[0] for row in rows]
    try:
        for start in range(0, len(keys), KEY_CHUNK):
            connection.execute(copy, {"keys": keys[start : start + KEY_CHUNK]})
    except IntegrityError as exc:
        raise Conflict(
            f"conflict: a copied row breaks a constraint of the destination table; nothing "
            f"was copied ({str(exc.orig).strip().splitlines()[0]})"
        ) from None
    return rows


def _delete_server(
    connection: Connection, statements: _Statements, keys: list[object]
) -> tuple[int, list[object]]:
    """One transaction (MariaDB/MySQL): delete the rows whose copy is identical, then read
    which of the keys are still there (changed since their copy, or never copied)."""
    table, pk = statements.source.table, statements.source.pk
    deleted = 0
    left: list[object] = []
    for start in range(0, len(keys), KEY_CHUNK):
        chunk = keys[start : start + KEY_CHUNK]
        result = connection.execute(
            sa.delete(table).where(table.c[pk].in_(chunk), statements.guard)
        )
        deleted += max(result.rowcount, 0)
        if result.rowcount < len(chunk):
            present = sa.select(table.c[pk]).where(table.c[pk].in_(chunk))
            left.extend(connection.execute(present).scalars())
    return deleted, left


def _delete_sqlite(
    engine: sa.Engine, statements: _Statements, keys: list[object]
) -> tuple[int, list[object]]:
    """Delete in slices of `SLICE_ROWS` keys, each one statement in its own transaction that
    takes the write lock, deletes and commits with no return to Python while the lock is
    held, with a gap between slices while others write (`archivist.data.slicing`)."""
    table, pk = statements.source.table, statements.source.pk
    with engine.connect() as connection:
        dialect = connection.dialect
        quote = dialect.identifier_preparer.quote
        column = table.c[pk]
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        marks = [sa.bindparam(f"k{i}", type_=NullType()) for i in range(SLICE_ROWS)]
        compiled = (
            sa.delete(table).where(column.in_(marks), statements.guard).compile(dialect=dialect)
        )
        order = [int(name[1:]) for name in compiled.positiontup or ()]
        present = (
            f"SELECT {quote(pk)} FROM {dialect.identifier_preparer.format_table(table)}"
            f" WHERE {quote(pk)} IN ({', '.join(['?'] * SLICE_ROWS)})"
        )
        raw: Any = connection.connection.dbapi_connection
        bound = [process(key) if process is not None else key for key in keys]
        deleted = 0
        left: list[object] = []
        with commits_without_sync(raw):
            for start in slices(connection, raw, len(keys), SLICE_ROWS):
                part = bound[start : start + SLICE_ROWS]
                padded = [*part, *([None] * (SLICE_ROWS - len(part)))]
                removed = int(execute(raw, compiled.string, [padded[i] for i in order]).rowcount)
                deleted += removed
                if removed < len(part):
                    still = {key for (key,) in execute(raw, present, padded).fetchall()}
                    mine = keys[start : start + SLICE_ROWS]
                    left.extend(
                        key for key, value in zip(mine, part, strict=True) if value in still
                    )
    return deleted, left
