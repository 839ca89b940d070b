"""``archivist pause``, ``resume`` and ``cancel``: act on a running daemon through its
control socket (`archivist.daemon.control`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from archivist.cli.common import CONTEXT, fail, load
from archivist.errors import ArchivistError

if TYPE_CHECKING:
    from archivist.config import Config


def control_options(command: click.decorators.FC) -> click.decorators.FC:
    """``--config``, ``--socket`` and ``--json``, as on ``archivist status``."""
    command = click.option(
        "--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON."
    )(command)
    command = click.option(
        "--socket",
        "socket_path",
        type=click.Path(path_type=Path),
        help="The worker's socket of that daemon: its control socket is beside it "
        "(<socket>.control). Default: from the config.",
    )(command)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        help="The daemon's config file, which says where its sockets are. Default: as for "
        "run ($ARCHIVIST_CONFIG, ./archivist.toml, ...).",
    )(command)


def locate(config_path: Path | None, socket_path: Path | None) -> tuple[Path, Path, Config | None]:
    """The worker's socket, the daemon's control socket, and the config (if one is named or
    found) of the daemon a command talks to."""
    from archivist.config import find_config
    from archivist.daemon.control import control_path
    from archivist.worker.paths import default_socket_path

    if config_path is None and socket_path is None:
        config_path = find_config(None, required=False)
    config = load(config_path) if config_path is not None else None
    if socket_path is None and config is not None and config.worker.socket:
        socket_path = Path(config.worker.socket)
    worker = socket_path or default_socket_path()
    configured = config.daemon.control_socket if config is not None else None
    return worker, control_path(worker, configured), config


def ask(control: Path, message: dict[str, object]) -> dict[str, object]:
    """One request to the daemon; an error becomes one line and exit code 1."""
    from archivist.daemon.control import request

    try:
        return asyncio.run(request(control, message))
    except ArchivistError as exc:
        fail(exc.message)


@click.command(context_settings=CONTEXT)
@click.argument("collection", required=False)
@control_options
def pause(
    collection: str | None, config_path: Path | None, socket_path: Path | None, as_json: bool
) -> None:
    """Pause a running daemon: one COLLECTION's policy, or (without one) every policy.

    No task of a paused collection starts; its running task stops after its current
    batch (every row is then in the source, the archive or both) and this command
    returns once it has. The other collections go on. The pause is kept across a
    restart of the daemon until `archivist resume`; `archivist status` shows who paused
    what and since when.

    Examples:

        archivist pause chat_messages
        archivist pause --config /etc/archivist/archivist.toml    # every policy
    """
    from archivist.daemon.pauses import who

    _, control, _ = locate(config_path, socket_path)
    answer = ask(control, {"command": "pause", "collection": collection, "by": who()})
    if as_json:
        click.echo(json.dumps(answer))
        return
    name = collection or "every policy"
    pauses = answer.get("pauses")
    click.echo(
        f"{name}: {'already ' if answer.get('already') else ''}{_pause_text(pauses, collection)}"
    )
    stopped = answer.get("stopped")
    for task in stopped if isinstance(stopped, list) else []:
        click.echo(
            f"task {task['taskId']} stopped after its batch ({task['state']}, "
            f"{task['archived']:,} rows moved)"
        )


@click.command(context_settings=CONTEXT)
@click.argument("collection", required=False)
@control_options
def resume(
    collection: str | None, config_path: Path | None, socket_path: Path | None, as_json: bool
) -> None:
    """Undo `archivist pause`: of one COLLECTION, or (without one) every pause.

    The daemon checks its policies at once and queues what is due.

    Examples:

        archivist resume chat_messages
        archivist resume
    """
    _, control, _ = locate(config_path, socket_path)
    answer = ask(control, {"command": "resume", "collection": collection})
    if as_json:
        click.echo(json.dumps(answer))
        return
    resumed = answer.get("resumed")
    if not resumed:
        click.echo(f"{collection or 'nothing'} was not paused")
        return
    assert isinstance(resumed, list)
    names = ["every policy" if name == "*" else str(name) for name in resumed]
    click.echo(f"resumed: {', '.join(names)}")


@click.command(context_settings=CONTEXT)
@click.argument("task_id")
@control_options
def cancel(task_id: str, config_path: Path | None, socket_path: Path | None, as_json: bool) -> None:
    """Cancel one queued or running task of a running daemon (`archivist status` lists
    their ids).

    A running task stops after its current batch: every row is then in the source, the
    archive or both, and the rows it moved stay moved. The policy queues a new task at a
    later check if its table is still over its limit; pause the collection to stop that.

    Example:

        archivist cancel chat_messages-t01234-7
    """
    _, control, _ = locate(config_path, socket_path)
    answer = ask(control, {"command": "cancel", "taskId": task_id})
    if as_json:
        click.echo(json.dumps(answer))
        return
    task = answer.get("cancelled")
    assert isinstance(task, dict)
    click.echo(f"task {task_id}: {task['state']} after {task['archived']:,} rows moved")


def _pause_text(pauses: object, collection: str | None) -> str:
    """How the answer's pauses describe ``collection`` (None: the pause of every policy)."""
    from archivist.ui import pause_text

    entry: object = pauses.get("all") if isinstance(pauses, dict) else None
    if collection is not None and isinstance(pauses, dict):
        collections = pauses.get("collections")
        entry = collections.get(collection) if isinstance(collections, dict) else None
    return pause_text(entry) if isinstance(entry, dict) else "paused"
