"""Policies people write: age (every column kind, on every engine), where predicates (rows
that stop matching mid-task), purge and copy modes, through a real worker process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from rich.console import Console

from archivist.config import ArchiveConfig, WorkerConfig, make_config
from archivist.daemon.runtime import Launch, archive_now, running
from archivist.daemon.tracker import TaskRecord
from archivist.data import DataDaemon
from archivist.data.bus import JSONObject
from archivist.data.columns import ColumnSpec, Kind
from archivist.data.handles import create_engine
from archivist.data.schema import build_info
from archivist.errors import ArchivistError, ConfigError
from archivist.ui import print_plan
from datasupport import ENGINES, create_table
from datasupport import sql as sql_rows
from e2esupport import archivist, write_config

pytestmark = pytest.mark.timeout(180)

ROWS = 60
"""Row i (1..ROWS) is 3*i - 0.5 days old: rows 31..60 are older than 90 days, 1..30 not,
half a day or more from the cutoff (so a DATE column's day decides the same)."""
OLD = set(range(31, ROWS + 1))

KIND_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("id", Kind.INTEGER, nullable=False),
    ColumnSpec("ts_tz", Kind.DATETIME, timezone=True),
    ColumnSpec("ts", Kind.DATETIME),
    ColumnSpec("d", Kind.DATE),
    ColumnSpec("epoch_s", Kind.INTEGER),
    ColumnSpec("epoch_ms", Kind.INTEGER),
    ColumnSpec("iso_text", Kind.TEXT),
    ColumnSpec("iso_space", Kind.STRING, length=40),
    ColumnSpec("status", Kind.STRING, length=20),
    ColumnSpec("tenant_id", Kind.INTEGER),
    ColumnSpec("score", Kind.FLOAT),
)
AGE_KINDS: dict[str, str | None] = {
    "ts_tz": None,
    "ts": None,
    "d": None,
    "epoch_s": "s",
    "epoch_ms": "ms",
    "iso_text": None,
    "iso_space": None,
}
"""Each age column, and its time_unit."""


def age_row(i: int, now: dt.datetime, **overrides: object) -> dict[str, object]:
    t = now - dt.timedelta(days=3 * i - 0.5)
    row: dict[str, object] = {
        "id": i,
        "ts_tz": t,
        "ts": t.replace(tzinfo=None),
        "d": t.date(),
        "epoch_s": int(t.timestamp()),
        "epoch_ms": int(t.timestamp() * 1000),
        "iso_text": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "iso_space": t.strftime("%Y-%m-%d %H:%M:%S"),
        "status": "closed" if i % 2 == 0 else "open",
        "tenant_id": i % 3,
    }
    row.update(overrides)
    return row


def make_age_table(url: str, name: str, rows: Sequence[dict[str, object]]) -> None:
    create_table(url, name, KIND_COLUMNS, index=None)
    engine = create_engine(url)
    try:
        info = build_info(name, engine.dialect.name, list(KIND_COLUMNS), ["id"])
        if rows:
            with engine.begin() as connection:
                connection.execute(sa.insert(info.table), list(rows))
    finally:
        engine.dispose()


