"""examples/embed.py, run end to end as a user runs it: `archivist.Daemon` inside an
asyncio application, on SQLite files, with its worker as a child process and in process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

import archivist
from archivist.errors import ArchivistError
from e2esupport import count, ids, make_chat_table, policy

pytestmark = pytest.mark.timeout(240)

EXAMPLE = Path(__file__).parents[2] / "examples" / "embed.py"


@pytest.mark.parametrize("worker", ["process", "inline"])
def test_the_embedding_example_keeps_the_table_small_pauses_and_stops(
    socket_dir: Path, worker: str
) -> None:
    args = [sys.executable, str(EXAMPLE), "--dir", str(socket_dir)]
    done = subprocess.run(
        args + (["--inline"] if worker == "inline" else []),
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("chat_messages: paused (paused by nightly-maintenance since ")
    assert lines[-1] == "daemon stopped"
    wrote = lines[1].split()
    written, held = int(wrote[3]), int(wrote[-1])
    primary, archive = (
        f"sqlite:///{socket_dir / 'app.db'}",
        f"sqlite:///{socket_dir / 'archive.db'}",
    )
    assert held <= 200 and count(primary) == held
    assert ids(primary) | ids(archive) == set(range(1, 1000 + written + 1))
    assert not ids(primary) & ids(archive)
    assert "Traceback" not in done.stderr


def test_a_start_up_error_is_raised_by_start_and_leaves_nothing_running(tmp_path: Path) -> None:
    config = archivist.make_config(
        {"primary": f"sqlite:///{tmp_path / 'missing' / 'app.db'}", "archive": "sqlite://"},
        [policy()],
    )

    async def start_it() -> set[asyncio.Task[object]]:
        daemon = archivist.Daemon(config, worker="inline", control=False)
        with pytest.raises(ArchivistError, match="primary"):
            await daemon.start()
        assert not daemon.running
        with pytest.raises(RuntimeError, match="not running; await start"):
            daemon.status()
        await daemon.stop()  # nothing to stop: no error
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(start_it()) == set()


def test_status_pause_and_resume_as_methods_with_an_inline_worker(tmp_path: Path) -> None:
    primary, archive = f"sqlite:///{tmp_path / 'p.db'}", f"sqlite:///{tmp_path / 'a.db'}"
    make_chat_table(primary, 300)
    config = archivist.make_config(
        {"primary": primary, "archive": archive},
        [policy(max_rows=100, rows_per_archive=10, batch_size=50)],
    )

    async def use_it() -> None:
        async with archivist.Daemon(config, worker="inline", watch=False, control=False) as daemon:
            await daemon.pause("chat_messages", by="test")
            assert await daemon.check() == []  # paused: nothing queued
            (paused,) = daemon.status()["policies"]
            assert (paused["state"], paused["reason"].split(" since ")[0]) == (
                "paused",
                "paused by test",
            )
            await daemon.resume("chat_messages")
            (task,) = await daemon.check()
            assert task["collection"] == "chat_messages"
            (done,) = daemon.status()["tasks"]
            assert (done["state"], done["archived"]) == ("success", 210)

    asyncio.run(use_it())
    assert count(primary) == 90 and count(archive) == 210


def test_a_start_given_up_on_leaves_nothing_running(tmp_path: Path) -> None:
    primary, archive = f"sqlite:///{tmp_path / 'p.db'}", f"sqlite:///{tmp_path / 'a.db'}"
    make_chat_table(primary, 10)
    config = archivist.make_config({"primary": primary, "archive": archive}, [policy()])

    async def give_up() -> set[asyncio.Task[object]]:
        daemon = archivist.Daemon(config, worker="inline", control=False)
        starting = asyncio.create_task(daemon.start())
        await asyncio.sleep(0)  # start() has begun: its background task exists
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert not daemon.running
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(give_up()) == set()
