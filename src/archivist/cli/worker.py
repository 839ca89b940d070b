"""``archivist worker``: its options come from the worker settings table, one per setting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from archivist.cli.common import CONTEXT, log_options, run_async, setup_logging
from archivist.worker.settings import SETTINGS, Setting, from_options

_F = TypeVar("_F", bound=Callable[..., object])


def _worker_option(spec: Setting) -> Callable[[_F], _F]:
    """The ``archivist worker`` option of one worker setting. Its default is None, so an
    option not given leaves the table's default in force (as procrastinate's CLI leaves
    unset flags out with ``argparse.SUPPRESS``); the help shows the table's default."""
    shown = spec.default
    if spec.kind is bool:
        on, _, off = spec.flag.partition("/")
        shown = on if spec.default else off
    help_text = spec.help if shown in (None, ()) else f"{spec.help}  [default: {shown}]"
    kind: click.ParamType[Any] | None = None
    low = spec.ge if spec.ge is not None else spec.gt
    if spec.kind is int:
        kind = click.IntRange(
            None if low is None else int(low),
            None if spec.le is None else int(spec.le),
            min_open=spec.gt is not None,
        )
    elif spec.kind is float:
        kind = click.FloatRange(low, spec.le, min_open=spec.gt is not None)
    return click.option(
        spec.flag,
        spec.name,
        type=kind,
        default=None,
        multiple=spec.multiple,
        metavar=spec.metavar,
        help=help_text,
    )


def worker_options(command: _F) -> _F:
    """Every worker setting (`archivist.worker.settings`) as an option, in the table's order."""
    for spec in reversed(SETTINGS):
        command = _worker_option(spec)(command)
    return command


@click.command(context_settings=CONTEXT)
@worker_options
@click.option(
    "--parent",
    type=click.IntRange(1),
    metavar="PID",
    help="Stop when process PID, this worker's parent, ends (a daemon that starts its "
    "worker passes its own pid).",
)
@click.option("-v", "--verbose", count=True, help="Log debug details.")
@log_options(quiet=True)
def worker(
    verbose: int,
    quiet: bool,
    log_format: str | None,
    log_level: str | None,
    parent: int | None,
    **given: object,
) -> None:
    """Run an archive worker: a Unix-socket server with a task queue.

    The worker takes archive tasks from the daemon, runs up to --concurrency of them at
    once, and moves rows by calling the daemon's data commands back over the connection
    that queued each task. It never opens a database itself. SIGTERM or SIGINT stop it
    gracefully.

    Example:

        archivist worker --socket /run/user/1000/archivist/worker.sock --concurrency 3

    Where the daemon can copy rows inside the database (data/copy: two SQLite files, or
    two MariaDB/MySQL databases on one server), each batch is copied there and deleted
    only where the database finds an identical copy; elsewhere rows pass through the
    worker and are read back before the delete.

    Batches are gentle by default: each aims at --batch-time, tasks on one database take
    turns (--per-database), and batches wait while the database is busy (--max-latency-ms,
    --max-active) or while --pause-file exists; `archivist status` shows why a task waits.
    """
    from archivist.worker import WorkerOptions, serve

    setup_logging(verbose, quiet, log_format, log_level)
    options = WorkerOptions.from_settings(from_options(given), parent=parent)
    run_async(serve(options))
