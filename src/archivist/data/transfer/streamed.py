"""How a batch moves between two servers or two engines: the daemon reads the rows from the
source connection and writes them into the destination with that engine's bulk path
(PostgreSQL ``COPY``, ``LOAD DATA LOCAL INFILE`` from memory on MariaDB/MySQL (`mysql_load`),
``executemany`` on SQLite); the worker's socket never carries them. The delete compares a
digest of the batch computed on each side over the rows' canonical text (`canonical`), and
only when the digests differ compares the rows one by one, by their values.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from archivist.data.columns import ColumnSpec, Kind
from archivist.data.filters import KEY_CHUNK, chunks
from archivist.data.handles import driver_errors
from archivist.data.relations import ForeignKey, guard_clause, lock_for_delete
from archivist.data.schema import TableInfo
from archivist.data.storable import before_timestamps, is_timestamp
from archivist.data.transfer import canonical
from archivist.data.transfer.ahead import Ahead, Dropped, hold
from archivist.data.transfer.keys import key_ranges
from archivist.data.transfer.link import (
    Link,
    conflict,
    one_version,
    same_batch,
    take_back_unless_same,
)
from archivist.data.transfer.pages import Pages
from archivist.data.transfer.piped_pg import MOVE_SETTINGS
from archivist.data.transfer.source_rows import (
    SERVERS,
    HashedTake,
    Prepare,
    StoredRows,
    columns_of,
    keyed,
    reading,
)
from archivist.data.values import decoder_for, encoder_for
from archivist.errors import Unsupported

if TYPE_CHECKING:
    from archivist.data.transfer.formatted import FormattedTake

log = logging.getLogger(__name__)

_BESIDE: Final = ThreadPoolExecutor(max_workers=4, thread_name_prefix="archivist-beside")
"""Threads for a source's statement run while the destination works (`_move_formatted`)."""


class Streamed(msgspec.Struct, frozen=True):
    """A collection's statements between two databases on different servers or engines."""

    source: TableInfo
    dest: TableInfo
    specs: tuple[ColumnSpec, ...]
    """The source's columns, in the order every statement here names them."""
    dest_specs: tuple[ColumnSpec, ...]
    """The destination's columns of the same names, in the same order."""
    read: sa.Select[Any]
    """The source rows of ``:keys`` (JSON as its stored text)."""
    dest_read: sa.Select[Any]
    """The destination's copies of ``:keys``, alike."""
    prepare: tuple[Prepare | None, ...]
    """Per column: the value as the destination's driver takes it (None: as read)."""
    write: Callable[[Connection, list[tuple[object, ...]], list[object]], None]
    """Writes rows into the destination table, overwriting older copies by key."""
    source_digest: str | None
    """The source's digest statement, ``{keys}`` where the keys go; None: in Python."""
    dest_digest: str | None
    delete: sa.Delete
    present: sa.Select[Any]
    to_dest_key: Callable[[object], object] | None
    """A source key as the destination's column holds it (None: the same value)."""
    refs: tuple[ForeignKey, ...] = ()
    referenced: sa.Select[Any] | None = None
    take: sa.Executable | None = None
    """The source rows of ``:keys`` deleted, answering them as `read` reads them: a move's
    copy (`move_rows`, on a server that deletes with ``RETURNING``: PostgreSQL, MariaDB);
    None on SQLite, whose write lock the move would hold while the other database writes,
    and with references to respect."""
    hashed_take: HashedTake | None = None
    """Instead of `take`, where the source's server can hash each row as it deletes it."""
    formatted: FormattedTake | None = None
    """Before `hashed_take`, into MariaDB/MySQL on another server: the rows formatted for
    LOAD DATA by the source's server (`formatted`)."""
    stored: StoredRows | None = None
    """SQLite: how the source's rows are read as stored (`StoredRows`), for the copy and
    the digest; None on a server."""
    dest_stored: StoredRows | None = None
    """The same for a SQLite destination's copies (its digest)."""

    def dest_keys(self, keys: Sequence[object]) -> list[object]:
        convert = self.to_dest_key
        return list(keys) if convert is None else [convert(key) for key in keys]


