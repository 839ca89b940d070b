"""The Iceberg handle's parts that need no server: its URL, relative paths in a config file,
and the Iceberg type each column kind gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyiceberg.types import DecimalType, LongType, StringType, TimestampType, TimestamptzType

from archivist.config import resolve_sqlite_path
from archivist.data.columns import ColumnSpec, Kind
from archivist.data.iceberg.types import iceberg_type, specs_of, specs_property
from archivist.data.iceberg.url import LakeURL, is_lake_url
from archivist.errors import ConfigError, SchemaError


def test_a_sqlite_catalog_url_names_its_file_warehouse_and_staging_folder() -> None:
    url = LakeURL.parse("iceberg+sqlite:////var/lib/a/catalog.db?warehouse=/var/lib/a/wh")
    assert url.catalog_url == "sqlite:////var/lib/a/catalog.db"
    assert url.warehouse_uri == "file:///var/lib/a/wh"
    assert url.namespace == "archivist"
    assert url.staging == Path("/var/lib/a/catalog-staging")


def test_a_postgresql_catalog_goes_through_psycopg_3_and_hides_its_password() -> None:
    url = LakeURL.parse("iceberg+postgresql://app:secret@db:5432/lake?warehouse=s3://b/x")
    assert url.catalog_url == "postgresql+psycopg://app:secret@db:5432/lake"
    assert url.warehouse_uri == "s3://b/x"
    assert "secret" not in url.shown


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("iceberg+sqlite:////c.db", r"needs \?warehouse="),
        ("iceberg+sqlite:////c.db?warehouse=/w&colour=red", "unknown Iceberg URL option 'colour'"),
        ("iceberg+oracle://x/y?warehouse=/w", "not an Iceberg URL"),
    ],
)
def test_a_wrong_iceberg_url_says_what_to_write(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        LakeURL.parse(url)


def test_only_iceberg_schemes_are_lakes() -> None:
    assert is_lake_url("iceberg+sqlite:///c.db?warehouse=w")
    assert is_lake_url("iceberg+postgresql://h/db?warehouse=w")
    assert not is_lake_url("sqlite:///c.db")
    assert not is_lake_url("postgresql://h/db")


def test_relative_catalog_and_warehouse_paths_are_relative_to_the_config_file() -> None:
    base = Path("/etc/archivist")
    assert (
        resolve_sqlite_path("iceberg+sqlite:///cat.db?warehouse=wh&staging=st", base)
        == "iceberg+sqlite:////etc/archivist/cat.db?warehouse=/etc/archivist/wh"
        "&staging=/etc/archivist/st"
    )
    absolute = "iceberg+postgresql://u@h/db?warehouse=s3://bucket/x"
    assert resolve_sqlite_path(absolute, base) == absolute


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (ColumnSpec("a", Kind.INTEGER), LongType()),
        (ColumnSpec("a", Kind.DECIMAL, precision=12, scale=2), DecimalType(12, 2)),
        (ColumnSpec("a", Kind.DECIMAL), StringType()),  # no precision: its exact text
        (ColumnSpec("a", Kind.DECIMAL, precision=65, scale=30), StringType()),
        (ColumnSpec("a", Kind.DATETIME, timezone=True), TimestamptzType()),
        (ColumnSpec("a", Kind.DATETIME), TimestampType()),
        (ColumnSpec("a", Kind.JSON), StringType()),
        (ColumnSpec("a", Kind.UUID), StringType()),
    ],
)
def test_each_kind_gets_an_iceberg_type_that_holds_it_exactly(
    spec: ColumnSpec, expected: object
) -> None:
    assert iceberg_type(spec) == expected


def test_a_kind_iceberg_cannot_hold_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="cannot hold exactly"):
        iceberg_type(ColumnSpec("shape", Kind.OTHER, type_name="GEOMETRY"))


def test_the_source_kinds_travel_with_the_table() -> None:
    specs = [
        ColumnSpec("id", Kind.INTEGER, nullable=False),
        ColumnSpec("d", Kind.DECIMAL, precision=10, scale=3),
        ColumnSpec("at", Kind.DATETIME, timezone=True),
        ColumnSpec("doc", Kind.JSON, jsonb=True),
    ]
    assert specs_of(specs_property(specs)) == specs


def test_a_row_staged_twice_is_committed_once_as_listed_last() -> None:
    import pyarrow as pa

    from archivist.data.iceberg.staging import last_of_each_key

    staged = pa.table({"id": [1, 2, 3, 2, 4, 3], "body": ["a", "b", "c", "b2", "d", "c2"]})
    kept = last_of_each_key(staged, "id")
    assert kept.to_pylist() == [
        {"id": 1, "body": "a"},
        {"id": 2, "body": "b2"},
        {"id": 4, "body": "d"},
        {"id": 3, "body": "c2"},
    ]
    unique = pa.table({"id": [1, 2], "body": ["a", "b"]})
    assert last_of_each_key(unique, "id") is unique
