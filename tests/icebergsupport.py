"""Reading Iceberg archives the way other engines do, not through archivist: the table's data
files with pyarrow, and the table with DuckDB's iceberg extension (loaded from its registry
package, never downloaded)."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

SITE = Path(duckdb.__file__).parent.parent


def lake_url(folder: Path) -> str:
    return f"iceberg+sqlite:///{folder}/catalog.db?warehouse={folder}/warehouse"


def load_table(folder: Path, collection: str) -> Table:
    catalog = SqlCatalog(
        "archivist", uri=f"sqlite:///{folder}/catalog.db", warehouse=f"file://{folder}/warehouse"
    )
    return catalog.load_table(("archivist", collection))


def data_files(table: Table) -> list[str]:
    """The data files the table's current snapshot holds."""
    return [task.file.file_path for task in table.scan().plan_files()]


def read_with_pyarrow(table: Table) -> pa.Table:
    """The current snapshot's rows, read from its Parquet files by pyarrow alone."""
    files = [path.removeprefix("file://") for path in data_files(table)]
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(path) for path in files], promote_options="default")


def duckdb_connection() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    for name in ("avro", "iceberg"):  # iceberg needs avro loaded first
        (path,) = glob.glob(str(SITE / f"duckdb_extension_{name}/extensions/*/*.duckdb_extension"))
        connection.execute(f"LOAD '{path}'")
    return connection


def duckdb_rows(table: Table, select: str = "*") -> list[tuple[Any, ...]]:
    with duckdb_connection() as connection:
        query = f"SELECT {select} FROM iceberg_scan('{table.metadata_location}')"
        return connection.execute(query).fetchall()
