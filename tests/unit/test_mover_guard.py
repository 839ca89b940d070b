"""The daemon's mover locks (`archivist.daemon.movers`) on an in-memory lock: which of the
worker's commands run, which are refused, when a lock is let go, and how the policy loop
takes it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from archivist.daemon.movers import MOVING_COMMANDS, PROBE_FRESH, HeldLock, Movers
from archivist.daemon.service import ArchiveDaemon, DaemonOptions
from archivist.data.registry import make_entity
from archivist.errors import MoverBusy, MoverLost
from archivist.protocol import JSONObject


class FakeLock:
    def __init__(self) -> None:
        self.where = "fake"
        self.live = True
        self.released = False

    async def alive(self) -> bool:
        return self.live

    async def release(self) -> None:
        self.released = True


class Locks:
    """Takes fake locks; `busy` collections are held by someone else."""

    def __init__(self) -> None:
        self.taken: dict[str, FakeLock] = {}
        self.busy: set[str] = set()

    async def take(self, collection: str) -> HeldLock:
        if collection in self.busy:
            error = MoverBusy(
                f"{collection} is being archived by another archivist: held by host:1"
            )
            error.holder = "host:1"
            raise error
        self.taken[collection] = FakeLock()
        return self.taken[collection]


def _movers() -> tuple[Movers, Locks]:
    locks = Locks()
    return Movers(locks.take, ["chat_messages", "orders"]), locks


async def _ok() -> str:
    return "ran"


def test_moving_commands_of_a_collection_not_held_are_refused_and_reads_pass() -> None:
    movers, _ = _movers()

    async def run() -> None:
        for command in sorted(MOVING_COMMANDS):
            with pytest.raises(MoverLost, match="does not hold the mover lock of chat_messages"):
                await movers.guard(command, {"collection": "chat_messages"}, _ok)
        for command in ("data/list", "data/count", "data/load", "ping"):
            assert await movers.guard(command, {"collection": "chat_messages"}, _ok) == "ran"
        # Not a policy's collection: the data layer answers it (unknown_collection).
        assert await movers.guard("data/delete", {"collection": "secrets"}, _ok) == "ran"

    asyncio.run(run())


def test_a_held_lock_lets_its_commands_run_and_a_lost_one_stops_them() -> None:
    movers, locks = _movers()

    async def run() -> None:
        await movers.take("chat_messages")
        assert await movers.guard("data/copy", {"collection": "chat_messages"}, _ok) == "ran"
        with pytest.raises(MoverLost):  # another collection's lock is not this one's
            await movers.guard("data/copy", {"collection": "orders"}, _ok)
        locks.taken["chat_messages"].live = False
        locks.busy.add("chat_messages")  # ... and another process took it meanwhile
        with pytest.raises(MoverLost, match=r"was lost .* another archivist has it now: host:1"):
            await movers.guard("data/delete", {"collection": "chat_messages"}, _ok)
        assert not movers.holds("chat_messages")
        locks.busy.clear()  # free again: still not this task's to take
        with pytest.raises(MoverLost, match="does not hold"):
            await movers.guard("data/delete", {"collection": "chat_messages"}, _ok)

    asyncio.run(run())


def test_a_command_at_once_after_another_uses_the_look_begun_as_that_one_ended() -> None:
    """The lock's session is looked at as each command ends; the next command waits for
    that look (nothing more) if it comes within PROBE_FRESH, and looks again later."""
    movers, locks = _movers()

    async def run() -> None:
        await movers.take("chat_messages")
        lock = locks.taken["chat_messages"]
        looks = 0

        async def alive() -> bool:
            nonlocal looks
            looks += 1
            return lock.live

        lock.alive = alive  # type: ignore[method-assign]
        copy = {"collection": "chat_messages"}
        assert await movers.guard("data/copy", copy, _ok) == "ran"
        assert looks == 1  # before it; the look begun as it ended has not run yet
        assert await movers.guard("data/copy", copy, _ok) == "ran"
        assert looks == 2  # that look stood for this command
        await asyncio.sleep(PROBE_FRESH + 0.02)
        assert looks == 3  # the look begun as the second ended, too old for the third:
        assert await movers.guard("data/copy", copy, _ok) == "ran"
        assert looks == 4  # it looked again
        lock.live = False  # lost before the look begun as it ended ran, and taken by another
        locks.busy.add("chat_messages")
        with pytest.raises(MoverLost, match="another archivist has it now"):
            await movers.guard("data/copy", copy, _ok)
        assert looks == 5
        await movers.release_all()

    asyncio.run(run())


def test_a_lock_lost_and_free_is_taken_again_before_the_next_batch() -> None:
    """The source database restarted (every session ended) and nobody else took the lock:
    the task goes on under the lock taken again."""
    movers, locks = _movers()

    async def run() -> None:
        await movers.take("chat_messages")
        first = locks.taken["chat_messages"]
        first.live = False
        assert await movers.guard("data/copy", {"collection": "chat_messages"}, _ok) == "ran"
        assert movers.holds("chat_messages") and locks.taken["chat_messages"] is not first
        await movers.release_all()

    asyncio.run(run())


def test_a_busy_collection_is_not_held_and_the_error_names_the_holder() -> None:
    movers, locks = _movers()
    locks.busy.add("orders")

    async def run() -> None:
        with pytest.raises(MoverBusy) as caught:
            await movers.take("orders")
        assert caught.value.holder == "host:1"
        assert not movers.holds("orders")

    asyncio.run(run())


def test_a_lock_is_let_go_when_its_record_ends_and_all_when_the_daemon_stops() -> None:
    movers, locks = _movers()

    async def run() -> None:
        await movers.take("chat_messages")
        await movers.take("orders")
        await movers.take("orders")  # held already: not taken twice
        done = asyncio.Event()
        movers.release_when("chat_messages", done)
        await asyncio.sleep(0)
        assert movers.holds("chat_messages")
        done.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert not movers.holds("chat_messages") and locks.taken["chat_messages"].released
        await movers.release_all()
        assert not movers.holds("orders") and locks.taken["orders"].released

    asyncio.run(run())


# --- the policy loop and the lock -------------------------------------------------------------


class Source:
    """The DataDaemon as the ArchiveDaemon sees it: row counts, and a mover lock that
    ``other`` holds (MoverBusy) or that is handed over once ``moved_meanwhile`` rows
    counts have been set by the previous holder."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.locks = Locks()
        self.moved_meanwhile: int | None = None
        self.ensured: list[str] = []

    async def execute(self, name: str, params: JSONObject, *, caller: str = "local") -> JSONObject:
        assert name in ("data/count", "data/size")
        if name == "data/size":
            return {"rows": self.count, "exact": True, "method": "count"}
        return {"count": self.count}

    async def ensure_archive_table(self, collection: str) -> None:
        self.ensured.append(collection)

    async def take_mover(self, collection: str) -> HeldLock:
        lock = await self.locks.take(collection)
        if self.moved_meanwhile is not None:
            # The previous mover finished just before we got the lock.
            self.count = self.moved_meanwhile
        return lock


