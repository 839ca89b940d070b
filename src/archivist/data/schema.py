"""Tables as archivist sees them: reflection into portable column specs, and creating or
evolving an archive table on a destination handle so it mirrors its source table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from archivist.data.columns import ColumnSpec, Kind, classify, column_comment, column_type
from archivist.data.relations import ForeignKey, referencing
from archivist.data.values import RowCodec
from archivist.errors import SchemaError

log = logging.getLogger(__name__)

_JSON_CHECK_RE: Final = re.compile(r"json_valid\(`?(\w+)`?\)", re.IGNORECASE)
MAX_INDEX_NAME: Final = 60


@dataclass(frozen=True)
class TableInfo:
    """A reflected table: portable specs, its single primary key, and the SQLAlchemy Table
    (with archivist's exact types) that commands run against."""

    name: str
    dialect_name: str
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...]
    table: sa.Table = field(repr=False, compare=False)
    codec: RowCodec = field(repr=False, compare=False)
    indexed: frozenset[str] = frozenset()
    referenced_by: tuple[ForeignKey, ...] = field(default=(), compare=False)
    """The foreign keys that reference this table (`archivist.data.relations`)."""

    @property
    def pk(self) -> str:
        """The single primary key column (see ``require_single_pk``)."""
        return self.primary_key[0]

    def spec(self, name: str) -> ColumnSpec:
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def column_names(self) -> list[str]:
        return [spec.name for spec in self.columns]


def build_info(
    name: str,
    dialect_name: str,
    columns: list[ColumnSpec],
    primary_key: list[str],
    indexed: frozenset[str] = frozenset(),
) -> TableInfo:
    metadata = sa.MetaData()
    table = sa.Table(
        name,
        metadata,
        *(
            sa.Column(
                spec.name,
                column_type(
                    spec, dialect_name, indexed=spec.name in indexed or spec.name in primary_key
                ),
                primary_key=spec.name in primary_key,
                nullable=spec.nullable,
                autoincrement=False,
                comment=column_comment(spec, dialect_name),
            )
            for spec in columns
        ),
    )
    return TableInfo(
        name=name,
        dialect_name=dialect_name,
        columns=tuple(columns),
        primary_key=tuple(primary_key),
        indexed=indexed,
        table=table,
        codec=RowCodec(columns, name),
    )


def reflect_table(connection: Connection, name: str) -> TableInfo | None:
    """The table ``name`` as it is in the database now, or None if there is none."""
    inspector = sa.inspect(connection)
    if not inspector.has_table(name):
        return None
    dialect_name = connection.dialect.name
    declared = _sqlite_declared_types(connection, name) if dialect_name == "sqlite" else {}
    json_checked = _mariadb_json_columns(connection, name)
    columns = [
        classify(
            col["name"],
            col["type"],
            dialect_name=dialect_name,
            nullable=bool(col.get("nullable", True)),
            comment=col.get("comment"),
            declared=declared.get(col["name"]),
            json_checked=col["name"] in json_checked,
        )
        for col in inspector.get_columns(name)
    ]
    pk = list(inspector.get_pk_constraint(name).get("constrained_columns") or [])
    indexed = {
        str(idx["column_names"][0])
        for idx in inspector.get_indexes(name)
        if idx.get("column_names") and idx["column_names"][0] is not None
    }
    info = build_info(name, dialect_name, columns, pk, frozenset(indexed))
    return dataclasses.replace(info, referenced_by=referencing(connection, name))


def _mariadb_json_columns(connection: Connection, name: str) -> set[str]:
    """MariaDB's JSON is LONGTEXT guarded by a column CHECK (json_valid(col)), which only
    information_schema shows."""
    if not getattr(connection.dialect, "is_mariadb", False):
        return set()
    query = sa.text(
        "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
        "WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = :name"
    )
    found: set[str] = set()
    for (clause,) in connection.execute(query, {"name": name}):
        found.update(_JSON_CHECK_RE.findall(str(clause)))
    return found


def _sqlite_declared_types(connection: Connection, name: str) -> dict[str, str]:
    quoted = connection.dialect.identifier_preparer.quote(name)
    rows = connection.exec_driver_sql(f"PRAGMA table_info({quoted})").all()
    return {str(row[1]): str(row[2]) for row in rows}


def require_single_pk(info: TableInfo) -> str | None:
    """None if ``info`` has exactly one primary key column, else what is wrong."""
    if not info.primary_key:
        return f"table {info.name} has no primary key"
    if len(info.primary_key) > 1:
        return (
            f"table {info.name} has a composite primary key ({', '.join(info.primary_key)}); "
            "archivist needs a single-column primary key"
        )
    return None


# --- archive tables -------------------------------------------------------------------------


