"""Helpers for tests that drive a real worker process over a real Unix socket.

`WireClient` is deliberately naive: a blocking socket that sends one JSON object per line
and reads lines back, as a client written from the design alone would.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

Frame = dict[str, object]

RECV_TIMEOUT = 5.0
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def need_private_servers() -> None:
    """Skip a test that starts servers of its own where the programs are missing; under
    CI=true, fail it instead."""
    import pytest

    from servers import missing_programs

    message = missing_programs()
    if message is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def short_socket_dir() -> Path:
    """A private (0700) directory under /tmp: AF_UNIX paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="arch-", dir="/tmp"))
    path.chmod(0o700)
    return path


class WireClient:
    """A blocking NDJSON client over AF_UNIX."""

    def __init__(self, path: Path | str, timeout: float = RECV_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(os.fspath(path))
        self.timeout = timeout
        self._buffer = b""
        self.inbox: collections.deque[Frame] = collections.deque()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: Frame) -> None:
        self.send_raw(json.dumps(message).encode() + b"\n")

    def recv_line(self, timeout: float | None = None) -> bytes:
        """The next line without its newline; raises EOFError if the peer closed first."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete line from the worker in time")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise EOFError(f"connection closed; unterminated data: {self._buffer[:200]!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _read_frame(self, timeout: float | None = None) -> Frame:
        value = json.loads(self.recv_line(timeout))
        assert isinstance(value, dict), f"frame is not an object: {value!r}"
        return value

    def recv(self, timeout: float | None = None) -> Frame:
        """The next frame: one set aside by `recv_until` first, else the next line."""
        if self.inbox:
            return self.inbox.popleft()
        return self._read_frame(timeout)

    def recv_until(self, predicate: Callable[[Frame], bool], timeout: float | None = None) -> Frame:
        """The first frame matching ``predicate``; frames before it stay for `recv`, in order."""
        for index, frame in enumerate(self.inbox):
            if predicate(frame):
                del self.inbox[index]
                return frame
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            frame = self._read_frame(max(0.0, deadline - time.monotonic()))
            if predicate(frame):
                return frame
            self.inbox.append(frame)

    def assert_silent(self, seconds: float) -> None:
        """No frame is waiting, and none arrives for ``seconds``."""
        assert not self.inbox, f"expected no frame, got {list(self.inbox)!r}"
        with contextlib.suppress(TimeoutError):
            frame = self._read_frame(seconds)
            raise AssertionError(f"expected no frame, got {frame!r}")

    def is_closed_by_peer(self, timeout: float | None = None) -> bool:
        """True once the peer has closed (EOF or reset), after any frames still buffered."""
        try:
            while True:
                self.recv_line(timeout)
        except EOFError:
            return True
        except TimeoutError:
            return False

    def request(self, message: Frame, timeout: float | None = None) -> Frame:
        """Send a request and return the next answer (a frame without ``command``)."""
        self.send(message)
        return self.recv_until(lambda f: "command" not in f, timeout)

    def ping(self) -> Frame:
        return self.request({"command": "ping"})


# --- the daemon's side of a task, as a test client plays it ----------------------------------


def is_execute(target: str | None = None) -> Callable[[Frame], bool]:
    def predicate(frame: Frame) -> bool:
        return frame.get("command") == "execute" and (
            target is None or frame.get("targetCommand") == target
        )

    return predicate


def is_complete(task_id: str) -> Callable[[Frame], bool]:
    return lambda f: f.get("command") == "complete" and f.get("taskId") == task_id


def answer(client: WireClient, request: Frame, result: Frame) -> None:
    client.send({"requestId": request["requestId"], "status": "success", "result": result})


DESIGN_ONLY_UNKNOWN = frozenset({"data/load", "data/copy"})
"""Extensions a daemon written from the design alone does not know; it refuses them."""


def refuse_unknown(client: WireClient, request: Frame) -> None:
    """Answer as a design-only daemon answers a command it does not have."""
    client.send(
        {
            "requestId": request["requestId"],
            "status": "error",
            "error": f"unknown command {request['targetCommand']!r}",
            "code": "unknown_command",
        }
    )


def answer_as_empty_daemon(client: WireClient, request: Frame) -> None:
    """Answer one ``execute`` as a daemon whose collections are all empty."""
    target = request["targetCommand"]
    if target in DESIGN_ONLY_UNKNOWN:
        refuse_unknown(client, request)
        return
    results: dict[object, Frame] = {
        "ping": {"message": "pong"},
        "data/count": {"count": 0},
        "data/list": {"items": [], "count": 0},
    }
    assert target in results, f"unexpected execute for an empty collection: {request!r}"
    answer(client, request, results[target])


def finish_empty_task(client: WireClient, task_id: str, first: Frame | None = None) -> Frame:
    """Answer a task's executes as an empty daemon until its ``complete``; returns it."""
    if first is not None:
        answer_as_empty_daemon(client, first)
    while True:
        frame = client.recv()
        if is_complete(task_id)(frame):
            return frame
        if frame.get("command") == "execute":
            answer_as_empty_daemon(client, frame)


