"""The cold operations on Iceberg archives: restore (every column kind exactly, conflicts,
--replace), retention (whole partitions dropped, old snapshots expired, their files gone from
disk) and query (DuckDB's iceberg extension, with --live). Rows are counted with pyarrow from
the table's files, not through archivist's reader."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_query import query
from test_values_roundtrip import COLUMNS, ROW_VALUES, same_value

from archivist.cold.retention import expire
from archivist.data.schema import TableInfo
from coldsupport import Cold
from datasupport import ENGINES, message
from e2esupport import archivist, write_config
from icebergsupport import data_files, lake_url, load_table, read_with_pyarrow

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def archived_ids(folder: Path, collection: str = "chat_messages") -> list[int]:
    """The keys the Iceberg table's current snapshot holds, read by pyarrow."""
    rows = read_with_pyarrow(load_table(folder, collection))
    return sorted(rows.column("id").to_pylist()) if rows.num_rows else []


@pytest.fixture(params=ENGINES)
def lake(
    request: pytest.FixtureRequest, fresh_db: Callable[[str], str], tmp_path: Path
) -> Iterator[tuple[Cold, Path]]:
    folder = tmp_path / "lake"
    trip = Cold(fresh_db(str(request.param)), lake_url(folder), partition="day")
    yield trip, folder
    trip.close()


@pytest.mark.timeout(180)
def test_restore_from_iceberg_with_a_conflict_and_replace(lake: tuple[Cold, Path]) -> None:
    cold, folder = lake
    cold.archive([message(i) for i in range(1, 11)])
    archived = {item["id"]: item for item in cold.items("archive")}
    assert archived_ids(folder) == list(range(1, 11))
    cold.execute("data/create", dbHandle="primary", items=[message(3, body="rewritten")])

    report = cold.restore({"room": {"$ne": "room2"}}, batch_size=4)

    assert report.restored == 6 and report.conflicts == [3]
    assert archived_ids(folder) == [2, 3, 5, 8]  # room2 (2, 5, 8) and the conflict stay
    assert cold.items("primary", [1, 4, 6, 7, 9, 10]) == [archived[i] for i in (1, 4, 6, 7, 9, 10)]
    again = cold.restore(None, replace=True)
    assert again.replaced == 1 and again.restored == 3
    assert archived_ids(folder) == []
    assert cold.items("primary") == [archived[i] for i in range(1, 11)]


@pytest.fixture(params=ENGINES)
def typed(
    request: pytest.FixtureRequest, fresh_db: Callable[[str], str], tmp_path: Path
) -> Iterator[Cold]:
    trip = Cold(
        fresh_db(str(request.param)), lake_url(tmp_path / "lake"), "all_types", COLUMNS, "naive"
    )
    trip.next_id = iter(range(1, 1_000_000))  # type: ignore[attr-defined]
    yield trip
    trip.close()


@pytest.mark.timeout(600)
@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(ROW_VALUES, min_size=1, max_size=4))
def test_every_column_kind_comes_back_exactly_from_iceberg(
    typed: Cold, rows: list[dict[str, object]]
) -> None:
    """source -> Iceberg -> restore -> source: each value reads back as it was written."""
    originals = [{"id": next(typed.next_id), **row} for row in rows]  # type: ignore[attr-defined]
    ids = [row["id"] for row in originals]
    typed.archive(originals)
    assert typed.items("primary", ids) == []

    report = typed.restore({"id": {"$in": ids}})

    assert report.restored == len(ids) and not report.conflicts and not report.left
    assert typed.items("archive", ids) == []
    info = typed.run(typed.data.table_info("all_types", "primary"))
    assert isinstance(info, TableInfo)
    with typed.data.handle("primary").engine.connect() as connection:
        restored = {
            row["id"]: dict(row) for row in connection.execute(info.table.select()).mappings()
        }
    for original in originals:
        for spec in COLUMNS:
            value = original[spec.name]
            assert same_value(spec, value, restored[original["id"]][spec.name]), (spec.name, value)


