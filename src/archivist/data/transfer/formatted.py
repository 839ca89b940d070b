"""A move into MariaDB/MySQL on another server with rows formatted by the source's server
(MariaDB/MySQL or PostgreSQL): it writes each row as the line ``LOAD DATA`` reads
(`mysql_load.LoadData`) and the MD5 of its canonical text (`canonical`), all the batch's
lines in one value and its hashes in another, so that the daemon parses two values instead
of every column of every row (PyMySQL parses in Python, psycopg builds a Python object of
each value) and writes no row's text itself.

The rows are read ``FOR UPDATE``, written into the archive, the archive's digest compared
with theirs, and only then deleted: the lock keeps them as read until the source's
transaction ends, and that ends after the archive's commit (`streamed.move_rows`).
Only between columns of the same types (an archive table archivist made), and not with
float columns (a float's text is not always its exact value): `HashedTake` moves those,
and a batch with a date MariaDB does not hold.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from archivist.data.columns import ColumnSpec, Kind
from archivist.data.schema import TableInfo
from archivist.data.storable import is_timestamp
from archivist.data.transfer import canonical, mysql_load
from archivist.data.transfer.source_rows import keyed

MYSQL: Final = frozenset({"mysql", "mariadb"})
BACKSLASH: Final = "CHAR(92 USING utf8mb4)"
NULL_FIELD: Final = f"CONCAT({BACKSLASH}, 'N')"
"""``\\N``, LOAD DATA's NULL; spelled with CHAR so that no ``sql_mode`` changes it."""
ESCAPES: Final = (("92", BACKSLASH), ("9", "'t'"), ("10", "'n'"))
"""The characters LOAD DATA would read as an escape or a separator (backslash first, then
tab and newline), and what follows the backslash that escapes each."""


def _escaped(text: str) -> str:
    for code, after in ESCAPES:
        text = f"REPLACE({text}, CHAR({code} USING utf8mb4), CONCAT({BACKSLASH}, {after}))"
    return text


def _field(spec: ColumnSpec, column: str) -> str:
    """SQL for a value's field in a LOAD DATA line (`mysql_load.LoadData`'s form)."""
    kind = spec.kind
    if kind is Kind.BINARY:
        text = f"HEX({column})"  # LoadData sets binary columns from UNHEX
    elif kind in (Kind.TEXT, Kind.STRING, Kind.JSON):
        text = _escaped(f"CONVERT({column} USING utf8mb4)")
    elif kind is Kind.DATETIME:  # sessions in UTC: a TIMESTAMP's UTC wall time
        text = f"DATE_FORMAT({column}, '%%Y-%%m-%%d %%H:%%i:%%s.%%f')"
    elif kind is Kind.DATE:
        text = f"DATE_FORMAT({column}, '%%Y-%%m-%%d')"
    else:  # integer, decimal (with its scale), boolean, time, uuid
        text = f"CAST({column} AS CHAR)"
    return f"IFNULL({text}, {NULL_FIELD})"


UUID_TEXT: Final = 36
PG_BACKSLASH: Final = "chr(92)"
PG_ESCAPES: Final = (("92", PG_BACKSLASH), ("9", "'t'"), ("10", "'n'"))
PG_FIRST: Final = "'1000-01-01'"
PG_PAST: Final = "'10000-01-01'"
"""MariaDB's dates and datetimes run from year 1000 to 9999; PostgreSQL's further."""


def _pg_field(spec: ColumnSpec, column: str) -> str | None:
    """SQL for a PostgreSQL value's field in a LOAD DATA line into MariaDB/MySQL (the form
    `mysql_load.LoadData` reads); None for a kind left to `HashedTake`."""
    kind = spec.kind
    if kind is Kind.BINARY:
        text = f"encode({column}, 'hex')"
    elif kind in (Kind.TEXT, Kind.STRING, Kind.JSON):
        text = f"{column}::text"
        for code, after in PG_ESCAPES:
            text = f"replace({text}, chr({code}), {PG_BACKSLASH} || {after})"
    elif kind is Kind.DATETIME:  # an instant as its UTC wall time, as the archive holds it
        at = f"{column} AT TIME ZONE 'UTC'" if spec.timezone else column
        text = f"to_char({at}, 'YYYY-MM-DD HH24:MI:SS.US')"
    elif kind is Kind.DATE:
        text = f"to_char({column}, 'YYYY-MM-DD')"
    elif kind is Kind.BOOLEAN:
        text = f"CASE WHEN {column} THEN '1' WHEN NOT {column} THEN '0' END"  # NULL stays
    elif kind in (Kind.INTEGER, Kind.DECIMAL, Kind.UUID, Kind.TIME):
        text = f"{column}::text"
    else:  # float (its text), other
        return None
    return f"COALESCE({text}, {PG_BACKSLASH} || 'N')"


