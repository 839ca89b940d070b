"""``archivist query``: SQL over the archives with DuckDB, each policy's archive a view by its
collection's name, and with ``live`` a ``COLLECTION_all`` view over the archive and the live
table together.

DuckDB reads every engine itself, read-only: SQL archives and sources through its
postgres, mysql and sqlite scanners, Iceberg tables through its iceberg extension. The
extensions come from their registry packages (the ``iceberg`` extra) and are loaded from
there, never downloaded. Each view casts its columns to one DuckDB type per column kind
(`duck_type`), so a timestamp with time zone is a ``TIMESTAMPTZ`` whatever engine holds it
and an archive's view and its source's line up in ``COLLECTION_all``.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy.engine import URL, make_url

from archivist.data.columns import ColumnSpec, Kind
from archivist.errors import ArchivistError, ConfigError

if TYPE_CHECKING:
    import duckdb

    from archivist.data import DataDaemon

log = logging.getLogger(__name__)

EXTENSION_PACKAGES: Final = {
    "sqlite": "duckdb_extension_sqlite_scanner",
    "postgres": "duckdb_extension_postgres_scanner",
    "mysql": "duckdb_extension_mysql_scanner",
    "avro": "duckdb_extension_avro",
    "iceberg": "duckdb_extension_iceberg",
}
"""The registry package of each DuckDB extension archivist loads (the ``iceberg`` extra)."""
LIVE_SUFFIX: Final = "_live"
ALL_SUFFIX: Final = "_all"


class QueryError(ArchivistError):
    """The query failed in DuckDB (bad SQL, an unknown view...)."""

    code = "query_error"


# --- pure parts -------------------------------------------------------------------------------


def quote(name: str) -> str:
    """An identifier as DuckDB reads it."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A string literal as DuckDB reads it."""
    return "'" + text.replace("'", "''") + "'"


def duck_type(spec: ColumnSpec) -> str | None:
    """The DuckDB type a column of ``spec``'s kind reads as in every view (None: as the
    scanner reads it)."""
    kind = spec.kind
    if kind is Kind.INTEGER:
        return {16: "SMALLINT", 32: "INTEGER"}.get(spec.int_bits, "BIGINT")
    if kind is Kind.DECIMAL:
        if spec.precision is not None and spec.precision <= 38:
            return f"DECIMAL({spec.precision}, {spec.scale or 0})"
        return "VARCHAR"  # held exactly as text (DuckDB's decimals stop at 38 digits)
    if kind is Kind.DATETIME:
        # The scanners read SQLite's and MariaDB's UTC wall times as TIMESTAMP; the session
        # runs in UTC, so the cast gives the instant.
        return "TIMESTAMPTZ" if spec.timezone else "TIMESTAMP"
    simple = {
        Kind.FLOAT: "DOUBLE",
        Kind.BOOLEAN: "BOOLEAN",
        Kind.STRING: "VARCHAR",
        Kind.TEXT: "VARCHAR",
        Kind.DATE: "DATE",
        Kind.TIME: "TIME",
        Kind.BINARY: "BLOB",
        Kind.JSON: "JSON",
        Kind.UUID: "UUID",
    }
    return simple.get(kind)


def select_typed(relation: str, specs: Sequence[ColumnSpec]) -> str:
    """``SELECT`` every column of ``relation``, each cast to its kind's DuckDB type."""
    columns = []
    for spec in specs:
        name = quote(spec.name)
        target = duck_type(spec)
        columns.append(f"CAST({name} AS {target}) AS {name}" if target else name)
    return f"SELECT {', '.join(columns)} FROM {relation}"


def sqlite_relation(alias: str, table: str, specs: Sequence[ColumnSpec], pk: str) -> str:
    """An SQLite table as DuckDB can read it. Its scanner takes a column declared ``TIME``
    for a timestamp and fails on every value: such columns are read as text through
    ``sqlite_query`` and joined back by key (the other columns keep the scanner's types)."""
    times = [spec.name for spec in specs if spec.kind is Kind.TIME]
    plain = f"{quote(alias)}.{quote(table)}"
    if not times:
        return plain
    inner = ", ".join(f'"{name}"' for name in times)
    fetch = f'SELECT CAST("{pk}" AS TEXT) AS "{pk}", {inner} FROM "{table}"'
    others = ", ".join(f"t.{quote(spec.name)}" for spec in specs if spec.kind is not Kind.TIME)
    texts = ", ".join(f"q.{quote(name)}" for name in times)
    return (
        f"(SELECT {others}, {texts} FROM {plain} AS t "
        f"JOIN sqlite_query({literal(alias)}, {literal(fetch)}) AS q "
        f"ON CAST(t.{quote(pk)} AS VARCHAR) = q.{quote(pk)})"
    )


