"""``archivist status``: the worker's tasks, and with a config each policy's window, mover
and foreign keys."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from archivist import protocol
from archivist.cli.common import CONTEXT, fail, run_async
from archivist.errors import ArchivistError

if TYPE_CHECKING:
    from archivist.config import Config


@click.command(context_settings=CONTEXT)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Find the worker's socket in this config file (default: without --socket, the "
    "config file found as for run: $ARCHIVIST_CONFIG, ./archivist.toml, ...).",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    help="The worker's socket (default: the config's, else the default path).",
)
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def status(config_path: Path | None, socket_path: Path | None, as_json: bool) -> None:
    """Show what a running daemon does: one line per policy (collection, rows against its
    limit, growth, last run, next run, and its state: running, paused and by whom, or why
    it waits), then its queued, running and recently finished tasks.

    It asks the daemon's control socket (beside the worker's); with only a worker running
    (`archivist worker`), the worker's tasks and the daemon's last check. With --config
    named, also who moves each table (on any host) and each policy's foreign keys and ON
    DELETE triggers, read from its source database.

    Examples:

        archivist status
        archivist status --config archivist.toml --json
        archivist status --socket /tmp/arch/worker.sock
    """
    from archivist.cli.control import locate

    named = config_path is not None
    worker, control, config = locate(config_path, socket_path)
    run_async(_status(worker, as_json, config, control=control, named=named))


def _window_lines(config: Config) -> list[str]:
    """Per policy with a window, whether it may run now (by this machine's clock)."""
    from archivist.config import rules_of
    from archivist.policy import hold_reason, utc_now

    lines = []
    now = utc_now()
    for entry in config.archive:
        rules = rules_of(entry)
        if rules.window is None:
            continue
        reason = hold_reason(rules, now) or f"in its window {rules.window}"
        lines.append(f"{entry.collection}: {reason} ({entry.timezone or 'UTC'})")
    return lines


async def _status(
    socket_path: Path,
    as_json: bool,
    config: Config | None = None,
    *,
    control: Path,
    named: bool,
) -> None:
    from archivist.daemon.connection import WorkerConnection
    from archivist.daemon.control import request
    from archivist.daemon.keepup import read_state
    from archivist.errors import NoDaemon
    from archivist.ui import print_keepup, print_movers, print_status

    try:
        document = await request(control, {"command": "status"})
    except NoDaemon:
        document = None
    if document is not None:
        await _daemon_status(document, as_json, config if named else None)
        return
    movers = await _movers(config) if config is not None else None
    try:
        connection = await WorkerConnection.open(socket_path)
    except OSError as exc:
        fail(f"no worker answers at {socket_path}: {exc.strerror or exc}")
    async with asyncio.TaskGroup() as group:
        group.create_task(connection.peer.run())
        try:
            result = await connection.status()
        finally:
            await connection.close()
    keepup = read_state(socket_path)
    if as_json:
        if movers is None and keepup is None:
            click.echo(protocol.encode(result).decode().rstrip())
        else:
            answer = json.loads(protocol.encode(result))
            if movers is not None:
                answer["movers"] = {name: holder for name, holder, _ in movers}
            if keepup is not None:
                answer["keepUp"] = keepup
            click.echo(json.dumps(answer))
    else:
        print_status(Console(), result)
        if keepup is not None:
            print_keepup(Console(), keepup)
        if movers is not None:
            print_movers(Console(), [(name, text) for name, _, text in movers])
        if config is not None:
            await _print_relations(config, Console())
            for line in _window_lines(config):
                click.echo(line)


async def _daemon_status(document: dict[str, object], as_json: bool, config: Config | None) -> None:
    """A daemon's answer: printed as JSON, or rendered (`render_status`); with a named
    config, who moves each table and the policies' foreign keys too."""
    from archivist.ui import print_movers, render_status

    movers = await _movers(config) if config is not None else None
    if as_json:
        if movers is not None:
            document["movers"] = {name: holder for name, holder, _ in movers}
        click.echo(json.dumps(document))
        return
    width = min(Console().width, 80) if sys.stdout.isatty() else 80
    for line in render_status(document, width=width, now=time.time()):
        click.echo(line)
    if movers is not None:
        print_movers(Console(), [(name, text) for name, _, text in movers])
    if config is not None:
        await _print_relations(config, Console())


async def _movers(config: Config) -> list[tuple[str, object, str]]:
    """Who moves each collection now, asked of its source database: (collection, the
    holder as JSON, the holder as text)."""
    from archivist.data import DataDaemon
    from archivist.data.locks import holder_json

    data = DataDaemon(config)
    found: list[tuple[str, object, str]] = []
    try:
        for entity in data.policies():
            try:
                holder = await data.mover(entity.collection)
            except ArchivistError as exc:
                found.append((entity.collection, {"error": exc.message}, f"unknown: {exc.message}"))
                continue
            text = f"held by {holder.describe()}" if holder is not None else "free"
            found.append((entity.collection, holder_json(holder), text))
    finally:
        await data.close()
    return found


async def _print_relations(config: Config, console: Console) -> None:
    """Each policy's foreign keys and ON DELETE triggers, read from its source database."""
    from archivist.data import DataDaemon

    data = DataDaemon(config)
    try:
        await data.start(refuse=False)
    except ArchivistError as exc:
        console.print(f"policies: cannot read their tables: {exc.message}", markup=False)
        return
    try:
        for policy in data.policies():
            relations = await data.relations(policy.collection)
            lines = relations.lines() or ["no foreign keys or ON DELETE triggers"]
            for line in lines:
                console.print(f"{policy.collection}: {line}", markup=False, highlight=False)
    finally:
        await data.close()
