"""Gentleness through real processes: load readings, the pause file, one budget per database."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from archivist.config import Config, WorkerConfig, make_config
from archivist.daemon.runtime import Launch, archive_now, running
from archivist.daemon.service import ArchiveDaemon
from archivist.data.bus import JSONObject
from archivist.errors import DatabaseError
from e2esupport import count, make_chat_table, policy

pytestmark = pytest.mark.timeout(120)


def test_data_load_reads_probe_latency_and_the_engines_busy_count(any_url: str) -> None:
    make_chat_table(any_url, 10)
    config = make_config({"primary": any_url, "archive": "sqlite://"}, [policy()])

    async def scenario() -> JSONObject:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            return await daemon.data.execute("data/load", {"dbHandle": "primary"})

    load = asyncio.run(scenario())
    assert isinstance(load["latencyMs"], float) and 0 <= load["latencyMs"] < 5000
    engine = sa.engine.make_url(any_url).get_backend_name()
    if engine == "sqlite":
        assert "active" not in load
    else:
        assert isinstance(load["active"], int) and load["active"] >= 0
        expected = "active backends" if engine == "postgresql" else "threads running"
        assert load["metric"] == expected


async def worker_task(daemon: ArchiveDaemon) -> dict[str, object]:
    status = await (await daemon.connection()).status()
    tasks = [*status.running, *status.queued]
    assert len(tasks) == 1, status
    return {"archived": tasks[0].archived, "throttled": tasks[0].throttled}


def test_no_batch_starts_while_the_pause_file_exists(tmp_path: Path) -> None:
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    make_chat_table(primary, 2000)
    pause = tmp_path / "pause"
    pause.touch()
    config = make_config(
        {"primary": primary, "archive": archive},
        [policy(batch_size=500)],
        worker=WorkerConfig(pause_file=str(pause)),
    )

    async def scenario() -> tuple[dict[str, object], int]:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            job = asyncio.create_task(archive_now(daemon, "chat_messages", 2000))
            await asyncio.sleep(1.5)
            paused = await worker_task(daemon)
            moved_while_paused = count(archive)
            pause.unlink()
            record = await job
            assert record.archived == 2000
            return paused, moved_while_paused

    paused, moved_while_paused = asyncio.run(scenario())
    assert paused == {"archived": 0, "throttled": f"pause file {pause} exists"}
    assert moved_while_paused == 0
    assert count(primary) == 0 and count(archive) == 2000


def test_a_busy_database_holds_batches_and_status_says_why(tmp_path: Path) -> None:
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    make_chat_table(primary, 500)
    config = make_config(
        {"primary": primary, "archive": archive},
        [policy()],
        worker=WorkerConfig(max_latency_ms=0.0),  # every probe is "too slow"
    )

    async def scenario() -> dict[str, object]:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            await daemon.submit("chat_messages", 500)
            await asyncio.sleep(2.0)
            return await worker_task(daemon)

    held = asyncio.run(scenario())
    assert held["archived"] == 0
    assert isinstance(held["throttled"], str)
    assert held["throttled"].startswith("primary probe took")
    assert count(primary) == 500


@pytest.mark.parametrize("in_database", [False, True], ids=["rows", "in_database"])
def test_tasks_on_one_database_write_one_batch_at_a_time(tmp_path: Path, in_database: bool) -> None:
    """Three tasks on one primary share one budget: no write of one task to the primary
    overlaps a write of another. Rows through the worker, the writes are each batch's
    create and delete; copied inside the database, the copy writes only the archive, and
    the primary's writes are the deletes."""
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    names = ("chat_messages", "audit_log", "events")
    for name in names:
        make_chat_table(primary, 1500, name)
    config = make_config(
        {"primary": primary, "archive": archive},
        [policy(name, batch_size=100) for name in names],
        worker=WorkerConfig(concurrency=3, batch_time=0, in_database=in_database),
    )
    writes: list[tuple[str, str, float, float]] = []
    copy = "data/copy" if in_database else "data/create"

    async def scenario() -> None:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:

            def timed(command: str) -> Callable[[JSONObject], Awaitable[JSONObject]]:
                real = daemon.data.bus.command(command)

                async def call(params: JSONObject) -> JSONObject:
                    began = time.monotonic()
                    await asyncio.sleep(0.005)
                    result = await real(params)
                    writes.append((str(params["collection"]), command, began, time.monotonic()))
                    return result

                return call

            for command in (copy, "data/delete"):
                daemon.data.bus.register(command, timed(command), replace=True)
            await asyncio.gather(*(archive_now(daemon, name, 1500) for name in names))

    asyncio.run(scenario())

    # Each batch is copied once and deleted once; a task's delete may overlap its own next
    # copy, but no write of one task to the primary overlaps a write of another.
    assert sorted(command for _, command, _, _ in writes) == [copy] * 45 + ["data/delete"] * 45
    assert {name for name, _, _, _ in writes} == set(names)
    primary_writes = [w for w in writes if w[1] != "data/copy"]
    for (name, _, start, end), (other, _, other_start, other_end) in itertools.combinations(
        primary_writes, 2
    ):
        if name != other:
            assert end <= other_start or other_end <= start, (
                f"{name} and {other} wrote to the primary at the same time"
            )


