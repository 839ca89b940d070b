"""How a batch moves between two PostgreSQL databases: no connection reaches both, so its
rows pass as binary ``COPY`` data through the daemon, never decoded, and each server
computes a digest of its rows' text for the delete's compare.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from archivist.data.columns import Kind
from archivist.data.filters import chunks
from archivist.data.handles import driver_errors
from archivist.data.relations import ForeignKey, guard_sql, lock_for_delete
from archivist.data.schema import TableInfo
from archivist.data.transfer import canonical
from archivist.data.transfer.ahead import Ahead, hold
from archivist.data.transfer.keys import key_span
from archivist.data.transfer.link import (
    Link,
    TakenBack,
    conflict,
    one_version,
    same_batch,
    take_back_unless_same,
)
from archivist.data.transfer.pages import Pages

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class Piped(msgspec.Struct, frozen=True):
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
    refs: tuple[ForeignKey, ...] = ()
    """The references `delete` respects: a row still referenced is kept."""
    referenced: str = ""
    """With `refs`: which of the keys ``%s`` rows still reference."""
    ranged: bool = False
    """Integer keys: the statements name them as one range and a list (`key_span`), whose
    parameters `keyed` makes; otherwise as one list."""
    take_out: str = ""
    """The rows of the keys deleted, as binary COPY data (a move's copy, `move_rows`);
    empty with references to respect."""
    batch_digest: str = ""
    """The digest of the rows of the keys (`canonical.digest_sql`), on either database."""
    floats: bool = False
    """The table has float columns, whose digest needs `FLOAT_SETTINGS`."""
    take_sorted: str = ""
    """The rows of the keys deleted, as binary COPY data in key order (`move_rows` between
    servers of one version); empty with references to respect."""
    read_back: str = ""
    """The rows of the keys, as binary COPY data in key order: what `take_sorted` wrote,
    read back from the destination."""

    def keyed(self, keys: Sequence[object]) -> tuple[object, ...]:
        """The parameters that name ``keys`` in these statements."""
        if not self.ranged:
            return (keys,)
        return key_span([int(key) for key in keys])  # type: ignore[call-overload]


TEXTS: Final = frozenset({Kind.TEXT, Kind.STRING})

PG_SETTINGS: Final = (
    "SELECT set_config('extra_float_digits', '3', true), set_config('DateStyle', 'ISO, MDY', "
    "true), set_config('IntervalStyle', 'postgres', true), set_config('bytea_output', 'hex', "
    "true), set_config('TimeZone', 'UTC', true)"
)
"""Every float printed exactly (its shortest round-trip form), dates, intervals and bytes
in one fixed format, for this transaction only: two different values never print alike."""

FLOAT_SETTINGS: Final = "SELECT set_config('extra_float_digits', '3', true)"
"""Floats printed exactly, for a batch's digest (`canonical`); every other kind's canonical
text is written by a function that takes no setting."""

MOVE_SETTINGS: Final = (
    "SELECT set_config('extra_float_digits', '3', true),"
    " set_config('synchronous_commit', 'off', true)"
)
"""A move's source transaction: `FLOAT_SETTINGS`, and a commit that does not wait for its
WAL to reach the disk. The archive's commit, before it, does wait: should the source's
server crash before its delete is on disk, the rows come back and the next run moves them
again over their copies; nothing is lost or doubled, and a batch costs one wait less."""


def statements(link: Link, source: TableInfo, refs: tuple[ForeignKey, ...] = ()) -> Piped:
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
    # Key order that is the same on every server whatever the database's collation.
    in_order = f'{pk} COLLATE "C"' if source.spec(source.pk).kind in TEXTS else pk
    # A session table per table and column list: one made before the table gained a
    # column is never reused for the new list.
    shape = f"{target} ({columns})".encode()
    stage = quote(f"archivist_in_{hashlib.sha256(shape).hexdigest()[:16]}")
    others = ", ".join(f"{n} = EXCLUDED.{n}" for n in names if n != pk)
    on_conflict = f"DO UPDATE SET {others}" if others else "DO NOTHING"
    row = "archivist_row"
    references = guard_sql(quote, refs, row)
    return Piped(
        source=source,
        copy_out=f"COPY (SELECT {columns} FROM {target} WHERE {keyed(pk)})"
        " TO STDOUT (FORMAT BINARY)",
        # Emptied by every commit (and a rollback takes back what it held): no TRUNCATE,
        # which costs time on every batch.
        copy_direct=f"COPY {target} ({columns}) FROM STDIN (FORMAT BINARY)",
        stage=f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS"
        f" AS SELECT {columns} FROM {target} WITH NO DATA",
        copy_in=f"COPY {stage} ({columns}) FROM STDIN (FORMAT BINARY)",
        upsert=f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {stage}"
        f" ON CONFLICT ({pk}) {on_conflict}",
        digests=f"SELECT {pk}, {digest.format(columns)}::text FROM {target} WHERE {keyed(pk)}",
        # The keys twice: named as in the other statements too, the planner finds the rows
        # by the key's index instead of hashing the whole table.
        delete=f"DELETE FROM {target} AS {row} USING unnest({keys}, %s::text[]) AS v(k, d)"
        f" WHERE {keyed(f'{row}.{pk}')} AND {row}.{pk} = v.k"
        f" AND {digest.format(', '.join(f'{row}.{n}' for n in names))}::text = v.d"
        + (f" AND {references}" if references else ""),
        present=f"SELECT {pk} FROM {target} WHERE {keyed(pk)}",
        settings=PG_SETTINGS,
        refs=refs,
        referenced=f"SELECT {row}.{pk} FROM {target} AS {row}"
        f" WHERE {keyed(f'{row}.{pk}')} AND NOT ({references})"
        if references
        else "",
        ranged=ranged,
        take_out=""
        if refs
        else f"COPY (DELETE FROM {target} WHERE {keyed(pk)} RETURNING {columns})"
        " TO STDOUT (FORMAT BINARY)",
        batch_digest=canonical.digest_sql(
            "postgresql", source.columns, quote, f"{target} WHERE {keyed(pk)}"
        ),
        floats=any(spec.kind is Kind.FLOAT for spec in source.columns),
        take_sorted=""
        if refs
        else f"COPY (WITH archivist_taken AS (DELETE FROM {target} WHERE {keyed(pk)}"
        f" RETURNING {columns}) SELECT * FROM archivist_taken ORDER BY {in_order})"
        " TO STDOUT (FORMAT BINARY)",
        read_back=f"COPY (SELECT {columns} FROM {target} WHERE {keyed(pk)} ORDER BY {in_order})"
        " TO STDOUT (FORMAT BINARY)",
    )


def move_rows(
    connection: Connection,
    pages: Pages,
    dest: sa.Engine,
    piped: Piped,
    ahead: Ahead | None = None,
) -> tuple[list[object], Sequence[object] | None, int]:
    """PostgreSQL, a batch moved in one call: the next rows' keys and the digest of their
    rows; then the rows deleted and piped as binary COPY data into the destination, which
    computes its digest of them and commits. Equal digests: the delete stands, and the rows
    deleted are answered third. Different ones (a row changed between the digest and the
    delete, or the archive changed a value): `TakenBack` takes the delete back (the source's
    transaction ends with it), the copy stays, and the worker's ``data/delete`` with
    ``matching`` compares row by row. A crash before the destination commits leaves every
    row in the source; after it, before the source commits, in both (the next run copies
    them again and deletes them).

    ``ahead`` (`archivist.data.transfer.ahead`): the page is told as soon as it is read,
    and a move made ahead waits for its request before the destination commits."""
    pages = pages.begin(connection)
    connection.exec_driver_sql(MOVE_SETTINGS)
    if piped.take_sorted and one_version(connection, dest):
        return _move_compared(connection, pages, dest, piped, ahead)
    read = pages.read_digested(connection)
    if read is None:
        keys, last = pages.read(connection)
        mine = canonical.EMPTY_DIGEST, 0
        if keys:
            named = piped.keyed(keys)
            row = connection.exec_driver_sql(piped.batch_digest, named).one()
            mine = canonical.read_digest(row)
    else:
        keys, last, mine = read
    if not keys:
        return keys, last, 0
    if ahead is not None and ahead.on_page is not None:
        ahead.on_page((keys, last))
    named = piped.keyed(keys)
    blocks: list[bytes] = []
    deleted = _copy_out(connection, piped.take_out, named, blocks)
    digest = _dest_digest(piped, named)

    def check(target: Connection) -> tuple[str, int]:
        theirs = digest(target)
        hold(ahead, same_batch(mine, theirs, deleted))
        return theirs

    theirs = _write(dest, piped, [b"".join(blocks)], check)
    take_back_unless_same(log, piped.source.name, (keys, last), mine, theirs, deleted)
    return keys, last, deleted


def _move_compared(
    connection: Connection, pages: Pages, dest: sa.Engine, piped: Piped, ahead: Ahead | None
) -> tuple[list[object], Sequence[object] | None, int]:
    """`move_rows` between two servers of one version: the rows deleted, in key order, as
    binary COPY data, written into the destination and read back from it in the same order
    before it commits; the delete stands only if both are the same bytes (the same values,
    every one of them: the tables' columns have the same types), and as many rows went as
    were read. No digest is computed on either side. A move made ahead commits nothing
    unless they are the same and it is claimed."""
    keys, last = pages.read(connection)
    if not keys:
        return keys, last, 0
    if ahead is not None and ahead.on_page is not None:
        ahead.on_page((keys, last))
    named = piped.keyed(keys)
    blocks: list[bytes] = []
    deleted = _copy_out(connection, piped.take_sorted, named, blocks)
    sent = b"".join(blocks)

    def read_back(target: Connection) -> bool:
        back: list[bytes] = []
        _copy_out(target, piped.read_back, named, back)
        same = deleted == len(keys) and b"".join(back) == sent
        hold(ahead, same)
        return same

    if not _write(dest, piped, [sent], read_back):
        log.info(
            "%s: a moved batch's rows differ from their copies read back (%d rows read, "
            "%d deleted); its delete is taken back",
            piped.source.name,
            len(keys),
            deleted,
        )
        raise TakenBack(keys, last)
    return keys, last, deleted


def _write(
    dest: sa.Engine, piped: Piped, blocks: list[bytes], check: Callable[[Connection], _T]
) -> _T:
    """Binary COPY data into the destination table, committed, and what ``check`` reads of
    the copies before the commit. Straight into the table first; a key already there (an
    interrupted run's copy) takes that transaction back, and the rows go through a session
    table and an upsert in a second one (no savepoint: a round trip less each batch)."""
    with dest.connect() as target:
        try:
            with target.begin():
                _copy_in(target, piped.copy_direct, blocks)
                return check(target)
        except IntegrityError:
            pass
        with target.begin():
            target.exec_driver_sql(piped.stage)
            _copy_in(target, piped.copy_in, blocks)
            try:
                target.exec_driver_sql(piped.upsert)
            except IntegrityError as exc:
                raise conflict(exc) from None
            return check(target)


def _dest_digest(piped: Piped, named: Sequence[object]) -> Callable[[Connection], tuple[str, int]]:
    def digest(target: Connection) -> tuple[str, int]:
        if piped.floats:
            target.exec_driver_sql(FLOAT_SETTINGS)
        return canonical.read_digest(target.exec_driver_sql(piped.batch_digest, named).one())

    return digest


def _copy_out(
    connection: Connection, statement: str, params: Sequence[object], blocks: list[bytes]
) -> int:
    """The data ``statement`` (a ``COPY ... TO STDOUT``) writes, into ``blocks``; its rows."""
    raw = connection.connection.driver_connection
    assert raw is not None
    with driver_errors(connection.dialect, statement), raw.cursor() as cursor:
        with cursor.copy(statement, params) as out:
            blocks.extend(bytes(block) for block in out)
        return max(int(cursor.rowcount), 0)  # read before the cursor closes


def _copy_in(connection: Connection, statement: str, blocks: list[bytes]) -> None:
    raw = connection.connection.driver_connection
    assert raw is not None
    with (
        driver_errors(connection.dialect, statement),
        raw.cursor() as cursor,
        cursor.copy(statement) as into,
    ):
        for block in blocks:
            into.write(block)


def copy_rows(
    connection: Connection, pages: Pages, dest: sa.Engine, piped: Piped
) -> tuple[list[object], Sequence[object] | None]:
    """PostgreSQL: the next rows' keys, then their rows as binary COPY data from the source
    into the destination table; the destination commits before this returns.

    Straight into the table first (under a savepoint): most batches meet no older copy,
    and that costs less than the way that overwrites by key. A key that is
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
                raise conflict(exc) from None
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


def digests(
    connection: Connection, piped: Piped, keys: list[object], same: Callable[[object], object]
) -> dict[object, str]:
    """The destination's copies of these keys, each as its digest (PostgreSQL); ``same``
    makes a key read back comparable to the keys given."""
    connection.exec_driver_sql(piped.settings)
    found: dict[object, str] = {}
    for chunk in chunks(keys):
        found.update(
            (same(key), digest)
            for key, digest in connection.exec_driver_sql(piped.digests, piped.keyed(chunk))
        )
    return found


def delete_rows(
    connection: Connection,
    piped: Piped,
    keys: list[object],
    digests: dict[object, str],
    same: Callable[[object], object],
) -> tuple[int, list[object], list[object]]:
    """Delete the source rows whose digest equals their copy's (PostgreSQL). The delete
    locks each row it removes and, if another transaction changed the row meanwhile,
    compares the changed row instead: an update since the copy keeps the row. With
    references, rows still referenced are kept (the rows locked first, `lock_for_delete`)
    and their keys answered third."""
    if piped.refs:
        lock_for_delete(connection, piped.source.table, piped.source.pk, keys)
    connection.exec_driver_sql(piped.settings)
    copied = [key for key in keys if key in digests]
    deleted = 0
    for chunk in chunks(copied):
        digested = [digests[key] for key in chunk]
        result = connection.exec_driver_sql(piped.delete, (chunk, digested, *piped.keyed(chunk)))
        deleted += max(result.rowcount, 0)
    left: list[object] = []
    if deleted < len(keys):
        for chunk in chunks(keys):
            present = connection.exec_driver_sql(piped.present, piped.keyed(chunk)).scalars()
            left.extend(same(key) for key in present)
    referenced: list[object] = []
    if piped.referenced and left:
        for chunk in chunks(left):
            found = connection.exec_driver_sql(piped.referenced, piped.keyed(chunk)).scalars()
            referenced.extend(same(key) for key in found)
    return deleted, left, referenced