def archive_task(task_id: str, collection: str = "chat_messages", **fields: object) -> Frame:
    task: Frame = {
        "command": "archive",
        "taskId": task_id,
        "collection": collection,
        "sourceHandle": "primary",
        "destHandle": "archive",
        "maxRows": 10000,
        "batchSize": 1000,
    }
    task.update(fields)
    return task


# --- the worker process ----------------------------------------------------------------------


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    socket_path: Path
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def connect(self, timeout: float = RECV_TIMEOUT) -> WireClient:
        return WireClient(self.socket_path, timeout)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the worker and wait for it; kills it (and fails) if it does not exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"worker did not exit within {timeout} s of SIGTERM; stderr:\n{self.stderr()}"
            ) from None

    def wait_for_log(self, text: str, timeout: float = RECV_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.stderr()
            if text in log:
                return log
            time.sleep(0.02)
        raise AssertionError(f"{text!r} never appeared in the worker's log:\n{self.stderr()}")


def worker_command(socket_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "archivist", "worker", "--socket", os.fspath(socket_path), *args]


def spawn_worker(socket_path: Path, stderr_path: Path, *args: str) -> WorkerProcess:
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            worker_command(socket_path, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    return WorkerProcess(process, socket_path, stderr_path)


def wait_until_accepting(worker: WorkerProcess, timeout: float = START_TIMEOUT) -> None:
    """Poll until the worker's socket accepts a connection, or fail with its stderr."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise AssertionError(
                f"worker exited with {worker.process.returncode} before accepting "
                f"connections; stderr:\n{worker.stderr()}"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(os.fspath(worker.socket_path))
        except OSError:
            time.sleep(0.02)
            continue
        finally:
            probe.close()
        return
    worker.process.kill()
    worker.process.wait()
    raise AssertionError(
        f"worker did not accept connections on {worker.socket_path} within {timeout} s; "
        f"stderr:\n{worker.stderr()}"
    )


@contextlib.contextmanager
def start_worker(
    directory: Path, *args: str, socket_name: str = "worker.sock"
) -> Iterator[WorkerProcess]:
    """Run ``archivist worker`` on ``directory/socket_name`` until the block ends.

    ``directory`` must be short enough for an AF_UNIX path (see `short_socket_dir`).
    On exit the worker is sent SIGTERM and waited for (killed if it hangs).
    """
    worker = spawn_worker(directory / socket_name, directory / "worker.stderr", *args)
    try:
        wait_until_accepting(worker)
        yield worker
    finally:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
            try:
                worker.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
    # Reached only when the block succeeded: a worker must not crash quietly behind a pass.
    assert "Traceback" not in worker.stderr(), f"worker logged a traceback:\n{worker.stderr()}"


class MemoryDaemon:
    """The daemon's data commands over in-memory tables: {handle: {id: row}}, one collection.

    Rows are listed in primary-key order; ``data/delete`` honours ``expected`` (deletes only
    rows still equal to what was copied). ``corrupt_copies`` makes ``data/create`` store
    altered rows, so verification must fail.
    """

    def __init__(self, source: dict[object, Frame], corrupt_copies: bool = False) -> None:
        self.tables: dict[str, dict[object, Frame]] = {"primary": dict(source), "archive": {}}
        self.corrupt_copies = corrupt_copies
        self.calls: list[str] = []

    def serve(self, client: WireClient, task_id: str) -> tuple[Frame, list[Frame]]:
        """Answer executes until the task's ``complete``; returns it and the progress seen."""
        progress: list[Frame] = []
        while True:
            frame = client.recv()
            if frame.get("command") == "progress":
                progress.append(frame)
            elif is_complete(task_id)(frame):
                return frame, progress
            elif frame.get("command") == "execute":
                if frame["targetCommand"] in DESIGN_ONLY_UNKNOWN:
                    refuse_unknown(client, frame)
                    continue
                self.calls.append(str(frame["targetCommand"]))
                answer(client, frame, self.execute(str(frame["targetCommand"]), frame["params"]))

    def execute(self, target: str, params: object) -> Frame:
        assert isinstance(params, dict)
        if target == "ping":
            return {"message": "pong"}
        table = self.tables[params["dbHandle"]]
        if target == "data/count":
            return {"count": len(table)}
        if target == "data/list":
            rows = [table[key] for key in sorted(table)]
            wanted = params.get("filter", {}).get("id", {}).get("$in")
            if wanted is not None:
                rows = [row for row in rows if row["id"] in wanted]
            rows = rows[: params.get("limit", len(rows))]
            return {"items": rows, "count": len(rows), "collection": params["collection"]}
        if target == "data/create":
            for item in params["items"]:
                stored = {**item, "body": "corrupted"} if self.corrupt_copies else dict(item)
                table[item["id"]] = stored
            return {"created": len(params["items"])}
        if target == "data/delete":
            expected = {row["id"]: row for row in params.get("expected", [])}
            deleted = 0
            for key in params["ids"]:
                if key in table and (key not in expected or table[key] == expected[key]):
                    del table[key]
                    deleted += 1
            return {"deleted": deleted}
        raise AssertionError(f"unexpected targetCommand {target!r}")


def poll(
    condition: Callable[[], bool], timeout: float = RECV_TIMEOUT, interval: float = 0.02
) -> None:
    """Wait until ``condition()`` holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
