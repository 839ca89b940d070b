"""PostgreSQL NaN and ±Infinity archived into MariaDB, whose DOUBLE stores neither: the rows
holding them stay in PostgreSQL, named by key, column and value; the rest move; the task ends
in error at once (no retrying) and says what it kept, in the one-shot command's output and
exit code and in `status`; `--dry-run` warns beforehand."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from archivist.config import load_config
from archivist.daemon.runtime import Launch, running, until_done
from archivist.daemon.tracker import TaskRecord
from archivist.errors import UnstorableValue
from datasupport import chat_policy, run, sql, started
from e2esupport import archivist, processes, wait_for, write_config

# id -> (value double precision, ratio real); ids 2, 4, 6 and 8 hold what MariaDB cannot.
ROWS = {
    1: ("1.5", "1"),
    2: ("'NaN'", "1"),
    3: ("2.5", "1"),
    4: ("'Infinity'", "1"),
    5: ("3.5", "1"),
    6: ("'-Infinity'", "1"),
    7: ("4.5", "1"),
    8: ("5.5", "'Infinity'"),
    9: ("6.5", "1"),
}
KEPT = {2, 4, 6, 8}


def make_readings(pg_url: str) -> None:
    sql(
        pg_url,
        "CREATE TABLE readings (id bigint PRIMARY KEY, taken_at timestamptz NOT NULL, "
        "value double precision, ratio real)",
    )
    for key, (value, ratio) in ROWS.items():
        sql(
            pg_url,
            f"INSERT INTO readings VALUES ({key}, TIMESTAMPTZ '2024-01-01' + "
            f"interval '{key} hours', {value}, {ratio})",
        )


def config_file(tmp_path: Path, pg_url: str, mysql_url: str) -> Path:
    return write_config(
        tmp_path / "archivist.toml",
        {"primary": pg_url, "archive": mysql_url},
        [
            {
                "collection": "readings",
                "order_by": "taken_at",
                "max_rows": 1,
                "rows_per_archive": 1,
                "batch_size": 2,
            }
        ],
        socket=tmp_path / "worker.sock",
        # A task that kept rows ends in error, and each check queues it again: not every
        # 0.2 s here, where a loaded machine then answered `status` late.
        daemon={"check_interval": 5},
    )


def test_rows_mariadb_cannot_store_stay_in_postgresql_and_the_rest_move(
    tmp_path: Path, pg_url: str, mysql_url: str
) -> None:
    make_readings(pg_url)
    config = str(config_file(tmp_path, pg_url, mysql_url))

    dry = archivist("archive", "readings", "--config", config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    shown = " ".join(dry.stdout.split())
    assert "warning: column value (PostgreSQL DOUBLE_PRECISION) can hold" in shown
    assert "warning: column ratio (PostgreSQL REAL) can hold" in shown
    assert "rows holding them would be kept in the source" in shown

    done = archivist("archive", "readings", "--config", config)

    error = " ".join(done.stderr.split())
    assert done.returncode == 1
    assert "archivist: error: archiving readings failed: moved 5 row(s); kept 4 in primary" in (
        error
    )
    for named in ("id=2: value = NaN", "id=4: value = Infinity", "id=6: value = -Infinity"):
        assert named in error
    assert "id=8: ratio = Infinity" in error
    assert "retrying" not in error  # not taken for a passing fault
    assert {row[0] for row in sql(pg_url, "SELECT id FROM readings")} == KEPT
    archived = dict(sql(mysql_url, "SELECT id, value FROM readings"))  # type: ignore[arg-type]
    assert archived == {1: 1.5, 3: 2.5, 5: 3.5, 7: 4.5, 9: 6.5}
    values = dict(sql(pg_url, "SELECT id, value FROM readings"))  # type: ignore[arg-type]
    assert math.isnan(values[2]) and values[4] == math.inf and values[6] == -math.inf

    # `archivist run` meets them again, keeps them again, and `status` says so.
    with processes() as started:
        daemon = started.start("run", "--config", config)

        def finished() -> list[dict[str, object]]:
            status = archivist("status", "--config", config, "--json")
            return json.loads(status.stdout)["finished"] if status.returncode == 0 else []

        wait_for(lambda: bool(finished()), 60, "a finished task in status", daemon)
        task = finished()[0]
        human = archivist("status", "--config", config)
        daemon.terminate()
        daemon.communicate(timeout=60)
    assert (task["state"], task.get("archived", 0)) == ("error", 0)
    assert str(task["error"]).startswith("moved 0 row(s); kept 4 in primary")
    assert "kept 4 in primary" in " ".join(human.stdout.split())
    assert {row[0] for row in sql(pg_url, "SELECT id FROM readings")} == KEPT


def test_data_create_refuses_an_unstorable_value_naming_key_column_and_value(
    mysql_url: str,
) -> None:
    sql(mysql_url, "CREATE TABLE readings (id BIGINT PRIMARY KEY, value DOUBLE)")
    policy = chat_policy(collection="readings", order_by="id")

    async def create(**extra: object) -> dict[str, object]:
        async with started(mysql_url, policies=[policy]) as data:
            return await data.execute(
                "data/create",
                {
                    "collection": "readings",
                    "dbHandle": "primary",
                    "items": [{"id": 1, "value": 0.5}, {"id": 2, "value": "NaN"}],
                    **extra,
                },
            )

    with pytest.raises(UnstorableValue) as refused:
        run(create())
    assert refused.value.message == (
        "readings row id=2: value = NaN (not storable in a MariaDB/MySQL float column); "
        "nothing was written"
    )
    assert sql(mysql_url, "SELECT count(*) FROM readings") == [(0,)]

    answer = run(create(onUnstorable="skip"))
    assert answer == {
        "created": 1,
        "unstorable": [
            {
                "key": 2,
                "field": "value",
                "value": "NaN",
                "error": "not storable in a MariaDB/MySQL float column",
            }
        ],
    }
    assert sql(mysql_url, "SELECT id, value FROM readings") == [(1, 0.5)]


def test_instants_before_1970_stay_when_the_archive_column_is_a_mariadb_timestamp(
    tmp_path: Path, pg_url: str, mysql_url: str
) -> None:
    sql(pg_url, "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL)")
    years = {1: 1969, 2: 1975, 3: 1960, 4: 1999, 5: 2020}
    for key, year in years.items():
        sql(pg_url, f"INSERT INTO events VALUES ({key}, TIMESTAMPTZ '{year}-06-01 12:00Z')")
    # The user's own archive table, with a TIMESTAMP where archivist would make a DATETIME.
    sql(mysql_url, "CREATE TABLE events (id BIGINT PRIMARY KEY, at TIMESTAMP(6) NULL)")
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": pg_url, "archive": mysql_url},
        [{"collection": "events", "order_by": "id", "max_rows": 1, "rows_per_archive": 1}],
    )

    dry = archivist("archive", "events", "--config", str(config), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "column at is a TIMESTAMP in the archive" in " ".join(dry.stdout.split())

    done = archivist("archive", "events", "--config", str(config))

    error = " ".join(done.stderr.split())
    assert done.returncode == 1, error
    assert "moved 3 row(s); kept 2 in primary" in error
    assert "id=1: at = 1969-06-01T12:00:00+00:00" in error and "id=3: at = 1960" in error
    assert "retrying" not in error
    assert {row[0] for row in sql(pg_url, "SELECT id FROM events")} == {1, 3}
    assert {row[0] for row in sql(mysql_url, "SELECT id FROM events")} == {2, 4, 5}


def test_the_workers_complete_carries_the_unstorable_value_code(
    tmp_path: Path, pg_url: str, mysql_url: str
) -> None:
    make_readings(pg_url)
    config = load_config(config_file(tmp_path, pg_url, mysql_url))

    async def scenario() -> TaskRecord:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            record = await daemon.submit("readings", 9)
            await until_done(daemon, record)
            return record

    record = asyncio.run(scenario())

    assert (record.state, record.code, record.archived) == ("error", "unstorable_value", 5)
    assert record.error is not None and record.error.startswith("moved 5 row(s); kept 4")