def statements(
    link: Link, source: TableInfo, dest: TableInfo, refs: tuple[ForeignKey, ...] = ()
) -> Streamed:
    src_dialect = link.runner.engine.dialect
    dest_dialect = link.dest.engine.dialect
    specs = source.columns
    names = [spec.name for spec in specs]
    dest_specs = tuple(dest.spec(name) for name in names)
    keys: sa.BindParameter[Any] = sa.bindparam("keys", expanding=True)
    table = source.table
    pk = table.c[source.pk]
    key_spec, dest_key_spec = source.spec(source.pk), dest.spec(dest.pk)
    to_dest_key = None
    if key_spec.kind is not Kind.INTEGER or dest_key_spec.kind is not Kind.INTEGER:
        encode, decode = encoder_for(key_spec), decoder_for(dest_key_spec)
        to_dest_key = lambda key: decode(encode(key))  # noqa: E731
    unreferenced = guard_clause(table, refs)
    return Streamed(
        source=source,
        dest=dest,
        specs=specs,
        dest_specs=dest_specs,
        read=reading(source, src_dialect, specs),
        dest_read=reading(dest, dest_dialect, dest_specs),
        prepare=tuple(_preparer(spec, dest, dest_dialect) for spec in specs),
        write=_writer(dest, names, dest_dialect),
        source_digest=digest_statement(source, specs, src_dialect),
        dest_digest=digest_statement(dest, dest_specs, dest_dialect),
        delete=sa.delete(table).where(pk.in_(keys), *unreferenced),
        present=sa.select(pk).where(pk.in_(keys)),
        to_dest_key=to_dest_key,
        refs=refs,
        referenced=sa.select(pk).where(pk.in_(keys), ~sa.and_(*unreferenced)) if refs else None,
        take=sa.delete(table).where(pk.in_(keys)).returning(*columns_of(source, src_dialect, specs))
        if src_dialect.name in SERVERS and not refs
        else None,
        hashed_take=HashedTake.of(source, src_dialect, specs, dest, dest_dialect)
        if src_dialect.name in SERVERS and not refs
        else None,
        formatted=_formatted(source, src_dialect, specs, dest, dest_dialect) if not refs else None,
        stored=StoredRows.of(source, src_dialect, specs, into=dest, into_dialect=dest_dialect)
        if src_dialect.name == "sqlite"
        else None,
        dest_stored=StoredRows.of(dest, dest_dialect, dest_specs)
        if dest_dialect.name == "sqlite"
        else None,
    )


def _formatted(
    info: TableInfo,
    dialect: sa.Dialect,
    specs: Sequence[ColumnSpec],
    dest: TableInfo,
    dest_dialect: sa.Dialect,
) -> FormattedTake | None:
    if dest_dialect.name not in ("mysql", "mariadb"):
        return None
    # Imported here: it needs PyMySQL, which a run without MariaDB never loads.
    from archivist.data.transfer.formatted import FormattedTake

    return FormattedTake.of(info, dialect, specs, dest, dest_dialect)


# --- values on their way ------------------------------------------------------------------


def _unstorable(spec: ColumnSpec, dest: str, why: str) -> Unsupported:
    return Unsupported(
        f"unsupported: a value of {spec.name} cannot be stored as is on the {dest} "
        f"archive ({why}); such rows go through the worker, which keeps them in the source"
    )


def _preparer(spec: ColumnSpec, dest: TableInfo, dialect: sa.Dialect) -> Prepare | None:
    """How a value of ``spec`` read from the source is handed to the destination's driver."""
    if dialect.name == "postgresql":
        return None  # COPY's text: psycopg writes every Python value the source reads
    steps: list[Prepare] = []
    if spec.kind is Kind.FLOAT:
        name = dialect.name

        def finite(value: object) -> object:
            number = float(value)  # type: ignore[arg-type]
            if math.isnan(number) or (name != "sqlite" and math.isinf(number)):
                raise _unstorable(spec, name, f"{number!r}")
            return value

        steps.append(finite)
    other = dest.spec(spec.name)
    if is_timestamp(dialect.name, other):

        def from_1970(value: object) -> object:
            if isinstance(value, dt.datetime) and before_timestamps(value):
                raise _unstorable(spec, dialect.name, f"{value.isoformat()} is before 1970")
            return value

        steps.append(from_1970)
    if spec.kind is Kind.UUID or other.kind is not spec.kind:
        # Through the JSON encoding, as the rows path would: a UUID as its canonical text,
        # an integer into a decimal column as a Decimal.
        encode, decode = encoder_for(spec), decoder_for(other)
        steps.append(lambda value: decode(encode(value)))
    if spec.kind is not Kind.JSON:  # JSON goes as the text it was stored as
        column = dest.table.c[spec.name]
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            steps.append(process)
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]

    def chained(value: object) -> object:
        for step in steps:
            value = step(value)
        return value

    return chained


