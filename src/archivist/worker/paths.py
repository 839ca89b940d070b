"""Where the worker's socket lives, and making that place private to its user."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from pathlib import Path

from archivist.errors import ArchivistError

MAX_SOCKET_PATH = 107
"""sun_path holds 108 bytes including the terminating NUL."""


class SocketPathError(ArchivistError):
    code = "socket_path"


def default_socket_path() -> Path:
    """``$XDG_RUNTIME_DIR/archivist/worker.sock``, else ``/tmp/archivist-<uid>/worker.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "archivist" / "worker.sock"
    return Path(f"/tmp/archivist-{os.getuid()}") / "worker.sock"


def prepare(path: Path) -> None:
    """Make the socket's directory private (0700, ours) and clear a stale socket file.

    Raises `SocketPathError` if the directory is shared with other users, the path is
    too long for a Unix socket, or a live worker already listens there.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise SocketPathError(f"socket path is longer than {MAX_SOCKET_PATH} bytes: {path}")
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise SocketPathError(f"socket directory {directory} belongs to another user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise SocketPathError(
            f"socket directory {directory} is open to other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); use a directory only you can enter "
            "(chmod 700) or leave --socket at its default"
        )
    _clear_stale(path)


def _clear_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(os.fspath(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketPathError(f"cannot probe existing socket {path}: {exc}") from None
        # Nobody listens: a dead worker left it behind.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    finally:
        probe.close()
    raise SocketPathError(f"another worker is already listening on {path}")