def _pg_beyond(spec: ColumnSpec, column: str) -> str | None:
    """SQL true for a value MariaDB's columns do not hold: a date or instant before year
    1000 or past 9999, an infinity, a decimal's NaN."""
    if spec.kind is Kind.DATETIME:
        at = f"{column} AT TIME ZONE 'UTC'" if spec.timezone else column
        return f"({at} < {PG_FIRST}::timestamp OR {at} >= {PG_PAST}::timestamp)"
    if spec.kind is Kind.DATE:
        return f"({column} < {PG_FIRST}::date OR {column} >= {PG_PAST}::date)"
    if spec.kind is Kind.DECIMAL:  # numeric's NaN and infinities
        return f"{column}::text IN ('NaN', 'Infinity', '-Infinity')"
    return None


def _same_column(source: ColumnSpec, dest: ColumnSpec) -> bool:
    """Whether every value of ``source`` (PostgreSQL) goes into ``dest`` (MariaDB) as it
    is, given `_pg_beyond`: one kind, one length, precision and scale, wide enough integers,
    not a TIMESTAMP (instants from 1970 only)."""
    if source.kind is Kind.UUID and dest.kind is Kind.STRING:  # its text, as archivist makes it
        return (dest.length or 0) >= UUID_TEXT
    return (
        source.kind is dest.kind
        and (source.length, source.precision, source.scale)
        == (dest.length, dest.precision, dest.scale)
        and dest.int_bits >= source.int_bits
        and not is_timestamp("mysql", dest)
    )


@dataclass(frozen=True)
class FormattedTake:
    read: str
    """The batch's lines (each ending with a newline) in one value, their hashes in
    another, the count, and whether a value is out of the archive's range; ``{keys}``
    where the keys go; locks the rows."""
    delete: str
    remove: str
    """The archive's copies of ``{keys}`` (older copies, replaced)."""
    load: mysql_load.LoadData
    """Into the archive's table, the columns in the lines' order."""
    read_lines: str = ""
    """Between two MariaDB/MySQL servers: the batch's lines alone, in key order (`read`'s
    other values empty or zero), for a comparison with `read_back`."""
    read_back: str = ""
    """The archive's copies of ``{keys}`` as the same lines in the same order."""
    refused: list[bool] = dataclasses.field(default_factory=lambda: [False])
    """Set once the archive's server refuses LOAD DATA LOCAL: `HashedTake` moves then."""

    @classmethod
    def of(
        cls,
        info: TableInfo,
        dialect: sa.Dialect,
        specs: Sequence[ColumnSpec],
        dest: TableInfo,
        dest_dialect: sa.Dialect,
    ) -> FormattedTake | None:
        if dest_dialect.name not in MYSQL:
            return None
        if dialect.name == "postgresql":
            return cls._from_postgresql(info, dialect, specs, dest, dest_dialect)
        if dialect.name not in MYSQL:
            return None
        if any(
            spec.kind in (Kind.FLOAT, Kind.OTHER)
            or info.table.c[spec.name].type.compile(dialect=dialect)
            != dest.table.c[spec.name].type.compile(dialect=dest_dialect)
            for spec in specs
        ):
            return None  # a value could change on the way: a type's range, length or scale
        quote = dialect.identifier_preparer.quote
        target = dialect.identifier_preparer.format_table(info.table)
        fields = ", ".join(_field(spec, quote(spec.name)) for spec in specs)
        line = f"CONCAT(CONCAT_WS(CHAR(9 USING utf8mb4), {fields}), CHAR(10 USING utf8mb4))"
        hashed = f"MD5(CONVERT({canonical.row_text_sql('mysql', specs, quote)} USING utf8mb4))"
        where = f"{target} WHERE {quote(info.pk)} {{keys}}"
        read = (
            f"SELECT GROUP_CONCAT({line} SEPARATOR ''), GROUP_CONCAT({hashed} SEPARATOR ''),"
            f" COUNT(*), 0 FROM {where} FOR UPDATE"
        )
        made = cls._made(read, f"DELETE FROM {where}", specs, dest, dest_dialect)
        # The same lines, in key order, from either server: compared byte for byte.
        into = dest_dialect.identifier_preparer
        ordered = f"GROUP_CONCAT({line} ORDER BY {quote(info.pk)} SEPARATOR '')"
        back = f"GROUP_CONCAT({line} ORDER BY {into.quote(dest.pk)} SEPARATOR '')"
        return dataclasses.replace(
            made,
            read_lines=f"SELECT {ordered}, '', COUNT(*), 0 FROM {where} FOR UPDATE",
            read_back=f"SELECT {back} FROM {into.format_table(dest.table)}"
            f" WHERE {into.quote(dest.pk)} {{keys}}",
        )

    @classmethod
    def _from_postgresql(
        cls,
        info: TableInfo,
        dialect: sa.Dialect,
        specs: Sequence[ColumnSpec],
        dest: TableInfo,
        dest_dialect: sa.Dialect,
    ) -> FormattedTake | None:
        quote = dialect.identifier_preparer.quote
        fields = [_pg_field(spec, quote(spec.name)) for spec in specs]
        zoned = any(
            getattr(info.table.c[spec.name].type, "timezone", False)
            for spec in specs
            if spec.kind is Kind.TIME
        )
        if (
            zoned
            or any(field is None for field in fields)
            or not all(_same_column(spec, dest.spec(spec.name)) for spec in specs)
        ):
            return None  # a time with its zone: MariaDB's TIME has none
        target = dialect.identifier_preparer.format_table(info.table)
        where = f"{target} WHERE {quote(info.pk)} {{keys}}"
        line = " || chr(9) || ".join(f for f in fields if f is not None) + " || chr(10)"
        hashed = f"md5({canonical.row_text_sql('postgresql', specs, quote)})"
        beyond = [b for spec in specs if (b := _pg_beyond(spec, quote(spec.name)))]
        columns = ", ".join(quote(spec.name) for spec in specs)
        # FOR UPDATE in a CTE: PostgreSQL locks no rows an aggregate reads.
        read = (
            f"WITH archivist_rows AS (SELECT {columns} FROM {where} FOR UPDATE)"
            f" SELECT string_agg({line}, ''), string_agg({hashed}, ''), count(*),"
            f" bool_or({' OR '.join(beyond) or 'false'}) FROM archivist_rows"
        )
        return cls._made(read, f"DELETE FROM {where}", specs, dest, dest_dialect)

    @classmethod
    def _made(
        cls,
        read: str,
        delete: str,
        specs: Sequence[ColumnSpec],
        dest: TableInfo,
        dest_dialect: sa.Dialect,
    ) -> FormattedTake:
        into = dest_dialect.identifier_preparer
        archive = into.format_table(dest.table)
        return cls(
            read=read,
            delete=delete,
            remove=f"DELETE FROM {archive} WHERE {into.quote(dest.pk)} {{keys}}",
            load=mysql_load.LoadData(
                archive,
                [spec.name for spec in specs],
                [spec.kind is Kind.BINARY for spec in specs],
                into.quote,
            ),
        )