def ids_of(url: str, table: str) -> set[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table(table):
                return set()
            return {int(r[0]) for r in connection.execute(sa.text(f"SELECT id FROM {table}"))}
    finally:
        engine.dispose()


def age_policy(collection: str, **keys: Any) -> ArchiveConfig:
    return ArchiveConfig(**{"collection": collection, "order_by": "id", "batch_size": 7, **keys})


async def check_and_wait(daemon: Any) -> list[TaskRecord]:
    """One check of every policy, then wait for the tasks it queued."""
    records: list[TaskRecord] = await daemon.check_once()
    for record in records:
        await asyncio.wait_for(record.done.wait(), 120)
    return records


# --- age: every column kind, on every engine -------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_an_age_policy_moves_every_row_older_than_the_cutoff_and_nothing_newer(
    engine: str, fresh_db: Callable[[str], str]
) -> None:
    """One table per kind of age column, read through ``age_field`` (timestamp with and
    without time zone, DATE, epoch seconds, epoch milliseconds, ISO-8601 text with T and
    Z, and with a space): one check moves rows 31..60 of each, in batches of 7, and its
    progress total is the 30 eligible rows counted at the start."""
    primary, archive = fresh_db(engine), fresh_db(engine)
    now = dt.datetime.now(dt.UTC)
    rows = [age_row(i, now) for i in range(1, ROWS + 1)]
    policies = []
    for column, unit in AGE_KINDS.items():
        make_age_table(primary, f"age_{column}", rows)
        keys: dict[str, Any] = {"older_than": "90d", "age_field": column}
        if unit is not None:
            keys["time_unit"] = unit
        policies.append(age_policy(f"age_{column}", **keys))
    config = make_config({"primary": primary, "archive": archive}, policies)

    async def scenario() -> list[TaskRecord]:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            return await check_and_wait(daemon)

    records = asyncio.run(scenario())

    assert sorted(r.collection for r in records) == sorted(f"age_{c}" for c in AGE_KINDS)
    for record in records:
        assert (record.state, record.archived, record.total) == ("success", 30, 30), record
    for column in AGE_KINDS:
        assert ids_of(primary, f"age_{column}") == set(range(1, 31)), column
        assert ids_of(archive, f"age_{column}") == OLD, column


def test_an_age_on_order_by_and_a_period_in_months(fresh_db: Callable[[str], str]) -> None:
    """``older_than`` reads ``order_by`` when no ``age_field`` is named; ``P2M`` is two
    calendar months back from now (about 59-62 days)."""
    primary, archive = fresh_db("sqlite"), fresh_db("sqlite")
    now = dt.datetime.now(dt.UTC)
    make_age_table(primary, "events", [age_row(i, now) for i in range(1, ROWS + 1)])
    policy = ArchiveConfig(collection="events", order_by="ts_tz", older_than="P2M")
    config = make_config({"primary": primary, "archive": archive}, [policy])

    async def scenario() -> list[TaskRecord]:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            return await check_and_wait(daemon)

    asyncio.run(scenario())

    # 3i - 0.5 days > 62 for i >= 22; < 59 for i <= 19; i = 20, 21 depend on the month.
    assert set(range(22, ROWS + 1)) <= ids_of(archive, "events")
    assert set(range(1, 20)) <= ids_of(primary, "events")
    assert ids_of(primary, "events") | ids_of(archive, "events") == set(range(1, ROWS + 1))
    assert not ids_of(primary, "events") & ids_of(archive, "events")


def test_max_rows_and_older_than_together_move_the_larger_of_the_two(
    fresh_db: Callable[[str], str],
) -> None:
    """30 rows are older than 90 days. With max_rows 50 (rows_per_archive 10) the table is
    over by 20: the age rule moves more, so 30 go. With max_rows 20 (down to 10): 50 go,
    the oldest first."""
    now = dt.datetime.now(dt.UTC)
    results = {}
    for max_rows in (50, 20):
        primary, archive = fresh_db("sqlite"), fresh_db("sqlite")
        make_age_table(primary, "events", [age_row(i, now) for i in range(1, ROWS + 1)])
        policy = ArchiveConfig(
            collection="events",
            order_by="ts_tz",
            older_than="90d",
            max_rows=max_rows,
            rows_per_archive=10,
        )
        config = make_config({"primary": primary, "archive": archive}, [policy])

        async def scenario(config: Any = config) -> list[TaskRecord]:
            async with running(config, Launch(private_socket=True, watch=False)) as daemon:
                return await check_and_wait(daemon)

        asyncio.run(scenario())
        results[max_rows] = ids_of(primary, "events")

    assert results[50] == set(range(1, 31))
    assert results[20] == set(range(1, 11))


