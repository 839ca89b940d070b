"""The command bus: named async commands, ``execute(name, params)``, and the allowlist that
limits what a caller over the socket (the worker) may run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final, Literal, TypeAlias

from archivist.errors import ArchivistError, Forbidden, InvalidParams, UnknownCommand

log = logging.getLogger(__name__)

JSONObject: TypeAlias = dict[str, object]
Command: TypeAlias = Callable[[JSONObject], Awaitable[JSONObject]]
Caller: TypeAlias = Literal["local", "worker"]

WORKER_ALLOWLIST: Final = frozenset(
    {"ping", "data/list", "data/count", "data/create", "data/delete", "data/load"}
)


class CommandBus:
    """A registry of named async commands. Local callers may run any of them; the worker only
    those on the allowlist (anything else is ``forbidden``)."""

    def __init__(self, *, worker_allowlist: Iterable[str] = WORKER_ALLOWLIST) -> None:
        self._commands: dict[str, Command] = {}
        self.worker_allowlist = frozenset(worker_allowlist)

    def register(self, name: str, fn: Command, *, replace: bool = False) -> None:
        if name in self._commands and not replace:
            raise ValueError(f"command {name!r} is already registered")
        self._commands[name] = fn

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
        try:
            return await fn(dict(params))
        except ArchivistError:
            raise
        except Exception as exc:
            log.exception("command %s failed unexpectedly", name)
            raise ArchivistError(f"internal error in {name}: {type(exc).__name__}") from exc
