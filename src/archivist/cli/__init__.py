"""The ``archivist`` command line: argument parsing, logging set-up and human output.

Each command is a thin layer over the library: it builds options, runs one coroutine,
and turns an `ArchivistError` into one clear line and a non-zero exit code. The group is
here; each family of commands has its module (`worker`, `daemon` for run/daemon,
`archive`, `status`, `check`, `demo`), and what they share is in `common`. Importing it
loads neither SQLAlchemy nor the data layer: each command imports those when it runs.
"""

from __future__ import annotations

import atexit
import gc

import click

import archivist
from archivist.cli.archive import archive
from archivist.cli.check import check
from archivist.cli.cold import expire, restore
from archivist.cli.common import CONTEXT, fail, load, run_async, setup_logging
from archivist.cli.daemon import daemon, run
from archivist.cli.demo import demo
from archivist.cli.status import status
from archivist.cli.worker import worker, worker_options

__all__ = [
    "archive",
    "check",
    "daemon",
    "demo",
    "expire",
    "fail",
    "load",
    "main",
    "restore",
    "run",
    "run_async",
    "setup_logging",
    "status",
    "worker",
    "worker_options",
]


@click.group(context_settings=CONTEXT)
@click.version_option(archivist.__version__, prog_name="archivist")
def main() -> None:
    """archivist keeps hot database tables small by moving old rows to archive storage.

    A worker process owns the task queue; a daemon owns the databases and tells the worker
    what to archive. Start with `archivist demo` to see it work on SQLite, then write a
    config file and use `archivist run --config FILE`.
    """
    # At exit, the interpreter's collector would walk every object the imports made
    # (SQLAlchemy's alone are many) while tearing the modules down: a good part of a
    # one-shot command on a slow machine. Frozen, they are left to the end of the process; every
    # database and socket is closed explicitly before then.
    atexit.register(gc.freeze)


for _command in (worker, run, daemon, archive, status, check, demo, restore, expire):
    main.add_command(_command)
