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
DIRECTORY_MODE = 0o700
DIRECTORY_MODE_SHARED = 0o711
"""Others may enter (not list) the directory, to reach a socket that admits them."""
SOCKET_MODE = 0o600
SOCKET_MODE_SHARED = 0o666
"""connect() needs write permission; SO_PEERCRED then decides who is served."""


class SocketPathError(ArchivistError):
    code = "socket_path"


def default_socket_path() -> Path:
    """``$XDG_RUNTIME_DIR/archivist/worker.sock``, else ``/tmp/archivist-<uid>/worker.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "archivist" / "worker.sock"
    return Path(f"/tmp/archivist-{os.getuid()}") / "worker.sock"


def prepare(path: Path, *, shared: bool = False, owner: str = "worker") -> None:
    """Make the socket's directory private (0700, ours) and clear a stale socket file.

    With ``shared`` (the worker admits other users, ``--allow-uid``) the directory is
    0711 instead: others may pass through it to the socket but not list it, and the
    worker's credential check (SO_PEERCRED) decides who is served.

    Raises `SocketPathError` if the directory is open to other users beyond that, the
    path is too long for a Unix socket, or a live ``owner`` (a worker, or the daemon's
    control socket) already listens there.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise SocketPathError(f"socket path is longer than {MAX_SOCKET_PATH} bytes: {path}")
    mode = DIRECTORY_MODE_SHARED if shared else DIRECTORY_MODE
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=mode, parents=True)
        directory.chmod(mode)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise SocketPathError(f"socket directory {directory} belongs to another user")
    current = stat.S_IMODE(info.st_mode)
    if current & 0o077 & ~mode:
        raise SocketPathError(
            f"socket directory {directory} is open to other users "
            f"(mode {current:04o}); use a directory only you can enter "
            "(chmod 700) or leave --socket at its default"
        )
    if shared and current != mode:
        directory.chmod(mode)
    _clear_stale(path, owner)


def _clear_stale(path: Path, owner: str) -> None:
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
    raise SocketPathError(f"another {owner} is already listening on {path}")