def prepare_rows(streamed: Streamed, rows: Sequence[Sequence[object]]) -> list[tuple[object, ...]]:
    steps = streamed.prepare
    if not any(steps):
        return [tuple(row) for row in rows]
    return [
        tuple(
            value if step is None or value is None else step(value)
            for step, value in zip(steps, row, strict=True)
        )
        for row in rows
    ]


# --- writers --------------------------------------------------------------------------------


def _writer(
    dest: TableInfo, names: list[str], dialect: sa.Dialect
) -> Callable[[Connection, list[tuple[object, ...]], list[object]], None]:
    quote = dialect.identifier_preparer.quote
    target = dialect.identifier_preparer.format_table(dest.table)
    columns = ", ".join(quote(name) for name in names)
    pk = quote(dest.pk)
    others = [quote(name) for name in names if name != dest.pk]
    if dialect.name == "postgresql":
        stage = quote(f"archivist_stream_{dest.name}"[:63])
        on_conflict = (
            "DO UPDATE SET " + ", ".join(f"{n} = EXCLUDED.{n}" for n in others)
            if others
            else "DO NOTHING"
        )
        copy_direct = f"COPY {target} ({columns}) FROM STDIN"
        make_stage = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS"
            f" AS SELECT {columns} FROM {target} WITH NO DATA"
        )
        copy_stage = f"COPY {stage} ({columns}) FROM STDIN"
        upsert = (
            f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {stage}"
            f" ON CONFLICT ({pk}) {on_conflict}"
        )

        def write_pg(
            connection: Connection, rows: list[tuple[object, ...]], keys: list[object]
        ) -> None:
            try:
                with connection.begin_nested():
                    _copy_in(connection, copy_direct, rows)
            except IntegrityError:
                # An older copy (an interrupted run's): through a session table, by key.
                connection.exec_driver_sql(make_stage)
                _copy_in(connection, copy_stage, rows)
                connection.exec_driver_sql(upsert)

        return write_pg
    marks = ", ".join(["?" if dialect.paramstyle == "qmark" else "%s"] * len(names))
    if dialect.name == "sqlite":
        update = ", ".join(f"{n} = excluded.{n}" for n in others)
        upsert_sqlite = f"INSERT INTO {target} ({columns}) VALUES ({marks}) ON CONFLICT ({pk}) " + (
            f"DO UPDATE SET {update}" if update else "DO NOTHING"
        )

        def write_sqlite(
            connection: Connection, rows: list[tuple[object, ...]], keys: list[object]
        ) -> None:
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            with driver_errors(connection.dialect, upsert_sqlite):
                cursor.executemany(upsert_sqlite, rows)

        return write_sqlite
    # Imported here: it needs PyMySQL, which a run without MariaDB never loads.
    from archivist.data.transfer import mysql_load

    insert = f"INSERT INTO {target} ({columns}) VALUES ({marks})"
    integer_keys = dest.spec(dest.pk).kind is Kind.INTEGER
    binary = [dest.spec(name).kind is Kind.BINARY for name in names]
    load = mysql_load.LoadData(target, names, binary, quote)
    loading = [True]  # until the server refuses LOCAL (local_infile = OFF)

    def write_mysql(
        connection: Connection, rows: list[tuple[object, ...]], keys: list[object]
    ) -> None:
        # LOAD DATA LOCAL INFILE from a buffer (`mysql_load`); else, or when it skipped a
        # row (an older copy: LOCAL ignores duplicates) or warned (a value changed), a
        # plain insert (PyMySQL makes it multi-row), after a clash with older copies
        # deleting those and inserting again. Not ON DUPLICATE KEY UPDATE (nor REPLACE),
        # which would also overwrite another archived row sharing a unique value.
        raw = connection.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cursor, driver_errors(connection.dialect, insert):
            if loading[0] and isinstance(raw, mysql_load.GuardedConnection):
                try:
                    taken, warnings = load.load(raw, load.buffer(rows))
                except mysql_load.Unwritable:
                    pass
                except raw.OperationalError as exc:
                    if exc.args[0] not in mysql_load.REFUSED_CODES:
                        raise
                    loading[0] = False
                    log.warning(
                        "%s: the archive's server refuses LOAD DATA LOCAL INFILE (%s); rows "
                        "go by multi-row inserts",
                        dest.name,
                        exc.args[1],
                    )
                else:
                    if taken == len(rows) and not warnings:
                        return
                    remove(cursor, keys)
                    cursor.executemany(insert, rows)
                    return
            try:
                cursor.executemany(insert, rows)
            except raw.IntegrityError:
                remove(cursor, keys)
                cursor.executemany(insert, rows)

    def remove(cursor: Any, keys: list[object]) -> None:
        for chunk in chunks(keys):
            if integer_keys:
                where = key_ranges(pk, [int(k) for k in chunk])  # type: ignore[call-overload]
                cursor.execute(f"DELETE FROM {target} WHERE {where}")
            else:
                marks_k = ", ".join(["%s"] * len(chunk))
                cursor.execute(f"DELETE FROM {target} WHERE {pk} IN ({marks_k})", chunk)

    return write_mysql


