"""The wire protocol as data: message types, line encoding and decoding, error answers.

This module does no I/O (like h11): everything in it is testable without a socket.
Messages are msgspec Structs, snake_case in Python and camelCase on the wire; msgspec
validates types and constraints and its errors name the offending path (``at $.batchSize``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Final, Literal, TypeAlias, TypeVar

import msgspec

from archivist.errors import (
    ArchivistError,
    FrameTooLarge,
    InvalidJson,
    InvalidParams,
    NotAnObject,
    RemoteError,
    UnknownCommand,
)

# JSON values are typed as ``object``: msgspec validates them, and code that reads one
# narrows it with isinstance, as it must for data that came over a socket.
JSONValue: TypeAlias = object
JSONObject: TypeAlias = dict[str, object]

DEFAULT_FRAME_LIMIT: Final = 16 * 1024 * 1024
ENVELOPE_BYTES: Final = 64 * 1024
"""Room kept in a frame for what surrounds its rows: the envelope, the other params and
results, and a cursor (whose order value may be a long text)."""


def row_budget(frame_limit: int) -> int:
    """The most bytes of rows (their JSON) one frame should carry: ``data/list``'s
    ``maxBytes``. An eighth of the frame is kept besides `ENVELOPE_BYTES`: the rows listed
    travel three times (the answer, the ``data/create`` that copies them, the verifying
    listing of the copies), and the destination may spell a value longer than the source
    did (a JSON document re-spaced, say)."""
    return max(1, frame_limit - frame_limit // 8 - ENVELOPE_BYTES)


MAX_BATCH_SIZE: Final = 100_000
# \Z, not $: ``$`` also matches before a trailing newline, which would admit "name\n".
IDENTIFIER: Final = r"^[A-Za-z_][A-Za-z0-9_]*\Z"
_IDENTIFIER_RE: Final = re.compile(IDENTIFIER)

RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
TaskId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Collection = Annotated[str, msgspec.Meta(pattern=IDENTIFIER, max_length=128)]
Handle = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
BatchSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_BATCH_SIZE)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class Message(msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=False):
    """Base of every wire message. Unknown fields are ignored, so newer peers interoperate."""


# --- daemon -> worker requests -------------------------------------------------------------


class Ping(Message, tag_field="command", tag="ping"):
    request_id: RequestId | None = None


TaskMode = Literal["move", "copy", "purge"]


class Child(Message):
    """Extension of ``archive``: a table whose rows reference the collection's rows (or a
    parent child's) through ``columns`` -> ``references`` and move with them, children
    first (docs/protocol.md)."""

    collection: Collection
    columns: Annotated[list[Collection], msgspec.Meta(min_length=1, max_length=1)]
    references: Annotated[list[Collection], msgspec.Meta(min_length=1, max_length=1)]
    children: list[Child] = msgspec.field(default_factory=list)


class Archive(Message, tag_field="command", tag="archive"):
    """Queue an archive task. ``order_by``, ``min_rate``, ``filter``, ``mode`` and
    ``children`` are extensions (see docs/protocol.md): ``filter`` (``data/list``'s syntax)
    goes with every ``data/list``, ``data/count`` and ``data/copy`` of the task on its source;
    ``mode`` "copy" copies without deleting, "purge" deletes without copying; ``children``
    move with their parents (move and copy modes)."""

    task_id: TaskId
    collection: Collection
    source_handle: Handle
    dest_handle: Handle
    max_rows: PositiveInt
    batch_size: BatchSize
    request_id: RequestId | None = None
    order_by: Collection | None = None
    min_rate: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Rows/s the task keeps to at least while yielding to the application (keeping up)."""
    filter: JSONObject | None = None
    mode: TaskMode | None = None
    children: list[Child] | None = None

    def __post_init__(self) -> None:
        if self.source_handle == self.dest_handle:
            raise ValueError("sourceHandle and destHandle must differ")


class Status(Message, tag_field="command", tag="status"):
    request_id: RequestId | None = None


class Cancel(Message, tag_field="command", tag="cancel"):
    task_id: TaskId
    request_id: RequestId | None = None


class Rate(Message, tag_field="command", tag="rate"):
    """An extension (see docs/protocol.md): change a queued or running task's ``minRate``
    (0: no floor any more), from its next rest on."""

    task_id: TaskId
    min_rate: Annotated[float, msgspec.Meta(ge=0)]
    request_id: RequestId | None = None


# --- worker -> daemon requests and notifications ---------------------------------------------


class Execute(Message, tag_field="command", tag="execute"):
    """``task_id`` is an extension: which task the callback serves (for logs and hooks)."""

    request_id: RequestId
    target_command: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    params: JSONObject | None = None
    task_id: TaskId | None = None

    def __post_init__(self) -> None:
        # Always on the wire, even when empty: peers written from the design read it.
        if self.params is None:
            self.params = {}


class _ExecuteRows(Execute, tag="execute"):
    """`Execute` as the daemon first reads it: each param still raw JSON (see `decode_frame`);
    every other field checked as `Execute` checks it."""

    params: dict[str, msgspec.Raw] | None = None  # type: ignore[assignment]


Seconds = Annotated[float, msgspec.Meta(ge=0)]


class Progress(Message, tag_field="command", tag="progress"):
    task_id: TaskId
    archived: Count
    total: Count
    status: Literal["in_progress"]
    throttled_seconds: dict[str, Seconds] | None = None
    """Extension: seconds the task has waited so far, by reason (docs/protocol.md)."""


CompleteStatus = Literal["success", "error", "cancelled"]


class Complete(Message, tag_field="command", tag="complete"):
    task_id: TaskId
    archived: Count
    duration: Count
    status: CompleteStatus
    error: str | None = None
    code: str | None = None
    throttled_seconds: dict[str, Seconds] | None = None
    """Extension, as in `Progress`: the task's totals at its end."""


WorkerRequest: TypeAlias = Ping | Archive | Status | Cancel | Rate
DaemonRequest: TypeAlias = Execute | Progress | Complete
Request: TypeAlias = WorkerRequest | DaemonRequest

WORKER_COMMANDS: Final[dict[str, type[Request]]] = {
    "ping": Ping,
    "archive": Archive,
    "status": Status,
    "cancel": Cancel,
    "rate": Rate,
}
DAEMON_COMMANDS: Final[dict[str, type[Request]]] = {
    "execute": Execute,
    "progress": Progress,
    "complete": Complete,
}
NOTIFICATIONS: Final = frozenset({"progress", "complete"})


# --- answers ---------------------------------------------------------------------------------


class Answer(msgspec.Struct, rename="camel", omit_defaults=True):
    """Base of answers: messages without ``command``."""


class Pong(Answer):
    status: Literal["success"]
    message: Literal["pong"]
    request_id: RequestId | None = None
    uptime_ms: int | None = None
    queued: int | None = None
    running: int | None = None
    version: str | None = None


class Queued(Answer):
    status: Literal["queued"]
    task_id: TaskId
    queue_position: PositiveInt
    request_id: RequestId | None = None


class ExecuteResult(Answer):
    request_id: RequestId
    status: Literal["success"]
    result: JSONObject


class TaskInfo(Message):
    """One task as ``status`` reports it."""

    task_id: str
    collection: str
    source_handle: str
    dest_handle: str
    max_rows: int
    batch_size: int
    state: Literal["queued", "running", "success", "error", "cancelled"]
    archived: int = 0
    total: int = 0
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    duration: int | None = None
    error: str | None = None
    throttled: str | None = None


class StatusResult(Answer):
    status: Literal["success"]
    queued: list[TaskInfo]
    running: list[TaskInfo]
    finished: list[TaskInfo]
    counts: dict[str, int]
    concurrency: int
    uptime_ms: int
    request_id: RequestId | None = None


class Cancelled(Answer):
    status: Literal["success"]
    task_id: TaskId
    request_id: RequestId | None = None


class Rated(Answer):
    status: Literal["success"]
    task_id: TaskId
    min_rate: float
    request_id: RequestId | None = None


class ErrorAnswer(Answer):
    status: Literal["error"]
    error: str
    code: str
    request_id: RequestId | None = None


# --- decoding ------------------------------------------------------------------------------

_json_decoder: Final = msgspec.json.Decoder()
_json_encoder: Final = msgspec.json.Encoder()
_execute_rows_decoder: Final = msgspec.json.Decoder(_ExecuteRows)
_raw_list_decoder: Final = msgspec.json.Decoder(list[msgspec.Raw])

ROW_PARAMS: Final = frozenset({"items", "expected"})
"""Params of ``execute`` that carry rows (``data/create`` ``items``, ``data/delete``
``expected``). The daemon reads such an array as raw JSON (`msgspec.Raw`), undecoded, and
the command decides: a row it listed itself comes back byte for byte as it sent it, and is
recognised by its bytes alone (`split_rows`, `archivist.data.stored.RecentRows`); rows it
cannot recognise are decoded at once (`decode_raw`)."""


class Incoming(msgspec.Struct, frozen=True):
    """An answer from the peer: a frame without ``command``. ``body`` is the whole object."""

    request_id: str | None
    body: JSONObject


def parse_object(line: bytes) -> JSONObject:
    """Parse one frame (without its newline) into a JSON object, or raise a protocol error."""
    try:
        value = _json_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise InvalidJson(f"not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        # msgspec reports invalid UTF-8 inside a string this way, not as a DecodeError.
        raise InvalidJson(f"not valid UTF-8: {exc}") from None
    except RecursionError:
        raise InvalidJson("not accepted JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise NotAnObject(f"a frame must be a JSON object, got {type_name(value)}")
    return value


def decode_frame(line: bytes, accepted: dict[str, type[Request]]) -> Request | Incoming:
    """Decode one frame into a typed request, or an `Incoming` answer.

    ``accepted`` maps the command names this side serves to their types; any other
    ``command`` is an `UnknownCommand`. Invalid fields raise `InvalidParams` naming the path.
    Where ``accepted`` has `Execute` (the daemon's side), the rows of an ``execute``'s
    `ROW_PARAMS` stay raw JSON (`msgspec.Raw`), decoded only where they are used.
    """
    if accepted.get("execute") is Execute:
        execute = _decode_execute_rows(line)
        if execute is not None:
            return execute
    obj = parse_object(line)
    if "command" not in obj:
        request_id = obj.get("requestId")
        return Incoming(request_id if isinstance(request_id, str) else None, obj)
    command = obj["command"]
    if not isinstance(command, str):
        # "command": null too: the field makes it a request, so it must be answered.
        raise InvalidParams(f"command must be a string, got {type_name(command)}")
    message_type = accepted.get(command)
    if message_type is None:
        # Shortened: the name is echoed in the answer and the log, and a frame can be 16 MiB.
        name = command if len(command) <= 64 else command[:64] + "..."
        raise UnknownCommand(f"unknown command {name!r}; known: {', '.join(sorted(accepted))}")
    return convert(obj, message_type)


def _decode_execute_rows(line: bytes) -> Execute | None:
    """A valid ``execute`` frame with the arrays of its `ROW_PARAMS` left as raw JSON, or
    None for any other frame, which then takes the general path (and its error answers).

    It accepts no frame the general path refuses: the JSON is checked whole (msgspec
    checks the syntax of what it leaves raw; UTF-8 is checked here), and the fields as
    `Execute` checks them.
    """
    if not line.isascii():
        try:
            line.decode()
        except UnicodeDecodeError:
            return None
    try:
        frame = _execute_rows_decoder.decode(line)
        params: JSONObject = {}
        for name, raw in (frame.params or {}).items():
            if name in ROW_PARAMS and memoryview(raw)[:1].tobytes() == b"[":
                params[name] = raw  # an array of rows, checked but not decoded
            else:
                params[name] = _json_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    return Execute(
        request_id=frame.request_id,
        target_command=frame.target_command,
        params=params,
        task_id=frame.task_id,
    )


def split_rows(rows: msgspec.Raw) -> list[msgspec.Raw]:
    """An array of rows left raw by `decode_frame`, as a list of rows each still raw."""
    return _raw_list_decoder.decode(rows)


def decode_raw(raw: msgspec.Raw) -> JSONValue:
    """JSON left raw by `decode_frame` (an array of rows, or one row of it), decoded; the
    errors are those a whole frame would get."""
    try:
        return _json_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidJson(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidJson("not accepted JSON: nested too deeply") from None


def with_rows_decoded(params: Mapping[str, object]) -> JSONObject:
    """``params`` with the rows `decode_frame` left raw decoded (an array whole, or rows one
    by one): what code that takes JSON values only must be given."""
    decoded = dict(params)
    for name in ROW_PARAMS:
        rows = decoded.get(name)
        if isinstance(rows, msgspec.Raw):
            decoded[name] = decode_raw(rows)
        elif isinstance(rows, list):
            decoded[name] = [decode_raw(r) if isinstance(r, msgspec.Raw) else r for r in rows]
    return decoded


def encode_json(value: JSONValue) -> bytes:
    """Compact JSON of one value, exactly as it appears inside a frame `encode` makes."""
    return _json_encoder.encode(value)


T = TypeVar("T")


def convert(obj: object, message_type: type[T]) -> T:
    """Validate a decoded JSON object as ``message_type``; errors become `InvalidParams`."""
    try:
        return msgspec.convert(obj, message_type)
    except msgspec.ValidationError as exc:
        raise InvalidParams(str(exc)) from None


def request_id_of(line: bytes) -> str | None:
    """The ``requestId`` of a frame that failed to decode, if one can still be read from it."""
    try:
        obj = _json_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(obj, dict):
        value = obj.get("requestId")
        if isinstance(value, str) and 0 < len(value) <= 256:
            return value
    return None


def check_answer(answer: Incoming) -> JSONObject:
    """The body of a successful answer; an error answer raises `RemoteError` with its code."""
    body = answer.body
    if body.get("status") == "error":
        error = body.get("error")
        code = body.get("code")
        raise RemoteError.rebuild(
            error if isinstance(error, str) else "the peer answered with an error",
            code if isinstance(code, str) else "error",
        )
    return body


def is_identifier(name: str) -> bool:
    return bool(_IDENTIFIER_RE.match(name))


def type_name(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case _:
            return "object"


# --- encoding ------------------------------------------------------------------------------


def encode(message: msgspec.Struct | JSONObject) -> bytes:
    """One frame: compact JSON and a newline. Field order is the declaration order."""
    return _json_encoder.encode(message) + b"\n"


def error_answer(exc: ArchivistError, request_id: str | None = None) -> ErrorAnswer:
    """The one place where an archivist error becomes a wire answer."""
    return ErrorAnswer(status="error", error=exc.message, code=exc.code, request_id=request_id)


def frame_too_large(limit: int) -> ErrorAnswer:
    return error_answer(FrameTooLarge(f"frame longer than the limit of {limit} bytes"))