@pytest.mark.timeout(180)
def test_retention_drops_whole_partitions_and_old_files(
    fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    folder = tmp_path / "lake"
    cold = Cold(fresh_db("sqlite"), lake_url(folder), retention="1y", partition="day")
    try:
        # One commit per call: days 400 and 500 back are whole partitions past retention;
        # the day holding the cutoff is cut through by it.
        cold.archive(
            [
                message(i, created_at=(NOW - dt.timedelta(days=500, hours=i)).isoformat())
                for i in (1, 2)
            ]
        )
        cold.archive(
            [
                message(i, created_at=(NOW - dt.timedelta(days=400, hours=i)).isoformat())
                for i in (3, 4)
            ]
        )
        cutoff = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
        cold.archive(
            [
                message(5, created_at=(cutoff - dt.timedelta(hours=1)).isoformat()),
                message(6, created_at=(cutoff + dt.timedelta(hours=1)).isoformat()),
                message(7, created_at=(NOW - dt.timedelta(days=10)).isoformat()),
            ]
        )
        table = load_table(folder, "chat_messages")
        files_before = {path.removeprefix("file://") for path in data_files(table)}
        assert len(table.snapshots()) >= 3

        dry = cold.run(expire(cold.data, "chat_messages", now=NOW, dry_run=True))
        assert dry.expired.rows == 5  # type: ignore[attr-defined]
        assert archived_ids(folder) == [1, 2, 3, 4, 5, 6, 7]

        done = cold.run(expire(cold.data, "chat_messages", now=NOW))

        assert done.expired.rows == 5  # type: ignore[attr-defined]
        assert (
            "2 data file(s) dropped whole" in done.expired.detail
            or "dropped whole" in done.expired.detail
        )  # type: ignore[attr-defined]
        assert archived_ids(folder) == [6, 7]
        table = load_table(folder, "chat_messages")
        assert len(table.snapshots()) == 1  # the older snapshots expired
        on_disk = {str(path) for path in (folder / "warehouse").rglob("*.parquet")}
        assert on_disk == {path.removeprefix("file://") for path in data_files(table)}
        assert not (files_before - {p.removeprefix("file://") for p in data_files(table)}) & on_disk
    finally:
        cold.close()


@pytest.mark.timeout(180)
def test_query_reads_the_iceberg_table_and_the_live_one(
    fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    folder = tmp_path / "lake"
    primary = fresh_db("postgresql")
    cold = Cold(primary, lake_url(folder))
    try:
        cold.archive([message(i) for i in range(1, 6)])
        cold.execute("data/create", dbHandle="primary", items=[message(i) for i in (6, 7)])
        rows = query(cold, "SELECT id, created_at, meta FROM chat_messages ORDER BY id", live=True)
        assert [row["id"] for row in rows] == [1, 2, 3, 4, 5]
        assert rows[0]["created_at"] == dt.datetime(2024, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
        assert json.loads(rows[0]["meta"]) == {"n": 1}  # type: ignore[arg-type]
        every = query(cold, "SELECT count(*) AS n FROM chat_messages_all", live=True)
        assert every == [{"n": 7}]
    finally:
        cold.close()
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": primary, "archive": lake_url(folder)},
        [{"collection": "chat_messages", "order_by": "created_at", "older_than": "90d"}],
    )
    out = archivist(
        "query",
        "--config",
        str(config),
        "--format",
        "json",
        "SELECT max(id) AS m FROM chat_messages",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"m": 5}]


@pytest.mark.timeout(300)
def test_cli_restores_what_archive_committed_to_iceberg(
    fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    """Rows archived by the worker's path (staged, committed in large files), restored by
    the command line by their order column, counted with pyarrow."""
    from e2esupport import count, make_chat_table

    folder = tmp_path / "lake"
    primary = fresh_db("postgresql")
    make_chat_table(primary, 300)
    config = str(
        write_config(
            tmp_path / "archivist.toml",
            {"primary": primary, "archive": lake_url(folder)},
            [
                {
                    "collection": "chat_messages",
                    "order_by": "created_at",
                    "max_rows": 100,
                    "rows_per_archive": 10,
                    "batch_size": 50,
                }
            ],
        )
    )
    moved = archivist("archive", "chat_messages", "--config", config)
    assert moved.returncode == 0, moved.stderr
    assert count(primary) == 90 and archived_ids(folder) == list(range(1, 211))
    table = read_with_pyarrow(load_table(folder, "chat_messages")).sort_by("id")
    since = table.column("created_at")[100].as_py().isoformat()
    until = table.column("created_at")[150].as_py().isoformat()

    dry = archivist(
        "restore",
        "chat_messages",
        "--config",
        config,
        "--since",
        since,
        "--until",
        until,
        "--dry-run",
    )
    assert dry.returncode == 0, dry.stderr
    assert "would restore 50 of 50" in dry.stdout
    done = archivist(
        "restore", "chat_messages", "--config", config, "--since", since, "--until", until
    )

    assert done.returncode == 0, done.stderr
    assert "restored 50 of 50" in done.stdout
    assert archived_ids(folder) == [*range(1, 101), *range(151, 211)]
    assert count(primary) == 140
