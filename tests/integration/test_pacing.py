"""Gentleness through real processes: load readings, the pause file, one budget per database."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from archivist.config import WorkerConfig, make_config
from archivist.daemon.runtime import Launch, archive_now, running
from archivist.daemon.service import ArchiveDaemon
from archivist.data.bus import JSONObject
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


def test_tasks_on_one_database_write_one_batch_at_a_time(tmp_path: Path) -> None:
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    names = ("chat_messages", "audit_log", "events")
    for name in names:
        make_chat_table(primary, 1500, name)
    config = make_config(
        {"primary": primary, "archive": archive},
        [policy(name, batch_size=100) for name in names],
        worker=WorkerConfig(concurrency=3, batch_time=0),
    )
    writes: list[tuple[str, float, float]] = []

    async def scenario() -> None:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            create = daemon.data.bus.command("data/create")
            delete = daemon.data.bus.command("data/delete")
            opened: dict[str, float] = {}

            async def timed_create(params: JSONObject) -> JSONObject:
                opened[str(params["collection"])] = time.monotonic()
                await asyncio.sleep(0.005)
                return await create(params)

            async def timed_delete(params: JSONObject) -> JSONObject:
                result = await delete(params)
                name = str(params["collection"])
                writes.append((name, opened[name], time.monotonic()))
                return result

            daemon.data.bus.register("data/create", timed_create, replace=True)
            daemon.data.bus.register("data/delete", timed_delete, replace=True)
            await asyncio.gather(*(archive_now(daemon, name, 1500) for name in names))

    asyncio.run(scenario())

    assert len(writes) == 45
    assert {name for name, _, _ in writes} == set(names)
    ordered = sorted(writes, key=lambda w: w[1])
    for (_, _, end), (_, start, _) in itertools.pairwise(ordered):
        assert start >= end, "two batches wrote to the primary at the same time"