def _daemon(source: Source) -> ArchiveDaemon:
    policy = make_entity("chat_messages", order_by="created_at", max_rows=100, rows_per_archive=20)
    return ArchiveDaemon(source, [policy], DaemonOptions(socket_path=Path("unused.sock")))


def test_a_collection_another_process_moves_is_skipped_this_cycle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source(3000)
    source.locks.busy.add("chat_messages")
    daemon = _daemon(source)
    with caplog.at_level(logging.INFO, logger="archivist.daemon.service"):
        assert asyncio.run(daemon.check_once()) == []
    assert source.ensured == [] and not daemon.movers.holds("chat_messages")
    assert any(
        "chat_messages: skipped this cycle" in r.getMessage() and "host:1" in r.getMessage()
        for r in caplog.records
    )


def test_rows_are_counted_again_once_the_lock_is_ours() -> None:
    """3,000 rows when first counted; by the time the lock is ours the other mover has
    brought the table to 80: nothing to move (a count from before would move all 80)."""
    source = Source(3000)
    source.moved_meanwhile = 80
    daemon = _daemon(source)
    assert asyncio.run(daemon.check_once()) == []
    assert source.ensured == []
    assert not daemon.movers.holds("chat_messages")
    assert source.locks.taken["chat_messages"].released


def test_a_task_is_queued_under_the_lock_with_the_rows_counted_under_it() -> None:
    source = Source(3000)
    source.moved_meanwhile = 150
    daemon = _daemon(source)
    queued = asyncio.run(daemon.check_once())
    assert [(r.collection, r.max_rows) for r in queued] == [("chat_messages", 70)]
    assert daemon.movers.holds("chat_messages")


def test_the_heartbeat_notices_a_lost_lock_while_the_task_rests() -> None:
    locks = Locks()
    movers = Movers(locks.take, ["chat_messages"], heartbeat=0.01)

    async def run() -> None:
        await movers.take("chat_messages")
        await asyncio.sleep(0.05)
        assert movers.holds("chat_messages")  # alive: kept
        locks.taken["chat_messages"].live = False
        await asyncio.sleep(0.05)
        assert not movers.holds("chat_messages")
        assert locks.taken["chat_messages"].released  # what was left of it is let go
        await movers.release_all()

    asyncio.run(run())


def test_a_record_that_ends_after_a_later_one_took_its_place_leaves_the_lock_alone() -> None:
    movers, locks = _movers()

    async def run() -> None:
        await movers.take("chat_messages")
        first, second = asyncio.Event(), asyncio.Event()
        movers.release_when("chat_messages", first)
        movers.release_when("chat_messages", second)  # the lock is the later record's now
        first.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert movers.holds("chat_messages") and not locks.taken["chat_messages"].released
        second.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert not movers.holds("chat_messages") and locks.taken["chat_messages"].released

    asyncio.run(run())
