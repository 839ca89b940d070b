"""The ``archivist`` command line: argument parsing, logging set-up and human output.

Each command is a thin layer over the library: it builds options, runs one coroutine,
and turns an `ArchivistError` into one clear line and a non-zero exit code. The group is
here; each family of commands has its module (`worker`, `daemon` for run/daemon,
`archive`, `status`, `control` for pause/resume/cancel, `check`, `demo`), and what they
share is in `common`. Importing it loads neither SQLAlchemy nor the data layer: each
command imports those when it runs. A command's module is imported only when that command
runs (or ``--help`` lists them all): the worker a daemon starts, or a one-shot ``archivist
archive``, does not pay for the others' imports (rich's console, the status and check
code).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import inspect
from typing import Any

import click

import archivist
from archivist.cli.common import CONTEXT, fail, load, run_async, setup_logging

COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("archivist.cli.worker", "worker"),
    "run": ("archivist.cli.daemon", "run"),
    "daemon": ("archivist.cli.daemon", "daemon"),
    "archive": ("archivist.cli.archive", "archive"),
    "status": ("archivist.cli.status", "status"),
    "pause": ("archivist.cli.control", "pause"),
    "resume": ("archivist.cli.control", "resume"),
    "cancel": ("archivist.cli.control", "cancel"),
    "check": ("archivist.cli.check", "check"),
    "demo": ("archivist.cli.demo", "demo"),
    "restore": ("archivist.cli.cold", "restore"),
    "expire": ("archivist.cli.cold", "expire"),
    "query": ("archivist.cli.cold", "query"),
}
"""Each command's name -> (module, attribute), imported when first asked for."""

__all__ = [  # noqa: RUF022 (the commands, then what they share)
    "archive",
    "cancel",
    "check",
    "daemon",
    "demo",
    "expire",
    "pause",
    "query",
    "restore",
    "resume",
    "run",
    "status",
    "worker",
    "fail",
    "load",
    "main",
    "run_async",
    "setup_logging",
    "worker_options",
]


def _command(name: str) -> click.Command:
    module, attribute = COMMANDS[name]
    command: click.Command = getattr(importlib.import_module(module), attribute)
    if command.help:
        command.help = keep_examples(command.help)
    # Importing archivist.cli.worker binds the package's ``worker`` to that module: the
    # command, not the module, is what ``from archivist.cli import worker`` gives.
    globals()[name] = command
    return command


def keep_examples(text: str) -> str:
    """A help text whose indented paragraphs (the examples, one command a line) click prints
    as written: it rewraps every other paragraph, and would run the examples together."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        f"\b\n{paragraph}" if paragraph.startswith("    ") else paragraph
        for paragraph in paragraphs
    )


def __getattr__(name: str) -> Any:
    if name in COMMANDS:
        return _command(name)
    if name == "worker_options":
        from archivist.cli.worker import worker_options

        return worker_options
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _LazyGroup(click.Group):
    """A group that imports a command's module when the command is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            self.add_command(_command(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings=CONTEXT)
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
