"""The log formats (`archivist.logs`): JSON lines with the task's fields, passwords of URLs
hidden in both formats, and the level the command line chooses."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from archivist.logs import JsonFormatter, TextFormatter, choose_level, redact, task_context


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(
        "archivist.daemon.service", logging.INFO, __file__, 1, message, args, None
    )
    made.__dict__.update(extra)
    return made


def test_a_json_line_has_the_base_and_the_tasks_fields() -> None:
    line = json.loads(
        JsonFormatter().format(
            record("task %s done", "t-1", task_id="t-1", collection="chat", rows=20, other=1)
        )
    )
    assert line["message"] == "task t-1 done"
    assert (line["level"], line["logger"]) == ("info", "archivist.daemon.service")
    assert line["timestamp"].endswith("Z")
    assert (line["task_id"], line["collection"], line["rows"]) == ("t-1", "chat", 20)
    assert "other" not in line


def test_an_exception_is_one_json_line() -> None:
    try:
        raise ValueError("postgresql://app:hunter2@db/app is down")
    except ValueError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    text = JsonFormatter().format(made)
    assert "\n" not in text
    assert "hunter2" not in text and "ValueError" in json.loads(text)["exception"]


@pytest.mark.parametrize(
    "message",
    [
        "cannot connect to postgresql+psycopg://app:hunter2@db:5432/app",
        "mysql://root:hunter2@127.0.0.1/x and postgres://u:hunter2@h/d",
    ],
)
def test_passwords_in_urls_never_reach_a_log_line(message: str) -> None:
    assert "hunter2" not in redact(message)
    assert "***@" in redact(message)
    assert "hunter2" not in TextFormatter().format(record(message))
    assert "hunter2" not in JsonFormatter().format(record(message))


def test_a_url_without_password_is_unchanged() -> None:
    assert redact("sqlite:///a.db, postgresql://app@db/app") == (
        "sqlite:///a.db, postgresql://app@db/app"
    )


def test_the_level_the_command_line_chooses() -> None:
    assert choose_level(None) == "info"
    assert choose_level(None, quiet=True) == "warning"
    assert choose_level(None, verbose=2) == "debug"
    assert choose_level("error", verbose=2) == "error"
    assert choose_level(None, default="warning") == "warning"


def test_lines_logged_within_a_tasks_context_carry_its_fields_unless_they_give_their_own() -> None:
    formatter = JsonFormatter()
    outside = json.loads(formatter.format(record("resumed")))
    assert "task_id" not in outside
    with task_context(task_id="t-7", collection="chat", source_handle="primary"):
        inside = json.loads(formatter.format(record("task t-7: throttled: pause file")))
        own = json.loads(formatter.format(record("done", task_id="t-8", rows=5)))
    assert (inside["task_id"], inside["collection"], inside["source_handle"]) == (
        "t-7",
        "chat",
        "primary",
    )
    assert (own["task_id"], own["collection"], own["rows"]) == ("t-8", "chat", 5)
    assert "task_id" not in json.loads(formatter.format(record("after")))