@dataclass(frozen=True)
class Attached:
    """A database as DuckDB attaches it: the statements, and how its tables are named."""

    statements: tuple[str, ...]
    prefix: str
    """What goes before a table's name: ``alias.schema``."""
    extension: str


def attach(alias: str, url: str | URL) -> Attached:
    """How DuckDB attaches the database at ``url`` read-only as ``alias``; credentials go
    in a temporary secret (a SQL literal each, whatever characters they hold)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database or ""
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ConfigError(f"DuckDB cannot read the SQLite database {path or ':memory:'!r}")
        return Attached(
            (f"ATTACH {literal(path)} AS {quote(alias)} (TYPE sqlite, READ_ONLY)",),
            quote(alias),
            "sqlite",
        )
    if backend not in ("postgresql", "mysql", "mariadb"):
        raise ConfigError(f"DuckDB cannot read {backend} databases")
    kind = "postgres" if backend == "postgresql" else "mysql"
    default_port = 5432 if kind == "postgres" else 3306
    secret = f"archivist_{alias}"
    options = [
        f"TYPE {kind}",
        f"HOST {literal(parsed.host or 'localhost')}",
        f"PORT {int(parsed.port or default_port)}",
        f"DATABASE {literal(parsed.database or '')}",
        f"USER {literal(parsed.username or '')}",
        f"PASSWORD {literal(parsed.password or '')}",
    ]
    schema = "public" if kind == "postgres" else (parsed.database or "")
    return Attached(
        (
            f"CREATE TEMPORARY SECRET {quote(secret)} ({', '.join(options)})",
            f"ATTACH '' AS {quote(alias)} (TYPE {kind}, SECRET {quote(secret)}, READ_ONLY)",
        ),
        f"{quote(alias)}.{quote(schema)}",
        kind,
    )


@dataclass
class Views:
    """What a DuckDB connection needs to answer a query: extensions, attachments, views."""

    extensions: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    """The views, for people (``archivist query --list``, errors)."""

    def need(self, extension: str) -> None:
        if extension not in self.extensions:
            self.extensions.append(extension)

    def view(self, name: str, select: str) -> None:
        self.statements.append(f"CREATE VIEW {quote(name)} AS {select}")
        self.names.append(name)


def union_all(name: str, archive: str, live: str, pk: str) -> str:
    """The live table's rows, then the archived rows it does not hold: a row copied but not
    yet deleted by a running task is counted once (its live copy)."""
    key = quote(pk)
    return (
        f"SELECT * FROM {quote(live)} UNION ALL BY NAME "
        f"SELECT * FROM {quote(archive)} AS archived WHERE NOT EXISTS "
        f"(SELECT 1 FROM {quote(live)} AS live WHERE live.{key} = archived.{key})"
    )


# --- building the views from a configuration --------------------------------------------------


async def build_views(
    data: DataDaemon, *, live: bool, collections: Iterable[str] | None = None
) -> Views:
    """The views of every policy's archive (or of ``collections``), and with ``live`` their
    sources and ``COLLECTION_all``."""
    from archivist.cold.archives import kind_of

    views = Views()
    attached: dict[str, Attached] = {}

    def relation(handle: str, table: str, specs: Sequence[ColumnSpec], pk: str) -> str:
        alias = "h_" + re.sub(r"\W", "_", handle)
        if handle not in attached:
            found = attach(alias, data.handle(handle).url)
            views.need(found.extension)
            views.statements.extend(found.statements)
            attached[handle] = found
        if attached[handle].extension == "sqlite":
            return sqlite_relation(alias, table, specs, pk)
        return f"{attached[handle].prefix}.{quote(table)}"

    wanted = set(collections) if collections is not None else None
    for entity in data.policies():
        name = entity.collection
        if (wanted is not None and name not in wanted) or entity.rules.mode == "purge":
            continue
        url = data.config.handles[entity.dest_handle]
        if kind_of(url) == "iceberg":
            found = await _iceberg_relation(data, entity.dest_handle, name)
            if found is None:
                log.info("%s: no Iceberg table yet; no view", name)
                continue
            table, specs, pk = found
            views.need("avro")  # the iceberg extension reads manifests with it
            views.need("iceberg")
        else:
            info = await data.table_info(name, entity.dest_handle)
            if info is None:
                log.info("%s: no archive table on '%s' yet; no view", name, entity.dest_handle)
                continue
            specs, pk = list(info.columns), info.pk
            table = relation(entity.dest_handle, name, specs, pk)
        views.view(name, select_typed(table, specs))
        if not live:
            continue
        source = await data.table_info(name, entity.source_handle)
        if source is None:
            continue
        live_name = name + LIVE_SUFFIX
        columns = list(source.columns)
        views.view(
            live_name,
            select_typed(relation(entity.source_handle, name, columns, source.pk), columns),
        )
        views.view(name + ALL_SUFFIX, union_all(name + ALL_SUFFIX, name, live_name, pk))
    missing = sorted((wanted or set()) - {n for n in views.names})
    if missing:
        raise ConfigError(f"no archive to query for {', '.join(missing)}")
    return views


async def _iceberg_relation(
    data: DataDaemon, handle: str, collection: str
) -> tuple[str, list[ColumnSpec], str] | None:
    lake = data.lakes.lake_commands.lake(handle)
    table = await lake.run(lake.table, collection)
    if table is None:
        return None
    relation = f"iceberg_scan({literal(table.table.metadata_location)})"
    return relation, list(table.specs), table.pk


# --- running a query --------------------------------------------------------------------------


def extension_path(name: str) -> Path:
    """The extension's file in its registry package, for this DuckDB release."""
    import duckdb

    package = EXTENSION_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"archivist query needs the {package.replace('_', '-')} package: "
            "pip install 'archivist[iceberg]'"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "extensions"
    found = sorted(folder.glob(f"v{duckdb.__version__}/*.duckdb_extension"))
    if not found:
        raise ConfigError(
            f"{package} holds no extension for DuckDB {duckdb.__version__}; install the "
            "matching release (pip install 'archivist[iceberg]')"
        )
    return found[0]


