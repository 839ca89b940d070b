"""Which values an engine's columns cannot store, and what --dry-run warns of."""

from __future__ import annotations

import pytest

from archivist.data.columns import ColumnSpec, Kind
from archivist.data.storable import column_warnings, refusing_columns, unstorable

VALUE = ColumnSpec("value", Kind.FLOAT, type_name="DOUBLE_PRECISION")
NOTE = ColumnSpec("note", Kind.TEXT)


@pytest.mark.parametrize(
    ("dialect", "value", "refused"),
    [
        ("mysql", "NaN", True),
        ("mysql", "Infinity", True),
        ("mariadb", "-Infinity", True),
        ("mysql", float("inf"), True),
        ("mysql", 1.5, False),
        ("mysql", None, False),
        ("sqlite", "NaN", True),  # SQLite stores NaN as NULL
        ("sqlite", "Infinity", False),
    ],
)
def test_a_float_the_engine_cannot_store_is_named_with_its_key_and_column(
    dialect: str, value: object, refused: bool
) -> None:
    columns = refusing_columns(dialect, [NOTE, VALUE])
    found = unstorable(dialect, columns, {"id": 7, "note": "NaN", "value": value}, 7)
    assert (found is not None) == refused
    if found is not None:
        assert (found.key, found.field) == (7, "value")
        assert found.describe("id").startswith(f"id=7: value = {found.value} (")


def test_postgresql_stores_every_float_so_no_column_is_looked_at() -> None:
    assert refusing_columns("postgresql", [NOTE, VALUE]) == []


def test_dry_run_warns_of_postgresql_floats_archived_into_mariadb() -> None:
    warnings = column_warnings("postgresql", [NOTE, VALUE], "mysql", None)
    assert len(warnings) == 1
    assert "column value" in warnings[0] and "NaN" in warnings[0]
    assert "kept in the source" in warnings[0]


@pytest.mark.parametrize(
    ("source", "dest", "warned"),
    [
        ("postgresql", "postgresql", False),
        ("mysql", "postgresql", False),
        ("postgresql", "sqlite", True),  # NaN
        ("sqlite", "mysql", True),  # Infinity
        ("sqlite", "postgresql", False),
    ],
)
def test_dry_run_warns_only_where_the_archive_holds_less(
    source: str, dest: str, warned: bool
) -> None:
    assert bool(column_warnings(source, [VALUE], dest, [VALUE])) == warned


def test_an_archive_column_of_another_kind_is_not_warned_of_as_a_float() -> None:
    as_text = ColumnSpec("value", Kind.TEXT)
    assert column_warnings("postgresql", [VALUE], "mysql", [as_text]) == []


TIMESTAMP = ColumnSpec("taken_at", Kind.DATETIME, timezone=True, type_name="TIMESTAMP")
DATETIME = ColumnSpec("taken_at", Kind.DATETIME, timezone=True, type_name="DATETIME")


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        ("1969-12-31T23:59:59+00:00", True),
        ("1970-01-01T00:00:00", True),  # naive: UTC, as archivist's sessions are
        ("1970-01-01T01:00:00+02:00", True),  # 1969-12-31 23:00 UTC
        ("1970-01-01T00:00:01+00:00", False),
        ("2024-05-01T12:00:00+00:00", False),
        ("2050-01-01T00:00:00+00:00", False),  # left to the server: 11.5 stores it
        (None, False),
    ],
)
def test_a_mariadb_timestamp_refuses_instants_before_1970(value: object, refused: bool) -> None:
    columns = refusing_columns("mysql", [TIMESTAMP, VALUE])
    found = unstorable("mysql", columns, {"id": 1, "taken_at": value, "value": 1.0}, 1)
    assert (found is not None) == refused
    if found is not None:
        assert (found.field, found.value) == ("taken_at", value)


def test_a_datetime_column_made_by_archivist_refuses_no_instant() -> None:
    assert refusing_columns("mysql", [DATETIME]) == []


def test_dry_run_warns_of_an_archive_timestamp_column_and_not_of_a_datetime() -> None:
    source = ColumnSpec("taken_at", Kind.DATETIME, timezone=True, type_name="TIMESTAMP")
    assert len(column_warnings("postgresql", [source], "mysql", [TIMESTAMP])) == 1
    assert column_warnings("postgresql", [source], "mysql", [DATETIME]) == []
    # A MariaDB TIMESTAMP archived into one holds nothing the archive cannot.
    assert column_warnings("mysql", [TIMESTAMP], "mysql", [TIMESTAMP]) == []