def test_an_age_column_of_another_kind_or_integers_without_a_unit_is_refused_at_load(
    fresh_db: Callable[[str], str],
) -> None:
    primary = fresh_db("sqlite")
    make_age_table(primary, "events", [])
    cases = {
        "epoch_s": ({}, "archive[0].age_field: column 'epoch_s' holds integers"),
        "score": ({}, "archive[0].age_field: column 'score' is float: an age is read from"),
        "ts": ({"time_unit": "s"}, "time_unit is for integer columns"),
        "nope": ({}, "column 'nope' does not exist"),
    }
    for column, (keys, message) in cases.items():
        policy = age_policy("events", older_than="90d", age_field=column, **keys)
        config = make_config({"primary": primary, "archive": "sqlite://"}, [policy])

        async def start(config: Any = config) -> None:
            data = DataDaemon(config)
            await data.start()
            await data.close()

        with pytest.raises(ConfigError) as refused:
            asyncio.run(start())
        assert message in refused.value.message, refused.value.message
        assert "<python>: archive[0]" in refused.value.message


def test_text_timestamps_in_mixed_layouts_are_refused_and_nothing_moves(
    fresh_db: Callable[[str], str],
) -> None:
    """Text compares as time only in one layout: a 'T' and a ' ' separator in one column
    (or a value that is no ISO-8601 UTC timestamp) fail the task before any row moves."""
    primary, archive = fresh_db("sqlite"), fresh_db("sqlite")
    now = dt.datetime.now(dt.UTC)
    rows = [age_row(i, now) for i in range(1, ROWS + 1)]
    rows[5]["iso_text"] = "2020-01-01 10:00:00"
    rows[6]["iso_space"] = "2020-01-01T10:00:00+02:00"
    make_age_table(primary, "mixed", rows)
    make_age_table(primary, "offset", rows)
    config = make_config(
        {"primary": primary, "archive": archive},
        [
            age_policy("mixed", older_than="90d", age_field="iso_text"),
            age_policy("offset", older_than="90d", age_field="iso_space"),
        ],
    )

    async def scenario() -> tuple[list[TaskRecord], list[str]]:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            errors: list[str] = []
            for name in ("mixed", "offset"):
                try:
                    await daemon.due(daemon.policies[name])
                except ArchivistError as exc:
                    errors.append(exc.message)
            return await check_and_wait(daemon), errors

    records, errors = asyncio.run(scenario())

    assert records == []
    assert "mixes 'YYYY-MM-DDTHH:MM:SS' (59 rows) and 'YYYY-MM-DD HH:MM:SS' (1 rows)" in errors[0]
    assert "1 value(s) are not ISO-8601 in UTC (e.g. '2020-01-01T10:00:00+02:00')" in errors[1]
    assert ids_of(primary, "mixed") == ids_of(primary, "offset") == set(range(1, ROWS + 1))


# --- where: only matching rows, even when rows change mid-task --------------------------------

WHERE = {"status": "closed", "tenant_id": {"$in": [1, 2]}}


def matches(row: dict[str, object]) -> bool:
    return row["status"] == "closed" and row["tenant_id"] in (1, 2)


