"""What the command line shows people: progress bars on a terminal, plain lines elsewhere."""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from archivist.daemon.tracker import TaskRecord
from archivist.protocol import StatusResult

if TYPE_CHECKING:  # the data layer's imports are slow; a one-shot run starts its worker first
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from archivist.data import ArchivePlan

_MARKUP = re.compile(r"\[(/|/?[a-z][a-z ]*)\]")
"""rich's style tags as this module writes them: ``[bold green]``, ``[/]``."""


class Printer(Protocol):
    """What this module prints to: rich's console, or `PlainConsole`."""

    @property
    def is_terminal(self) -> bool: ...

    def print(
        self,
        *objects: Any,
        markup: bool | None = None,
        highlight: bool | None = None,
        soft_wrap: bool | None = None,
    ) -> None: ...


class PlainConsole:
    """Plain lines to stdout or stderr, without rich: what a console that is not a terminal
    (a pipe, a log file, cron) shows anyway. rich's import is ~10% of a one-shot command's
    start; scripts and timers that run ``archivist archive`` need none of it."""

    is_terminal = False

    def __init__(self, *, stderr: bool = False) -> None:
        self.stderr = stderr

    @property
    def file(self) -> TextIO:
        # Looked up at each print, as rich does: a test runner may swap the streams.
        return sys.stderr if self.stderr else sys.stdout

    def print(
        self,
        *objects: Any,
        markup: bool | None = None,
        highlight: bool | None = None,
        soft_wrap: bool | None = None,
    ) -> None:
        text = " ".join(str(item) for item in objects)
        if markup is not False:
            text = _MARKUP.sub("", text)
        self.file.write(text + "\n")
        self.file.flush()


def is_terminal(stream: TextIO) -> bool:
    """Whether rich would draw on ``stream``: a terminal, or FORCE_COLOR set."""
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def make_console(*, stderr: bool = False) -> Printer:
    """rich's console on a terminal (bars, colours, tables); plain lines elsewhere."""
    if is_terminal(sys.stderr if stderr else sys.stdout):
        from rich.console import Console

        return Console(stderr=stderr)
    return PlainConsole(stderr=stderr)