def connect(views: Views) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (in memory, UTC) with the views; nothing is ever downloaded."""
    import duckdb

    connection = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    try:
        connection.execute("SET TimeZone = 'UTC'")
        for extension in views.extensions:
            connection.execute(f"LOAD {literal(str(extension_path(extension)))}")
        if "mysql" in views.extensions:
            # The mysql extension's optimizer (1.5.5) fails an aggregate over a view of a
            # MariaDB table ("INTERNAL Error: Failed to bind column reference", which also
            # invalidates the connection); without it, filters are still pushed down.
            connection.execute("SET disabled_optimizers = 'extension'")
        for statement in views.statements:
            connection.execute(statement)
    except duckdb.Error as exc:
        connection.close()
        raise QueryError(f"cannot open the archives in DuckDB: {_first_lines(exc)}") from None
    except BaseException:
        connection.close()
        raise
    return connection


def execute(connection: duckdb.DuckDBPyConnection, sql: str, views: Views) -> Any:
    """Run ``sql``; a record batch reader of its answer. A DuckDB error is a QueryError
    that names the views."""
    import duckdb

    try:
        return connection.execute(sql).to_arrow_reader(10_000)
    except duckdb.Error as exc:
        known = ", ".join(views.names) or "none"
        hint = f" (views: {known})" if isinstance(exc, duckdb.CatalogException) else ""
        raise QueryError(f"query failed: {_first_lines(exc)}{hint}") from None


def describe(connection: duckdb.DuckDBPyConnection, views: Views) -> Any:
    """The views and their columns (``--list``), as a record batch reader. Each view is
    described alone: DuckDB's information_schema would list every schema of every
    attached server."""
    import duckdb
    import pyarrow as pa

    columns = []
    try:
        for name in views.names:
            described = connection.execute(f"DESCRIBE {quote(name)}").fetchall()
            columns.append(", ".join(f"{row[0]} {row[1]}" for row in described))
    except duckdb.Error as exc:
        raise QueryError(f"cannot describe the views: {_first_lines(exc)}") from None
    table = pa.table({"view": list(views.names), "columns": columns})
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())


def _first_lines(exc: BaseException) -> str:
    """DuckDB's message: its first line, and the statement's line with the caret under
    the fault where it shows one."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return "\n".join(lines[:3]) if lines else type(exc).__name__
