"""The daemon's control socket: ``archivist status``, ``pause``, ``resume`` and ``cancel``
reach a running daemon through it.

A Unix socket of the daemon's own (mode 0600, in a directory only its user enters; by
default beside the worker's socket, ``<worker socket>.control``), separate from the
worker's wire: the design's protocol between daemon and worker stays as it is, and a
worker written from the design alone still works. Framing as on the worker's socket: one
JSON object per line, one answer line per request line:

    {"command": "status"}
    {"command": "pause", "collection": "chat_messages", "by": "al@db1/4242"}  (null: all)
    {"command": "resume", "collection": null}
    {"command": "cancel", "taskId": "chat_messages-t01234-7"}

An answer is ``{"status": "success", ...}`` or ``{"status": "error", "error": ...,
"code": ...}``. `ControlServer` serves a `Controlled` (the ArchiveDaemon); `request` is the
client side, which turns "nobody listens" into `NoDaemon`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import stat
from pathlib import Path
from typing import Final, Protocol

from archivist.errors import ArchivistError, InvalidParams, NoDaemon, RemoteError, UnknownCommand
from archivist.worker.paths import DIRECTORY_MODE_SHARED, SOCKET_MODE, prepare

log = logging.getLogger(__name__)

LINE_LIMIT: Final = 1 << 20
"""Bytes in one control line: requests are small, a status answer lists at most the
daemon's recent tasks."""
REQUEST_TIMEOUT: Final = 90.0
"""Seconds a client waits for an answer: a pause or a cancel waits for the task to reach a
safe point, up to the daemon's own STOP_TIMEOUT (30 s)."""


def control_path(worker_socket: Path, configured: str | None = None) -> Path:
    """The daemon's control socket: ``[daemon] control_socket``, else beside the worker's
    socket (``worker.sock`` -> ``worker.sock.control``)."""
    if configured:
        return Path(configured)
    return worker_socket.with_name(worker_socket.name + ".control")


def pauses_path(control: Path) -> Path:
    """Where the daemon on ``control`` keeps its pauses across restarts."""
    return control.with_name(control.name + ".pauses.json")


class Controlled(Protocol):
    """What the control socket asks of a daemon (the ArchiveDaemon implements it)."""

    async def control_status(self) -> dict[str, object]: ...
    async def pause(self, collection: str | None, by: str) -> dict[str, object]: ...
    async def resume(self, collection: str | None) -> dict[str, object]: ...
    async def cancel_task(self, task_id: str) -> dict[str, object]: ...


class ControlServer:
    """Serves `Controlled` on a Unix socket until closed."""

    def __init__(self, path: Path, target: Controlled) -> None:
        self.path = path
        self.target = target
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen; `SocketPathError` if another daemon listens there already."""
        # Beside a worker that admits other users (``allow_uid``) the directory is 0711 on
        # purpose; the control socket itself stays 0600, so only our user reaches it.
        try:
            shared = stat.S_IMODE(self.path.parent.stat().st_mode) == DIRECTORY_MODE_SHARED
        except FileNotFoundError:
            shared = False
        prepare(self.path, shared=shared, owner="daemon")
        self._server = await asyncio.start_unix_server(
            self._serve, path=os.fspath(self.path), limit=LINE_LIMIT
        )
        os.chmod(self.path, SOCKET_MODE)
        log.info("control socket at %s (archivist pause, resume, cancel, status)", self.path)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for client in list(self._clients):
            client.cancel()
        if self._clients:
            await asyncio.wait(self._clients)
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while line := await reader.readline():
                answer = await self._answer(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError) as exc:  # ValueError: a line over the limit
            log.debug("control client dropped: %s", exc)
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, object]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise InvalidParams("a control request is a JSON object")
            result = await self._dispatch(request)
        except ValueError:
            return _error(InvalidParams("a control request is one line of JSON"))
        except ArchivistError as exc:
            return _error(exc)
        return {"status": "success", **result}

    async def _dispatch(self, request: dict[str, object]) -> dict[str, object]:
        command = request.get("command")
        collection = request.get("collection")
        if collection is not None and not isinstance(collection, str):
            raise InvalidParams("collection: a string or null")
        match command:
            case "status":
                return await self.target.control_status()
            case "pause":
                by = request.get("by")
                return await self.target.pause(collection, by if isinstance(by, str) else "?")
            case "resume":
                return await self.target.resume(collection)
            case "cancel":
                task_id = request.get("taskId")
                if not isinstance(task_id, str) or not task_id:
                    raise InvalidParams("taskId: the id of a task (archivist status lists them)")
                return await self.target.cancel_task(task_id)
        raise UnknownCommand(f"unknown control command {command!r}")


def _error(exc: ArchivistError) -> dict[str, object]:
    return {"status": "error", "error": exc.message, "code": exc.code}


async def request(
    path: Path, message: dict[str, object], timeout: float = REQUEST_TIMEOUT
) -> dict[str, object]:
    """Send one control request to the daemon at ``path`` and return its answer.

    `NoDaemon` when no daemon listens there; the daemon's error answers are raised as the
    error classes of their codes (`RemoteError.rebuild`)."""
    try:
        reader, writer = await asyncio.open_unix_connection(os.fspath(path), limit=LINE_LIMIT)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise NoDaemon(
                f"no daemon is listening at {path}; start one with `archivist run` "
                "(or name its config with --config)"
            ) from None
        raise NoDaemon(f"cannot reach the daemon at {path}: {exc.strerror or exc}") from None
    try:
        writer.write(json.dumps(message).encode() + b"\n")
        async with asyncio.timeout(timeout):
            await writer.drain()
            line = await reader.readline()
    except TimeoutError:
        raise NoDaemon(f"the daemon at {path} did not answer in {timeout:.0f} s") from None
    except ConnectionError as exc:
        raise NoDaemon(f"the daemon at {path} dropped the connection: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not line:
        raise NoDaemon(f"the daemon at {path} closed the connection without answering")
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise NoDaemon(f"the daemon at {path} answered {line[:80]!r}")
    if answer.get("status") == "error":
        raise RemoteError.rebuild(str(answer.get("error")), str(answer.get("code")))
    return answer