@pytest.mark.parametrize("mode", ["move", "purge"])
@pytest.mark.parametrize("engine", ENGINES)
def test_where_moves_only_matching_rows_and_not_rows_that_stop_matching_mid_task(
    engine: str, mode: str, fresh_db: Callable[[str], str]
) -> None:
    """An age policy with ``where``: after the task's first copy (a purge: its first
    listing), two rows of that batch and two not yet listed stop matching. Every row still
    in the primary when it changed stays there (the delete's guard: it changed since it was
    copied or listed); every other old matching row goes; no other row ever does."""
    primary, archive = fresh_db(engine), fresh_db(engine)
    now = dt.datetime.now(dt.UTC)
    rows = [age_row(i, now) for i in range(1, 121)]
    make_age_table(primary, "tickets", rows)
    eligible = sorted(int(str(r["id"])) for r in rows if matches(r) and r["id"] in range(31, 121))
    # order_by ts_tz: the oldest (highest ids) go first: two of the first batch, two last.
    changed = eligible[-2:] + eligible[:2]
    policy = ArchiveConfig(
        collection="tickets",
        order_by="ts_tz",
        batch_size=5,
        older_than="90d",
        where=WHERE,
        mode=mode,  # type: ignore[arg-type]
    )
    handles = {"primary": primary} if mode == "purge" else {"primary": primary, "archive": archive}
    config = make_config(handles, [policy])
    kept_in_primary: set[int] = set()
    done: list[bool] = []

    def first_batch(name: str, params: JSONObject) -> bool:
        if mode == "purge":
            return name == "data/list" and params.get("dbHandle") == "primary"
        return "archive" in (params.get("destHandle"), params.get("dbHandle"))

    async def scenario() -> list[TaskRecord]:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            bus = daemon.data.bus
            names = ("data/copy", "data/create", "data/list")
            originals = {name: bus.command(name) for name in names}

            def changing(name: str) -> Any:
                async def command(params: JSONObject) -> JSONObject:
                    result = await originals[name](params)
                    if first_batch(name, params) and not done:
                        done.append(True)
                        listed = ", ".join(map(str, changed))
                        sql_rows(
                            primary,
                            f"UPDATE tickets SET status = 'reopened' WHERE id IN ({listed})",
                        )
                        reopened = "SELECT id FROM tickets WHERE status = 'reopened'"
                        kept_in_primary.update(int(str(r[0])) for r in sql_rows(primary, reopened))
                    return result

                return command

            for name in originals:
                bus.register(name, changing(name), replace=True)
            return await check_and_wait(daemon)

    records = asyncio.run(scenario())

    assert done, "no batch was copied"
    assert len(records) == 1 and records[0].state == "success", records
    assert records[0].total == len(eligible)
    assert set(eligible[:2]) <= kept_in_primary  # not yet listed when they changed
    # MariaDB, and PostgreSQL between two databases, move a batch in one data/copy: no
    # moment between its copy and its delete for a row to change in.
    if not (engine in ("mysql", "postgresql") and mode == "move"):
        assert set(eligible[-2:]) <= kept_in_primary  # changed between copy and delete
    primary_ids = ids_of(primary, "tickets")
    assert kept_in_primary <= primary_ids
    assert primary_ids == set(range(1, 121)) - (set(eligible) - kept_in_primary)
    if mode == "move":
        assert ids_of(archive, "tickets") - set(changed) == set(eligible) - set(changed)
    else:
        assert ids_of(archive, "tickets") == set()
    assert records[0].archived == len(set(eligible) - kept_in_primary)
    reopened = sql_rows(primary, "SELECT id FROM tickets WHERE status = 'reopened'")
    assert {int(str(r[0])) for r in reopened} == kept_in_primary


def test_a_where_that_names_no_column_is_refused_at_load_with_data_lists_message(
    fresh_db: Callable[[str], str],
) -> None:
    primary = fresh_db("sqlite")
    make_age_table(primary, "events", [])
    for where, message in (
        ({"colour": "red"}, "unknown field"),
        ({"status": {"$like": "x"}}, "filter.status: unknown operator '$like'"),
    ):
        policy = age_policy("events", older_than="90d", where=where)
        config = make_config({"primary": primary, "archive": "sqlite://"}, [policy])

        async def start(config: Any = config) -> None:
            data = DataDaemon(config)
            await data.start()
            await data.close()

        with pytest.raises(ConfigError) as refused:
            asyncio.run(start())
        assert "archive[0].where: " in refused.value.message
        assert message in refused.value.message, refused.value.message


