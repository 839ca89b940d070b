"""The command bus: named async commands, ``execute(name, params)``, and the allowlist that
limits what a caller over the socket (the worker) may run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final, Literal, TypeAlias

from archivist.errors import ArchivistError, Forbidden, InvalidParams, UnknownCommand
from archivist.protocol import with_rows_decoded

log = logging.getLogger(__name__)

JSONObject: TypeAlias = dict[str, object]
Command: TypeAlias = Callable[[JSONObject], Awaitable[JSONObject]]
Caller: TypeAlias = Literal["local", "worker"]

WORKER_ALLOWLIST: Final = frozenset(
    {
        "ping",
        "data/list",
        "data/count",
        "data/create",
        "data/delete",
        "data/load",
        "data/copy",
        "data/relay",
    }
)


class CommandBus:
    """A registry of named async commands. Local callers may run any of them; the worker only
    those on the allowlist (anything else is ``forbidden``)."""

    def __init__(self, *, worker_allowlist: Iterable[str] = WORKER_ALLOWLIST) -> None:
        self._commands: dict[str, Command] = {}
        self._raw_rows: set[str] = set()
        self.worker_allowlist = frozenset(worker_allowlist)

    def register(
        self, name: str, fn: Command, *, replace: bool = False, raw_rows: bool = False
    ) -> None:
        """Register ``fn`` as ``name``. Its params are JSON values; with ``raw_rows``, the
        rows of ``items`` and ``expected`` may also come as their JSON text, undecoded
        (`msgspec.Raw`, see `archivist.protocol.ROW_PARAMS`), and ``fn`` decodes them."""
        if name in self._commands and not replace:
            raise ValueError(f"command {name!r} is already registered")
        self._commands[name] = fn
        if raw_rows:
            self._raw_rows.add(name)
        else:
            self._raw_rows.discard(name)

    def command(self, name: str) -> Command:
        """The function registered as ``name`` (to wrap it, e.g. in a test hook)."""
        fn = self._commands.get(name)
        if fn is None:
            raise UnknownCommand(f"unknown command {name[:64]!r}")
        return fn

    def names(self) -> list[str]:
        return sorted(self._commands)

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    async def execute(
        self, name: str, params: Mapping[str, object] | None = None, *, caller: str = "local"
    ) -> JSONObject:
        """Run command ``name``; every failure is an ArchivistError carrying its wire code."""
        if caller not in ("local", "worker"):
            raise ValueError(f"unknown caller {caller!r}")
        if caller == "worker" and name not in self.worker_allowlist:
            raise Forbidden(f"command {name[:64]!r} is not allowed for the worker")
        fn = self._commands.get(name)
        if fn is None:
            raise UnknownCommand(f"unknown command {name[:64]!r}")
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise InvalidParams("invalid params: must be a JSON object")
        given = dict(params) if name in self._raw_rows else with_rows_decoded(params)
        try:
            return await fn(given)
        except ArchivistError:
            raise
        except Exception as exc:
            log.exception("command %s failed unexpectedly", name)
            raise ArchivistError(f"internal error in {name}: {type(exc).__name__}") from exc
