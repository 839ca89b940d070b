"""The frame limit on a real socket: a frame too long for it is reported as that, typed
(`FrameTooLarge`, code ``frame_too_large``), never as a transient fault to retry.

Two `Peer` s over a Unix socket pair: the worker's side sends ``execute`` requests, the
daemon's side answers them with a result as long as asked.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

import support
from archivist import protocol
from archivist.config import make_config
from archivist.daemon.runtime import Launch, running
from archivist.daemon.tracker import TaskRecord
from archivist.data.bus import JSONObject
from archivist.errors import ConnectionClosed, FrameLimitLost, FrameTooLarge, RemoteError
from archivist.protocol import Answer, Execute, ExecuteResult, Request
from archivist.transport import Peer
from e2esupport import count, make_chat_table, policy

pytestmark = pytest.mark.timeout(30)


async def serve_padding(peer: Peer, message: Request) -> Answer | None:
    """Answers ``execute`` with ``{"padding": "x" * params["bytes"]}``."""
    assert isinstance(message, Execute)
    size = (message.params or {}).get("bytes")
    assert isinstance(size, int)
    return ExecuteResult(
        request_id=message.request_id, status="success", result={"padding": "x" * size}
    )


async def nothing(peer: Peer, message: Request) -> Answer | None:
    return None


async def pair(worker_limit: int, daemon_limit: int) -> tuple[Peer, Peer]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader, writer = await asyncio.open_unix_connection(sock=ours, limit=worker_limit + 1)
    worker = Peer(
        reader,
        writer,
        accepted=protocol.WORKER_COMMANDS,
        handler=nothing,
        name="daemon",
        frame_limit=worker_limit,
        request_timeout=10,
    )
    reader, writer = await asyncio.open_unix_connection(sock=theirs, limit=daemon_limit + 1)
    daemon = Peer(
        reader,
        writer,
        accepted=protocol.DAEMON_COMMANDS,
        handler=serve_padding,
        name="worker",
        frame_limit=daemon_limit,
        concurrent=True,
    )
    return worker, daemon


def ask(worker: Peer, size: int) -> Execute:
    return Execute(
        request_id=worker.next_request_id(), target_command="data/list", params={"bytes": size}
    )


def test_an_answer_over_the_limit_is_refused_typed_and_the_connection_stays() -> None:
    async def scenario() -> None:
        worker, daemon = await pair(100_000, 100_000)
        async with asyncio.TaskGroup() as group:
            group.create_task(worker.run())
            group.create_task(daemon.run())
            with pytest.raises(RemoteError) as refused:
                await worker.request(ask(worker, 500_000))
            assert refused.value.code == "frame_too_large"
            assert "over the limit of 100000 bytes" in refused.value.message
            # Only that answer was lost: the connection serves the next request.
            answer = await worker.request(ask(worker, 1000))
            assert answer["result"] == {"padding": "x" * 1000}
            assert not worker.closed and not daemon.closed
            await worker.close()

    asyncio.run(scenario())


def test_a_request_over_the_limit_is_not_sent() -> None:
    async def scenario() -> None:
        worker, daemon = await pair(100_000, 100_000)
        async with asyncio.TaskGroup() as group:
            group.create_task(worker.run())
            group.create_task(daemon.run())
            request = ask(worker, 10)
            request.params["padding"] = "y" * 200_000  # type: ignore[index]
            with pytest.raises(FrameTooLarge):
                await worker.request(request)
            assert daemon.frames_in == 0 and not worker.closed
            await worker.close()

    asyncio.run(scenario())


def test_a_connection_lost_to_the_readers_smaller_limit_says_so_on_both_sides() -> None:
    """The daemon's limit is larger than the worker's: its answer fits its own limit, so it
    is sent, and the worker cannot read it. The worker's request fails as lost to the frame
    limit (not a plain closed connection), and so does the daemon's side, told by the
    worker's last answer."""

    async def scenario() -> None:
        worker, daemon = await pair(100_000, 1_000_000)
        async with asyncio.TaskGroup() as group:
            group.create_task(worker.run())
            group.create_task(daemon.run())
            with pytest.raises(FrameLimitLost) as lost:
                await worker.request(ask(worker, 500_000))
            assert lost.value.code == "frame_limit_lost"
            assert isinstance(lost.value, FrameTooLarge)
            assert isinstance(lost.value, ConnectionClosed)
            await asyncio.wait_for(daemon.wait_closed(), 5)
            assert isinstance(daemon.lost_to, FrameLimitLost)
            assert "refused a frame of ours" in daemon.lost_to.message

    asyncio.run(scenario())


def test_a_task_whose_connection_is_lost_to_the_frame_limit_ends_in_error_not_queued_again(
    start_worker: Callable[..., AbstractContextManager[support.WorkerProcess]],
    tmp_path: Path,
) -> None:
    """A worker run with a smaller frame limit than the daemon's connection (64 KiB against
    16 MiB), and a daemon command (a hook on ``data/count``) whose answer is 300 KB: the
    worker cannot read it and closes. The daemon does not queue the task again (it would
    send the same answer again, for ever): the task ends in error, saying why, after one
    attempt."""
    primary = f"sqlite:///{tmp_path / 'p.db'}"
    make_chat_table(primary, 50)
    config = make_config(
        {"primary": primary, "archive": f"sqlite:///{tmp_path / 'a.db'}"}, [policy()]
    )

    async def scenario(socket: Path) -> TaskRecord:
        async with running(config, Launch(socket=socket, watch=False)) as daemon:
            counting = daemon.data.bus.command("data/count")

            async def count_padded(params: JSONObject) -> JSONObject:
                return {**(await counting(params)), "padding": "x" * 300_000}

            daemon.data.bus.register("data/count", count_padded, replace=True)
            record = await daemon.submit("chat_messages", 10)
            await asyncio.wait_for(record.done.wait(), 30)
            return record

    with start_worker("--frame-limit", str(64 * 1024)) as worker:
        record = asyncio.run(scenario(worker.socket_path))

    assert record.state == "error" and record.attempts == 1
    assert record.error is not None and "frame_limit_lost" in record.error
    assert "over the limit of 65536 bytes" in record.error or "refused a frame" in record.error
    assert count(primary) == 50
