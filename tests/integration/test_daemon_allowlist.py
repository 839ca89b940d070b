"""The daemon as a hostile or broken worker sees it: only allowlisted commands run.

The test plays the worker: it listens on a socket, the real daemon connects, and the test
sends ``execute`` requests a worker could send.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from archivist.config import make_config
from archivist.daemon.runtime import Launch, running
from e2esupport import count, make_chat_table, policy
from support import short_socket_dir

pytestmark = pytest.mark.timeout(60)


async def play_worker(path: Path, requests: list[dict[str, object]]) -> list[dict[str, object]]:
    """Accept the daemon's connection, send each request, return the answers in order."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_unix_server(on_connect, path=str(path))
    async with server:
        reader, writer = await asyncio.wait_for(accepted.get(), 10)
        answers = []
        for request in requests:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            answers.append(json.loads(await asyncio.wait_for(reader.readline(), 10)))
        writer.close()
    return answers


def test_a_worker_may_run_only_allowlisted_commands_on_archivable_collections(
    tmp_path: Path,
) -> None:
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    make_chat_table(primary, 20)
    make_chat_table(primary, 5, "secrets")
    config = make_config(
        {"primary": primary, "archive": f"sqlite:///{tmp_path / 'archive.db'}"}, [policy()]
    )
    path = short_socket_dir() / "worker.sock"

    def execute(n: int, target: str, params: dict[str, object]) -> dict[str, object]:
        return {
            "command": "execute",
            "requestId": f"r{n}",
            "targetCommand": target,
            "params": params,
        }

    chat = {"collection": "chat_messages", "dbHandle": "primary"}
    requests = [
        execute(1, "data/drop", chat),
        execute(2, "no/such/command", {}),
        execute(3, "data/list", {"collection": "secrets", "dbHandle": "primary"}),
        execute(4, "data/delete", {"collection": "secrets", "dbHandle": "primary", "ids": [1]}),
        execute(5, "data/list", {**chat, "dbHandle": "elsewhere"}),
        execute(
            6, "data/count", {"collection": "x; DROP TABLE chat_messages", "dbHandle": "primary"}
        ),
        execute(7, "data/count", chat),
    ]

    async def scenario() -> list[dict[str, object]]:
        launch = Launch(socket=path, watch=False)
        async with running(config, launch):
            return await play_worker(path, requests)

    answers = asyncio.run(scenario())

    codes = [(a["requestId"], a["status"], a.get("code")) for a in answers]
    assert codes == [
        ("r1", "error", "forbidden"),
        ("r2", "error", "forbidden"),
        ("r3", "error", "unknown_collection"),
        ("r4", "error", "unknown_collection"),
        ("r5", "error", "unknown_handle"),
        ("r6", "error", "invalid_params"),  # not even a name: refused before any lookup
        ("r7", "success", None),
    ]
    assert answers[6]["result"] == {"count": 20}
    assert count(primary) == 20
    assert count(primary, "secrets") == 5
