"""``archivist demo``: archivist at work on SQLite files it makes, with no config."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from archivist.cli.common import CONTEXT, fail, run_async, setup_logging
from archivist.errors import ArchivistError


@click.command(context_settings=CONTEXT)
@click.option(
    "--rows",
    type=click.IntRange(min=100),
    default=100_000,
    show_default=True,
    help="Rows in the demo chat_messages table.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("archivist-demo"),
    show_default=True,
    help="Where the demo's SQLite files go: a new or empty directory, or a previous demo's "
    "(whose files it recreates; it never deletes files it did not make).",
)
@click.option("-v", "--verbose", count=True, help="Log debug details.")
def demo(rows: int, directory: Path, verbose: int) -> None:
    """See archivist work on SQLite, with no config: the README's first command.

    Creates a SQLite primary with a realistic chat_messages table (--rows rows), a policy
    of max_rows = rows/2 with rows_per_archive = rows/20, and archives it down to its
    policy through a real worker process, showing progress and the counts before and
    after in both databases.

    Example:

        archivist demo --rows 20000
    """
    from archivist.demo import prepare_demo, run_demo

    setup_logging(verbose, quiet=verbose == 0)
    console = Console()
    try:
        config = prepare_demo(directory, rows, console)
    except ArchivistError as exc:
        fail(exc.message)
    run_async(run_demo(config, directory, console))