def _thousand_rows_in_batches_of_200(
    tmp_path: Path, *, in_database: bool = True
) -> tuple[str, str, Config]:
    """SQLite primary and archive URLs, 1,000 rows in the primary, batches of 200."""
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    make_chat_table(primary, 1000)
    config = make_config(
        {"primary": primary, "archive": archive},
        [policy("chat_messages", batch_size=200)],
        worker=WorkerConfig(batch_time=0, in_database=in_database),
    )
    return primary, archive, config


@pytest.mark.parametrize("in_database", [False, True], ids=["rows", "in_database"])
def test_a_batch_is_deleted_while_the_next_one_is_copied(tmp_path: Path, in_database: bool) -> None:
    """The delete of one batch runs beside the copy of the next, and the last batch is still
    deleted: every row moves exactly once."""
    primary, archive, config = _thousand_rows_in_batches_of_200(tmp_path, in_database=in_database)
    deletes: list[tuple[float, float]] = []
    creates: list[float] = []
    copy = "data/copy" if in_database else "data/create"

    async def scenario() -> None:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            create = daemon.data.bus.command(copy)
            delete = daemon.data.bus.command("data/delete")

            async def noted_create(params: JSONObject) -> JSONObject:
                creates.append(time.monotonic())
                return await create(params)

            async def slow_delete(params: JSONObject) -> JSONObject:
                began = time.monotonic()
                await asyncio.sleep(0.2)
                result = await delete(params)
                deletes.append((began, time.monotonic()))
                return result

            daemon.data.bus.register(copy, noted_create, replace=True)
            daemon.data.bus.register("data/delete", slow_delete, replace=True)
            await archive_now(daemon, "chat_messages", 1000)

    asyncio.run(scenario())

    assert len(creates) == len(deletes) == 5
    # Sequentially, batch k+1's copy would begin only after batch k's delete has ended.
    assert all(creates[k + 1] < deletes[k][1] for k in range(4)), (creates, deletes)
    assert count(primary) == 0
    assert count(archive) == 1000