def test_where_applies_to_a_max_rows_policy_through_the_worker(
    fresh_db: Callable[[str], str],
) -> None:
    """Rows through the worker (no copy inside the database): ``where`` with ``max_rows``
    counts and moves only matching rows."""
    primary, archive = fresh_db("sqlite"), fresh_db("sqlite")
    now = dt.datetime.now(dt.UTC)
    rows = [age_row(i, now) for i in range(1, 121)]
    make_age_table(primary, "tickets", rows)
    matching = {int(str(r["id"])) for r in rows if matches(r)}  # 40 rows
    policy = ArchiveConfig(
        collection="tickets",
        order_by="ts_tz",
        batch_size=4,
        max_rows=20,
        rows_per_archive=5,
        where=WHERE,
    )
    config = make_config(
        {"primary": primary, "archive": archive},
        [policy],
        worker=WorkerConfig(in_database=False),
    )

    async def scenario() -> list[TaskRecord]:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            return await check_and_wait(daemon)

    asyncio.run(scenario())

    moved = ids_of(archive, "tickets")
    assert len(moved) == 25 and moved <= matching
    assert moved == set(sorted(matching, reverse=True)[:25])  # the oldest matching rows


# --- modes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_purge_deletes_old_rows_in_batches_and_archives_nothing(
    engine: str, fresh_db: Callable[[str], str]
) -> None:
    """``mode = "purge"`` with no archive handle at all: the dry run says how many rows it
    would delete; one check deletes rows 31..60 and nothing newer."""
    primary = fresh_db(engine)
    now = dt.datetime.now(dt.UTC)
    make_age_table(primary, "sessions", [age_row(i, now) for i in range(1, ROWS + 1)])
    policy = age_policy("sessions", older_than="90d", age_field="ts", mode="purge")
    config = make_config({"primary": primary}, [policy])

    async def dry_run() -> Any:
        data = DataDaemon(config)
        await data.start()
        try:
            return await data.plan("sessions")
        finally:
            await data.close()

    plan = asyncio.run(dry_run())
    console = Console(file=io.StringIO(), width=200)
    print_plan(console, plan)
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert (plan.rows, plan.to_archive, plan.mode) == (ROWS, 30, "purge")
    assert "would delete 30 rows in batches of 7" in shown
    assert ids_of(primary, "sessions") == set(range(1, ROWS + 1))

    async def scenario() -> list[TaskRecord]:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            return await check_and_wait(daemon)

    records = asyncio.run(scenario())

    assert [(r.state, r.archived, r.total) for r in records] == [("success", 30, 30)]
    assert ids_of(primary, "sessions") == set(range(1, 31))


@pytest.mark.parametrize("engine", ENGINES)
def test_copy_copies_without_deleting_and_goes_on_from_the_last_row_copied(
    engine: str, fresh_db: Callable[[str], str]
) -> None:
    """``mode = "copy"``: an interrupted first run copied 10 rows; the next check copies
    from the highest order value in the archive on (the source keeps every row); a check
    with nothing new queues nothing; new old rows are copied by the check after."""
    primary, archive = fresh_db(engine), fresh_db(engine)
    now = dt.datetime.now(dt.UTC)
    make_age_table(primary, "events", [age_row(i, now) for i in range(1, ROWS + 1)])
    # Ids rise with age here (order_by id): ids 31..60 are the old ones.
    policy = age_policy("events", older_than="90d", age_field="ts_tz", mode="copy")
    config = make_config({"primary": primary, "archive": archive}, [policy])

    async def scenario() -> list[list[TaskRecord]]:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            decision, filter_ = await daemon.due(daemon.policies["events"])
            assert decision.rows == 30
            first = await archive_now(daemon, "events", 10, filter_=filter_)
            rounds = [[first], await check_and_wait(daemon), await check_and_wait(daemon)]
            engine_ = create_engine(primary)
            try:
                info = build_info("events", engine_.dialect.name, list(KIND_COLUMNS), ["id"])
                with engine_.begin() as connection:
                    connection.execute(
                        sa.insert(info.table), [age_row(i, now) for i in (61, 62, 63)]
                    )
            finally:
                engine_.dispose()
            rounds.append(await check_and_wait(daemon))
            return rounds

    first, second, idle, third = asyncio.run(scenario())

    assert (first[0].state, first[0].archived) == ("success", 10)
    # From id 40 (the highest copied; copied again, idempotently) to 60.
    assert [(r.state, r.archived, r.total) for r in second] == [("success", 21, 21)]
    assert idle == []
    assert [(r.state, r.archived) for r in third] == [("success", 4)]  # 60 again, 61..63
    assert ids_of(primary, "events") == set(range(1, 64))
    assert ids_of(archive, "events") == set(range(31, 64))


