"""Logging set-up for the long-running commands: text or JSON lines on stderr, with the
task's fields (`TASK_FIELDS`, passed as ``extra=`` by the log calls about a task, or set
for a task's whole work by `task_context`) in JSON,
and never a password of a database URL, in either format.

The worker a daemon starts logs as its parent does: the parent passes `child_arguments`
on the worker's command line.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Final

LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
TASK_FIELDS: Final = (
    "task_id",
    "collection",
    "source_handle",
    "dest_handle",
    "rows",
    "status",
    "duration_ms",
    "code",
)
"""The ``extra=`` fields a JSON line carries when its log call gives them."""

_TASK: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar(
    "archivist_task", default=None
)
"""The fields of the task the current asyncio task works for (`task_context`)."""


@contextlib.contextmanager
def task_context(**fields: object) -> Iterator[None]:
    """Within the block (and the asyncio tasks it starts), JSON lines carry ``fields``
    (`TASK_FIELDS`) unless the log call gives its own: every line a task's work logs, a
    retry or a throttle as much as its end, says which task it is about."""
    token = _TASK.set({k: v for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        _TASK.reset(token)


_URL_PASSWORD: Final = re.compile(r"(\w[\w+.-]*://[^:/@\s]*:)[^@\s]+@")
"""The password part of a URL (``scheme://user:password@``), wherever a message has one:
messages show URLs without theirs (``safe_url``), and this keeps an exception's text that
quotes a URL from leaking one."""

_chosen: list[tuple[str, str]] = []
"""The format and level `setup` chose, if it ran (not in a program that embeds archivist)."""


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", text)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ISO 8601), level, logger, message, the
    task's fields when given, and the exception's traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        context = _TASK.get() or {}
        for field in TASK_FIELDS:
            value = record.__dict__.get(field)
            if value is None:
                value = context.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


def choose_level(
    log_level: str | None, *, verbose: int = 0, quiet: bool = False, default: str = "info"
) -> str:
    """The level from the command line: ``--log-level``, else ``-v`` (debug) or ``-q``
    (warning), else ``default`` (the config's ``[daemon] log_level``)."""
    if log_level is not None:
        return log_level
    if verbose > 0:
        return "debug"
    if quiet:
        return "warning"
    return default


def setup(log_format: str = "text", level: str = "info") -> None:
    """Log to stderr in ``log_format`` from ``level`` up (replacing earlier set-ups)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    _chosen[:] = [(log_format, level)]


def child_arguments() -> list[str]:
    """The options that make an ``archivist worker`` child log as this process does (none
    if `setup` never ran: the child keeps its defaults)."""
    if not _chosen:
        return []
    log_format, level = _chosen[0]
    return ["--log-format", log_format, "--log-level", level]