def _copy_in(connection: Connection, statement: str, rows: list[tuple[object, ...]]) -> None:
    raw = connection.connection.driver_connection
    assert raw is not None
    with (
        driver_errors(connection.dialect, statement),
        raw.cursor() as cursor,
        cursor.copy(statement) as copy,
    ):
        for row in rows:
            copy.write_row(row)


# --- digests --------------------------------------------------------------------------------


def digest_statement(
    info: TableInfo, specs: Sequence[ColumnSpec], dialect: sa.Dialect
) -> str | None:
    """The statement with which the database of ``info`` computes a batch's digest over the
    columns of ``specs`` (`canonical.digest_sql`), ``{keys}`` where the keys go; None on
    SQLite (Python computes it from the rows)."""
    if dialect.name not in SERVERS:
        return None
    quote = dialect.identifier_preparer.quote
    target = dialect.identifier_preparer.format_table(info.table)
    return canonical.digest_sql(
        dialect.name, specs, quote, f"{target} WHERE {quote(info.pk)} {{keys}}"
    )


def _rows(
    connection: Connection, select: sa.Select[Any], keys: Sequence[object]
) -> list[Sequence[object]]:
    found: list[Sequence[object]] = []
    for chunk in chunks(keys):
        found.extend(connection.execute(select, {"keys": list(chunk)}).all())
    return found


def digest(
    connection: Connection,
    info: TableInfo,
    specs: Sequence[ColumnSpec],
    statement: str | None,
    select: sa.Select[Any],
    keys: Sequence[object],
    stored: StoredRows | None = None,
) -> tuple[str, int]:
    """The digest and count of the rows of ``keys`` in the database of ``connection``
    (SQLite's read as stored where ``stored`` says how)."""
    if not keys:
        return canonical.EMPTY_DIGEST, 0
    if statement is None:
        if stored is not None:
            return canonical.digest_rows(specs, stored.for_digest(stored.read(connection, keys)))
        return canonical.digest_rows(specs, _rows(connection, select, keys))
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SELECT set_config('extra_float_digits', '3', true)")
    text, params = keyed(connection, info, statement, keys)
    return canonical.read_digest(connection.exec_driver_sql(text, params).one())


def dest_digest(connection: Connection, streamed: Streamed, keys: list[object]) -> tuple[str, int]:
    """The destination's digest of its copies of ``keys`` (destination keys)."""
    return digest(
        connection,
        streamed.dest,
        streamed.dest_specs,
        streamed.dest_digest,
        streamed.dest_read,
        keys,
        streamed.dest_stored,
    )


# --- the batch ------------------------------------------------------------------------------


def copy_rows(
    connection: Connection, pages: Pages, dest: sa.Engine, streamed: Streamed
) -> tuple[list[object], Sequence[object] | None]:
    """The next rows' keys, then their rows read from the source and written into the
    destination, which commits before this returns."""
    if streamed.stored is not None:
        keys, last, stored = _stored_page(connection, pages, streamed.stored)
        if not keys:
            return keys, last
        rows = prepare_rows(streamed, streamed.stored.for_writer(stored))
    else:
        keys, last = pages.read(connection)
        if not keys:
            return keys, last
        rows = prepare_rows(streamed, _rows(connection, streamed.read, keys))
    dest_keys = streamed.dest_keys(keys)
    with dest.connect() as target, target.begin():
        _write(target, streamed, rows, dest_keys)
    return keys, last


def _stored_page(
    connection: Connection, pages: Pages, stored: StoredRows
) -> tuple[list[object], Sequence[object] | None, list[Sequence[object]]]:
    """SQLite: the next page's keys, its last row (key, order value) and its rows as
    stored, read in one statement (the page's listing with every column)."""
    result = connection.execute(pages.keys.with_only_columns(*stored.columns), pages.params)
    try:
        rows: list[Sequence[object]] = list(result.cursor.fetchall())
    finally:
        result.close()
    keys = stored.keys_of(rows)
    if not keys:
        return keys, None, rows
    if pages.last is None:
        return keys, (keys[-1],), rows
    order = pages.last.selected_columns[1].name
    value = rows[-1][stored.names.index(order)]
    process = stored.processors.get(order)
    return keys, (keys[-1], value if value is None or process is None else process(value)), rows


