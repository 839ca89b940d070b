"""``archivist query``'s pure parts: how DuckDB attaches each engine (read-only, credentials
as literals), the type each column kind reads as, SQLite's TIME columns, COLLECTION_all, and
how values print."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest

from archivist.cold.output import plain
from archivist.cold.query import attach, duck_type, select_typed, sqlite_relation, union_all
from archivist.data.columns import ColumnSpec, Kind
from archivist.errors import ConfigError


def test_postgresql_and_mariadb_attach_read_only_with_a_secret() -> None:
    found = attach("h_archive", "postgresql+psycopg://app:it's@db.example:6432/arch")
    secret, statement = found.statements
    assert "HOST 'db.example'" in secret and "PORT 6432" in secret
    assert "PASSWORD 'it''s'" in secret and "DATABASE 'arch'" in secret
    assert statement.endswith('(TYPE postgres, SECRET "archivist_h_archive", READ_ONLY)')
    assert found.prefix == '"h_archive"."public"'
    mysql = attach("h_a", "mysql+pymysql://root@127.0.0.1/shop")
    assert "PORT 3306" in mysql.statements[0] and mysql.prefix == '"h_a"."shop"'
    assert mysql.extension == "mysql"


def test_sqlite_attaches_its_file_read_only() -> None:
    found = attach("h_p", "sqlite:////var/lib/app's.db")
    assert found.statements == ("ATTACH '/var/lib/app''s.db' AS \"h_p\" (TYPE sqlite, READ_ONLY)",)
    with pytest.raises(ConfigError, match="cannot read"):
        attach("h_m", "sqlite://")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (ColumnSpec("a", Kind.DATETIME, timezone=True), "TIMESTAMPTZ"),
        (ColumnSpec("a", Kind.DATETIME), "TIMESTAMP"),
        (ColumnSpec("a", Kind.DECIMAL, precision=12, scale=2), "DECIMAL(12, 2)"),
        (ColumnSpec("a", Kind.DECIMAL, precision=60, scale=2), "VARCHAR"),
        (ColumnSpec("a", Kind.DECIMAL), "VARCHAR"),
        (ColumnSpec("a", Kind.INTEGER, int_bits=16), "SMALLINT"),
        (ColumnSpec("a", Kind.INTEGER), "BIGINT"),
        (ColumnSpec("a", Kind.BOOLEAN), "BOOLEAN"),
        (ColumnSpec("a", Kind.JSON), "JSON"),
        (ColumnSpec("a", Kind.OTHER), None),
    ],
)
def test_each_kind_reads_as_one_duckdb_type(spec: ColumnSpec, expected: str | None) -> None:
    assert duck_type(spec) == expected


def test_views_cast_every_column() -> None:
    specs = [ColumnSpec("id", Kind.INTEGER), ColumnSpec("odd", Kind.OTHER)]
    assert select_typed("r", specs) == 'SELECT CAST("id" AS BIGINT) AS "id", "odd" FROM r'


def test_sqlite_time_columns_are_read_as_text_and_joined_by_key() -> None:
    plain_specs = [ColumnSpec("id", Kind.INTEGER), ColumnSpec("at", Kind.DATETIME)]
    assert sqlite_relation("h", "t", plain_specs, "id") == '"h"."t"'
    timed = [*plain_specs, ColumnSpec("tod", Kind.TIME)]
    relation = sqlite_relation("h", "t", timed, "id")
    assert 'sqlite_query(\'h\', \'SELECT CAST("id" AS TEXT) AS "id", "tod" FROM "t"\')' in relation
    assert relation.startswith('(SELECT t."id", t."at", q."tod" FROM "h"."t" AS t JOIN')


def test_all_counts_a_row_in_both_once() -> None:
    sql = union_all("c_all", "c", "c_live", "id")
    assert sql.startswith('SELECT * FROM "c_live" UNION ALL BY NAME SELECT * FROM "c"')
    assert (
        'WHERE NOT EXISTS (SELECT 1 FROM "c_live" AS live WHERE live."id" = archived."id")' in sql
    )


def test_values_print_as_docs_values_spells_them() -> None:
    moment = dt.datetime(2024, 1, 1, 11, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert plain(moment) == "2024-01-01T09:00:00+00:00"
    assert plain(Decimal("1.50")) == "1.50"
    assert plain(b"\x00\xff") == "AP8="
    assert plain(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert plain({"a": [dt.date(2024, 2, 29)]}) == {"a": ["2024-02-29"]}
