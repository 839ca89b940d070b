"""``archivist query``: DuckDB over the archives, each collection a view by its name, read
through DuckDB's own scanners (not archivist's reader); with ``--live`` the live table and
``COLLECTION_all``; output as CSV, JSON or a table; clear errors for bad SQL."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from test_values_roundtrip import COLUMNS

from archivist.cold.query import QueryError, build_views, connect, execute
from archivist.data.columns import ColumnSpec, Kind
from coldsupport import Cold
from datasupport import ENGINES, message
from e2esupport import archivist, write_config

ROWS: list[dict[str, object]] = [
    {
        "i16": -(2**15),
        "i32": 2**31 - 1,
        "i64": 2**63 - 1,
        "f": 0.1,
        "d": "-123456789012345678.0123456789",
        "flag": True,
        "s": "héllo 😀 [b]",
        "t": 'line\nbreak, "quoted"',
        "day": "2024-02-29",
        "tod": "13:05:00.250000",
        "naive": "2024-01-01T12:00:00.000001",
        "aware": "2024-01-01T12:00:00+05:30",
        "blob": base64.b64encode(b"\x00\xff bytes").decode(),
        "doc": {"a": [1, 2, {"b": None}], "c": "ü"},
        "u": "12345678-1234-5678-1234-567812345678",
    },
    {spec.name: None for spec in COLUMNS if spec.name != "id"},
]


def same(spec: ColumnSpec, item: object, read: object) -> bool:
    """Whether DuckDB's value (as `archivist query` prints it in JSON) is archivist's item."""
    if item is None or read is None:
        return item is None and read is None
    if spec.kind is Kind.DECIMAL:
        return Decimal(str(read)) == Decimal(str(item))
    if spec.kind is Kind.INTEGER:
        return int(str(read)) == int(str(item))
    if spec.kind is Kind.JSON:
        return json.loads(str(read)) == item
    return read == item


@pytest.fixture(params=ENGINES)
def typed(request: pytest.FixtureRequest, fresh_db: Callable[[str], str]) -> Iterator[Cold]:
    trip = Cold(fresh_db("sqlite"), fresh_db(str(request.param)), "all_types", COLUMNS, "naive")
    yield trip
    trip.close()


def query(cold: Cold, sql: str, *, live: bool = False) -> list[dict[str, object]]:
    views = cold.run(build_views(cold.data, live=live))
    connection = connect(views)  # type: ignore[arg-type]
    try:
        return execute(connection, sql, views).read_all().to_pylist()  # type: ignore[arg-type, no-any-return]
    finally:
        connection.close()


@pytest.mark.timeout(120)
def test_every_column_kind_reads_as_archivist_reads_it(typed: Cold) -> None:
    typed.archive([{"id": index, **row} for index, row in enumerate(ROWS, start=1)])
    items = typed.items("archive")

    views = typed.run(build_views(typed.data, live=False))
    connection = connect(views)  # type: ignore[arg-type]
    try:
        reader = execute(connection, "SELECT * FROM all_types ORDER BY id", views)  # type: ignore[arg-type]
        out = io.StringIO()
        from archivist.cold.output import write_json

        write_json(reader, out)
        types = dict(connection.execute("DESCRIBE all_types").fetchall()[i][:2] for i in range(16))
    finally:
        connection.close()
    read = json.loads(out.getvalue())
    assert len(read) == len(items) == 2
    for got, item in zip(read, items, strict=True):
        for spec in COLUMNS:
            assert same(spec, item[spec.name], got[spec.name]), (spec.name, item, got)
    assert types["aware"] == "TIMESTAMP WITH TIME ZONE" and types["naive"] == "TIMESTAMP"
    assert types["d"] == "DECIMAL(38,10)" and types["doc"] == "JSON"
    # UUIDs are VARCHAR(36) in SQLite and MariaDB archives (docs/values.md): text there.
    assert types["u"] in ("UUID", "VARCHAR")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("source", "archive"), [("sqlite", "postgresql"), ("mysql", "sqlite")])
def test_live_unites_the_archive_and_the_live_table_counting_a_row_once(
    source: str, archive: str, fresh_db: Callable[[str], str]
) -> None:
    cold = Cold(fresh_db(source), fresh_db(archive))
    try:
        cold.archive([message(i) for i in range(1, 8)])
        cold.execute("data/create", dbHandle="primary", items=[message(i) for i in range(8, 11)])
        # A row copied by a task that has not deleted it yet: in both.
        cold.execute("data/create", dbHandle="primary", items=cold.items("archive", [7]))

        rows = query(cold, "SELECT id FROM chat_messages_all ORDER BY id", live=True)
        assert [row["id"] for row in rows] == list(range(1, 11))
        assert query(cold, "SELECT count(*) AS n FROM chat_messages", live=True) == [{"n": 7}]
        live = query(cold, "SELECT count(*) AS n FROM chat_messages_live", live=True)
        assert live == [{"n": 4}]
        by_room = query(
            cold,
            "SELECT room, count(*) AS n FROM chat_messages_all GROUP BY room ORDER BY room",
            live=True,
        )
        assert by_room == [
            {"room": "room0", "n": 3},
            {"room": "room1", "n": 4},
            {"room": "room2", "n": 3},
        ]
        with pytest.raises(QueryError, match="chat_messages_all"):
            query(cold, "SELECT * FROM chat_messages_all")  # without live: no such view
    finally:
        cold.close()


def _config(tmp_path: Path, primary: str, archive: str) -> str:
    entry = {"collection": "chat_messages", "order_by": "created_at", "older_than": "90d"}
    handles = {"primary": primary, "archive": archive}
    return str(write_config(tmp_path / "archivist.toml", handles, [entry]))


@pytest.fixture
def archived(fresh_db: Callable[[str], str], tmp_path: Path) -> Iterator[str]:
    primary, archive = fresh_db("sqlite"), fresh_db("mysql")
    cold = Cold(primary, archive)
    try:
        cold.archive([message(i, body=f'body [{i}], "q"') for i in range(1, 6)])
        cold.execute("data/create", dbHandle="primary", items=[message(6)])
    finally:
        cold.close()
    yield _config(tmp_path, primary, archive)


@pytest.mark.timeout(120)
def test_cli_prints_csv_json_and_a_table(archived: str) -> None:
    sql = "SELECT id, created_at, body, meta FROM chat_messages ORDER BY id LIMIT 2"
    as_csv = archivist("query", "--config", archived, sql)  # not a terminal: CSV
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert rows[0] == ["id", "created_at", "body", "meta"]
    assert rows[1][:3] == ["1", "2024-01-01T00:00:01+00:00", 'body [1], "q"']
    assert json.loads(rows[1][3]) == {"n": 1}

    as_json = archivist("query", "--config", archived, "--format", "json", sql)
    assert as_json.returncode == 0, as_json.stderr
    second = json.loads(as_json.stdout)[1]
    assert json.loads(second.pop("meta")) == {"n": 2}
    assert second == {"id": 2, "created_at": "2024-01-01T00:00:02+00:00", "body": 'body [2], "q"'}

    table = archivist("query", "--config", archived, "--format", "table", sql)
    assert table.returncode == 0, table.stderr
    assert "body [1]" in table.stdout and "2 row(s)" in table.stdout

    live = archivist(
        "query", "--config", archived, "--live", "SELECT count(*) AS n FROM chat_messages_all"
    )
    assert live.stdout.splitlines() == ["n", "6"]


@pytest.mark.timeout(120)
def test_cli_errors_name_the_fault(archived: str) -> None:
    bad = archivist("query", "--config", archived, "SELEC 1")
    assert bad.returncode == 1
    assert "query failed: Parser Error" in bad.stderr and "SELEC 1" in bad.stderr
    unknown = archivist("query", "--config", archived, "SELECT * FROM chat_mesages")
    assert unknown.returncode == 1
    assert "views: chat_messages" in unknown.stderr
    write = archivist("query", "--config", archived, "DELETE FROM h_archive.chat_messages")
    assert write.returncode == 1 and "read-only" in write.stderr
    none = archivist("query", "--config", archived)
    assert none.returncode == 2


@pytest.mark.timeout(120)
def test_cli_lists_the_views(archived: str) -> None:
    listed = archivist("query", "--config", archived, "--live", "--list")
    assert listed.returncode == 0, listed.stderr
    names = [line.split(",")[0] for line in listed.stdout.splitlines()[1:]]
    assert names == ["chat_messages", "chat_messages_live", "chat_messages_all"]
    assert "created_at TIMESTAMP WITH TIME ZONE" in listed.stdout
