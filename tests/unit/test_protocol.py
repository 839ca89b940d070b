"""The wire protocol without a socket: the design's messages are test vectors."""

from __future__ import annotations

import contextlib
import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from archivist import protocol
from archivist.errors import ArchivistError, RemoteError
from archivist.protocol import (
    DAEMON_COMMANDS,
    WORKER_COMMANDS,
    Archive,
    Complete,
    Execute,
    ExecuteResult,
    Incoming,
    Ping,
    Pong,
    Progress,
    Queued,
)

# The design's messages, verbatim (the data/list result's "items": [...] made concrete).
DESIGN_PING = '{\n  "command": "ping"\n}'
DESIGN_PONG = '{\n  "status": "success",\n  "message": "pong"\n}'
DESIGN_ARCHIVE = """{
  "command": "archive",
  "taskId": "task-001",
  "collection": "chat_messages",
  "sourceHandle": "primary",
  "destHandle": "archive",
  "maxRows": 10000,
  "batchSize": 1000
}"""
DESIGN_QUEUED = '{\n  "status": "queued",\n  "taskId": "task-001",\n  "queuePosition": 3\n}'
DESIGN_EXECUTE = """{
  "command": "execute",
  "requestId": "req-001",
  "targetCommand": "data/list",
  "params": {
    "collection": "chat_messages",
    "dbHandle": "primary",
    "limit": 1000,
    "orderBy": [{"field": "createdAt", "direction": "asc"}]
  }
}"""
DESIGN_EXECUTE_RESULT = """{
  "requestId": "req-001",
  "status": "success",
  "result": {
    "items": [{"id": 1, "createdAt": "2024-01-01T00:00:00Z"}],
    "count": 1000
  }
}"""
DESIGN_PROGRESS = """{
  "command": "progress",
  "taskId": "task-001",
  "archived": 500,
  "total": 5000,
  "status": "in_progress"
}"""
DESIGN_COMPLETE = """{
  "command": "complete",
  "taskId": "task-001",
  "archived": 5000,
  "duration": 1234,
  "status": "success"
}"""

VALID_TASK: dict[str, object] = json.loads(DESIGN_ARCHIVE)


def frame(text: str) -> bytes:
    """A design message as one wire line (compact, newline stripped as the reader does)."""
    return json.dumps(json.loads(text)).encode()


def reencoded(message: msgspec.Struct) -> object:
    encoded = protocol.encode(message)
    assert encoded.endswith(b"\n")
    assert b"\n" not in encoded[:-1]
    return json.loads(encoded)


# --- the design's messages -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "accepted", "expected_type"),
    [
        (DESIGN_PING, WORKER_COMMANDS, Ping),
        (DESIGN_ARCHIVE, WORKER_COMMANDS, Archive),
        (DESIGN_EXECUTE, DAEMON_COMMANDS, Execute),
        (DESIGN_PROGRESS, DAEMON_COMMANDS, Progress),
        (DESIGN_COMPLETE, DAEMON_COMMANDS, Complete),
    ],
    ids=["ping", "archive", "execute", "progress", "complete"],
)
def test_design_requests_decode_to_their_type_and_reencode_identically(
    text: str, accepted: dict[str, type[protocol.Request]], expected_type: type[msgspec.Struct]
) -> None:
    message = protocol.decode_frame(frame(text), accepted)
    assert type(message) is expected_type
    assert isinstance(message, msgspec.Struct)
    assert reencoded(message) == json.loads(text)


@pytest.mark.parametrize(
    ("text", "expected_type"),
    [(DESIGN_PONG, Pong), (DESIGN_QUEUED, Queued), (DESIGN_EXECUTE_RESULT, ExecuteResult)],
    ids=["pong", "queued", "execute-result"],
)
def test_design_answers_decode_as_incoming_and_convert_to_their_type(
    text: str, expected_type: type[msgspec.Struct]
) -> None:
    for accepted in (WORKER_COMMANDS, DAEMON_COMMANDS):
        incoming = protocol.decode_frame(frame(text), accepted)
        assert isinstance(incoming, Incoming)
        assert incoming.body == json.loads(text)
    answer = protocol.convert(incoming.body, expected_type)
    assert type(answer) is expected_type
    assert reencoded(answer) == json.loads(text)


def test_design_archive_fields_map_to_snake_case() -> None:
    task = protocol.decode_frame(frame(DESIGN_ARCHIVE), WORKER_COMMANDS)
    assert task == Archive(
        task_id="task-001",
        collection="chat_messages",
        source_handle="primary",
        dest_handle="archive",
        max_rows=10000,
        batch_size=1000,
    )


