"""Archives into Apache Iceberg tables (``iceberg+sqlite://`` handles): every column kind
exactly, from every source engine, read back by pyarrow and DuckDB (not archivist's reader);
large commits; the table evolving with its source; partitions; a rerun after a commit whose
source rows were not deleted yet; orphan files."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import msgspec
import pyarrow as pa
import pytest

from archivist.config import ArchiveConfig, make_config
from archivist.data import DataDaemon
from archivist.data.columns import ColumnSpec, Kind
from datasupport import create_table, sql
from e2esupport import archivist, count, ids, make_chat_table, write_config
from icebergsupport import (
    data_files,
    duckdb_rows,
    lake_url,
    load_table,
    read_with_pyarrow,
)

TABLE = "all_types"
COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("id", Kind.INTEGER, nullable=False),
    ColumnSpec("i16", Kind.INTEGER, int_bits=16),
    ColumnSpec("i32", Kind.INTEGER, int_bits=32),
    ColumnSpec("i64", Kind.INTEGER),
    ColumnSpec("f", Kind.FLOAT),
    ColumnSpec("d", Kind.DECIMAL, precision=38, scale=10),
    ColumnSpec("flag", Kind.BOOLEAN),
    ColumnSpec("s", Kind.STRING, length=100),
    ColumnSpec("t", Kind.TEXT),
    ColumnSpec("day", Kind.DATE),
    ColumnSpec("tod", Kind.TIME),
    ColumnSpec("naive", Kind.DATETIME, nullable=False),
    ColumnSpec("aware", Kind.DATETIME, timezone=True),
    ColumnSpec("blob", Kind.BINARY),
    ColumnSpec("doc", Kind.JSON),
    ColumnSpec("u", Kind.UUID),
)
PLUS_0530 = dt.timezone(dt.timedelta(hours=5, minutes=30))
ROWS: list[dict[str, object]] = [
    {
        "id": 1,
        "i16": -(2**15),
        "i32": 2**31 - 1,
        "i64": 2**63 - 1,
        "f": 0.1,
        "d": Decimal("1234567890123456789012345678.0123456789"),
        "flag": True,
        "s": "héllo 😀 ",
        "t": "line\nbreak\ttab 'quote' \"dq\"",
        "day": dt.date(1000, 1, 2),
        "tod": dt.time(23, 59, 59, 999999),
        "naive": dt.datetime(1000, 1, 2, 0, 0, 0, 1),
        "aware": dt.datetime(2024, 2, 29, 23, 30, tzinfo=PLUS_0530),
        "blob": b"\x00\xff\x00binary",
        "doc": {"a": [1, 2.5, None, True], "ü": {"nested": "😀"}},
        "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    },
    {
        "id": 2,
        "i16": 2**15 - 1,
        "i32": -(2**31),
        "i64": -(2**63),
        "f": -1.7976931348623157e308,
        "d": Decimal("-0.0000000001"),
        "flag": False,
        "s": "",
        "t": "",
        "day": dt.date(9999, 12, 30),
        "tod": dt.time(0, 0),
        "naive": dt.datetime(9999, 12, 30, 23, 59, 59, 999999),
        "aware": dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        "blob": b"",
        "doc": [],
        "u": uuid.UUID(int=0),
    },
    {"id": 3, "naive": dt.datetime(2024, 1, 1, 12)}
    | {c.name: None for c in COLUMNS[1:11]}
    | {"aware": None, "blob": None, "doc": None, "u": None},
    {
        "id": 2**53 + 1,
        "i16": 0,
        "i32": 0,
        "i64": 2**53 + 1,
        "f": 5e-324,
        "d": Decimal("0"),
        "flag": True,
        "s": "x" * 100,
        "t": "é" * 5000,
        "day": dt.date(2024, 2, 29),
        "tod": dt.time(12, 0, 0, 250000),
        "naive": dt.datetime(2024, 2, 29, 12, 0, 0, 250000),
        "aware": dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(-dt.timedelta(hours=8))),
        "blob": bytes(range(256)),
        "doc": {"big": 2**53 - 1, "s": "x"},
        "u": uuid.UUID("ffffffff-ffff-ffff-ffff-ffffffffffff"),
    },
]


def insert_rows(url: str, rows: list[dict[str, object]]) -> None:
    """The rows written into the source through archivist's own exact types."""
    create_table(url, TABLE, COLUMNS, index="naive")
    policy = ArchiveConfig(collection=TABLE, order_by="naive", max_rows=1, rows_per_archive=1)
    # make_config needs a policy of the table; this daemon only writes the source.
    policy = ArchiveConfig(**{**msgspec.structs.asdict(policy), "mode": "purge"})
    daemon = DataDaemon(make_config({"primary": url}, [policy]))

    async def write() -> None:
        await daemon.start()
        try:
            info = await daemon.table_info(TABLE, "primary")
            assert info is not None
            items = [info.codec.encode_row(row) for row in rows]
            created = await daemon.execute(
                "data/create", {"collection": TABLE, "dbHandle": "primary", "items": items}
            )
            assert created == {"created": len(rows)}
        finally:
            await daemon.close()

    asyncio.run(write())


