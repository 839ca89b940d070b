"""The ``archivist`` command line: argument parsing, logging set-up and human output.

Each command is a thin layer over the library: it builds options, runs one coroutine,
and turns an `ArchivistError` into one clear line and a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import NoReturn

import click

import archivist
from archivist import protocol
from archivist.errors import ArchivistError

log = logging.getLogger("archivist")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def setup_logging(verbose: int, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 0 else logging.INFO
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"archivist: error: {message}", err=True)
    sys.exit(code)


def run_async(coro: Coroutine[object, object, None]) -> None:
    try:
        asyncio.run(coro)
    except ArchivistError as exc:
        fail(exc.message)


@click.group(context_settings=CONTEXT)
@click.version_option(archivist.__version__, prog_name="archivist")
def main() -> None:
    """archivist keeps hot database tables small by moving old rows to archive storage.

    A worker process owns the task queue; a daemon owns the databases and tells the worker
    what to archive. Start with `archivist demo` to see it work on SQLite, then write a
    config file and use `archivist run --config FILE`.
    """


@main.command(context_settings=CONTEXT)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    help="Unix socket to listen on. Default: $XDG_RUNTIME_DIR/archivist/worker.sock, "
    "else /tmp/archivist-<uid>/worker.sock.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=3,
    show_default=True,
    help="Tasks run at once (never two on the same source collection).",
)
@click.option(
    "--frame-limit",
    type=click.IntRange(1024),
    default=protocol.DEFAULT_FRAME_LIMIT,
    show_default=True,
    help="Longest accepted line, in bytes; a longer one closes the connection.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.1),
    default=600.0,
    show_default=True,
    help="Seconds a silent connection is kept open.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running tasks get to reach a safe point on SIGTERM.",
)
@click.option("-v", "--verbose", count=True, help="Log debug details.")
@click.option("-q", "--quiet", is_flag=True, help="Log only warnings and errors.")
def worker(
    socket_path: Path | None,
    concurrency: int,
    frame_limit: int,
    idle_timeout: float,
    shutdown_timeout: float,
    verbose: int,
    quiet: bool,
) -> None:
    """Run an archive worker: a Unix-socket server with a task queue.

    The worker takes archive tasks from the daemon, runs up to --concurrency of them at
    once, and moves rows by calling the daemon's data commands back over the connection
    that queued each task. It never opens a database itself. SIGTERM or SIGINT stop it
    gracefully.

    Example:

        archivist worker --socket /run/user/1000/archivist/worker.sock --concurrency 3
    """
    from archivist.worker import WorkerOptions, serve
    from archivist.worker.paths import default_socket_path

    setup_logging(verbose, quiet)
    options = WorkerOptions(
        socket_path=socket_path or default_socket_path(),
        concurrency=concurrency,
        frame_limit=frame_limit,
        idle_timeout=idle_timeout,
        shutdown_timeout=shutdown_timeout,
    )
    run_async(serve(options))
