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
