"""Copies between attached databases (two SQLite files, the destination attached to the
source; two MariaDB/MySQL databases of one server): the statements a collection's batches
run on a link whose one connection reaches both, and the batch's copy, move and delete.
Rows never leave the database.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.exc import IntegrityError

from archivist.data.delete import delete_in_slices
from archivist.data.filters import chunks
from archivist.data.relations import ForeignKey, guard_clause, lock_for_delete
from archivist.data.schema import TableInfo
from archivist.data.slicing import Slice, execute
from archivist.data.transfer.keys import key_ranges
from archivist.data.transfer.link import Link, conflict
from archivist.data.transfer.pages import Pages
from archivist.errors import DatabaseError

COPY_ALIAS: Final = "archivist_copy"
"""The destination table's alias in a delete's guard: never the source table's own name, so
no column reference inside the guard can resolve to the wrong table."""

_KEY_MARKS: Final = "__[POSTCOMPILE_keys]"
"""Where SQLAlchemy compiles an expanding parameter ``keys`` (its marks are written in at
each call)."""


class ByKeys(msgspec.Struct, frozen=True):
    """A statement whose one parameter is an expanding list of keys (``:keys``), compiled
    once, run with the keys as the driver's positional parameters: SQLAlchemy's expansion
    of the list at each call costs Python time on every statement of every batch."""

    text: str
    """The statement with `_KEY_MARKS` where the key marks go."""
    mark: str
    process: Callable[[Any], Any] | None
    """The key type's conversion to what the driver takes, if any."""
    inline: bool = False
    """Integer keys for a driver that writes parameters into the text itself (PyMySQL):
    written in as decimal literals, which is what the driver would send, without its
    escaping of each one in Python, several times slower for a page of keys."""
    column: str | None = None
    """With `inline`: the keyed column's text, when the statement names the keys once,
    as ``<column> IN (...)``. Runs of consecutive keys are then written in as ranges
    (`key_ranges`)."""

    @classmethod
    def of(
        cls, statement: sa.ClauseElement, key: sa.ColumnElement[Any], dialect: sa.Dialect
    ) -> ByKeys:
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
        """The statement's text for ``count`` keys. Written in at each call (cheap), not kept
        per number of keys: the adaptive batch size makes many."""
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


class Attached(msgspec.Struct, frozen=True):
    """A collection's statements on a link whose connections reach both databases."""

    source: TableInfo
    copy: ByKeys
    """Copies the rows of the keys from the source into the destination: SQLite overwrites
    older copies by key; MariaDB/MySQL inserts, and meets an older copy as a clash."""
    recopy: tuple[ByKeys, ...]
    """MariaDB/MySQL, after a clash: delete the older copies by key, then insert."""
    delete: ByKeys
    """Deletes the rows of the keys whose copy is identical."""
    present: ByKeys
    """Which of the keys the source still holds."""
    take: ByKeys | None = None
    """MariaDB/MySQL: `copy`, its source rows read with ``FOR UPDATE`` (`move_rows`)."""
    remove: ByKeys | None = None
    """MariaDB/MySQL: delete the source rows of the keys, unguarded (`move_rows`)."""
    refs: tuple[ForeignKey, ...] = ()
    """The references `delete` respects: a row still referenced is kept."""
    referenced: ByKeys | None = None
    """With `refs`: which of the keys rows still reference."""


MOVES: Final = frozenset({"mysql", "mariadb"})
"""Engines on which ``data/copy`` with ``move`` deletes the rows in the copy's transaction,
when both tables are transactional (`transactional`). SQLite's copy does not take the
source's write lock, to leave it to the application (its deletes go in short slices);
PostgreSQL's two databases are two connections."""

_TRANSACTIONAL: Final = (
    "SELECT count(*) FROM information_schema.TABLES AS t"
    " JOIN information_schema.ENGINES AS e ON e.ENGINE = t.ENGINE"
    " WHERE e.TRANSACTIONS = 'YES' AND t.TABLE_NAME = %s AND t.TABLE_SCHEMA IN (DATABASE(), %s)"
)


def transactional(connection: Connection, table: str, dest_schema: str) -> bool:
    """Whether the source table and its copy in ``dest_schema`` both have transactions
    (InnoDB): on a table without them (MyISAM, Aria) each statement stands alone, the rows
    are not locked from their copy to their delete, and nothing can be taken back."""
    found = connection.exec_driver_sql(_TRANSACTIONAL, (table, dest_schema)).scalar_one()
    return int(found) == 2