class ArchiveProgress:
    """Shows one record's progress: rows, rate and ETA. Use as a context manager."""

    def __init__(self, label: str, console: Printer | None = None) -> None:
        self.console = console or make_console(stderr=True)
        self.label = label
        self.interactive = self.console.is_terminal
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._started = time.monotonic()
        self._last_line = 0.0

    def __enter__(self) -> ArchiveProgress:
        if self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("rows  {task.fields[rate]:>9} rows/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,  # type: ignore[arg-type]  # rich's, when interactive
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=None, rate="-")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def say(self, text: str) -> None:
        """One line beside the progress (a wait for another mover, say)."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def update(self, record: TaskRecord) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = record.archived / elapsed
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                completed=record.archived,
                total=record.total or None,
                rate=f"{rate:,.0f}",
            )
            return
        now = time.monotonic()
        if now - self._last_line >= 1.0 or record.finished:
            self._last_line = now
            total = f"/{record.total:,}" if record.total else ""
            self.console.print(
                f"{self.label}: {record.archived:,}{total} rows archived "
                f"({rate:,.0f} rows/s, {record.state})",
                markup=False,
                highlight=False,
            )


def print_summary(console: Printer, record: TaskRecord) -> None:
    seconds = max(record.duration_ms / 1000, 1e-3)
    console.print(
        f"[bold green]archived[/] {record.archived:,} rows of {record.collection} "
        f"({record.source_handle} -> {record.dest_handle}) in {seconds:,.1f} s, "
        f"{record.archived / seconds:,.0f} rows/s"
        + (f", {record.attempts} attempts" if record.attempts > 1 else "")
    )


def print_status(console: Console, status: StatusResult) -> None:
    counts = ", ".join(f"{name} {number}" for name, number in status.counts.items())
    console.print(
        f"worker up {status.uptime_ms / 1000:,.0f} s, concurrency {status.concurrency}: {counts}"
    )
    rows = [*status.running, *status.queued, *status.finished]
    if not rows:
        console.print("no tasks yet")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("task", "collection", "handles", "state", "archived", "time", "note"):
        table.add_column(column, justify="right" if column in ("archived", "time") else "left")
    for task in rows:
        archived = f"{task.archived:,}" + (f"/{task.total:,}" if task.total else "")
        seconds = f"{task.duration / 1000:,.1f} s" if task.duration is not None else ""
        note = task.error or (f"throttled: {task.throttled}" if task.throttled else "")
        table.add_row(
            task.task_id,
            task.collection,
            f"{task.source_handle} -> {task.dest_handle}",
            task.state,
            archived,
            seconds,
            note,
        )
    console.print(table)


def print_keepup(console: Console, document: dict[str, object]) -> None:
    """Per policy, from the daemon's last check: the table's size against its limit, how
    fast it grows, how fast archivist moved it, the rate asked of it, and whether it keeps
    up (docs/configuration.md, "Keeping up")."""
    policies = document.get("policies")
    at = document.get("at")
    if not isinstance(policies, dict) or not policies:
        return
    ago = f", {max(0.0, time.time() - at):,.0f} s ago" if isinstance(at, int | float) else ""
    console.print(f"policies (the daemon's last check{ago}):")
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("collection", "rows/limit", "growth", "moved", "at least", "state"):
        table.add_column(column, justify="left" if column in ("collection", "state") else "right")

    def rate(value: object) -> str:
        return f"{value:,.0f}/s" if isinstance(value, int | float) else "-"

    for name, state in policies.items():
        if not isinstance(state, dict):
            continue
        rows, limit = state.get("rows"), state.get("maxRows")
        size = "-"
        if isinstance(rows, int):
            size = f"{rows:,}/{limit:,}" if isinstance(limit, int) else f"{rows:,}"
        if isinstance(rows, int) and state.get("exact") is False:
            size = "~" + size  # an estimate: the statistics put it well within its limit
        table.add_row(
            str(name),
            size,
            rate(state.get("growth")),
            rate(state.get("moving")),
            rate(state.get("minRate")),
            str(state.get("state", "")),
        )
    console.print(table)


def print_movers(console: Console, movers: list[tuple[str, str]]) -> None:
    """``status --config``: who moves each collection now (its lock in the source database),
    on this host or another."""
    console.print("movers (one per collection, on any host):")
    for collection, text in movers:
        console.print(f"  {collection}: {text}", markup=False, highlight=False, soft_wrap=True)


def print_plan(console: Printer, plan: ArchivePlan) -> None:
    """``archive --dry-run``: what would move, and nothing moved."""
    limits = []
    if plan.max_rows is not None:
        limits.append(f"max_rows {plan.max_rows:,}, rows_per_archive {plan.rows_per_archive:,}")
    if plan.cutoff is not None:
        limits.append(f"older than {plan.cutoff}")
    if plan.mode != "move":
        limits.append(f"mode {plan.mode}")
    console.print(
        f"{plan.collection} on {plan.source_handle}: {'' if plan.rows_exact else '~'}"
        f"{plan.rows:,} rows "
        f"(policy: {'; '.join(limits)})"
    )
    verb = {"move": "archive", "copy": "copy", "purge": "delete"}.get(plan.mode, "archive")
    if plan.to_archive == 0:
        console.print(f"would {verb} nothing: the table is within its policy")
    else:
        span = ""
        if plan.oldest is not None:
            span = f", {plan.order_by} from {plan.oldest} to {plan.newest}"
        where = "" if plan.mode == "purge" else f" to {plan.dest_handle}"
        console.print(
            f"would {verb} {plan.to_archive:,} rows{where} in batches of {plan.batch_size:,}{span}"
        )
    if plan.mode != "purge":
        console.print(f"archive table on {plan.dest_handle}: {plan.archive_table}")
    if plan.path:
        console.print(f"rows would move: {plan.path}")
    if plan.index is not None:
        console.print(f"batches read {plan.order_by} through index {plan.index}", markup=False)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if plan.children:
        console.print(
            f"with their children (moved first): {', '.join(plan.children)}",
            markup=False,
            highlight=False,
        )
    for line in plan.relations:
        console.print(f"{plan.collection}: {line}", markup=False, highlight=False)
    if plan.refusal:
        console.print(f"[bold red]would refuse[/]: {plan.refusal}", highlight=False)
    console.print("dry run: nothing was moved")


# --- archivist status, from a running daemon ------------------------------------------------

FINISHED_SHOWN = 5
"""Finished tasks ``status`` lists (the newest; ``--json`` has every one the worker keeps)."""


def render_status(document: Mapping[str, object], *, width: int = 80, now: float) -> list[str]:
    """``archivist status`` from a daemon's answer (`archivist.daemon.operator.report` with
    the worker's status): a summary line, one line per policy (collection, rows against its
    limit, growth, last run, next run, state or the reason it waits), then the tasks.

    Pure: lines of at most ``width`` characters, except that nothing is ever cut (a task id or
    a collection name longer than the width gets a line of its own); text that does not fit
    continues on indented lines."""
    lines = _summary(document, now, width)
    running = {str(task.get("taskId")): task for task in _dicts(document.get("running"))}
    paused = document.get("paused")
    pauses = paused.get("collections") if isinstance(paused, dict) else None
    rows = [["collection", "rows/limit", "growth", "last run", "next run", "state"]]
    for policy in _dicts(document.get("policies")):
        rows.append(
            [
                str(policy.get("collection")),
                _size(policy),
                _rate(policy.get("growth")),
                _ago(_field(policy.get("lastRun"), "finishedAt"), now),
                _until(policy.get("nextRun"), now),
                _policy_state(policy, running, pauses, now),
            ]
        )
    if len(rows) == 1:
        lines.append("no policies")
    else:
        lines += _columns(rows, width)
    tasks = [
        *_dicts(document.get("running")),
        *_dicts(document.get("queued")),
        *_dicts(document.get("finished"))[:FINISHED_SHOWN],
    ]
    if tasks:
        lines.append("tasks:")
    for task in tasks:
        lines += _task_lines(task, width)
    return lines


def _summary(document: Mapping[str, object], now: float, width: int) -> list[str]:
    daemon = document.get("daemon")
    parts = []
    if isinstance(daemon, dict):
        started = daemon.get("startedAt")
        up = f", up {_duration(now - started)}" if isinstance(started, int | float) else ""
        checked = daemon.get("lastCheck")
        if isinstance(checked, int | float):
            up += f", checked {_ago(checked, now)}"
        parts.append(f"daemon {daemon.get('host')}/{daemon.get('pid')}{up}")
        if not daemon.get("connected"):
            parts.append(f"worker not connected ({daemon.get('workerSocket')})")
    counts = document.get("counts")
    if isinstance(counts, dict):
        uptime = document.get("uptimeMs")
        up = f" up {_duration(uptime / 1000)}" if isinstance(uptime, int | float) else ""
        tasks = ", ".join(f"{number} {name}" for name, number in counts.items() if number)
        parts.append(f"worker{up}: {tasks or 'no tasks'}")
    elif document.get("workerError"):
        parts.append(f"worker: {document.get('workerError')}")
    lines = _wrap("; ".join(parts), width, "  ")
    paused = document.get("paused")
    everything = paused.get("all") if isinstance(paused, dict) else None
    if isinstance(everything, dict):
        lines += _wrap(f"every policy {pause_text(everything)}", width, "  ")
    return lines


def _policy_state(
    policy: Mapping[str, object],
    running: Mapping[str, Mapping[str, object]],
    pauses: object,
    now: float,
) -> str:
    state = str(policy.get("state"))
    reason = policy.get("reason")
    if state == "paused":
        pause = pauses.get(str(policy.get("collection"))) if isinstance(pauses, dict) else None
        if not isinstance(pause, dict):
            return "paused (every policy)"
        return f"paused by {pause.get('by')} {_ago(pause.get('since'), now)}"
    task = policy.get("task")
    if isinstance(task, dict) and state in ("queued", "running", "pending", "lost"):
        progress = running.get(str(task.get("taskId")), task)
        total = progress.get("total") or progress.get("maxRows")
        done = progress.get("archived")
        text = state
        if isinstance(done, int) and isinstance(total, int) and total:
            text += f" {min(100, 100 * done // total)}%"  # the rows: on the task's line
        keeping = policy.get("keepUp")
        if keeping in ("behind", "keeps up"):
            text += f", {keeping}: at least {_rate(policy.get('minRate'))}"
        throttled = progress.get("throttled")
        return f"{text}, throttled: {throttled}" if throttled else text
    if reason:
        return f"{state}: {reason}"
    last = policy.get("lastRun")
    if isinstance(last, dict) and last.get("state") == "error":
        return f"{state}; last run failed: {last.get('error')}"
    return state


def _columns(rows: list[list[str]], width: int) -> list[str]:
    """Left-aligned name, right-aligned figures, the state last: wrapped under its own
    column, or on indented lines of its own when the columns before leave it too little."""
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    right = (False, True, True, True, True)
    start = sum(widths) + 2 * 5
    lines = []
    for row in rows:
        cells = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=False)
        ]
        head = "  ".join(cells)
        if width - start >= 20:
            state = _wrap(row[5], width - start, "")
            lines.append(f"{head}  {state[0]}".rstrip())
            lines += [" " * start + more for more in state[1:]]
        else:
            lines.append(head.rstrip())
            lines += _wrap(row[5], width, "    ", first="    ")
    return lines


def _task_lines(task: Mapping[str, object], width: int) -> list[str]:
    archived, total = task.get("archived", 0), task.get("total", 0)
    progress = f"{archived:,}" if isinstance(archived, int) else "0"
    if isinstance(total, int) and total:
        progress += f"/{total:,}"
    duration = task.get("duration")
    parts = [
        str(task.get("taskId")),
        str(task.get("state")),
        progress,
        _duration(duration / 1000) if isinstance(duration, int | float) else "",
        f"{task.get('sourceHandle')}->{task.get('destHandle')}",
    ]
    lines = _wrap("  ".join(part for part in parts if part), width, "    ")
    note = task.get("error") or (f"throttled: {task['throttled']}" if task.get("throttled") else "")
    if note:
        lines += _wrap(str(note), width, "    ", first="    ")
    return lines


def _wrap(text: str, width: int, indent: str, first: str = "") -> list[str]:
    """Words over lines of ``width``; a word is never cut (an id longer than the line
    stands alone), nor at its hyphens (task ids have them)."""
    import textwrap

    return textwrap.wrap(
        text,
        width=max(width, len(first) + 1, len(indent) + 1),
        initial_indent=first,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [first.rstrip()]


def _dicts(value: object) -> list[Mapping[str, object]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _field(value: object, name: str) -> object:
    return value.get(name) if isinstance(value, dict) else None


def _number(value: float) -> str:
    """12,345 up to 99,999; then 123k, 12.3M: the table's figures in a column of 80."""
    if value < 100_000:
        return f"{value:,.0f}"
    if value < 10_000_000:
        return f"{value / 1000:,.0f}k"
    return f"{value / 1_000_000:,.1f}M"