def test_rows_deleted_beside_a_copy_count_even_when_the_next_delete_fails(
    tmp_path: Path,
) -> None:
    """The last batch is deleted right after its copy, which ran beside the previous batch's
    delete. When that last delete fails (and is retried), the previous batch's rows are
    still counted: the task moves exactly what it was asked to, not a batch more."""
    primary, archive, config = _thousand_rows_in_batches_of_200(tmp_path)
    calls: list[int] = []

    async def scenario() -> None:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            delete = daemon.data.bus.command("data/delete")

            async def third_delete_fails_once(params: JSONObject) -> JSONObject:
                calls.append(len(params["ids"]))  # type: ignore[arg-type]
                if len(calls) == 3:
                    raise DatabaseError("database error on handle 'primary': injected")
                return await delete(params)

            daemon.data.bus.register("data/delete", third_delete_fails_once, replace=True)
            record = await archive_now(daemon, "chat_messages", 500)
            assert record.state == "success" and record.archived == 500

    asyncio.run(scenario())

    assert calls[:3] == [200, 200, 100]  # the third: the last batch, deleted at once
    assert count(primary) == 500
    assert count(archive) == 500


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest, fresh_db: Callable[[str], str]) -> str:
    """A fresh database on each server engine in turn."""
    return fresh_db(str(request.param))


def test_data_load_counts_the_applications_sessions_not_archivists_own(
    server_url: str,
) -> None:
    """``others``: sessions besides archivist's that used the database within the last two
    seconds. The daemon's own connections (two handles on this one database among them)
    never count; an application session counts while it works and for 2 s after."""
    make_chat_table(server_url, 10)
    config = make_config({"primary": server_url, "same": server_url, "archive": "sqlite://"}, [])
    application = sa.create_engine(server_url)

    async def scenario() -> list[object]:
        seen: list[object] = []
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:

            async def load() -> object:
                await daemon.data.execute("data/load", {"dbHandle": "same"})
                return (await daemon.data.execute("data/load", {"dbHandle": "primary"}))["others"]

            seen.append(await load())
            with application.connect() as connection:
                connection.execute(sa.text("SELECT count(*) FROM chat_messages")).all()
                connection.commit()
                seen.append(await load())
                await asyncio.sleep(2.5)
                seen.append(await load())
        return seen

    try:
        assert asyncio.run(scenario()) == [0, 1, 0]
    finally:
        application.dispose()


