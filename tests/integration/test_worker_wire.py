"""The design's Tests 1-3 and bad input, against a worker started as a subprocess."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

import support
from support import WorkerProcess

StartWorker = Callable[..., AbstractContextManager[WorkerProcess]]

DESIGN_PING = {"command": "ping"}
DESIGN_PONG = {"status": "success", "message": "pong"}
DESIGN_TASK = {
    "command": "archive",
    "taskId": "task-001",
    "collection": "chat_messages",
    "sourceHandle": "primary",
    "destHandle": "archive",
    "maxRows": 10000,
    "batchSize": 1000,
}


def assert_pong(answer: support.Frame) -> None:
    # PROTOCOL.md lets the pong carry extra fields; the design's two must be exact.
    assert {k: answer[k] for k in DESIGN_PONG} == DESIGN_PONG, answer
    assert "command" not in answer


# --- Test 1, 2, 3 --------------------------------------------------------------------------


def test_design_test_1_ping_gets_pong(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        client.send(DESIGN_PING)
        assert_pong(client.recv())


def test_design_ping_as_literal_pretty_json_on_one_line_gets_pong(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        client.send_raw(b'{ "command" : "ping" }\n')
        assert_pong(client.recv())


def test_three_tasks_queued_back_to_back_get_positions_1_2_3(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        answers = []
        for number in (1, 2, 3):
            task = {**DESIGN_TASK, "taskId": f"task-00{number}"}
            answers.append(client.request(task))
        assert answers == [
            {"status": "queued", "taskId": "task-001", "queuePosition": 1},
            {"status": "queued", "taskId": "task-002", "queuePosition": 2},
            {"status": "queued", "taskId": "task-003", "queuePosition": 3},
        ]


def test_design_test_3_worker_executes_ping_through_the_client_then_completes(
    worker: WorkerProcess,
) -> None:
    with worker.connect() as client:
        assert client.request(DESIGN_TASK)["status"] == "queued"
        execute = client.recv_until(support.is_execute())
        assert execute["targetCommand"] == "ping"
        assert execute["params"] == {}
        assert isinstance(execute["requestId"], str) and execute["requestId"]
        complete = support.finish_empty_task(client, "task-001", execute)
        assert complete["status"] == "success"
        assert complete["archived"] == 0
        assert isinstance(complete["duration"], int) and complete["duration"] >= 0


def test_request_id_on_a_request_is_echoed_in_its_answer(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        assert client.request({"command": "ping", "requestId": "r-42"})["requestId"] == "r-42"
        queued = client.request({**DESIGN_TASK, "requestId": "r-43"})
        assert (queued["requestId"], queued["queuePosition"]) == ("r-43", 1)


def test_execute_error_answer_ends_the_task_with_status_error(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        client.request(DESIGN_TASK)
        execute = client.recv_until(support.is_execute("ping"))
        client.send(
            {
                "requestId": execute["requestId"],
                "status": "error",
                "error": "not allowed",
                "code": "forbidden",
            }
        )
        complete = client.recv_until(support.is_complete("task-001"))
        assert complete["status"] == "error"
        assert "not allowed" in complete["error"]
        assert complete["code"] == "forbidden"
        assert_pong(client.ping())


def test_complete_of_a_task_on_an_unknown_collection_carries_its_code(
    worker: WorkerProcess,
) -> None:
    with worker.connect() as client:
        client.request(DESIGN_TASK)
        while True:
            frame = client.recv()
            if support.is_complete("task-001")(frame):
                break
            if frame.get("command") == "execute":
                target = frame["targetCommand"]
                if target == "ping":
                    support.answer(client, frame, {"message": "pong"})
                else:
                    client.send(
                        {
                            "requestId": frame["requestId"],
                            "status": "error",
                            "error": "no collection 'chat_messages' in handle 'primary'",
                            "code": "unknown_collection",
                        }
                    )
        assert (frame["status"], frame["code"]) == ("error", "unknown_collection")
        assert "chat_messages" in frame["error"]


def test_complete_of_a_successful_task_has_no_code(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        client.request(DESIGN_TASK)
        complete = support.finish_empty_task(client, "task-001")
        assert complete["status"] == "success"
        assert "code" not in complete and "error" not in complete


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"this is not json\n", "invalid_json"),
        (b'{"command": "ping"\n', "invalid_json"),
        (b'[{"command": "ping"}]\n', "not_an_object"),
        (b'{"command": "reboot"}\n', "unknown_command"),
        (b"[" * 3000 + b"\n", "invalid_json"),
        (b'{"command": "ping", "x": "\xff"}\n', "invalid_json"),
    ],
    ids=["not-json", "truncated-json", "json-array", "unknown-command", "deep", "bad-utf8"],
)
def test_bad_frame_gets_error_answer_and_connection_stays_usable(
    worker: WorkerProcess, line: bytes, code: str
) -> None:
    with worker.connect() as client:
        client.send_raw(line)
        answer = client.recv()
        assert answer["status"] == "error"
        assert answer["code"] == code
        assert isinstance(answer["error"], str) and answer["error"]
        assert_pong(client.ping())


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"batchSize": "1000"}, "$.batchSize"),
        ({"maxRows": 0}, "$.maxRows"),
        ({"batchSize": 100_001}, "$.batchSize"),
        ({"collection": "x; DROP TABLE chat_messages"}, "$.collection"),
        ({"taskId": ""}, "$.taskId"),
        ({"destHandle": "primary"}, "destHandle"),
    ],
    ids=["mistyped", "max-rows-0", "batch-too-big", "sql-injection", "empty-id", "same-handles"],
)
def test_invalid_archive_task_is_refused_and_never_queued(
    worker: WorkerProcess, change: dict[str, object], path: str
) -> None:
    with worker.connect() as client:
        answer = client.request({**DESIGN_TASK, **change, "requestId": "bad-1"})
        assert answer["status"] == "error"
        assert answer["code"] == "invalid_params"
        assert path in answer["error"]
        assert answer["requestId"] == "bad-1"
        status = client.request({"command": "status"})
        assert status["counts"]["queued"] == 0 and status["counts"]["running"] == 0
        client.assert_silent(0.2)  # no execute: nothing was started
        assert_pong(client.ping())


def test_archive_task_missing_a_field_is_refused_naming_it(worker: WorkerProcess) -> None:
    task = {k: v for k, v in DESIGN_TASK.items() if k != "batchSize"}
    with worker.connect() as client:
        answer = client.request(task)
        assert (answer["status"], answer["code"]) == ("error", "invalid_params")
        assert "batchSize" in answer["error"]
        assert client.request({"command": "status"})["queued"] == []
        assert_pong(client.ping())


def test_duplicate_unfinished_task_id_is_refused_and_not_queued(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        assert client.request(DESIGN_TASK)["queuePosition"] == 1
        duplicate = client.request({**DESIGN_TASK, "collection": "audit_log"})
        assert (duplicate["status"], duplicate["code"]) == ("error", "duplicate_task")
        status = client.request({"command": "status"})
        tasks = status["queued"] + status["running"]
        assert [(t["taskId"], t["collection"]) for t in tasks] == [("task-001", "chat_messages")]


def test_frame_over_the_limit_gets_frame_too_large_and_the_connection_closes(
    start_worker: StartWorker,
) -> None:
    with start_worker("--frame-limit", "1024") as worker, worker.connect() as client:
        client.send_raw(json.dumps({"command": "ping", "pad": "x" * 2000}).encode() + b"\n")
        answer = client.recv()
        assert (answer["status"], answer["code"]) == ("error", "frame_too_large")
        assert client.is_closed_by_peer()
        with worker.connect() as fresh:
            assert_pong(fresh.ping())


def test_frame_at_the_limit_is_accepted(start_worker: StartWorker) -> None:
    with start_worker("--frame-limit", "1024") as worker, worker.connect() as client:
        line = json.dumps({"command": "ping", "pad": ""}).encode()
        line = line.replace(b'""', b'"' + b"x" * (1024 - len(line)) + b'"')
        assert len(line) == 1024
        client.send_raw(line + b"\n")
        assert_pong(client.recv())


def test_many_requests_in_one_write_are_answered_in_order(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        client.send_raw(
            b'{"command":"ping"}\nnope\n{"command":"status"}\n{"command":"cancel","taskId":"x"}\n'
        )
        answers = [client.recv() for _ in range(4)]
        assert answers[0]["message"] == "pong"
        assert answers[1]["code"] == "invalid_json"
        assert "counts" in answers[2]
        assert answers[3]["code"] == "unknown_task"


def test_connections_are_independent(worker: WorkerProcess) -> None:
    with worker.connect() as first, worker.connect() as second:
        first.send_raw(b"garbage\n")
        assert_pong(second.ping())
        assert first.recv()["code"] == "invalid_json"
        assert_pong(first.ping())


def test_client_that_vanishes_mid_task_does_not_hurt_the_worker(worker: WorkerProcess) -> None:
    client = worker.connect()
    client.request(DESIGN_TASK)
    client.recv_until(support.is_execute("ping"))
    client.close()
    with worker.connect() as other:
        assert_pong(other.ping())
        # The dropped task is gone, so its id can be queued again.
        support.poll(lambda: other.request({"command": "status"})["running"] == [])
        assert other.request(DESIGN_TASK)["status"] == "queued"
