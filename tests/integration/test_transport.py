"""Two `Peer`s over a real Unix socket pair: answers that come after their request was given
up on (timed out, or its caller cancelled) are recognised as late, never taken for another
request's, and logged as nothing worse than debug."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from archivist.errors import RequestTimeout
from archivist.protocol import (
    DAEMON_COMMANDS,
    Answer,
    Execute,
    ExecuteResult,
    Request,
)
from archivist.transport import Peer


@asynccontextmanager
async def pair(delay_of: Callable[[str], float], *, echo_ids: bool = True) -> AsyncIterator[Peer]:
    """A worker-side peer that sends `execute` requests to a daemon-side peer answering
    each after ``delay_of(targetCommand)`` seconds, with the target echoed in the result:
    concurrently with ``requestId``, or in order without it (PROTOCOL.md allows both)."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    async def serve(peer: Peer, message: Request) -> Answer | None:
        assert isinstance(message, Execute)
        await asyncio.sleep(delay_of(message.target_command))
        if not echo_ids:
            await peer.send({"status": "success", "result": {"of": message.target_command}})
            return None
        return ExecuteResult(
            request_id=message.request_id,
            status="success",
            result={"of": message.target_command},
        )

    async def unexpected(peer: Peer, message: Request) -> Answer | None:
        raise AssertionError(f"the worker side got a request: {message}")

    reader, writer = await asyncio.open_unix_connection(sock=left)
    worker = Peer(reader, writer, accepted={}, handler=unexpected, name="daemon")
    reader, writer = await asyncio.open_unix_connection(sock=right)
    daemon = Peer(
        reader, writer, accepted=DAEMON_COMMANDS, handler=serve, name="worker", concurrent=echo_ids
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(worker.run())
        group.create_task(daemon.run())
        try:
            yield worker
        finally:
            await worker.close()
            await daemon.close()


def execute(peer: Peer, target: str) -> Execute:
    return Execute(request_id=peer.next_request_id(), target_command=target, params={})


@pytest.mark.parametrize("echo_ids", [True, False])
def test_a_late_answer_to_a_timed_out_request_is_dropped_quietly(
    caplog: pytest.LogCaptureFixture, echo_ids: bool
) -> None:
    async def scenario() -> dict[str, object]:
        delays = {"slow": 0.5, "fast": 0.0}
        async with pair(delays.__getitem__, echo_ids=echo_ids) as peer:
            with pytest.raises(RequestTimeout):
                await peer.request(execute(peer, "slow"), timeout=0.1)
            await asyncio.sleep(0.2)
            # Asked before the slow answer comes: an in-order peer answers "slow" first,
            # which must not be taken for this request's answer.
            answer = await peer.request(execute(peer, "fast"), timeout=5)
            await asyncio.sleep(0.5)
            return answer

    with caplog.at_level(logging.DEBUG, logger="archivist.transport"):
        answer = asyncio.run(scenario())

    assert answer["result"] == {"of": "fast"}
    assert "late answer to" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_late_answer_to_a_cancelled_request_is_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with pair(lambda target: 0.3) as peer:
            listing = asyncio.create_task(peer.request(execute(peer, "data/list")))
            await asyncio.sleep(0.1)
            listing.cancel()  # a listing made ahead, no longer wanted
            with pytest.raises(asyncio.CancelledError):
                await listing
            await asyncio.sleep(0.5)

    with caplog.at_level(logging.DEBUG, logger="archivist.transport"):
        asyncio.run(scenario())

    assert "late answer to" in caplog.text
    assert "answer to no pending request" not in caplog.text
