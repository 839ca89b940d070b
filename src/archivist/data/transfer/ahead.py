"""Moves ahead: the page after a move's, moved while that move finishes and held
uncommitted until the worker asks for it.

A worker that moves a task's rows (``data/copy`` with ``move``) asks for the next page
as soon as it has the answer for this one; with ``ahead`` it says so. The daemon knows
where the next page starts once this move has read its page, so it moves that page
beside it, on other connections of both databases: the source's delete, the archive's
copy and its check, everything but the two commits. The next request that names exactly
that page (the same parameters, the cursor the daemon answered) claims it: the archive
commits, then the source, as in any move. Any other request, or none within `HOLD_FOR`
seconds of the held move being ready, rolls both transactions back, and the page is
moved again when asked for.

Nothing is committed ahead: a crash at any instant leaves a held move's rows in the
source alone, and a move is claimed only by a request, which the mover lock guards like
any other (`archivist.daemon.movers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from archivist.data.values import JSONObject

log = logging.getLogger(__name__)

HOLD_FOR: Final = 0.2
"""Seconds a move made ahead waits, ready, for its request before it is rolled back. The
request comes a few milliseconds after the answer before it; while it waits, the held
rows stay locked in the source, as during any move."""

DEPTH: Final = 2
"""Moves held ahead of a collection's requests at most: the next page and the one after
it, so that a page is being moved while the one before waits for its request."""

SOURCES: Final = frozenset({"postgresql"})
"""Sources whose moves are made ahead. Not MariaDB/MySQL: a move's locking reads take
next-key locks, and the next page's move waits for the current one's (or the two
deadlock), which made moves 3-6x slower (50,000 rows, 2026-12-07)."""

Page = tuple[list[object], Sequence[object] | None]
"""A page's keys and its last row (the next cursor's row)."""


class Dropped(Exception):
    """A move ahead rolled back: not asked for in time, asked for with other parameters,
    or its copies were not the rows taken (the request then moves them itself). Not an
    `ArchivistError`: the handle lets it through as it is."""


@dataclass(eq=False)
class Ahead:
    """What a move is told about moving ahead (`piped_pg.move_rows`)."""

    on_page: Callable[[Page], None] | None = None
    """Called, from the move's thread, with the page once it is read."""
    held: Held | None = None
    """This move is itself a move ahead: it waits for its request before it commits."""


@dataclass(eq=False)
class Held:
    """A move made ahead of its request, waiting (in its thread) to be claimed."""

    expected: str
    """The request that claims it (`signature`)."""
    page: Page | None = None
    """Its page, once read (the next move ahead starts after it)."""
    follow: Callable[[Page], None] | None = None
    """Claimed before its page was read: what to do with the page then."""
    task: asyncio.Task[tuple[list[object], Sequence[object] | None, int] | None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _decided: threading.Event = field(default_factory=threading.Event)
    _commit: bool = False
    _expired: bool = False

    def wait(self) -> bool:
        """From the move's thread, once its copies are checked: whether to commit (claimed)
        or roll back (`Dropped`; not claimed within `HOLD_FOR`)."""
        if not self._decided.wait(HOLD_FOR):
            with self._lock:
                if not self._decided.is_set():
                    self._expired = True
                    return False
        return self._commit

    def decide(self, commit: bool) -> bool:
        """Claim it (``commit``) or drop it; False when it expired first."""
        with self._lock:
            if self._expired or self._decided.is_set():
                return False
            self._commit = commit
            self._decided.set()
            return commit

    async def outcome(self) -> tuple[list[object], Sequence[object] | None, int] | None:
        """Its page and the rows it deleted once it has ended; None when it was rolled back
        or failed (then the request moves the page itself)."""
        assert self.task is not None
        try:
            return await self.task
        except Exception as exc:  # any failure: the request runs the move as usual
            log.debug("a move ahead failed; the page is moved when asked for: %r", exc)
            return None


def hold(ahead: Ahead | None, stands: bool) -> None:
    """In a move, once the archive's copies are checked and before it commits: a move made
    ahead waits for its request, and rolls both transactions back (`Dropped`) unless the
    copies stand and it is claimed in time. Any other move goes on."""
    held = ahead.held if ahead is not None else None
    if held is not None and not (stands and held.wait()):
        raise Dropped


def depth(ahead: bool | int, limit: int) -> int:
    """How many pages of ``limit`` rows may be moved ahead of a request whose ``ahead`` is
    this: `DEPTH`, and no more whole pages than the rows the caller says will follow."""
    if ahead is True:
        return DEPTH
    return min(DEPTH, int(ahead) // limit)


def signature(params: JSONObject, cursor: JSONObject | None = None) -> str:
    """A ``data/copy`` request's parameters as one text, ``ahead`` left out; with
    ``cursor``, those of the request for the page after it."""
    named = {key: value for key, value in params.items() if key != "ahead"}
    if cursor is not None:
        named["cursor"] = cursor
    return json.dumps(named, sort_keys=True, separators=(",", ":"))


async def drop(held: Held) -> None:
    """Roll ``held`` back and wait until it has (its rows are free again)."""
    held.decide(False)
    with contextlib.suppress(Exception):
        await held.outcome()