def move_rows(
    connection: Connection,
    pages: Pages,
    dest: sa.Engine,
    streamed: Streamed,
    ahead: Ahead | None = None,
) -> tuple[list[object], Sequence[object] | None, int | None]:
    """A batch moved in one call: the next rows' keys, then the rows deleted from the
    source (``DELETE ... RETURNING``) and written into the destination, which commits;
    then, if the destination's digest of its copies equals the digest of the rows deleted
    (computed here from the rows themselves), the delete stands and the rows deleted are
    answered third. Otherwise (the archive changed a value, or wrote it in another form)
    `TakenBack` takes the delete back with the source's transaction: the copy stays, and
    the worker's ``data/delete`` with ``matching`` compares row by row.

    A crash before the destination commits leaves every row in the source; after it and
    before the source commits, the rows are in both, and the next run copies them again
    (over their older copies) and deletes them.

    ``ahead`` (`archivist.data.transfer.ahead`): the page is told as soon as it is read,
    and a move made ahead waits for its request before the destination commits."""
    take = streamed.take
    assert take is not None
    if not connection.dialect.delete_returning:  # MySQL: copied only
        if ahead is not None and ahead.held is not None:
            raise Dropped
        keys, last = copy_rows(connection, pages, dest, streamed)
        return keys, last, None
    pages = pages.begin(connection)
    if connection.dialect.name == "postgresql":  # see piped_pg.MOVE_SETTINGS
        connection.exec_driver_sql(MOVE_SETTINGS)
    keys, last = pages.read(connection)
    if not keys:
        return keys, last, 0
    if ahead is not None and ahead.on_page is not None:
        ahead.on_page((keys, last))
    dest_keys = streamed.dest_keys(keys)
    moved = _move_formatted(connection, dest, streamed, keys, dest_keys, ahead)
    if moved is not None:
        mine, theirs, deleted, how = moved
        take_back_unless_same(log, streamed.source.name, (keys, last), mine, theirs, deleted, how)
        return keys, last, deleted
    rows: list[Sequence[object]] = []
    if streamed.hashed_take is not None:  # floats as a digest writes them: MOVE_SETTINGS
        rows, mine = streamed.hashed_take.run(connection, streamed.source, keys)
    else:
        for chunk in chunks(keys):
            rows.extend(connection.execute(take, {"keys": list(chunk)}).all())
        mine = canonical.digest_rows(streamed.specs, rows)
    with dest.connect() as target, target.begin():
        _write(target, streamed, prepare_rows(streamed, rows), dest_keys)
        theirs = dest_digest(target, streamed, dest_keys)
        hold(ahead, same_batch(mine, theirs, len(rows)))
    take_back_unless_same(log, streamed.source.name, (keys, last), mine, theirs, len(rows))
    return keys, last, len(rows)


def _move_formatted(
    connection: Connection,
    dest: sa.Engine,
    streamed: Streamed,
    keys: list[object],
    dest_keys: list[object],
    ahead: Ahead | None,
) -> tuple[tuple[str, int], tuple[str, int], int, str] | None:
    """`move_rows` by `FormattedTake`: the rows read locked, formatted by the source's
    server, loaded into the archive, which commits, then deleted: (their digest, the
    archive's digest, rows deleted, how they were compared). None where it does not apply
    (or a value was cut short, or the archive's server refuses LOAD DATA LOCAL): nothing
    was deleted then."""
    take = streamed.formatted
    if take is None or take.refused[0] or len(keys) > KEY_CHUNK:
        return None
    from archivist.data.transfer import formatted

    # Two servers of one version write a value's line alike: the archive's copies are read
    # back as lines and compared byte for byte, and neither side hashes a row.
    by_lines = bool(take.read_back) and one_version(connection, dest)
    statement, params = keyed(
        connection, streamed.source, take.read_lines if by_lines else take.read, keys
    )
    row = connection.exec_driver_sql(statement, params).one()
    read = formatted.lines_and_digest(row, hashed=not by_lines)
    if read is None:
        return None
    data, mine = read
    statement, params = keyed(connection, streamed.source, take.delete, keys)
    with dest.connect() as target, target.begin():
        if not formatted.load(target, take, data, mine[1], streamed.dest, dest_keys):
            return None
        # The source's delete meanwhile, on its own connection (the rows are locked
        # since the read): it commits with the source's transaction, after this one.
        deleting = _BESIDE.submit(connection.exec_driver_sql, statement, params)
        try:
            if by_lines:
                back = target.exec_driver_sql(
                    *keyed(target, streamed.dest, take.read_back, dest_keys)
                )
                theirs = formatted.lines_digest(formatted.as_bytes(back.scalar()) or b"")
            else:
                theirs = dest_digest(target, streamed, dest_keys)
        finally:
            deleted = max(deleting.result().rowcount, 0)
        hold(ahead, same_batch(mine, theirs, deleted))
    how = "; formatted by the source's server" + (", lines read back" if by_lines else "")
    return mine, theirs, deleted, how