def lines_and_digest(
    row: Sequence[object], *, hashed: bool = True
) -> tuple[bytes, tuple[str, int]] | None:
    """The batch's lines and (digest, rows) from a `FormattedTake.read` row (with
    ``hashed`` false, a `FormattedTake.read_lines` row: the digest is `lines_digest`);
    None when a value was cut short (the session's ``group_concat_max_len``) or is out of
    the archive's range."""
    lines, hashes, counted, beyond = row
    rows = int(counted or 0)  # type: ignore[call-overload]
    if rows == 0:
        return b"", (canonical.EMPTY_DIGEST, 0)
    if beyond:
        return None
    data = as_bytes(lines)
    if data is None or data.count(b"\n") != rows or not data.endswith(b"\n"):
        return None
    if not hashed:
        return data, lines_digest(data)
    joined = hashes.decode("ascii") if isinstance(hashes, bytes) else str(hashes)
    if len(joined) != 32 * rows:
        return None
    digest = canonical.digest_of_hashes(joined[i : i + 32] for i in range(0, len(joined), 32))
    return data, (digest, rows)


def as_bytes(lines: object) -> bytes | None:
    """A `GROUP_CONCAT` of lines as bytes (None: no lines)."""
    if isinstance(lines, str):
        return lines.encode("utf-8")
    return lines if isinstance(lines, bytes) else None


def lines_digest(data: bytes) -> tuple[str, int]:
    """(digest, rows) of lines in key order: equal lines, equal values (`read_back`)."""
    return hashlib.md5(data).hexdigest(), data.count(b"\n")


def load(
    target: Connection,
    take: FormattedTake,
    data: bytes,
    rows: int,
    dest: TableInfo,
    dest_keys: Sequence[object],
) -> bool:
    """The ``rows`` lines into the archive's table ``dest`` (older copies of their keys,
    ``dest_keys``, replaced); False when its server refuses LOAD DATA LOCAL. A value the
    table changed on the way shows in its digest, which the caller compares."""
    raw = target.connection.driver_connection
    if take.refused[0] or not isinstance(raw, mysql_load.GuardedConnection):
        return False
    try:
        taken, _ = take.load.load(raw, data)
    except raw.OperationalError as exc:
        if exc.args[0] not in mysql_load.REFUSED_CODES:
            raise
        take.refused[0] = True
        return False
    if taken != rows:  # older copies kept (LOCAL skips duplicates): replace
        with raw.cursor() as cursor:
            cursor.execute(*keyed(target, dest, take.remove, dest_keys))
        take.load.load(raw, data)
    return True