# --- windows, max_runtime, run --once, archive --all --------------------------------------


class FakeClock:
    """The daemon's clock, set by the test: windows are decided without sleeping."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.mark.parametrize("engine", ENGINES)
def test_a_window_starts_no_batch_outside_it_and_stops_a_task_when_it_closes(
    engine: str, fresh_db: Callable[[str], str]
) -> None:
    """``window = "01:00-05:00"`` in Europe/Berlin (UTC+2 in June), on an injected clock:
    at 00:00 Berlin nothing is queued and the policy says it waits; at 01:30 a task starts;
    the clock passes 05:00 after its first batch, so it stops at the end of the batch it
    is in; at 05:05 nothing starts; at 01:10 the next night the rest moves."""
    primary, archive = fresh_db(engine), fresh_db(engine)
    base = dt.datetime(2024, 6, 1, 22, 0, tzinfo=dt.UTC)  # 00:00 in Berlin
    # Ages 3i - 1.5 days at base, 3i - 0.45 a day later: rows 31..60 old at both.
    rows = [age_row(i, base + dt.timedelta(days=1)) for i in range(1, ROWS + 1)]
    make_age_table(primary, "events", rows)
    policy = age_policy(
        "events",
        older_than="90d",
        age_field="ts_tz",
        batch_size=2,  # 15 batches: the stop lands well before the end
        window="01:00-05:00",
        timezone="Europe/Berlin",
    )
    config = make_config({"primary": primary, "archive": archive}, [policy])
    clock = FakeClock(base)
    steps: dict[str, Any] = {}

    async def scenario() -> None:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            daemon.clock = clock
            steps["midnight"] = (await daemon.check_once(), dict(daemon.holds.holding))
            clock.now = base + dt.timedelta(hours=1, minutes=30)  # 01:30 Berlin
            bus = daemon.data.bus
            originals = {name: bus.command(name) for name in ("data/copy", "data/create")}

            def closing(name: str) -> Any:
                async def command(params: JSONObject) -> JSONObject:
                    result = await originals[name](params)
                    if "archive" in (params.get("destHandle"), params.get("dbHandle")):
                        clock.now = base + dt.timedelta(hours=5, minutes=5)  # 05:05 Berlin
                    return result

                return command

            for name in originals:
                bus.register(name, closing(name), replace=True)
            steps["in window"] = await check_and_wait(daemon)
            steps["moved in window"] = len(ids_of(archive, "events"))
            for name, command in originals.items():
                bus.register(name, command, replace=True)
            steps["after"] = (await daemon.check_once(), dict(daemon.holds.holding))
            clock.now = base + dt.timedelta(days=1, hours=1, minutes=10)  # 01:10 next night
            steps["next night"] = await check_and_wait(daemon)

    asyncio.run(scenario())

    queued, holding = steps["midnight"]
    assert queued == [] and holding == {"events": "waiting for window 01:00-05:00"}
    [stopped] = steps["in window"]
    assert stopped.state == "cancelled"
    assert 0 < stopped.archived < 30 and steps["moved in window"] == stopped.archived
    queued, holding = steps["after"]
    assert queued == [] and holding == {"events": "waiting for window 01:00-05:00"}
    [rest] = steps["next night"]
    assert rest.state == "success" and stopped.archived + rest.archived == 30
    assert ids_of(primary, "events") == set(range(1, 31))
    assert ids_of(archive, "events") == OLD


def test_max_runtime_stops_a_run_and_the_policy_waits_for_its_next_window(
    fresh_db: Callable[[str], str],
) -> None:
    """``max_runtime = "1h"``: the clock jumps 2 h (still inside the window) after the first
    batch: the task stops after its batch, the window's other checks start nothing, and
    the next window's run moves the rest."""
    primary, archive = fresh_db("sqlite"), fresh_db("sqlite")
    base = dt.datetime(2024, 6, 1, 22, 0, tzinfo=dt.UTC)
    # Ages 3i - 1.5 days at base, 3i - 0.45 a day later: rows 31..60 old at both.
    rows = [age_row(i, base + dt.timedelta(days=1)) for i in range(1, ROWS + 1)]
    make_age_table(primary, "events", rows)
    policy = age_policy(
        "events",
        older_than="90d",
        age_field="ts_tz",
        batch_size=2,  # 15 batches: the stop lands well before the end
        window="22:00-06:00",
        max_runtime="1h",
    )
    config = make_config({"primary": primary, "archive": archive}, [policy])
    clock = FakeClock(base + dt.timedelta(minutes=10))
    steps: dict[str, Any] = {}

    async def scenario() -> None:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            daemon.clock = clock
            copy = daemon.data.bus.command("data/copy")

            async def slow_clock(params: JSONObject) -> JSONObject:
                result = await copy(params)
                clock.now = base + dt.timedelta(hours=2)  # 00:00, the run began at 22:10
                return result

            daemon.data.bus.register("data/copy", slow_clock, replace=True)
            steps["run"] = await check_and_wait(daemon)
            daemon.data.bus.register("data/copy", copy, replace=True)
            steps["same window"] = (await daemon.check_once(), dict(daemon.holds.holding))
            clock.now = base + dt.timedelta(days=1, minutes=5)
            steps["next window"] = await check_and_wait(daemon)

    asyncio.run(scenario())

    [stopped] = steps["run"]
    assert stopped.state == "cancelled" and 0 < stopped.archived < 30
    queued, holding = steps["same window"]
    assert queued == []
    assert holding == {
        "events": "max_runtime used up in this window; waiting for window 22:00-06:00"
    }
    [rest] = steps["next window"]
    assert rest.state == "success" and stopped.archived + rest.archived == 30