def statements(
    link: Link, source: TableInfo, *, moves: bool = False, refs: tuple[ForeignKey, ...] = ()
) -> Attached:
    """The statements of ``source``'s batches on ``link``, whose connections reach the
    destination as ``dest_schema``; with ``moves``, also `Attached.take` and `remove`
    (never with ``refs``: the move deletes unguarded)."""
    assert link.dest_schema is not None
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
        if moves and not refs:
            take = sa.insert(dest).from_select(names, rows.with_for_update())
            remove = sa.delete(table).where(table.c[pk].in_(keys))
    copied = dest.alias(COPY_ALIAS)
    guard = sa.exists().where(
        copied.c[pk] == table.c[pk],
        *(_same(table.c[n], copied.c[n], dialect.name) for n in names),
    )
    by_keys = functools.partial(ByKeys.of, dialect=dialect)
    copy_by_keys = by_keys(copy, table.c[pk])
    unreferenced = guard_clause(table, refs)
    return Attached(
        source,
        copy_by_keys,
        tuple(
            copy_by_keys if statement is copy else by_keys(statement, dest.c[pk])
            for statement in recopy
        ),
        by_keys(sa.delete(table).where(table.c[pk].in_(keys), guard, *unreferenced), table.c[pk]),
        by_keys(sa.select(table.c[pk]).where(table.c[pk].in_(keys)), table.c[pk]),
        by_keys(take, table.c[pk]) if take is not None else None,
        by_keys(remove, table.c[pk]) if remove is not None else None,
        refs,
        by_keys(
            sa.select(table.c[pk]).where(table.c[pk].in_(keys), ~sa.and_(*unreferenced)),
            table.c[pk],
        )
        if refs
        else None,
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


def copy_rows(
    connection: Connection, pages: Pages, statements: Attached
) -> tuple[list[object], Sequence[object] | None]:
    """One transaction: the next rows' keys, then their copy by key (in the database)."""
    keys, last = pages.read(connection)
    try:
        for chunk in chunks(keys):
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
        raise conflict(exc) from None
    return keys, last


def move_rows(
    connection: Connection, pages: Pages, statements: Attached
) -> tuple[list[object], Sequence[object] | None, int]:
    """One transaction (MariaDB/MySQL): the next rows' keys, their copy, and their delete
    from the source; also the rows deleted.

    The copy reads the source rows ``FOR UPDATE``: from then until the commit, nobody else
    can change or delete them, so the delete that follows removes exactly the rows copied,
    as they were copied, and no guard comparing each row with its copy is needed (that
    guard is a large part of the server's work a batch). Should the delete remove other rows
    than the copy wrote (a row inserted under a key of the page in between, which the
    locks of ``READ COMMITTED`` do not prevent), the transaction is taken back whole. A
    crash before the commit leaves every row where it was."""
    take, remove = statements.take, statements.remove
    assert take is not None and remove is not None
    keys, last = pages.read(connection)
    copied = deleted = 0
    try:
        for chunk in chunks(keys):
            try:
                copied += max(take.run(connection, chunk).rowcount, 0)
            except IntegrityError:
                # Older copies (a rerun's): they go, and the rows are copied again.
                for statement in statements.recopy[:-1]:
                    statement.run(connection, chunk)
                copied += max(take.run(connection, chunk).rowcount, 0)
            deleted += max(remove.run(connection, chunk).rowcount, 0)
    except IntegrityError as exc:
        raise conflict(exc) from None
    if deleted != copied:
        raise DatabaseError(
            f"database error: a move deleted {deleted} rows but copied {copied}; it was "
            "taken back (a row was written under a key of the page meanwhile)"
        )
    return keys, last, deleted


def delete_rows(
    connection: Connection, statements: Attached, keys: list[object]
) -> tuple[int, list[object], list[object]]:
    """One transaction (MariaDB/MySQL): delete the rows whose copy is identical (and, with
    references, that no row references: locked first, `lock_for_delete`), then read which
    of the keys are still there (changed since their copy, never copied, or referenced)
    and which of those are referenced."""
    if statements.refs:
        lock_for_delete(connection, statements.source.table, statements.source.pk, keys)
    deleted = 0
    left: list[object] = []
    referenced: list[object] = []
    for chunk in chunks(keys):
        result = statements.delete.run(connection, chunk)
        deleted += max(result.rowcount, 0)
        if result.rowcount < len(chunk):
            found = statements.present.run(connection, chunk)
            left.extend(_still_held(chunk, statements.present.bind(chunk), found))
            if statements.referenced is not None:
                found = statements.referenced.run(connection, chunk)
                referenced.extend(_still_held(chunk, statements.referenced.bind(chunk), found))
    return deleted, left, referenced


def delete_sqlite(
    engine: sa.Engine, statements: Attached, keys: list[object]
) -> tuple[int, list[object], list[object]]:
    """SQLite: delete the rows of the keys whose copy is identical, in slices
    (`archivist.data.delete.delete_in_slices`), each one statement in its own transaction
    that takes the write lock, deletes and commits with no return to Python while the lock
    is held: short ones with a gap between them while others write, long ones while nobody
    does."""
    bound = statements.delete.bind(keys)
    referenced: list[object] = []

    def delete_slice(connection: Connection, raw: Any, part: Slice) -> tuple[int, list[object]]:
        start, size = part.start, part.size
        values = bound[start : start + size]
        # A short slice is padded with NULL keys, which match nothing, so each size's text
        # is prepared once per connection.
        padded = [*values, *([None] * (size - len(values)))]
        delete = statements.delete.sized(size)
        began = time.perf_counter()
        removed = int(execute(raw, delete, padded).rowcount)
        part.held = time.perf_counter() - began
        if removed >= len(values):
            return removed, []
        present = statements.present.sized(size)
        found = execute(raw, present, padded).fetchall()
        if statements.referenced is not None:
            held = execute(raw, statements.referenced.sized(size), padded).fetchall()
            referenced.extend(_still_held(keys[start : start + size], values, held))
        return removed, _still_held(keys[start : start + size], values, found)

    deleted, left = delete_in_slices(engine, len(keys), 1, delete_slice)
    return deleted, left, referenced


def _still_held(
    keys: Sequence[object], bound: Sequence[object], found: Iterable[Sequence[object]]
) -> list[object]:
    """The keys (as given) that the source still holds: ``found`` are the rows the driver
    read back, each key as the driver reads it, which compares with the key as bound (a
    timestamp with time zone comes back naive on MariaDB), not always with the key given."""
    held = {row[0] for row in found}
    return [key for key, value in zip(keys, bound, strict=True) if value in held]
