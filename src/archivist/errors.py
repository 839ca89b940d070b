"""The one exception hierarchy of archivist: every error carries the wire `code` it maps to.

`protocol.error_answer` is the single place that turns one of these into a wire answer, and
`RemoteError.rebuild` the single place that turns a wire code back into its class (as pygls'
``exceptions.py`` does), so a peer's ``db_error`` is caught as a `DatabaseError`.
"""

from __future__ import annotations

from typing import ClassVar, Final


class ArchivistError(Exception):
    """Base of every error archivist raises on purpose; `code` is its wire code."""

    code = "internal"
    transient: ClassVar[bool] = False
    """A failure worth retrying: the database or the daemon may come back."""
    rows_path: ClassVar[bool] = False
    """As an answer to ``data/copy``: the daemon will not copy inside the database for this
    task, so rows move through the worker instead."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- protocol and transport -------------------------------------------------------------


class ProtocolError(ArchivistError):
    """A frame that cannot be accepted as it is."""

    code = "protocol_error"


class InvalidJson(ProtocolError):
    code = "invalid_json"


class NotAnObject(ProtocolError):
    code = "not_an_object"


class UnknownCommand(ProtocolError):
    code = "unknown_command"
    rows_path = True  # a daemon older than data/copy


class InvalidParams(ProtocolError):
    code = "invalid_params"


class FrameTooLarge(ProtocolError):
    code = "frame_too_large"


class PeerError(ArchivistError):
    """A request to the other side did not get a usable answer."""

    code = "peer_error"


class RequestTimeout(PeerError):
    code = "timeout"
    transient = True


class ConnectionClosed(PeerError):
    code = "connection_closed"


class BadAnswer(PeerError):
    """An answer without the fields its command promises (a bug on the other side)."""

    code = "bad_answer"


class FrameLimitLost(FrameTooLarge, ConnectionClosed):
    """The connection closed because a frame was over the frame limit of the side reading
    it (their limits differ): a `FrameTooLarge` that also lost the connection. Not a
    transient fault: sending the frame again ends the same way."""

    code = "frame_limit_lost"


class RemoteError(PeerError):
    """The peer answered a request with an error; `code` is the peer's wire code.

    Raised as `rebuild` makes it: an instance of the class whose code the peer sent as well
    (``RemoteError`` and `DatabaseError` for ``db_error``), or a plain one for a code this
    side does not know.
    """

    def __init__(self, message: str, code: str) -> None:
        # Not super(): a rebuilt class's other base may take other arguments.
        ArchivistError.__init__(self, message)
        self.code = code

    @staticmethod
    def rebuild(message: str, code: str) -> RemoteError:
        """The error a peer answered with, typed by its wire ``code``."""
        typed = ERRORS.get(code)
        if typed is None:
            return RemoteError(message, code)
        return _remote_class(typed)(message, code)


# --- worker -------------------------------------------------------------------------------


class TaskError(ArchivistError):
    code = "task_error"


class DuplicateTask(TaskError):
    code = "duplicate_task"


class UnknownTask(TaskError):
    code = "unknown_task"


class QueueFull(TaskError):
    code = "queue_full"


class ShuttingDown(TaskError):
    code = "shutting_down"


class TaskCancelled(TaskError):
    """A task stopped before its end: by a ``cancel``, its connection's close or the worker's
    shutdown. Its code is the ``code`` of a ``"status":"cancelled"`` complete."""

    code = "cancelled"


class VerifyMismatch(TaskError):
    """A batch copied to the destination did not read back identical; nothing was deleted."""

    code = "verify_mismatch"


class RowTooLarge(TaskError):
    """A row too wide for any frame, where the daemon cannot move it itself."""

    code = "row_too_large"


class RowsKept(TaskError):
    """A task moved what it could but kept rows in the source that other rows still
    reference (a foreign key whose ``ON DELETE`` is ``RESTRICT`` or ``NO ACTION``, or a
    policy's ``on_children = "keep"``); they move once nothing references them."""

    code = "rows_kept"


# --- data and configuration ---------------------------------------------------------------


class DataError(ArchivistError):
    code = "data_error"


class UnknownHandle(DataError):
    code = "unknown_handle"


class UnknownCollection(DataError):
    code = "unknown_collection"


class UnknownField(InvalidParams):
    code = "unknown_field"


class Conflict(DataError):
    code = "conflict"


class Forbidden(DataError):
    code = "forbidden"
    rows_path = True  # data/copy is not in the daemon's allowlist for the worker


class DatabaseError(DataError):
    code = "db_error"
    transient = True


class UnstorableValue(DataError):
    """A row holds a value its destination's engine cannot store (PostgreSQL's ``NaN`` for a
    MariaDB ``DOUBLE``): not a passing fault, so never retried; the message names the row's
    key, the column and the value."""

    code = "unstorable_value"


class SchemaError(DataError):
    code = "schema_error"


class Unsupported(DataError):
    """A command this daemon knows but cannot run for these handles (``data/copy`` between
    databases no one connection reaches); the caller falls back to another way."""

    code = "unsupported"
    rows_path = True


class ConfigError(ArchivistError):
    """A configuration problem; the message names the file and the key."""

    code = "config_error"


# --- one mover per collection ---------------------------------------------------------------


class MoverBusy(DataError):
    """Another process holds the collection's mover lock; ``holder`` says who (host:pid
    since when)."""

    code = "mover_busy"
    holder = ""


class MoverLost(DataError):
    """This daemon no longer holds (or never held) the mover lock of the collection a data
    command is for: the task must stop moving, since another mover may have it now."""

    code = "mover_lost"


# --- the daemon's control socket -------------------------------------------------------------


class NoDaemon(ArchivistError):
    """No daemon listens on the control socket (``archivist pause``, ``resume``, ``cancel``)."""

    code = "no_daemon"


class StillPaused(ArchivistError):
    """``resume COLLECTION`` while every policy is paused: that collection stays paused."""

    code = "still_paused"


# --- codes back to classes ------------------------------------------------------------------


def _by_code() -> dict[str, type[ArchivistError]]:
    """Every class above by its wire code (RemoteError, which has none of its own, aside)."""
    found: dict[str, type[ArchivistError]] = {}
    stack: list[type[ArchivistError]] = [ArchivistError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if issubclass(cls, RemoteError):
            continue
        if found.get(cls.code) is cls:
            continue  # a class of two bases is met under each (FrameLimitLost)
        if cls.code in found:
            raise TypeError(f"wire code {cls.code!r} of {cls.__name__} is already taken")
        found[cls.code] = cls
    return found


ERRORS: Final = _by_code()
"""Each error class by its wire code."""
TRANSIENT_CODES: Final = frozenset(code for code, cls in ERRORS.items() if cls.transient)
"""Wire codes of failures worth retrying."""
ROWS_PATH_CODES: Final = frozenset(code for code, cls in ERRORS.items() if cls.rows_path)
"""Answers to ``data/copy`` that mean: move the rows through the worker instead."""


_REMOTE: Final[dict[str, type[RemoteError]]] = {}


def _remote_class(typed: type[ArchivistError]) -> type[RemoteError]:
    """``RemoteError`` and ``typed`` in one class, made once per class."""
    if issubclass(RemoteError, typed):  # the base classes: a plain RemoteError is one
        return RemoteError
    made = _REMOTE.get(typed.code)
    if made is None:
        made = type(f"Remote{typed.__name__}", (RemoteError, typed), {"code": typed.code})
        _REMOTE[typed.code] = made
    return made
