"""``archivist restore`` from SQL-table archives: rows go back into their source, verified,
then leave the archive; conflicts are named and kept unless --replace; identical rows make a
rerun harmless; every column kind comes back exactly; the mover lock keeps it apart from
archiving. On SQLite, PostgreSQL and MariaDB, and across engines."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_values_roundtrip import COLUMNS, ROW_VALUES, same_value

from archivist.data.schema import TableInfo
from coldsupport import Cold
from datasupport import message, sql
from e2esupport import archivist, count, make_chat_table, write_config

PAIRS = [
    ("sqlite", "sqlite"),
    ("postgresql", "postgresql"),
    ("mysql", "mysql"),
    ("postgresql", "mysql"),
    ("mysql", "sqlite"),
]


@pytest.fixture(params=PAIRS, ids=[f"{a}-from-{b}" for a, b in PAIRS])
def cold(request: pytest.FixtureRequest, fresh_db: Callable[[str], str]) -> Iterator[Cold]:
    source, archive = request.param
    trip = Cold(fresh_db(source), fresh_db(archive))
    yield trip
    trip.close()


@pytest.mark.timeout(120)
def test_restore_moves_matching_rows_back_and_out_of_the_archive(cold: Cold) -> None:
    rows = [message(i) for i in range(1, 31)]
    cold.archive(rows)
    archived = cold.items("archive")
    assert cold.items("primary") == []

    report = cold.restore({"room": "room1"}, batch_size=4)

    wanted = [item for item in archived if item["room"] == "room1"]
    assert report.restored == len(wanted) == 10
    assert report.batches == 3  # 4 + 4 + 2
    assert report.conflicts == [] and report.left == []
    assert cold.items("primary") == wanted
    assert cold.items("archive") == [item for item in archived if item["room"] != "room1"]


@pytest.mark.timeout(120)
def test_a_conflict_is_named_and_left_in_the_archive_unless_replace(cold: Cold) -> None:
    cold.archive([message(i) for i in range(1, 11)])
    archived = {item["id"]: item for item in cold.items("archive")}
    # The application wrote row 4 again with other content, and row 6 as it was archived.
    cold.execute("data/create", dbHandle="primary", items=[message(4, body="rewritten")])
    cold.execute("data/create", dbHandle="primary", items=[archived[6]])

    report = cold.restore(None, batch_size=3)

    assert report.conflicts == [4]
    assert report.restored == 8 and report.present == 1  # row 6 was there, identical
    assert [item["id"] for item in cold.items("archive")] == [4]
    assert cold.items("primary", [4])[0]["body"] == "rewritten"
    assert {item["id"] for item in cold.items("primary")} == set(range(1, 11))

    again = cold.restore(None, replace=True)

    assert again.replaced == 1 and again.conflicts == []
    assert cold.items("archive") == []
    assert cold.items("primary", [4]) == [archived[4]]


@pytest.mark.timeout(120)
def test_a_rerun_after_a_crash_between_copy_and_delete_finishes_the_restore(cold: Cold) -> None:
    cold.archive([message(i) for i in range(1, 6)])
    archived = cold.items("archive")
    # A restore that copied every row and died before deleting any from the archive.
    cold.execute("data/create", dbHandle="primary", items=archived)

    report = cold.restore(None)

    assert report.present == 5 and report.restored == 0 and report.conflicts == []
    assert cold.items("archive") == []
    assert cold.items("primary") == archived


@pytest.mark.timeout(120)
def test_dry_run_reports_and_changes_nothing(cold: Cold) -> None:
    cold.archive([message(i) for i in range(1, 8)])
    cold.execute("data/create", dbHandle="primary", items=[message(2, body="other")])

    report = cold.restore(None, dry_run=True)

    assert (report.restored, report.conflicts, report.dry_run) == (6, [2], True)
    assert len(cold.items("archive")) == 7
    assert [item["id"] for item in cold.items("primary")] == [2]


ROUND_TRIP_PAIRS = list(itertools.product(("sqlite", "postgresql", "mysql"), repeat=2))


@pytest.fixture(params=ROUND_TRIP_PAIRS, ids=[f"{a}-via-{b}" for a, b in ROUND_TRIP_PAIRS])
def typed(request: pytest.FixtureRequest, fresh_db: Callable[[str], str]) -> Iterator[Cold]:
    source, archive = request.param
    trip = Cold(fresh_db(source), fresh_db(archive), "all_types", COLUMNS, "naive")
    trip.next_id = itertools.count(1)  # type: ignore[attr-defined]
    yield trip
    trip.close()


def _raw(cold: Cold, handle: str) -> dict[object, dict[str, object]]:
    info = cold.run(cold.data.table_info(cold.collection, handle))
    assert isinstance(info, TableInfo)
    with cold.data.handle(handle).engine.connect() as connection:
        rows = connection.execute(info.table.select()).mappings()
        return {row["id"]: dict(row) for row in rows}


@pytest.mark.timeout(600)
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(ROW_VALUES, min_size=1, max_size=4))
def test_every_column_kind_comes_back_exactly(typed: Cold, rows: list[dict[str, object]]) -> None:
    """source -> archive -> restore -> source: each value reads back as it was written."""
    originals = [{"id": next(typed.next_id), **row} for row in rows]  # type: ignore[attr-defined]
    ids = [row["id"] for row in originals]
    typed.archive(originals)
    assert typed.items("primary", ids) == []

    report = typed.restore({"id": {"$in": ids}})

    assert report.restored == len(ids) and not report.conflicts and not report.left
    assert typed.items("archive", ids) == []
    restored = _raw(typed, "primary")
    for original in originals:
        for spec in COLUMNS:
            value = original[spec.name]
            assert same_value(spec, value, restored[original["id"]][spec.name]), (spec.name, value)


# --- the command line ---------------------------------------------------------------------


def _config(tmp_path: Path, primary: str, archive: str, **policy: object) -> Path:
    entry: dict[str, object] = {
        "collection": "chat_messages",
        "order_by": "created_at",
        "max_rows": 100,
        "rows_per_archive": 10,
        "batch_size": 50,
        **policy,
    }
    return write_config(
        tmp_path / "archivist.toml", {"primary": primary, "archive": archive}, [entry]
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_cli_restores_what_archive_moved_and_names_conflicts(
    engine: str, fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    primary, archive = fresh_db(engine), fresh_db(engine)
    make_chat_table(primary, 300)
    config = str(_config(tmp_path, primary, archive))
    moved = archivist("archive", "chat_messages", "--config", config)
    assert moved.returncode == 0, moved.stderr
    assert (count(primary), count(archive)) == (90, 210)
    # The application reuses key 5 for another message meanwhile.
    sql(
        primary,
        "INSERT INTO chat_messages SELECT 5, room_id, sender_id, created_at, "
        "'new body', metadata FROM chat_messages WHERE id = 299",
    )

    dry = archivist(
        "restore",
        "chat_messages",
        "--config",
        config,
        "--where",
        json.dumps({"id": {"$lte": 20}}),
        "--dry-run",
    )
    assert dry.returncode == 0, dry.stderr
    assert "would restore 19 of 20" in dry.stdout and "key(s) 5;" in dry.stdout
    assert (count(primary), count(archive)) == (91, 210)

    done = archivist(
        "restore", "chat_messages", "--config", config, "--where", json.dumps({"id": {"$lte": 20}})
    )
    assert done.returncode == 1
    assert "restored 19 of 20" in done.stdout and "1 conflict(s)" in done.stdout
    assert "key(s) 5;" in done.stdout
    assert (count(primary), count(archive)) == (110, 191)

    replaced = archivist(
        "restore",
        "chat_messages",
        "--config",
        config,
        "--where",
        json.dumps({"id": 5}),
        "--replace",
    )
    assert replaced.returncode == 0, replaced.stderr
    assert "1 replaced" in replaced.stdout
    assert (count(primary), count(archive)) == (110, 190)
    body = sql(primary, "SELECT body FROM chat_messages WHERE id = 5")[0][0]
    assert body != "new body"


@pytest.mark.timeout(120)
def test_cli_since_until_choose_by_the_order_column(
    fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    primary, archive = fresh_db("mysql"), fresh_db("mysql")
    make_chat_table(primary, 300)
    config = str(_config(tmp_path, primary, archive))
    assert archivist("archive", "chat_messages", "--config", config).returncode == 0
    bounds = sql(archive, "SELECT created_at FROM chat_messages WHERE id IN (11, 31) ORDER BY id")
    since, until = (str(value[0]).replace(" ", "T") for value in bounds)

    done = archivist(
        "restore", "chat_messages", "--config", config, "--since", since, "--until", until
    )

    assert done.returncode == 0, done.stderr
    assert "restored 20 of 20" in done.stdout
    restored = sql(primary, "SELECT id FROM chat_messages WHERE id <= 210 ORDER BY id")
    assert [row[0] for row in restored] == list(range(11, 31))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_restore_refuses_while_another_archivist_moves_the_table(
    engine: str, fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    primary, archive = fresh_db(engine), fresh_db(engine)
    cold = Cold(primary, archive)
    try:
        cold.archive([message(i) for i in range(1, 4)])
        lock = cold.run(cold.data.take_mover("chat_messages"))  # another mover holds it
        config = str(_config(tmp_path, primary, archive))
        busy = archivist("restore", "chat_messages", "--config", config)
        assert busy.returncode == 1
        assert "held by" in busy.stderr, busy.stderr
        assert len(cold.items("archive")) == 3
        cold.run(lock.release())  # type: ignore[attr-defined]
        done = archivist("restore", "chat_messages", "--config", config)
        assert done.returncode == 0, done.stderr
        assert len(cold.items("archive")) == 0 and len(cold.items("primary")) == 3
    finally:
        cold.close()


@pytest.mark.timeout(120)
def test_bad_where_is_a_clear_error(fresh_db: Callable[[str], str], tmp_path: Path) -> None:
    primary, archive = fresh_db("sqlite"), fresh_db("sqlite")
    make_chat_table(primary, 200)
    config = str(_config(tmp_path, primary, archive))
    assert archivist("archive", "chat_messages", "--config", config).returncode == 0
    not_json = archivist("restore", "chat_messages", "--config", config, "--where", "{room")
    assert not_json.returncode == 2 and "--where is not JSON" in not_json.stderr
    unknown = archivist("restore", "chat_messages", "--config", config, "--where", '{"nope": 1}')
    assert unknown.returncode == 1 and "nope" in unknown.stderr