def test_design_execute_keeps_its_data_list_params() -> None:
    execute = protocol.decode_frame(frame(DESIGN_EXECUTE), DAEMON_COMMANDS)
    assert isinstance(execute, Execute)
    assert execute.request_id == "req-001"
    assert execute.target_command == "data/list"
    assert execute.params == {
        "collection": "chat_messages",
        "dbHandle": "primary",
        "limit": 1000,
        "orderBy": [{"field": "createdAt", "direction": "asc"}],
    }


def test_execute_result_keeps_request_id_for_correlation() -> None:
    incoming = protocol.decode_frame(frame(DESIGN_EXECUTE_RESULT), DAEMON_COMMANDS)
    assert isinstance(incoming, Incoming)
    assert incoming.request_id == "req-001"
    assert protocol.check_answer(incoming)["result"] == json.loads(DESIGN_EXECUTE_RESULT)["result"]


def test_execute_without_params_still_sends_an_empty_params_object() -> None:
    encoded = json.loads(protocol.encode(Execute(request_id="req-1", target_command="ping")))
    assert encoded == {
        "command": "execute",
        "requestId": "req-1",
        "targetCommand": "ping",
        "params": {},
    }


def test_encoded_frames_are_camel_case_and_omit_unset_optionals() -> None:
    complete = Complete(task_id="t", archived=1, duration=2, status="success")
    assert json.loads(protocol.encode(complete)) == {
        "command": "complete",
        "taskId": "t",
        "archived": 1,
        "duration": 2,
        "status": "success",
    }
    errored = Complete(task_id="t", archived=0, duration=0, status="error", error="boom")
    assert json.loads(protocol.encode(errored))["error"] == "boom"


def test_unknown_fields_are_ignored_so_newer_peers_interoperate() -> None:
    line = json.dumps({**VALID_TASK, "priority": 5}).encode()
    assert protocol.decode_frame(line, WORKER_COMMANDS) == protocol.decode_frame(
        frame(DESIGN_ARCHIVE), WORKER_COMMANDS
    )


def test_error_answer_of_an_error_answer_raises_remote_error_with_its_code() -> None:
    line = b'{"requestId":"req-7","status":"error","error":"no such table","code":"db_error"}'
    incoming = protocol.decode_frame(line, DAEMON_COMMANDS)
    assert isinstance(incoming, Incoming)
    with pytest.raises(RemoteError) as caught:
        protocol.check_answer(incoming)
    assert caught.value.code == "db_error"
    assert caught.value.message == "no such table"


def test_error_answer_carries_code_message_and_request_id() -> None:
    answer = protocol.error_answer(ArchivistError("went wrong"), "req-9")
    assert json.loads(protocol.encode(answer)) == {
        "status": "error",
        "error": "went wrong",
        "code": "internal",
        "requestId": "req-9",
    }


# --- bad frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"not json", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"command":"ping"', "invalid_json"),
        (b'{"a":"\xff"}', "invalid_json"),
        (b"[" * 5000, "invalid_json"),
        (b'[{"command":"ping"}]', "not_an_object"),
        (b'"ping"', "not_an_object"),
        (b"42", "not_an_object"),
        (b"null", "not_an_object"),
        (b'{"command":"reboot"}', "unknown_command"),
        (b'{"command":"execute","requestId":"r","targetCommand":"ping"}', "unknown_command"),
        (b'{"command":7}', "invalid_params"),
    ],
    ids=[
        "not-json",
        "empty",
        "truncated",
        "invalid-utf8",
        "nested-too-deep",
        "array",
        "string",
        "number",
        "null",
        "unknown-command",
        "daemon-command-sent-to-worker",
        "command-not-a-string",
    ],
)
def test_bad_frames_raise_the_right_protocol_error(line: bytes, code: str) -> None:
    with pytest.raises(ArchivistError) as caught:
        protocol.decode_frame(line, WORKER_COMMANDS)
    assert caught.value.code == code


def test_unknown_command_error_lists_the_known_commands() -> None:
    with pytest.raises(ArchivistError) as caught:
        protocol.decode_frame(b'{"command":"reboot"}', WORKER_COMMANDS)
    assert "'reboot'" in caught.value.message
    assert "archive" in caught.value.message and "ping" in caught.value.message


def archive_error(**changes: object) -> ArchivistError:
    task = {**VALID_TASK, **changes}
    with pytest.raises(ArchivistError) as caught:
        protocol.decode_frame(json.dumps(task).encode(), WORKER_COMMANDS)
    assert caught.value.code == "invalid_params"
    return caught.value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batchSize", "1000"),
        ("batchSize", 10.5),
        ("maxRows", True),
        ("taskId", 1),
        ("collection", None),
        ("sourceHandle", ["primary"]),
    ],
)
def test_mistyped_archive_field_is_invalid_params_naming_its_path(
    field: str, value: object
) -> None:
    assert f"$.{field}" in archive_error(**{field: value}).message