def _write(
    target: Connection, streamed: Streamed, rows: list[tuple[object, ...]], keys: list[object]
) -> None:
    try:
        streamed.write(target, rows, keys)
    except IntegrityError as exc:
        raise conflict(exc) from None
    except sa.exc.DataError as exc:
        raise Unsupported(
            "unsupported: the archive refused a value as streamed "
            f"({str(exc.orig).strip().splitlines()[0]}); rows go through the worker"
        ) from None


def delete_rows(
    connection: Connection,
    streamed: Streamed,
    keys: list[object],
    theirs: tuple[str, int],
    dest: sa.Engine,
) -> tuple[int, list[object], list[object]]:
    """Delete the source rows of ``keys`` whose copy is identical; ``theirs`` is the
    destination's digest of its copies. The rows are locked first (on a server; SQLite's
    write transaction holds the file): none can change between the compare and the delete.
    Equal digests delete the batch by key; otherwise the rows of both sides are compared
    one by one and only the identical ones go."""
    info = streamed.source
    if connection.dialect.name in SERVERS:
        lock_for_delete(connection, info.table, info.pk, keys)
    mine = digest(
        connection,
        info,
        streamed.specs,
        streamed.source_digest,
        streamed.read,
        keys,
        streamed.stored,
    )
    if mine == theirs:
        going: Sequence[object] = keys
    else:
        log.info(
            "%s: a batch's digests differ (%d rows here, %d in the archive); comparing its "
            "rows one by one",
            info.name,
            mine[1],
            theirs[1],
        )
        going = _identical(connection, streamed, keys, dest)
    deleted = 0
    for chunk in chunks(going):
        deleted += max(connection.execute(streamed.delete, {"keys": list(chunk)}).rowcount, 0)
    left: list[object] = []
    if deleted < len(keys):
        for chunk in chunks(keys):
            found = connection.execute(streamed.present, {"keys": list(chunk)}).scalars()
            left.extend(found)
    referenced: list[object] = []
    if streamed.referenced is not None and left:
        for chunk in chunks(left):
            found = connection.execute(streamed.referenced, {"keys": list(chunk)}).scalars()
            referenced.extend(found)
    return deleted, left, referenced


def _identical(
    connection: Connection, streamed: Streamed, keys: list[object], dest: sa.Engine
) -> list[object]:
    """The source keys whose row and copy hold the same values (as the JSON encoding of
    each side's column types: what the rows path compares)."""
    names = [spec.name for spec in streamed.specs]
    mine = _encoded(streamed.source, names, _rows(connection, streamed.read, keys))
    with dest.connect() as target, target.begin():
        copies = _rows(target, streamed.dest_read, streamed.dest_keys(keys))
    theirs = _encoded(streamed.dest, names, copies)
    encode = streamed.source.codec.encode_field
    pk = streamed.source.pk
    return [
        key
        for key in keys
        if (item := mine.get(str(encode(pk, key)))) is not None
        and theirs.get(str(encode(pk, key))) == item
    ]


def _encoded(
    info: TableInfo, names: list[str], rows: Sequence[Sequence[object]]
) -> dict[str, dict[str, object]]:
    """Rows by their key's JSON form (as text), each as its JSON item."""
    json_columns = [i for i, name in enumerate(names) if info.spec(name).kind is Kind.JSON]
    index = names.index(info.pk)
    items: dict[str, dict[str, object]] = {}
    for row in rows:
        values = list(row)
        for i in json_columns:
            if values[i] is not None:
                values[i] = json.loads(str(values[i]))
        item = info.codec.encode_tuples(names, [values])[0]
        items[str(item[names[index]])] = item
    return items
