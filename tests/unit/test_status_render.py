"""`render_status`: ``archivist status`` from a daemon's answer, at 80 columns, in process."""

from __future__ import annotations

from archivist.ui import render_status

NOW = 1_800_000_000.0
LONG_ID = "a_rather_long_collection_name_for_events-t01234-12345"


def flat(lines: list[str]) -> str:
    """The text of the lines, whitespace (wrapping, indents) collapsed."""
    return " ".join(" ".join(lines).split())


def document(**overrides: object) -> dict[str, object]:
    """A daemon's answer: two policies, one running and throttled, one paused."""
    base: dict[str, object] = {
        "status": "success",
        "daemon": {
            "pid": 4242,
            "host": "db1",
            "startedAt": NOW - 3600,
            "checkInterval": 60.0,
            "lastCheck": NOW - 3,
            "nextCheck": NOW + 57,
            "workerSocket": "/run/archivist/worker.sock",
            "connected": True,
        },
        "paused": {
            "all": None,
            "collections": {"audit_log": {"by": "al@db1/777", "since": NOW - 125}},
        },
        "policies": [
            {
                "collection": "chat_messages",
                "rows": 21_000,
                "maxRows": 10_000,
                "growth": 12.4,
                "state": "running",
                "reason": None,
                "task": {"taskId": "chat_messages-t01234-7", "archived": 100, "maxRows": 12000},
                "lastRun": {"state": "success", "finishedAt": NOW - 600},
                "nextRun": None,
            },
            {
                "collection": "audit_log",
                "rows": 5_400_000,
                "maxRows": None,
                "olderThan": "90d",
                "growth": None,
                "state": "paused",
                "reason": "paused by al@db1/777 since ...",
                "task": None,
                "lastRun": None,
                "nextRun": None,
            },
            {
                "collection": "sessions",
                "rows": 80,
                "maxRows": 1000,
                "growth": 0.0,
                "state": "idle",
                "reason": None,
                "task": None,
                "lastRun": {"state": "error", "finishedAt": NOW - 7200, "error": "db down"},
                "nextRun": NOW + 57,
            },
        ],
        "running": [
            {
                "taskId": "chat_messages-t01234-7",
                "collection": "chat_messages",
                "sourceHandle": "primary",
                "destHandle": "archive",
                "state": "running",
                "archived": 6_600,
                "total": 12_000,
                "duration": 6700,
                "throttled": "yielding to 1 other session using primary",
            }
        ],
        "queued": [],
        "finished": [
            {
                "taskId": LONG_ID,
                "collection": "events",
                "sourceHandle": "primary",
                "destHandle": "archive",
                "state": "error",
                "archived": 0,
                "total": 5,
                "duration": 12,
                "error": "moved 0 row(s); kept 4 in primary: they are still referenced",
            }
        ],
        "counts": {"queued": 0, "running": 1, "success": 3, "error": 1, "cancelled": 0},
        "uptimeMs": 3_600_000,
    }
    base.update(overrides)
    return base


def test_every_line_fits_80_columns_with_one_line_per_policy() -> None:
    lines = render_status(document(), width=80, now=NOW)

    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    starts = [line.split()[0] for line in lines if line and not line.startswith(" ")]
    assert starts.count("chat_messages") == 1
    assert starts.count("audit_log") == 1
    assert starts.count("sessions") == 1


def test_a_policy_line_has_size_against_limit_growth_last_and_next_run_and_state() -> None:
    lines = render_status(document(), width=80, now=NOW)
    chat = next(line for line in lines if line.startswith("chat_messages "))
    sessions = next(line for line in lines if line.startswith("sessions "))

    assert chat.split()[:6] == ["chat_messages", "21,000/10,000", "12/s", "10min", "ago", "-"]
    assert "running 55%, throttled: yielding to 1" in flat(lines)
    assert sessions.split()[1:3] == ["80/1,000", "0/s"]
    assert sessions.split()[3:6] == ["2h", "ago", "in"]
    assert "in 57s" in sessions
    assert "idle; last run failed: db down" in flat(lines)


def test_a_paused_collection_says_by_whom_and_since_when() -> None:
    lines = render_status(document(), width=80, now=NOW)
    audit = next(line for line in lines if line.startswith("audit_log "))

    assert audit.split()[1] == "5,400k/90d"
    assert "paused by al@db1/777 2min ago" in flat(lines)


def test_a_pause_of_every_policy_is_said_once_with_its_author() -> None:
    paused = {"all": {"by": "ops@db2/9", "since": NOW - 10}, "collections": {}}
    policies = [
        {"collection": "chat_messages", "rows": 5, "maxRows": 10, "state": "paused"},
    ]
    lines = render_status(document(paused=paused, policies=policies, running=[]), width=80, now=NOW)

    assert any(
        line.startswith("every policy paused by ops@db2/9 since 2027-01-15") for line in lines
    )
    assert "paused (every policy)" in flat(lines)


def test_task_ids_are_never_cut_and_notes_wrap_under_them() -> None:
    lines = render_status(document(), width=80, now=NOW)

    assert any(line.startswith(f"{LONG_ID}  error") for line in lines), "\n".join(lines)
    assert "chat_messages-t01234-7  running  6,600/12,000  6.7s  primary->archive" in lines
    assert "kept 4 in primary: they are still referenced" in flat(lines)


def test_an_id_longer_than_the_line_stands_alone_uncut() -> None:
    huge = "x" * 90 + "-t01234-1"
    finished = [{"taskId": huge, "state": "success", "archived": 3, "sourceHandle": "a"}]
    lines = render_status(document(finished=finished), width=80, now=NOW)

    assert huge in lines
    assert all(len(line) <= 80 for line in lines if huge not in line)


def test_a_narrow_terminal_puts_the_state_on_lines_of_its_own() -> None:
    lines = render_status(document(), width=60, now=NOW)

    assert "    paused by al@db1/777 2min ago" in lines, "\n".join(lines)
    assert all(len(line) <= 60 for line in lines if not line.startswith(("chat", "coll")))


def test_without_a_worker_answer_it_says_why() -> None:
    lines = render_status(
        document(counts=None, workerError="no answer in 5 s", running=[], finished=[]),
        width=80,
        now=NOW,
    )

    assert lines[0] == "daemon db1/4242, up 60min, checked 3.0s ago; worker: no answer in 5 s"
