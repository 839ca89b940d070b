"""What is paused in a daemon (every policy, or some collections), by whom and since when.

`Pauses` is a small state object with no I/O of its own besides its file: `archivist pause`
and `resume` (through the control socket, `archivist.daemon.control`) and an embedding
application (`archivist.Daemon.pause`) change it, and the daemon asks `reason` before it
queues a task or lets one start another batch. The state is kept in a JSON file beside the
control socket, so that a paused daemon that restarts (a deploy, ``systemctl restart``)
stays paused; the file is replaced atomically.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import logging
import os
import socket
from pathlib import Path

import msgspec

from archivist.errors import StillPaused

log = logging.getLogger(__name__)


class Pause(msgspec.Struct, frozen=True):
    by: str
    """Who paused: ``user@host/pid`` of the pausing command (or the embedding process)."""
    since: float
    """When (seconds since the epoch)."""

    def describe(self) -> str:
        at = dt.datetime.fromtimestamp(self.since, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"paused by {self.by} since {at}"

    def as_json(self) -> dict[str, object]:
        return {"by": self.by, "since": self.since}


def who() -> str:
    """``user@host/pid`` of this process: what a pause records as its author."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}/{os.getpid()}"


class Pauses:
    """Pauses of every policy (``everything``) and of single collections."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        """The state file (None: kept in memory only, lost when the daemon stops)."""
        self.everything: Pause | None = None
        self.collections: dict[str, Pause] = {}

    def reason(self, collection: str) -> str | None:
        """Why ``collection`` may not move now ("paused by al@db1/4242 since ..."), or None."""
        if self.everything is not None:
            return f"{self.everything.describe()} (every policy)"
        pause = self.collections.get(collection)
        return pause.describe() if pause is not None else None

    def pause(self, collection: str | None, by: str, at: float) -> bool:
        """Pause ``collection`` (None: every policy); False if it was paused already (the
        first pause, its author and time, are kept)."""
        if collection is None:
            if self.everything is not None:
                return False
            self.everything = Pause(by, at)
        else:
            if collection in self.collections:
                return False
            self.collections[collection] = Pause(by, at)
        self._save()
        return True

    def resume(self, collection: str | None) -> list[str]:
        """Undo pauses: of ``collection``, or (None) every pause there is. Answers what was
        resumed (``"*"`` for the pause of every policy). `StillPaused` if ``collection``
        would stay paused because every policy is."""
        if collection is None:
            resumed = (["*"] if self.everything is not None else []) + sorted(self.collections)
            self.everything = None
            self.collections.clear()
        else:
            if self.everything is not None:
                raise StillPaused(
                    f"every policy is {self.everything.describe()}; {collection} stays paused "
                    "until `archivist resume` (without a collection) resumes them all"
                )
            resumed = [collection] if self.collections.pop(collection, None) else []
        if resumed:
            self._save()
        return resumed

    def as_json(self) -> dict[str, object]:
        return {
            "all": self.everything.as_json() if self.everything is not None else None,
            "collections": {name: p.as_json() for name, p in sorted(self.collections.items())},
        }

    # --- the state file ------------------------------------------------------------------

    def load(self, known: set[str]) -> None:
        """Read the state file left by an earlier daemon; pauses of collections that have no
        policy any more are dropped (with a log line)."""
        if self.path is None:
            return
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable pause state %s: %s", self.path, exc)
            return
        everything = _pause_of(document.get("all")) if isinstance(document, dict) else None
        collections = document.get("collections") if isinstance(document, dict) else None
        self.everything = everything
        if isinstance(collections, dict):
            for name, value in collections.items():
                pause = _pause_of(value)
                if pause is None:
                    continue
                if name not in known:
                    log.warning("dropping the pause of %s: no policy has that collection", name)
                    continue
                self.collections[name] = pause
        if self.everything is not None:
            log.info("every policy: still %s (archivist resume)", self.everything.describe())
        for name, pause in sorted(self.collections.items()):
            log.info("%s: still %s (archivist resume %s)", name, pause.describe(), name)

    def _save(self) -> None:
        if self.path is None:
            return
        if self.everything is None and not self.collections:
            with contextlib.suppress(OSError):
                self.path.unlink()
            return
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(self.as_json()), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            # The pause holds in this daemon all the same; only a restart would forget it.
            log.warning("cannot keep the pause state in %s: %s", self.path, exc.strerror or exc)


def _pause_of(value: object) -> Pause | None:
    if not isinstance(value, dict):
        return None
    by, since = value.get("by"), value.get("since")
    if not isinstance(by, str) or not isinstance(since, int | float):
        return None
    return Pause(by, float(since))
