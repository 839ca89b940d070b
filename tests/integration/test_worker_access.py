"""Who may talk to the worker: file modes by default, SO_PEERCRED always, --allow-uid.

By default the socket is 0600 in a 0700 directory, both the worker's: another user cannot
even reach it. With ``--allow-uid`` the socket is 0666 in a 0711 directory, so every user
can connect() and the worker's credential check (SO_PEERCRED) is what refuses all but the
allowed ones, with a ``forbidden`` answer and a close. The clients of other users are real
processes (forked, then setresuid) of a system user the test creates, if missing, with
useradd (needs root; skipped otherwise).
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import NamedTuple

import pytest

import support
from support import Frame, WorkerProcess

StartWorker = Callable[..., AbstractContextManager[WorkerProcess]]

TEST_USER = "archivist-test"


class User(NamedTuple):
    uid: int
    gid: int


@pytest.fixture(scope="module")
def other_user() -> User:
    """A system user other than the worker's, created if missing."""
    if os.geteuid() != 0:
        pytest.skip("needs root: to create a second user and start a client as that user")
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=False,
            capture_output=True,
        )
        entry = pwd.getpwnam(TEST_USER)  # also when a parallel run created it first
    assert entry.pw_uid != os.getuid()
    return User(entry.pw_uid, entry.pw_gid)


def ping_once(socket_path: Path) -> Frame:
    """Connect, send a ping and read until a pong or a close: what a client sees."""
    seen: Frame = {"uid": os.getuid()}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(support.RECV_TIMEOUT)
    try:
        sock.connect(os.fspath(socket_path))
    except OSError as exc:
        seen["connect_error"] = exc.errno
        return seen
    data = b""
    try:
        try:
            sock.sendall(b'{"command": "ping"}\n')
        except BrokenPipeError:
            seen["send_failed"] = True  # refused before the ping: its answer is still readable
        while b"\n" not in data or b"pong" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                seen["closed"] = True
                break
            data += chunk
    except ConnectionResetError:
        seen["closed"] = True
    except TimeoutError:
        seen["closed"] = False
    finally:
        sock.close()
    if b"\n" in data:
        seen["answer"] = json.loads(data.split(b"\n", 1)[0])
    return seen


def connect_as(user: User, socket_path: Path) -> Frame:
    """Fork a client process that becomes ``user``, then connects and pings; what it saw.

    A fork, not an exec: the other user may not be able to read this interpreter's files.
    Its connect() is its own, so SO_PEERCRED reports ``user``.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(user.gid, user.gid, user.gid)
            os.setresuid(user.uid, user.uid, user.uid)
            os.write(write_end, json.dumps(ping_once(socket_path)).encode())
            status = 0
        except BaseException as exc:  # reported to the parent, which fails the test
            os.write(write_end, repr(exc).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the other user's client failed: {output!r}"
    seen = json.loads(output)
    assert isinstance(seen, dict) and seen["uid"] == user.uid, seen
    return seen


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_by_default_another_user_cannot_reach_the_private_socket(
    worker: WorkerProcess, other_user: User
) -> None:
    for path, mode in ((worker.socket_path.parent, 0o700), (worker.socket_path, 0o600)):
        info = path.lstat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (mode, os.getuid()), path
    seen = connect_as(other_user, worker.socket_path)
    assert seen.get("connect_error") == 13, seen  # EACCES: stopped before the worker
    with worker.connect() as client:
        assert client.ping()["message"] == "pong"


def test_another_user_not_allowed_is_refused_with_forbidden_then_closed(
    start_worker: StartWorker, other_user: User
) -> None:
    someone_else = other_user.uid + 1
    with start_worker("--allow-uid", str(someone_else)) as worker:
        seen = connect_as(other_user, worker.socket_path)
        log = worker.stderr()
        with worker.connect() as own:
            assert own.ping()["message"] == "pong"
    answer = seen.get("answer")
    assert isinstance(answer, dict), seen
    assert (answer["status"], answer["code"]) == ("error", "forbidden"), answer
    assert f"uid {other_user.uid}" in answer["error"]
    assert seen.get("closed") is True, seen
    assert "refused" in log and f"uid {other_user.uid}" in log


def test_another_user_allowed_with_allow_uid_gets_pong(
    start_worker: StartWorker, other_user: User
) -> None:
    with start_worker("--allow-uid", str(other_user.uid)) as worker:
        # Reachable by others, never listable or writable by them.
        assert mode_of(worker.socket_path.parent) == 0o711
        assert mode_of(worker.socket_path) == 0o666
        seen = connect_as(other_user, worker.socket_path)
        with worker.connect() as own:
            assert own.ping()["message"] == "pong"
    answer = seen.get("answer")
    assert isinstance(answer, dict), seen
    assert (answer["status"], answer["message"]) == ("success", "pong"), answer


def test_allow_uid_still_refuses_a_socket_directory_others_can_list(socket_dir: Path) -> None:
    socket_dir.chmod(0o755)
    worker = support.spawn_worker(
        socket_dir / "worker.sock", socket_dir / "worker.stderr", "--allow-uid", "12345"
    )
    assert worker.process.wait(support.START_TIMEOUT) != 0
    assert "open to other users" in worker.stderr()
    assert not (socket_dir / "worker.sock").exists()
