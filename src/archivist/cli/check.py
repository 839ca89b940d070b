"""``archivist check``: a config against its databases, read only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from archivist.cli.common import CONTEXT, config_option, load, run_async, setup_logging

if TYPE_CHECKING:
    from archivist.config import Config


@click.command(context_settings=CONTEXT)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print everything found as JSON.")
@click.option("-v", "--verbose", count=True, help="Log debug details.")
def check(config_path: Path | None, as_json: bool, verbose: int) -> None:
    """Check a config against the databases before running it.

    Loads the config, connects to every handle and prints, per policy: the table's size
    and limit, the rows eligible now, the oldest and newest values of its order_by column,
    the index its batches use, and what `archivist run` would do now. It reads only:
    nothing is created, locked or moved.

    Exits 1 when anything is wrong (an unreachable handle, a missing table or column, a
    policy run would refuse), with every problem listed.

    Example:

        archivist check --config archivist.toml
    """
    setup_logging(verbose, quiet=verbose == 0)
    config = load(config_path)
    run_async(_check(config, as_json))


async def _check(config: Config, as_json: bool) -> None:
    from archivist.check import check_config, render

    report = await check_config(config)
    if as_json:
        click.echo(json.dumps(report.as_json(), default=str))
    else:
        for line in render(report):
            click.echo(line)
    if report.problems:
        sys.exit(1)