class SchemaChange(msgspec.Struct, frozen=True):
    """What ``plan_archive_table`` decided: create the table, add columns, or nothing."""

    create: bool = False
    add_columns: tuple[ColumnSpec, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.create and not self.add_columns


def plan_archive_table(source: TableInfo, dest: TableInfo | None, order_by: str) -> SchemaChange:
    """Compare a source table with its archive table; raise SchemaError for unsafe changes."""
    for spec in source.columns:
        if spec.kind is Kind.OTHER:
            raise SchemaError(
                f"{source.name}.{spec.name}: type {spec.type_name} cannot be mirrored "
                "into an archive table"
            )
    if dest is None:
        return SchemaChange(create=True)
    if tuple(dest.primary_key) != tuple(source.primary_key):
        raise SchemaError(
            f"archive table {dest.name}: primary key ({', '.join(dest.primary_key)}) differs "
            f"from the source's ({', '.join(source.primary_key)})"
        )
    dest_specs = {spec.name: spec for spec in dest.columns}
    source_names = {spec.name for spec in source.columns}
    dropped = [name for name in dest_specs if name not in source_names]
    if dropped:
        raise SchemaError(
            f"archive table {dest.name}: column(s) {', '.join(dropped)} no longer exist in the "
            "source table; drop or rename them in the archive by hand first"
        )
    added: list[ColumnSpec] = []
    for spec in source.columns:
        existing = dest_specs.get(spec.name)
        if existing is None:
            added.append(spec)
            continue
        problem = incompatibility(spec, existing)
        if problem:
            raise SchemaError(f"archive table {dest.name}: column {spec.name}: {problem}")
    return SchemaChange(add_columns=tuple(added))


_INT_RANK: Final = {16: 1, 32: 2, 64: 3}


def incompatibility(source: ColumnSpec, dest: ColumnSpec) -> str | None:
    """Why values of ``source`` may not fit ``dest`` (None when every value fits exactly)."""
    why = (
        f"the source holds {source.describe()}, the archive {dest.describe()} "
        "(narrower or different)"
    )
    s, d = source.kind, dest.kind
    if s is d:
        if s is Kind.INTEGER:
            return None if _INT_RANK[dest.int_bits] >= _INT_RANK[source.int_bits] else why
        if s is Kind.STRING:
            return None if (dest.length or 0) >= (source.length or 0) else why
        if s is Kind.BINARY:
            return (
                None if dest.length is None or (dest.length >= (source.length or 1 << 62)) else why
            )
        if s is Kind.DATETIME:
            return None if source.timezone == dest.timezone else why
        if s is Kind.DECIMAL:
            return None if _decimal_fits(source, dest) else why
        return None
    widening = {
        (Kind.STRING, Kind.TEXT),
        (Kind.INTEGER, Kind.DECIMAL),
        (Kind.UUID, Kind.TEXT),
    }
    if (s, d) in widening:
        if s is Kind.INTEGER and not _decimal_fits(
            ColumnSpec(source.name, Kind.DECIMAL, precision=20, scale=0), dest
        ):
            return why
        return None
    if s is Kind.UUID and d is Kind.STRING and (dest.length or 0) >= 36:
        return None
    if s is Kind.TEXT and d is Kind.STRING and dest.length is not None:
        return why
    return why


def _decimal_fits(source: ColumnSpec, dest: ColumnSpec) -> bool:
    if dest.precision is None:
        return True
    if source.precision is None:
        return False
    s_scale, d_scale = source.scale or 0, dest.scale or 0
    return d_scale >= s_scale and dest.precision - d_scale >= source.precision - s_scale


def archive_info(source: TableInfo, dialect_name: str, order_by: str) -> TableInfo:
    """The archive table for ``source`` as it should be on ``dialect_name``."""
    # A NOT NULL the source enforces is kept; columns added later are always nullable.
    return build_info(
        source.name,
        dialect_name,
        list(source.columns),
        list(source.primary_key),
        frozenset({order_by}),
    )


def index_name(table: str, column: str) -> str:
    name = f"ix_{table}_{column}"
    if len(name) <= MAX_INDEX_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_INDEX_NAME - 9]}_{digest}"


def apply_change(
    connection: Connection, source: TableInfo, change: SchemaChange, order_by: str
) -> None:
    """Create the archive table (with its primary key and the index on ``order_by``) or add
    the columns the source gained (always nullable: existing archive rows have no value)."""
    dialect_name = connection.dialect.name
    if change.create:
        info = archive_info(source, dialect_name, order_by)
        table = info.table
        if dialect_name in ("mysql", "mariadb"):
            # Exact, case- and trailing-space-sensitive text, as on the other engines.
            collation = "utf8mb4_nopad_bin" if connection.dialect.is_mariadb else "utf8mb4_0900_bin"  # type: ignore[attr-defined]
            table.kwargs.update(mysql_charset="utf8mb4", mysql_collate=collation)
        if order_by not in source.primary_key:
            sa.Index(index_name(source.name, order_by), table.c[order_by])
        table.create(connection)
        log.info("created archive table %s (%s)", source.name, dialect_name)
        return
    preparer = connection.dialect.identifier_preparer
    for spec in change.add_columns:
        column_ddl = _column_ddl(connection, spec)
        connection.exec_driver_sql(
            f"ALTER TABLE {preparer.quote(source.name)} ADD COLUMN {column_ddl}"
        )
        log.info("archive table %s: added column %s", source.name, spec.name)


def _column_ddl(connection: Connection, spec: ColumnSpec) -> str:
    dialect = connection.dialect
    column = sa.Column(
        spec.name,
        column_type(spec, dialect.name),
        nullable=True,
        comment=column_comment(spec, dialect.name),
    )
    sa.Table("_archivist_scratch", sa.MetaData(), column)
    ddl = str(sa.schema.CreateColumn(column).compile(dialect=dialect))
    return ddl