def _closed_window(now: dt.datetime) -> str:
    """A one-hour window (UTC) that opens two hours from ``now``."""
    start = now + dt.timedelta(hours=2)
    end = start + dt.timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


@pytest.mark.parametrize("engine", ENGINES)
def test_run_once_checks_every_policy_runs_its_tasks_and_exits(
    engine: str, fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    """``archivist run --once``: the age policy's rows move, the purge policy's go, the
    policy outside its window waits (and says so), and the command exits 0; a second run
    has nothing to do but the waiting policy."""
    primary, archive = fresh_db(engine), fresh_db(engine)
    now = dt.datetime.now(dt.UTC)
    for name in ("events", "sessions", "later"):
        make_age_table(primary, name, [age_row(i, now) for i in range(1, ROWS + 1)])
    window = _closed_window(now)
    common = {"order_by": "id", "older_than": "90d", "age_field": "ts_tz", "batch_size": 7}
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": primary, "archive": archive},
        [
            {"collection": "events", **common},
            {"collection": "sessions", "mode": "purge", **common},
            {"collection": "later", "window": window, **common},
        ],
    )

    first = archivist("run", "--config", str(config), "--once")
    second = archivist("run", "--config", str(config), "--once")

    assert first.returncode == 0, first.stdout + first.stderr
    assert "events: success, 30 rows" in first.stdout
    assert "sessions: success, 30 rows" in first.stdout
    assert f"later: waiting for window {window}" in first.stdout
    assert ids_of(primary, "events") == ids_of(primary, "sessions") == set(range(1, 31))
    assert ids_of(archive, "events") == OLD
    assert ids_of(archive, "sessions") == set()
    assert ids_of(primary, "later") == set(range(1, ROWS + 1))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "success" not in second.stdout
    assert f"later: waiting for window {window}" in second.stdout


