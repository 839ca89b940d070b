"""What every ``archivist`` command shares: the click context, the logging options and
set-up, the ``--config``/``--socket`` options, loading the config, and turning an
`ArchivistError` into one clear line and a non-zero exit code."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

from archivist import logs
from archivist.errors import ArchivistError
from archivist.logs import LOG_FORMATS, LOG_LEVELS, choose_level

if TYPE_CHECKING:
    from archivist.config import Config
    from archivist.daemon.tracker import TaskRecord

log = logging.getLogger("archivist")

_F = TypeVar("_F", bound=Callable[..., object])

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def log_options(*, quiet: bool) -> Callable[[_F], _F]:
    """``--log-format``, ``--log-level`` (and ``-q`` if ``quiet``) on a long-running command."""

    def decorate(command: _F) -> _F:
        if quiet:
            command = click.option(
                "-q", "--quiet", is_flag=True, help="Log only warnings and errors."
            )(command)
        command = click.option(
            "--log-level",
            type=click.Choice(LOG_LEVELS),
            help="Log from this level up (beats -v and -q). Default: [daemon] log_level, "
            "else info.",
        )(command)
        return click.option(
            "--log-format",
            type=click.Choice(LOG_FORMATS),
            help="text, or json: one object per line (timestamp, level, logger, message, "
            "and the task's fields). Default: [daemon] log_format, else text.",
        )(command)

    return decorate


def setup_logging(
    verbose: int, quiet: bool = False, log_format: str | None = None, log_level: str | None = None
) -> None:
    logs.setup(log_format or "text", choose_level(log_level, verbose=verbose, quiet=quiet))


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"archivist: error: {message}", err=True)
    sys.exit(code)


def run_async(coro: Coroutine[object, object, None]) -> None:
    try:
        asyncio.run(coro)
    except ArchivistError as exc:
        fail(exc.message)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The TOML configuration file (handles, worker, daemon, [[archive]] policies). "
    "Default: $ARCHIVIST_CONFIG, else the first of ./archivist.toml, "
    "$XDG_CONFIG_HOME/archivist/archivist.toml (~/.config by default), "
    "/etc/archivist/archivist.toml. ARCHIVIST_<TABLE>_<KEY> variables override its options "
    "(ARCHIVIST_WORKER_CONCURRENCY=5).",
)
socket_option = click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    help="Use the worker that listens on this socket instead of starting one.",
)


def load(config_path: Path | None) -> Config:
    """The configuration at ``config_path``, else the one found (`find_config`)."""
    from archivist.config import find_config, load_config

    try:
        path = find_config(config_path)
        assert path is not None  # required: find_config raised otherwise
        return load_config(path)
    except ArchivistError as exc:
        fail(exc.message)


def setup_logs(
    config: Config,
    log_format: str | None,
    log_level: str | None,
    *,
    verbose: int,
    quiet: bool,
    default_level: str | None = None,
) -> None:
    """Logging as the command line says, else as ``[daemon]`` says."""
    level = choose_level(
        log_level, verbose=verbose, quiet=quiet, default=default_level or config.daemon.log_level
    )
    logs.setup(log_format or config.daemon.log_format, level)


def report_records(records: Sequence[TaskRecord], holding: Mapping[str, str]) -> None:
    """One line per task and per policy that waits; fail if a task did."""
    for record in records:
        line = f"{record.collection}: {record.state}, {record.archived:,} rows"
        click.echo(line + (f" ({record.error})" if record.error else ""))
    for collection, reason in holding.items():
        click.echo(f"{collection}: {reason}")
    if not records and not holding:
        click.echo("every policy is satisfied; nothing to do")
    failed = [record.collection for record in records if record.state == "error"]
    if failed:
        fail(f"{len(failed)} task(s) failed: {', '.join(failed)}")