def archive_all(tmp_path: Path, source: str, collection: str, **keys: object) -> str:
    """Run ``archivist archive`` once with a policy that moves every row; its output."""
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": source, "archive": lake_url(tmp_path)},
        [
            {
                "collection": collection,
                "order_by": keys.pop("order_by", "naive"),
                "max_rows": 1,
                "rows_per_archive": 1,
                **keys,
            }
        ],
    )
    done = archivist("archive", collection, "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def same(spec: ColumnSpec, original: object, read: object) -> bool:
    """Whether a value read from the Iceberg files is exactly ``original``."""
    if original is None or read is None:
        return original is None and read is None
    if spec.kind is Kind.JSON:
        return json.loads(str(read)) == original
    if spec.kind is Kind.UUID:
        return str(read) == str(original)
    if spec.kind is Kind.DATETIME and spec.timezone:
        assert isinstance(read, dt.datetime) and isinstance(original, dt.datetime)
        return read == original and read.utcoffset() == dt.timedelta(0)
    if spec.kind is Kind.DATETIME:
        assert isinstance(read, dt.datetime)
        return read.tzinfo is None and read == original
    return bool(original == read) and type(read) is type(original)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("engine", ["sqlite", "postgresql", "mysql"])
def test_every_column_kind_round_trips_exactly_into_iceberg_read_by_pyarrow_and_duckdb(
    engine: str, fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    source = fresh_db(engine)
    insert_rows(source, ROWS)
    archive_all(tmp_path, source, TABLE)
    assert count(source, TABLE) == 0

    table = load_table(tmp_path, TABLE)
    read = read_with_pyarrow(table)
    schema = read.schema
    assert schema.field("d").type == pa.decimal128(38, 10)  # the scale is kept
    assert schema.field("aware").type == pa.timestamp("us", tz="UTC")  # an instant
    assert schema.field("naive").type == pa.timestamp("us")  # a wall time
    assert schema.field("i64").type == pa.int64()
    assert schema.field("day").type == pa.date32()
    by_id = {row["id"]: row for row in read.to_pylist()}
    assert sorted(by_id) == sorted(int(row["id"]) for row in ROWS)  # type: ignore[call-overload]
    for original in ROWS:
        copy = by_id[original["id"]]
        for spec in COLUMNS:
            assert same(spec, original[spec.name], copy[spec.name]), (spec.name, copy[spec.name])

    # DuckDB reads the same table through its metadata (snapshots, manifests, partitions).
    rows = duckdb_rows(
        table, "id, CAST(d AS VARCHAR), CAST(aware AS VARCHAR), i64, doc, CAST(u AS VARCHAR)"
    )
    assert sorted(rows) == sorted(
        (
            row["id"],
            None if row["d"] is None else f"{row['d']:.10f}",
            None
            if row["aware"] is None
            else row["aware"].astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S+00"),  # type: ignore[attr-defined]
            row["i64"],
            None
            if row["doc"] is None
            else json.dumps(row["doc"], ensure_ascii=False, separators=(",", ":")),
            None if row["u"] is None else str(row["u"]),
        )
        for row in ROWS
    )


def chat_archive(tmp_path: Path, rows: int, **keys: object) -> tuple[str, Path]:
    source = f"sqlite:///{tmp_path}/primary.db"
    if rows:
        make_chat_table(source, rows)
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": source, "archive": lake_url(tmp_path)},
        [
            {
                "collection": "chat_messages",
                "order_by": "created_at",
                "max_rows": 1,
                "rows_per_archive": 1,
                "batch_size": 200,
                **keys,
            }
        ],
    )
    return source, config


@pytest.mark.timeout(120)
def test_batches_are_gathered_into_commits_of_rows_per_file(tmp_path: Path) -> None:
    source, config = chat_archive(tmp_path, 2_500, rows_per_file=1_000, partition="none")
    done = archivist("archive", "chat_messages", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert count(source) == 0
    table = load_table(tmp_path, "chat_messages")
    appended = [snapshot.summary for snapshot in table.snapshots() if snapshot.summary is not None]
    # 13 batches of 200 rows, 3 commits: 1,000 + 1,000 + 500, each one data file.
    assert [int(s["added-records"]) for s in appended] == [1_000, 1_000, 500]
    assert [int(s["added-data-files"]) for s in appended] == [1, 1, 1]
    assert [s["archivist.key-min"] for s in appended] == ["1", "1001", "2001"]
    assert [s["archivist.key-max"] for s in appended] == ["1000", "2000", "2500"]
    # Each commit names the task that wrote it.
    assert all(s["archivist.task"].startswith("chat_messages-t") for s in appended)
    assert len(data_files(table)) == 3
    ids = sorted(row[0] for row in duckdb_rows(table, "id"))
    assert ids == list(range(1, 2_501))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("partition", ["day", "month", "none"])
def test_partitioned_by_day_or_month_of_the_order_column(tmp_path: Path, partition: str) -> None:
    _, config = chat_archive(tmp_path, 600, partition=partition)
    done = archivist("archive", "chat_messages", "--config", str(config))
    assert done.returncode == 0, done.stderr
    table = load_table(tmp_path, "chat_messages")
    fields = table.spec().fields
    days = {row[0] for row in duckdb_rows(table, "CAST(created_at AS DATE)")}
    months = {(day.year, day.month) for day in days}
    files = data_files(table)
    if partition == "none":
        assert fields == ()
        assert len(files) == 1
    else:
        assert [(f.name, str(f.transform)) for f in fields] == [
            (f"created_at_{partition}", partition)
        ]
        # One file per partition, in a folder named after it.
        assert len(files) == len(days if partition == "day" else months)
        assert all(f"created_at_{partition}=" in path for path in files)
    assert sorted(r[0] for r in duckdb_rows(table, "id")) == list(range(1, 601))


@pytest.mark.timeout(120)
def test_the_iceberg_table_gains_the_columns_its_source_gains(tmp_path: Path) -> None:
    source, config = chat_archive(tmp_path, 300, partition="none")
    assert archivist("archive", "chat_messages", "--config", str(config)).returncode == 0
    sql(source, "ALTER TABLE chat_messages ADD COLUMN note TEXT")
    sql(
        source,
        "INSERT INTO chat_messages (id, room_id, sender_id, created_at, body, note) "
        "VALUES (5000, 1, 1, '2030-01-01 00:00:00.000000', 'b', 'a note'), "
        "(5001, 1, 1, '2030-01-02 00:00:00.000000', 'b', NULL)",
    )
    done = archivist("archive", "chat_messages", "--config", str(config))
    assert done.returncode == 0, done.stderr
    table = load_table(tmp_path, "chat_messages")
    assert "note" in table.schema().column_names
    rows = duckdb_rows(table, "id, note")
    assert len(rows) == 302
    assert dict(rows)[5000] == "a note"
    assert {note for key, note in rows if key != 5000} == {None}


@pytest.mark.timeout(120)
def test_a_rerun_after_a_commit_whose_rows_were_not_deleted_writes_nothing_twice(
    tmp_path: Path,
) -> None:
    """A crash between the commit and the source's delete leaves rows in both: the rerun finds
    them committed (identical), does not append them again, and deletes them."""
    source, config = chat_archive(tmp_path, 500, partition="day")
    primary = tmp_path / "primary.db"
    before = primary.read_bytes()
    assert archivist("archive", "chat_messages", "--config", str(config)).returncode == 0
    assert count(source) == 0
    table = load_table(tmp_path, "chat_messages")
    snapshots_before = len(table.snapshots())
    # The source as it was before the delete: every committed row is still there.
    for extra in tmp_path.glob("primary.db-*"):
        extra.unlink()
    primary.write_bytes(before)
    assert count(source) == 500

    done = archivist("archive", "chat_messages", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert count(source) == 0
    table = load_table(tmp_path, "chat_messages")
    ids = [row[0] for row in duckdb_rows(table, "id")]
    assert sorted(ids) == list(range(1, 501))  # not one twice
    assert len(table.snapshots()) == snapshots_before  # nothing appended


@pytest.mark.timeout(120)
def test_files_no_snapshot_references_are_removed_and_referenced_ones_kept(
    tmp_path: Path,
) -> None:
    source, config = chat_archive(tmp_path, 300, partition="none")
    assert archivist("archive", "chat_messages", "--config", str(config)).returncode == 0
    table = load_table(tmp_path, "chat_messages")
    (kept,) = data_files(table)
    orphan = Path(kept.removeprefix("file://")).parent / "00000-0-crashed-writer.parquet"
    orphan.write_bytes(Path(kept.removeprefix("file://")).read_bytes())
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    fresh = orphan.with_name("00000-1-writing-now.parquet")
    fresh.write_bytes(b"not yet committed")
    sql(
        source,
        "INSERT INTO chat_messages (id, room_id, sender_id, created_at, body) "
        "VALUES (9000, 1, 1, '2030-01-01 00:00:00.000000', 'b'), "
        "(9001, 1, 1, '2030-01-01 00:00:00.000000', 'b')",
    )
    assert archivist("archive", "chat_messages", "--config", str(config)).returncode == 0
    assert not orphan.exists()
    assert fresh.exists()  # too recent: a writer may be about to commit it
    assert Path(kept.removeprefix("file://")).exists()
    assert sorted(r[0] for r in duckdb_rows(load_table(tmp_path, "chat_messages"), "id")) == [
        *range(1, 301),
        9000,
        9001,
    ]


@pytest.mark.timeout(120)
def test_a_row_changed_after_staging_stays_in_the_source_and_its_copy_is_replaced_later(
    tmp_path: Path,
) -> None:
    """The delete after a commit checks each source row is still what was listed: a row
    updated meanwhile stays; the next task moves it, and the table's older copy is replaced
    in that commit, not kept beside it."""
    source = f"sqlite:///{tmp_path}/primary.db"
    make_chat_table(source, 300)
    policy = ArchiveConfig(
        collection="chat_messages",
        order_by="created_at",
        max_rows=1,
        rows_per_archive=1,
        rows_per_file=10_000,
        partition="none",
    )
    config = make_config({"primary": source, "archive": lake_url(tmp_path)}, [policy])

    async def scenario() -> None:
        daemon = DataDaemon(config)
        await daemon.start()
        try:
            await daemon.ensure_archive_table("chat_messages")
            params = {
                "collection": "chat_messages",
                "dbHandle": "primary",
                "destHandle": "archive",
                "limit": 100,
                "move": True,
            }
            first = await daemon.execute("data/copy", params)
            assert first["deleted"] == 100 and first["count"] == 100
            assert count(source) == 300  # staged, not committed: nothing deleted yet
            sql(source, "UPDATE chat_messages SET body = 'changed' WHERE id = 7")
            await daemon.lakes.settle("chat_messages")
            assert ids(source) == {7, *range(101, 301)}
            assert [
                r[0]
                for r in duckdb_rows(load_table(tmp_path, "chat_messages"), "body")
                if r[0] == "changed"
            ] == []
            # The next task lists from the start: row 7 first, as it is now.
            again = await daemon.execute("data/copy", {**params, "limit": 1})
            assert again["items"] == [{"id": 7}]
            await daemon.lakes.settle("chat_messages")
        finally:
            await daemon.close()

    asyncio.run(scenario())
    assert ids(source) == set(range(101, 301))
    table = load_table(tmp_path, "chat_messages")
    rows = dict(duckdb_rows(table, "id, body"))
    assert len(duckdb_rows(table, "id")) == 100  # row 7 once
    assert rows[7] == "changed"


@pytest.mark.timeout(120)
def test_a_catalog_in_postgresql_holds_the_table_that_other_readers_find(
    fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    """``iceberg+postgresql://``: pyiceberg's SQL catalog in a PostgreSQL database (psycopg
    3), the data files in the warehouse; read back through that catalog by pyiceberg and
    DuckDB."""
    from pyiceberg.catalog.sql import SqlCatalog

    catalog_db = fresh_db("postgresql")
    location = catalog_db.split("://", 1)[1]
    source = f"sqlite:///{tmp_path}/primary.db"
    make_chat_table(source, 500)
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": source, "archive": f"iceberg+postgresql://{location}?warehouse={tmp_path}/wh"},
        [
            {
                "collection": "chat_messages",
                "order_by": "created_at",
                "max_rows": 100,
                "rows_per_archive": 1,
            }
        ],
    )
    done = archivist("archive", "chat_messages", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    catalog = SqlCatalog(
        "archivist", uri=f"postgresql+psycopg://{location}", warehouse=f"file://{tmp_path}/wh"
    )
    table = catalog.load_table(("archivist", "chat_messages"))
    assert table.scan().count() == 401
    assert sorted(r[0] for r in duckdb_rows(table, "id")) == list(range(1, 402))
    assert ids(source) == set(range(402, 501))


@pytest.mark.timeout(120)
def test_rows_through_the_worker_are_committed_per_batch_and_verified(tmp_path: Path) -> None:
    """With ``in_database = false`` the worker copies each batch with ``data/create``, reads
    it back with ``data/list`` (by keys, from the table's files) and deletes it with
    ``expected``: one commit per batch, the same rows."""
    source, config = chat_archive(tmp_path, 450, partition="none", batch_size=200)
    text = config.read_text().replace("[daemon]", "[worker]\nin_database = false\n\n[daemon]")
    config.write_text(text)
    done = archivist("archive", "chat_messages", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert count(source) == 0
    table = load_table(tmp_path, "chat_messages")
    appended = [int(s.summary["added-records"]) for s in table.snapshots() if s.summary]
    assert appended == [200, 200, 50]
    assert sorted(r[0] for r in duckdb_rows(table, "id")) == list(range(1, 451))


@pytest.mark.timeout(120)
def test_a_copy_policy_copies_into_iceberg_and_deletes_nothing(tmp_path: Path) -> None:
    """``mode = "copy"``: rows are committed, the source keeps them; the next run copies only
    what is newer than the table's newest row (read from the Iceberg table)."""
    source = f"sqlite:///{tmp_path}/primary.db"
    make_chat_table(source, 300)
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": source, "archive": lake_url(tmp_path)},
        [
            {
                "collection": "chat_messages",
                "order_by": "created_at",
                "older_than": "1d",
                "mode": "copy",
                "partition": "none",
            }
        ],
    )
    assert archivist("archive", "chat_messages", "--config", str(config)).returncode == 0
    assert count(source) == 300
    table = load_table(tmp_path, "chat_messages")
    assert sorted(r[0] for r in duckdb_rows(table, "id")) == list(range(1, 301))
    sql(
        source,
        "INSERT INTO chat_messages (id, room_id, sender_id, created_at, body) "
        "VALUES (301, 1, 1, '2025-01-01 00:00:00.000000', 'b')",
    )
    done = archivist("archive", "chat_messages", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert count(source) == 301
    ids_archived = [r[0] for r in duckdb_rows(load_table(tmp_path, "chat_messages"), "id")]
    assert sorted(ids_archived) == list(range(1, 302))  # none twice


@pytest.mark.timeout(120)
def test_rows_listed_twice_before_a_commit_are_committed_once(tmp_path: Path) -> None:
    """A listing still running for a task whose worker died can stage the rows the next
    task stages again: the commit holds each row once (the crash test found this)."""
    source = f"sqlite:///{tmp_path}/primary.db"
    make_chat_table(source, 300)
    policy = ArchiveConfig(
        collection="chat_messages",
        order_by="created_at",
        max_rows=1,
        rows_per_archive=1,
        rows_per_file=10_000,
        partition="none",
    )
    config = make_config({"primary": source, "archive": lake_url(tmp_path)}, [policy])

    async def scenario() -> None:
        daemon = DataDaemon(config)
        await daemon.start()
        try:
            params = {
                "collection": "chat_messages",
                "dbHandle": "primary",
                "destHandle": "archive",
                "limit": 100,
                "move": True,
            }
            await daemon.execute("data/copy", params)
            before_all = {
                "field": "created_at",
                "value": "2000-01-01T00:00:00+00:00",
                "id": 0,
                "direction": "after",
            }
            again = await daemon.execute("data/copy", {**params, "cursor": before_all})
            assert again["count"] == 100  # the same rows, staged a second time
            await daemon.lakes.settle("chat_messages")
        finally:
            await daemon.close()

    asyncio.run(scenario())
    table = load_table(tmp_path, "chat_messages")
    assert sorted(r[0] for r in duckdb_rows(table, "id")) == list(range(1, 101))
    assert ids(source) == set(range(101, 301))
