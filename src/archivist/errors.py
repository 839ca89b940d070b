"""The one exception hierarchy of archivist: every error carries the wire `code` it maps to.

`protocol.error_answer` is the single place that turns one of these into a wire answer.
"""

from __future__ import annotations


class ArchivistError(Exception):
    """Base of every error archivist raises on purpose; `code` is its wire code."""

    code = "internal"

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


class InvalidParams(ProtocolError):
    code = "invalid_params"


class FrameTooLarge(ProtocolError):
    code = "frame_too_large"


class PeerError(ArchivistError):
    """A request to the other side did not get a usable answer."""

    code = "peer_error"


class RequestTimeout(PeerError):
    code = "timeout"


class ConnectionClosed(PeerError):
    code = "connection_closed"


class RemoteError(PeerError):
    """The peer answered a request with an error; `code` is the peer's wire code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


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


class DatabaseError(DataError):
    code = "db_error"


class SchemaError(DataError):
    code = "schema_error"


class Unsupported(DataError):
    """A command this daemon knows but cannot run for these handles (``data/copy`` between
    databases no one connection reaches); the caller falls back to another way."""

    code = "unsupported"


class ConfigError(ArchivistError):
    """A configuration problem; the message names the file and the key."""

    code = "config_error"