@pytest.mark.parametrize(
    "field", ["taskId", "collection", "sourceHandle", "destHandle", "maxRows", "batchSize"]
)
def test_missing_archive_field_is_invalid_params_naming_the_field(field: str) -> None:
    task = {k: v for k, v in VALID_TASK.items() if k != field}
    with pytest.raises(ArchivistError) as caught:
        protocol.decode_frame(json.dumps(task).encode(), WORKER_COMMANDS)
    assert caught.value.code == "invalid_params"
    assert f"`{field}`" in caught.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batchSize", 0),
        ("batchSize", 100_001),
        ("batchSize", -1),
        ("maxRows", 0),
        ("collection", "x; DROP TABLE chat_messages"),
        ("collection", "1chat"),
        ("collection", "chat_messages\n"),
        ("collection", ""),
        ("taskId", ""),
        ("sourceHandle", ""),
    ],
)
def test_archive_constraint_violations_are_refused(field: str, value: object) -> None:
    assert f"$.{field}" in archive_error(**{field: value}).message


def test_archive_with_same_source_and_dest_handle_is_refused() -> None:
    error = archive_error(destHandle="primary")
    assert "sourceHandle" in error.message and "destHandle" in error.message


@pytest.mark.parametrize(("batch_size", "max_rows"), [(1, 1), (100_000, 1), (1, 10**12)])
def test_archive_constraint_bounds_are_accepted(batch_size: int, max_rows: int) -> None:
    task = {**VALID_TASK, "batchSize": batch_size, "maxRows": max_rows}
    decoded = protocol.decode_frame(json.dumps(task).encode(), WORKER_COMMANDS)
    assert isinstance(decoded, Archive)
    assert (decoded.batch_size, decoded.max_rows) == (batch_size, max_rows)


def test_request_id_of_a_bad_frame_is_recovered_for_the_error_answer() -> None:
    line = json.dumps({**VALID_TASK, "batchSize": 0, "requestId": "r-1"}).encode()
    assert protocol.request_id_of(line) == "r-1"
    assert protocol.request_id_of(b"not json") is None
    assert protocol.request_id_of(b'{"requestId": 5}') is None


def test_is_identifier_rejects_a_trailing_newline() -> None:
    assert protocol.is_identifier("chat_messages")
    assert not protocol.is_identifier("chat_messages\n")
    assert not protocol.is_identifier("chat messages")


# --- properties ----------------------------------------------------------------------------

identifiers = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,40}\Z")
handles = st.text(min_size=1, max_size=30)


@st.composite
def archives(draw: st.DrawFn) -> Archive:
    source = draw(handles)
    dest = draw(handles.filter(lambda h: h != source))
    return Archive(
        task_id=draw(st.text(min_size=1, max_size=60)),
        collection=draw(identifiers),
        source_handle=source,
        dest_handle=dest,
        max_rows=draw(st.integers(min_value=1, max_value=2**63 - 1)),
        batch_size=draw(st.integers(min_value=1, max_value=protocol.MAX_BATCH_SIZE)),
        request_id=draw(st.none() | st.text(min_size=1, max_size=40)),
        order_by=draw(st.none() | identifiers),
    )


@given(archives())
def test_any_valid_archive_round_trips_through_the_wire(task: Archive) -> None:
    line = protocol.encode(task)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert protocol.decode_frame(line[:-1], WORKER_COMMANDS) == task


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_archivist_errors(data: bytes) -> None:
    for accepted in (WORKER_COMMANDS, DAEMON_COMMANDS):
        with contextlib.suppress(ArchivistError):
            protocol.decode_frame(data, accepted)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(["command", "taskId", "batchSize", "maxRows", "collection", "requestId"])
        | st.text(max_size=10),
        json_values,
    )
)
def test_arbitrary_json_objects_raise_only_archivist_errors(obj: dict[str, object]) -> None:
    for accepted in (WORKER_COMMANDS, DAEMON_COMMANDS):
        with contextlib.suppress(ArchivistError):
            protocol.decode_frame(json.dumps(obj).encode(), accepted)


@given(st.sampled_from(["ping", "archive", "status", "cancel"]), json_values)
def test_known_commands_with_garbage_fields_raise_only_invalid_params(
    command: str, value: object
) -> None:
    obj = {**VALID_TASK, "command": command, "taskId": value, "batchSize": value}
    try:
        protocol.decode_frame(json.dumps(obj).encode(), WORKER_COMMANDS)
    except ArchivistError as exc:
        assert exc.code == "invalid_params"