@pytest.mark.parametrize("engine", ENGINES)
def test_archive_all_does_every_policy_now(
    engine: str, fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    """``archivist archive --all``: every policy now, windows aside; without a collection
    or --all it is a usage error."""
    primary, archive = fresh_db(engine), fresh_db(engine)
    now = dt.datetime.now(dt.UTC)
    for name in ("events", "tickets"):
        make_age_table(primary, name, [age_row(i, now) for i in range(1, ROWS + 1)])
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": primary, "archive": archive},
        [
            {
                "collection": "events",
                "order_by": "id",
                "older_than": "90d",
                "age_field": "ts_tz",
                "window": _closed_window(now),
            },
            {"collection": "tickets", "order_by": "id", "max_rows": 20, "rows_per_archive": 5},
        ],
    )

    done = archivist("archive", "--all", "--config", str(config))
    neither = archivist("archive", "--config", str(config))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "events: success, 30 rows" in done.stdout
    assert "tickets: success, 45 rows" in done.stdout
    assert ids_of(primary, "events") == set(range(1, 31))
    assert ids_of(primary, "tickets") == set(range(46, ROWS + 1))
    assert neither.returncode == 2 and "give one COLLECTION, or --all" in neither.stderr


DECORATED = """
import sqlalchemy as sa

from archivist import archive


@archive(order_by="id", older_than="90d", age_field="ts_tz", where={"status": "closed"},
         batch_size=7)
def events() -> sa.Table:
    return sa.Table("events", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))


@archive(order_by="id", older_than="90d", age_field="epoch_ms", time_unit="ms",
         mode="purge", where={"tenant_id": {"$in": [0, 1]}}, batch_size=7)
def sessions() -> sa.Table:
    return sa.Table("sessions", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_policies_declared_with_the_decorator_run_as_the_config_files_do(
    engine: str, fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    """``@archive(...)`` in the application's module (``[daemon] entities``) with an age,
    a where and a mode, run by ``archivist run --once``: the closed rows older than 90 days
    move, and the purge deletes the old rows of tenants 0 and 1, as the same keys in the
    config file do."""
    import os
    import subprocess
    import sys

    primary, archive = fresh_db(engine), fresh_db(engine)
    now = dt.datetime.now(dt.UTC)
    for name in ("events", "sessions"):
        make_age_table(primary, name, [age_row(i, now) for i in range(1, ROWS + 1)])
    (tmp_path / "decorated_policies.py").write_text(DECORATED)
    config = write_config(tmp_path / "archivist.toml", {"primary": primary, "archive": archive}, [])
    config.write_text(
        config.read_text().replace("[daemon]\n", '[daemon]\nentities = ["decorated_policies"]\n')
    )
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))

    done = subprocess.run(
        [sys.executable, "-m", "archivist", "run", "--config", str(config), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": path},
    )

    assert done.returncode == 0, done.stdout + done.stderr
    closed_old = {i for i in OLD if i % 2 == 0}
    assert ids_of(archive, "events") == closed_old
    assert ids_of(primary, "events") == set(range(1, ROWS + 1)) - closed_old
    purged = {i for i in OLD if i % 3 in (0, 1)}
    assert ids_of(primary, "sessions") == set(range(1, ROWS + 1)) - purged
    assert ids_of(archive, "sessions") == set()
    assert f"events: success, {len(closed_old)} rows" in done.stdout
    assert f"sessions: success, {len(purged)} rows" in done.stdout
