"""The daemon's mover locks: which collections this process moves now, and the guard on the
worker's data commands that stops a task whose lock was lost.

A collection's lock (`archivist.data.locks`) is taken before its task is sent to the
worker and let go when the task's record has ended. Every command the worker sends that
moves rows of a collection (`MOVING_COMMANDS`) is first checked against the lock: one this
daemon does not hold, or no longer holds (its session was cut: another mover may have it
now), is refused with ``mover_lost``, which the worker does not retry, so no batch of a
collection runs while another process moves it. Reads (``data/list``, ``data/count``)
change nothing and pass. The look at the lock's session starts as the previous command
ends, while its answer travels to the worker and the next request comes back; a command
arriving more than `PROBE_FRESH` after that look began has a look of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Final, Protocol, TypeVar

from archivist.errors import MoverBusy, MoverLost

log = logging.getLogger(__name__)

T = TypeVar("T")

HEARTBEAT_INTERVAL: Final = 10.0
"""Seconds between two looks at each held lock's session while its task rests: a lost lock
is noticed (and logged) then, not only at the next batch, and the session is never idle
long enough for MariaDB's ``wait_timeout`` of the lock session (`archivist.data.locks`),
which is what frees the lock of a host that vanished."""
PROBE_FRESH: Final = 0.05
"""Seconds a look at a lock's session, started as a command ended, stands for the next
command: a batch following at once (the worker neither rests nor lists) is not held up
by it; one that follows later looks again."""
MOVING_COMMANDS: Final = frozenset({"data/create", "data/copy", "data/delete", "data/relay"})
"""The worker's commands that write rows: each runs only under its collection's lock."""


class HeldLock(Protocol):
    """A mover lock as the daemon holds it (`archivist.data.locks.MoverLock`)."""

    @property
    def where(self) -> str: ...

    async def alive(self) -> bool: ...

    async def release(self) -> None: ...


class Movers:
    """The mover locks this daemon holds, by collection."""

    def __init__(
        self,
        take: Callable[[str], Awaitable[HeldLock]],
        collections: Collection[str],
        *,
        heartbeat: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self._take = take
        self._collections = frozenset(collections)
        self._held: dict[str, HeldLock] = {}
        self._releases: set[asyncio.Task[None] | asyncio.Task[bool]] = set()
        """Tasks of ours still running (releases, looks at a lock), kept until they end."""
        self._heartbeat = heartbeat
        self._beats: dict[str, asyncio.Task[None]] = {}
        self._owners: dict[str, asyncio.Event] = {}
        """Whose lock it is: the ``done`` of the record it was taken for."""
        self._lost_locks: set[str] = set()
        """Collections whose lock was lost while their task ran: taken again, if nobody
        else has it, before their next moving command."""
        self._probes: dict[str, tuple[float, HeldLock, asyncio.Task[bool]]] = {}
        """A look at each lock's session started as a command ended: when, and on which
        lock (`PROBE_FRESH`)."""

    def holds(self, collection: str) -> bool:
        return collection in self._held

    async def take(self, collection: str) -> None:
        """Hold ``collection``'s lock (if not held already); MoverBusy names the holder."""
        if collection in self._held:
            return
        lock = await self._take(collection)  # MoverBusy when another process holds it
        self._held[collection] = lock
        self._beats[collection] = asyncio.get_running_loop().create_task(
            self._beat(collection, lock), name=f"mover-heartbeat-{collection}"
        )
        log.info(
            "%s: this process (pid %d) is its mover now (%s)", collection, os.getpid(), lock.where
        )

    async def release(self, collection: str) -> None:
        """Let ``collection``'s lock go."""
        self._lost_locks.discard(collection)
        self._owners.pop(collection, None)
        self._probes.pop(collection, None)
        beat = self._beats.pop(collection, None)
        if beat is not None and beat is not asyncio.current_task():
            beat.cancel()
        lock = self._held.pop(collection, None)
        if lock is not None:
            await lock.release()
            log.debug("%s: mover lock released", collection)

    def release_when(self, collection: str, done: asyncio.Event) -> None:
        """Let ``collection``'s lock go once ``done`` is set (its task's record ended),
        unless a later record's has taken its place."""
        self._owners[collection] = done

        async def wait_and_release() -> None:
            await done.wait()
            if self._owners.get(collection) is done:
                await self.release(collection)

        task = asyncio.get_running_loop().create_task(wait_and_release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def release_all(self) -> None:
        for task in list(self._releases):
            task.cancel()
        for collection in list(self._held):
            await self.release(collection)

    async def _beat(self, collection: str, lock: HeldLock) -> None:
        while self._held.get(collection) is lock:
            await asyncio.sleep(self._heartbeat)
            if self._held.get(collection) is lock and not await lock.alive():
                self._lost(collection, lock)

    def _lost(self, collection: str, lock: HeldLock) -> None:
        """Forget a lock found lost (said once, by the first to find it)."""
        if self._held.get(collection) is not lock:
            return
        del self._held[collection]
        self._probes.pop(collection, None)
        self._lost_locks.add(collection)
        task = asyncio.get_running_loop().create_task(lock.release())  # what is left of it
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        log.warning(
            "%s: the mover lock (%s) was lost; no batch moves until it is taken again, which "
            "another mover may do first",
            collection,
            lock.where,
        )

    async def _take_again(self, collection: str, target: str) -> None:
        """Before a moving command of a task whose lock was lost (its session ended: the
        database restarted, say): take the lock again if nobody else has it. A database
        still down is a DatabaseError, which the worker retries; another holder stops the
        task (MoverLost). A lock this daemon never held for a task is refused."""
        if collection not in self._lost_locks:
            raise MoverLost(
                f"{target} refused: this daemon does not hold the mover lock of {collection}"
            )
        try:
            await self.take(collection)
        except MoverBusy as exc:
            self._lost_locks.discard(collection)
            raise MoverLost(
                f"{target} refused: the mover lock of {collection} was lost (its database "
                f"session ended) and another archivist has it now: {exc.holder}"
            ) from None
        self._lost_locks.discard(collection)
        log.warning("%s: the mover lock was taken again; its task goes on", collection)

    async def guard(
        self, target: str, params: dict[str, object], run: Callable[[], Awaitable[T]]
    ) -> T:
        """Run a worker's command that moves rows if its collection's lock is still ours;
        refuse it with MoverLost if not. Each command's start and end are logged (debug) with this
        process's id and the wall clock, so that two movers' logs can be laid side by side."""
        collection = params.get("collection")
        if (
            target not in MOVING_COMMANDS
            or not isinstance(collection, str)
            or collection not in self._collections
        ):
            return await run()
        lock = self._held.get(collection)
        if lock is not None and not await self._still_held(collection, lock):
            self._lost(collection, lock)
            lock = None
        if lock is None:
            await self._take_again(collection, target)
        pid = os.getpid()
        log.debug(
            "mover step begin collection=%s pid=%d command=%s at=%.6f",
            collection,
            pid,
            target,
            time.time(),
        )
        try:
            return await run()
        finally:
            log.debug(
                "mover step end collection=%s pid=%d command=%s at=%.6f",
                collection,
                pid,
                target,
                time.time(),
            )
            held = self._held.get(collection)
            if held is not None and collection not in self._probes:
                probe = asyncio.get_running_loop().create_task(held.alive())
                self._probes[collection] = (time.monotonic(), held, probe)
                self._releases.add(probe)  # kept until it ends, whether used or not
                probe.add_done_callback(self._releases.discard)

    async def _still_held(self, collection: str, lock: HeldLock) -> bool:
        """Whether ``lock`` is held still: by the look started as the last command ended,
        if it began within `PROBE_FRESH`, else by a look now."""
        probe = self._probes.pop(collection, None)
        if probe is not None:
            began, probed, looking = probe
            if probed is lock and time.monotonic() - began <= PROBE_FRESH:
                return await looking
        return await lock.alive()
