"""What the command line shows people: progress bars on a terminal, plain lines elsewhere."""

from __future__ import annotations

import os
import re
import sys
import time
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
        size = f"{rows:,}/{limit:,}" if isinstance(rows, int) and isinstance(limit, int) else "-"
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
        f"{plan.collection} on {plan.source_handle}: {plan.rows:,} rows "
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