def _size(policy: Mapping[str, object]) -> str:
    rows, limit, age = policy.get("rows"), policy.get("maxRows"), policy.get("olderThan")
    shown = _number(rows) if isinstance(rows, int) else "?"
    if isinstance(limit, int):
        return f"{shown}/{_number(limit)}"
    return f"{shown}/{age}" if age else shown


def _rate(value: object) -> str:
    return f"{_number(value)}/s" if isinstance(value, int | float) else "-"


def _duration(seconds: float) -> str:
    """Short and without a space (a line wraps between words): 6.7s, 42s, 10min, 2h, 3d."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _ago(at: object, now: float) -> str:
    return f"{_duration(now - at)} ago" if isinstance(at, int | float) else "never"


def _until(at: object, now: float) -> str:
    if not isinstance(at, int | float):
        return "-"
    return "now" if at <= now else f"in {_duration(at - now)}"


def pause_text(entry: Mapping[str, object]) -> str:
    """ "paused by al@db1/4242 since 2026-12-07 03:10:00 UTC", from a pause's JSON."""
    since = entry.get("since")
    at = ""
    if isinstance(since, int | float):
        stamp = dt.datetime.fromtimestamp(since, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        at = f" since {stamp}"
    return f"paused by {entry.get('by')}{at}"