# --- rows left raw: the daemon reads an execute's rows as their JSON text ---------------------


def _rows_decoded(execute: Execute) -> dict[str, object]:
    """An execute's params with the rows the frame left raw decoded, as the general path has
    them."""
    return protocol.with_rows_decoded(execute.params or {})


def test_the_rows_of_an_execute_stay_raw_json_exactly_as_sent() -> None:
    rows = [{"id": 1, "body": "h\u00e9llo", "meta": {"a": [1, 2.5]}}, {"id": 2, "body": None}]
    line = protocol.encode(
        Execute(
            request_id="req-1",
            target_command="data/delete",
            params={"collection": "c", "dbHandle": "primary", "ids": [1, 2], "expected": rows},
        )
    )[:-1]
    execute = protocol.decode_frame(line, DAEMON_COMMANDS)
    assert isinstance(execute, Execute) and execute.params is not None
    expected = execute.params["expected"]
    assert isinstance(expected, msgspec.Raw)
    assert bytes(expected) == protocol.encode_json(rows)
    assert [bytes(row) for row in protocol.split_rows(expected)] == [
        protocol.encode_json(row) for row in rows
    ]
    assert execute.params["ids"] == [1, 2]  # only rows stay raw
    assert _rows_decoded(execute)["expected"] == rows
    assert protocol.decode_raw(expected) == rows


@given(
    st.dictionaries(
        st.sampled_from(["collection", "dbHandle", "items", "expected", "ids"]) | st.text(),
        json_values | st.lists(json_values),
    ),
    st.sampled_from(["req-1", "", None]),
)
def test_an_execute_means_the_same_with_its_rows_left_raw(
    params: dict[str, object], request_id: str | None
) -> None:
    obj = {"command": "execute", "requestId": request_id, "targetCommand": "data/create"}
    line = json.dumps({**obj, "params": params}, ensure_ascii=False).encode()
    try:
        general = protocol.convert(protocol.parse_object(line), Execute)
    except ArchivistError as exc:
        with pytest.raises(ArchivistError) as caught:
            protocol.decode_frame(line, DAEMON_COMMANDS)
        assert caught.value.code == exc.code
        return
    execute = protocol.decode_frame(line, DAEMON_COMMANDS)
    assert isinstance(execute, Execute)
    assert execute.request_id == general.request_id
    assert _rows_decoded(execute) == general.params


def test_a_row_that_is_not_valid_utf8_is_refused_as_the_whole_frame_would_be() -> None:
    line = (
        b'{"command":"execute","requestId":"r","targetCommand":"data/create",'
        b'"params":{"items":[{"body":"\xff"}]}}'
    )
    with pytest.raises(ArchivistError) as caught:
        protocol.decode_frame(line, DAEMON_COMMANDS)
    assert caught.value.code == "invalid_json"
    assert protocol.request_id_of(line) is None


def test_decoding_a_raw_row_raises_the_errors_of_a_frame() -> None:
    with pytest.raises(ArchivistError) as caught:
        protocol.decode_raw(msgspec.Raw(b"[" * 100_000 + b"]" * 100_000))
    assert caught.value.code == "invalid_json"


def test_archive_min_rate_is_an_optional_positive_extension() -> None:
    plain = protocol.decode_frame(json.dumps(VALID_TASK).encode(), WORKER_COMMANDS)
    assert isinstance(plain, Archive) and plain.min_rate is None
    assert b"minRate" not in protocol.encode(plain)  # a design-only peer never sees it
    task = {**VALID_TASK, "minRate": 180.5}
    decoded = protocol.decode_frame(json.dumps(task).encode(), WORKER_COMMANDS)
    assert isinstance(decoded, Archive) and decoded.min_rate == 180.5
    assert b'"minRate":180.5' in protocol.encode(decoded)
    for bad in (0, -1, "fast"):
        assert "$.minRate" in archive_error(minRate=bad).message


def test_rate_changes_a_tasks_min_rate_and_zero_clears_it() -> None:
    line = b'{"command":"rate","taskId":"t-1","minRate":0,"requestId":"r"}'
    message = protocol.decode_frame(line, WORKER_COMMANDS)
    assert isinstance(message, protocol.Rate)
    assert (message.task_id, message.min_rate) == ("t-1", 0.0)
    with pytest.raises(ArchivistError) as caught:
        protocol.decode_frame(b'{"command":"rate","taskId":"t-1","minRate":-5}', WORKER_COMMANDS)
    assert caught.value.code == "invalid_params" and "$.minRate" in caught.value.message
