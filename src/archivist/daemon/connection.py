"""The daemon's end of the worker socket: requests to the worker and answers to its callbacks.

The worker's ``execute`` requests are served concurrently through the command bus, with the
worker's allowlist; ``progress`` and ``complete`` notifications update the tracker.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from archivist import protocol
from archivist.errors import ArchivistError
from archivist.protocol import (
    Answer,
    Archive,
    Complete,
    Execute,
    ExecuteResult,
    JSONObject,
    Ping,
    Progress,
    Queued,
    Request,
    Status,
    StatusResult,
)
from archivist.transport import Peer, open_peer

log = logging.getLogger(__name__)

ExecuteFn = Callable[[str, JSONObject, str | None], Awaitable[JSONObject]]
"""Serves one ``execute``: its target, params and task id (None from a design-only worker)."""
NotifyFn = Callable[[Progress | Complete], None]


class WorkerConnection:
    """One open connection to a worker."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        execute: ExecuteFn | None = None,
        notify: NotifyFn | None = None,
        frame_limit: int = protocol.DEFAULT_FRAME_LIMIT,
        request_timeout: float = 30.0,
    ) -> WorkerConnection:
        """Connect; ``execute`` serves the worker's callbacks (None refuses them)."""

        async def handle(peer: Peer, message: Request) -> Answer | None:
            match message:
                case Execute():
                    if execute is None:
                        raise ArchivistError("this client does not serve execute requests")
                    result = await execute(
                        message.target_command, message.params or {}, message.task_id
                    )
                    return ExecuteResult(
                        request_id=message.request_id, status="success", result=result
                    )
                case Progress() | Complete():
                    if notify is not None:
                        notify(message)
                    return None
                case _:  # pragma: no cover - decode_frame admits only the commands above
                    raise ArchivistError(f"unexpected {type(message).__name__}")

        peer = await open_peer(
            str(path),
            accepted=protocol.DAEMON_COMMANDS,
            handler=handle,
            name=f"worker at {path}",
            frame_limit=frame_limit,
            request_timeout=request_timeout,
            concurrent=True,
            request_prefix="d",
        )
        return cls(peer)

    async def ping(self, timeout: float | None = None) -> JSONObject:
        return await self.peer.request(Ping(), timeout=timeout)

    async def archive(self, task: Archive) -> Queued:
        body = await self.peer.request(task)
        return protocol.convert(body, Queued)

    async def status(self) -> StatusResult:
        body = await self.peer.request(Status())
        return protocol.convert(body, StatusResult)

    async def cancel(self, task_id: str) -> None:
        await self.peer.request(protocol.Cancel(task_id=task_id))

    async def rate(self, task_id: str, min_rate: float) -> None:
        """Change a task's ``minRate`` (an extension: a worker without it refuses)."""
        await self.peer.request(protocol.Rate(task_id=task_id, min_rate=min_rate))

    async def close(self) -> None:
        await self.peer.close()