def _application_writes(url: str, stop: threading.Event) -> None:
    """An application committing a row to a table of its own every 10 ms until ``stop``."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("CREATE TABLE IF NOT EXISTS app_log (note VARCHAR(20))"))
            connection.commit()
            while not stop.wait(0.01):
                connection.execute(sa.text("INSERT INTO app_log (note) VALUES ('working')"))
                connection.commit()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("application", "yield_ratio", "in_database"),
    [(True, 5.0, True), (True, 0.0, True), (False, 30.0, True), (False, 30.0, False)],
    ids=["yield", "no_yield", "alone", "alone_rows"],
)
def test_a_task_yields_to_an_application_writing_to_its_database(
    any_url: str, tmp_path: Path, application: bool, yield_ratio: float, in_database: bool
) -> None:
    """While the application commits to the source database, the task rests yield_ratio
    times each batch's duration and `archivist status` says why; with 0 it never does, and
    without an application (the daemon's own connections alone, rows copied inside the
    database or through the worker) it never has a reason to. Every row moves, once."""
    make_chat_table(any_url, 6000)
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    config = make_config(
        {"primary": any_url, "archive": archive},
        [policy(batch_size=100, max_rows=6000)],
        worker=WorkerConfig(batch_time=0, yield_ratio=yield_ratio, in_database=in_database),
    )
    stop = threading.Event()
    writer = threading.Thread(target=_application_writes, args=(any_url, stop))
    if application:
        writer.start()

    async def scenario() -> set[object]:
        reasons: set[object] = set()
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            job = asyncio.create_task(archive_now(daemon, "chat_messages", 6000))
            while not job.done():
                with contextlib.suppress(AssertionError):  # before or after the task
                    reasons.add((await worker_task(daemon))["throttled"])
                await asyncio.sleep(0.01)
            assert (await job).archived == 6000
        return reasons

    try:
        time.sleep(0.2)  # the application is at work before archivist starts
        reasons = asyncio.run(scenario())
    finally:
        stop.set()
        if application:
            writer.join(30)
    yielded = {reason for reason in reasons if str(reason).startswith("yielding")}
    if application and yield_ratio:
        assert yielded == {"yielding to 1 other session using primary"}
    else:
        assert not yielded  # (a slow probe on a loaded machine may hold a batch, rightly)
    assert count(any_url) == 0 and count(archive) == 6000


def test_a_yielding_rest_lasts_while_the_application_works_and_ends_when_it_stops(
    any_url: str, tmp_path: Path
) -> None:
    """A yielding rest is ``yield_ratio`` times the batch (here, hours): the task reads the
    load again while it rests. While the application keeps committing, the rest goes on (on
    SQLite too, where no delete of the task's own is there to see the application's
    commits); once the application has been quiet for 2 s, the task stops resting and
    moves the remaining rows at full speed, instead of sleeping the rest out."""
    make_chat_table(any_url, 6000)
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    config = make_config(
        {"primary": any_url, "archive": archive},
        [policy(batch_size=100, max_rows=6000)],
        worker=WorkerConfig(batch_time=0, yield_ratio=1_000_000),
    )
    stop = threading.Event()
    writer = threading.Thread(target=_application_writes, args=(any_url, stop))
    writer.start()

    async def scenario() -> tuple[list[dict[str, object]], int]:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            job = asyncio.create_task(archive_now(daemon, "chat_messages", 6000))
            seen: dict[str, object] = {"throttled": None}
            while not str(seen["throttled"]).startswith("yielding"):
                assert not job.done(), "the task finished without yielding to the application"
                await asyncio.sleep(0.01)
                with contextlib.suppress(AssertionError):  # not queued yet (a loaded machine)
                    seen = await worker_task(daemon)
            resting = [seen]
            for _ in range(8):  # 4 s: twice the time an idle session still counts as active
                await asyncio.sleep(0.5)
                resting.append(await worker_task(daemon))
            stop.set()
            record = await asyncio.wait_for(job, 60)
        return resting, record.archived

    try:
        time.sleep(0.2)  # the application is at work before archivist starts
        resting, archived = asyncio.run(scenario())
    finally:
        stop.set()
        writer.join(30)
    assert {state["archived"] for state in resting} == {resting[0]["archived"]}, resting
    assert {state["throttled"] for state in resting} == {
        "yielding to 1 other session using primary"
    }, resting
    assert int(str(resting[0]["archived"])) < 6000  # (a batch's delete may wait for the next)
    assert archived == 6000
    assert count(any_url) == 0 and count(archive) == 6000


_ANOTHER_ARCHIVIST = """
import sys, time
from archivist.data.handles import create_engine
import sqlalchemy as sa
engine = create_engine(sys.argv[1])
with engine.connect() as connection:
    print("connected", flush=True)
    while True:
        connection.execute(sa.text("SELECT 1")).all()
        connection.commit()
        time.sleep(0.1)
"""


def test_data_load_does_not_count_another_archivists_sessions(
    fresh_db: Callable[[str], str],
) -> None:
    """Several archivist daemons on one database (PostgreSQL): another archivist process's
    data session, busy the whole time, is not the application (its ``application_name``
    says archivist); an application session still counts."""
    url = fresh_db("postgresql")
    make_chat_table(url, 10)
    config = make_config({"primary": url, "archive": "sqlite://"}, [])
    other = subprocess.Popen(
        [sys.executable, "-c", _ANOTHER_ARCHIVIST, url], stdout=subprocess.PIPE, text=True
    )
    application = sa.create_engine(url)

    async def scenario() -> list[object]:
        seen: list[object] = []
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:

            async def load() -> object:
                return (await daemon.data.execute("data/load", {"dbHandle": "primary"}))["others"]

            seen.append(await load())
            with application.connect() as connection:
                connection.execute(sa.text("SELECT count(*) FROM chat_messages")).all()
                connection.commit()
                seen.append(await load())
        return seen

    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "connected"
        assert asyncio.run(scenario()) == [0, 1]
    finally:
        other.kill()
        other.wait(10)
        application.dispose()
