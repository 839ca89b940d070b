"""Running tasks: concurrency, one task per collection, status, cancel, copy-verify-delete."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import support
from support import Frame, MemoryDaemon, WireClient, WorkerProcess, archive_task

StartWorker = Callable[..., AbstractContextManager[WorkerProcess]]


def status(client: WireClient) -> Frame:
    answer = client.request({"command": "status"})
    assert answer["status"] == "success"
    return answer


def ids(tasks: object) -> list[str]:
    assert isinstance(tasks, list)
    return sorted(t["taskId"] for t in tasks)


def pings_for(client: WireClient, count: int) -> list[Frame]:
    """The next ``count`` execute(ping) requests, left unanswered so their tasks wait."""
    pings = []
    for _ in range(count):
        execute = client.recv_until(support.is_execute())
        assert execute["targetCommand"] == "ping"
        pings.append(execute)
    return pings


def finish_one(client: WireClient, ping: Frame) -> tuple[Frame, list[Frame]]:
    """Let the task of ``ping`` run to its end while other tasks stay blocked on their pings.

    Returns its ``complete`` and the pings of tasks that started meanwhile (unanswered).
    ``execute`` carries no taskId, so only the task whose ping is answered sends other commands.
    """
    support.answer_as_empty_daemon(client, ping)
    new_pings = []
    while True:
        frame = client.recv()
        if frame.get("command") == "complete":
            return frame, new_pings
        if support.is_execute("ping")(frame):
            new_pings.append(frame)
        elif frame.get("command") == "execute":
            support.answer_as_empty_daemon(client, frame)


def test_concurrency_3_runs_three_waiting_tasks_at_once_and_a_fourth_waits(
    start_worker: StartWorker,
) -> None:
    with start_worker("--concurrency", "3") as worker, worker.connect() as client:
        for number in range(1, 5):
            client.request(archive_task(f"t{number}", f"collection_{number}"))
        pings = pings_for(client, 3)
        now = status(client)
        assert ids(now["running"]) == ["t1", "t2", "t3"]
        assert ids(now["queued"]) == ["t4"]
        client.assert_silent(0.3)  # t4 gets no runner while the others wait on us

        complete, new_pings = finish_one(client, pings[0])
        assert complete["status"] == "success"
        if not new_pings:
            new_pings = pings_for(client, 1)
        after = status(client)
        assert "t4" in ids(after["running"])
        assert len(after["running"]) == 3
        assert [t["taskId"] for t in after["finished"]] == [complete["taskId"]]


def test_concurrency_1_runs_one_task_at_a_time(start_worker: StartWorker) -> None:
    with start_worker("--concurrency", "1") as worker, worker.connect() as client:
        client.request(archive_task("t1", "a"))
        client.request(archive_task("t2", "b"))
        first = pings_for(client, 1)[0]
        client.assert_silent(0.2)
        assert ids(status(client)["queued"]) == ["t2"]
        complete = support.finish_empty_task(client, "t1", first)
        assert complete["status"] == "success"
        assert support.finish_empty_task(client, "t2")["status"] == "success"


def test_second_task_on_the_same_collection_waits_while_one_on_another_starts(
    start_worker: StartWorker,
) -> None:
    with start_worker("--concurrency", "3") as worker, worker.connect() as client:
        client.request(archive_task("same-1", "chat_messages"))
        (same_1_ping,) = pings_for(client, 1)
        client.request(archive_task("same-2", "chat_messages"))
        client.request(archive_task("other", "audit_log"))
        (other_ping,) = pings_for(client, 1)
        now = status(client)
        assert ids(now["running"]) == ["other", "same-1"]
        assert ids(now["queued"]) == ["same-2"]
        client.assert_silent(0.2)

        # A free runner still does not take same-2 while same-1 runs ...
        complete, started = finish_one(client, other_ping)
        assert (complete["taskId"], started) == ("other", [])
        client.assert_silent(0.2)
        assert ids(status(client)["queued"]) == ["same-2"]
        # ... and takes it as soon as same-1 is done.
        complete, _ = finish_one(client, same_1_ping)
        assert complete["taskId"] == "same-1"
        pings_for(client, 1)
        assert ids(status(client)["running"]) == ["same-2"]


def test_status_reports_queued_running_finished_and_counts(start_worker: StartWorker) -> None:
    with start_worker("--concurrency", "1") as worker, worker.connect() as client:
        client.request(archive_task("done", "a"))
        support.finish_empty_task(client, "done")
        client.request(archive_task("busy", "a"))
        client.request(archive_task("waiting", "b"))
        pings_for(client, 1)
        now = status(client)
        assert ids(now["running"]) == ["busy"]
        assert ids(now["queued"]) == ["waiting"]
        assert [(t["taskId"], t["state"]) for t in now["finished"]] == [("done", "success")]
        assert now["counts"] == {
            "queued": 1,
            "running": 1,
            "success": 1,
            "error": 0,
            "cancelled": 0,
        }
        assert now["concurrency"] == 1
        waiting = now["queued"][0]
        assert (waiting["collection"], waiting["sourceHandle"], waiting["destHandle"]) == (
            "b",
            "primary",
            "archive",
        )


def test_cancel_of_a_queued_task_completes_it_as_cancelled(start_worker: StartWorker) -> None:
    with start_worker("--concurrency", "1") as worker, worker.connect() as client:
        client.request(archive_task("running", "a"))
        client.request(archive_task("queued", "b"))
        first = pings_for(client, 1)[0]
        client.send({"command": "cancel", "taskId": "queued"})
        frames = [client.recv(), client.recv()]
        answer = next(f for f in frames if "command" not in f)
        complete = next(f for f in frames if support.is_complete("queued")(f))
        assert answer == {"status": "success", "taskId": "queued"}
        assert (complete["status"], complete["archived"]) == ("cancelled", 0)
        assert complete["code"] == "cancelled"
        assert status(client)["queued"] == []
        # The cancelled task never runs: after the first, nothing else is executed.
        support.finish_empty_task(client, "running", first)
        client.assert_silent(0.3)


def test_cancel_of_a_running_task_stops_it_at_the_next_safe_point(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        client.request(archive_task("t1"))
        ping = pings_for(client, 1)[0]
        cancelled = client.request({"command": "cancel", "taskId": "t1"})
        assert cancelled == {"status": "success", "taskId": "t1"}
        complete = support.finish_empty_task(client, "t1", ping)
        assert (complete["status"], complete["code"]) == ("cancelled", "cancelled")


def test_cancel_of_an_unknown_task_is_an_error(worker: WorkerProcess) -> None:
    with worker.connect() as client:
        answer = client.request({"command": "cancel", "taskId": "ghost"})
        assert (answer["status"], answer["code"]) == ("error", "unknown_task")


def rows(count: int) -> dict[object, Frame]:
    return {n: {"id": n, "body": f"message {n}"} for n in range(1, count + 1)}


def test_task_moves_rows_in_batches_with_progress_then_completes(worker: WorkerProcess) -> None:
    daemon = MemoryDaemon(rows(25))
    with worker.connect() as client:
        client.request(archive_task("t1", maxRows=100, batchSize=10))
        complete, progress = daemon.serve(client, "t1")
    assert (complete["status"], complete["archived"]) == ("success", 25)
    assert [(p["archived"], p["total"], p["status"]) for p in progress] == [
        (10, 25, "in_progress"),
        (20, 25, "in_progress"),
        (25, 25, "in_progress"),
    ]
    assert daemon.tables["primary"] == {}
    assert daemon.tables["archive"] == rows(25)
    assert daemon.calls[:3] == ["ping", "data/count", "data/list"]


def test_task_stops_at_max_rows_and_moves_the_oldest_first(worker: WorkerProcess) -> None:
    daemon = MemoryDaemon(rows(25))
    with worker.connect() as client:
        client.request(archive_task("t1", maxRows=15, batchSize=10))
        complete, progress = daemon.serve(client, "t1")
    assert (complete["status"], complete["archived"]) == ("success", 15)
    assert progress[-1]["archived"] == 15
    assert sorted(daemon.tables["archive"]) == list(range(1, 16))
    assert sorted(daemon.tables["primary"]) == list(range(16, 26))


def test_copy_that_reads_back_different_fails_the_task_and_deletes_nothing(
    worker: WorkerProcess,
) -> None:
    daemon = MemoryDaemon(rows(5), corrupt_copies=True)
    with worker.connect() as client:
        client.request(archive_task("t1", batchSize=10))
        complete, _ = daemon.serve(client, "t1")
    assert (complete["status"], complete["code"]) == ("error", "verify_mismatch")
    assert "differs" in complete["error"]
    assert "data/delete" not in daemon.calls
    assert daemon.tables["primary"] == rows(5)


def test_malformed_daemon_answer_fails_only_that_task(worker: WorkerProcess) -> None:
    # A list as primary key value once crashed the runner, and with it the whole worker.
    listing = {"items": [{"id": [1], "body": "x"}], "count": 1}
    results: dict[object, Frame] = {
        "ping": {"message": "pong"},
        "data/count": {"count": 1},
        "data/list": listing,
        "data/create": {"created": 1},
        "data/delete": {"deleted": 1},
    }
    with worker.connect() as client:
        client.request(archive_task("t1"))
        while True:
            frame = client.recv()
            if support.is_complete("t1")(frame):
                break
            if frame.get("command") == "execute":
                assert frame["targetCommand"] != "data/delete"
                if frame["targetCommand"] in support.DESIGN_ONLY_UNKNOWN:
                    support.refuse_unknown(client, frame)
                    continue
                support.answer(client, frame, results[frame["targetCommand"]])
        assert frame["status"] == "error"
        assert "primary key" in frame["error"]
        assert client.ping()["message"] == "pong"
        client.request(archive_task("t2"))
        assert support.finish_empty_task(client, "t2")["status"] == "success"
