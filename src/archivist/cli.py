"""The ``archivist`` command line: argument parsing, logging set-up and human output.

Each command is a thin layer over the library: it builds options, runs one coroutine,
and turns an `ArchivistError` into one clear line and a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console

import archivist
from archivist import logs, protocol
from archivist.errors import ArchivistError, UnknownCollection
from archivist.logs import LOG_FORMATS, LOG_LEVELS, choose_level
from archivist.worker.settings import SETTINGS, Setting, from_options

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


@click.group(context_settings=CONTEXT)
@click.version_option(archivist.__version__, prog_name="archivist")
def main() -> None:
    """archivist keeps hot database tables small by moving old rows to archive storage.

    A worker process owns the task queue; a daemon owns the databases and tells the worker
    what to archive. Start with `archivist demo` to see it work on SQLite, then write a
    config file and use `archivist run --config FILE`.
    """
    # At exit, the interpreter's collector would walk every object the imports made
    # (SQLAlchemy's alone are many) while tearing the modules down: ~0.3 s of a one-shot
    # command on a slow machine. Frozen, they are left to the end of the process; every
    # database and socket is closed explicitly before then.
    atexit.register(gc.freeze)


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


@main.command(context_settings=CONTEXT)
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


# --- configuration-driven commands -------------------------------------------------------

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


@main.command(context_settings=CONTEXT)
@config_option
@socket_option
@click.option(
    "--once",
    is_flag=True,
    help="Check every policy once, run the tasks they need, wait for them, and exit: for "
    "cron and systemd timers. Policies outside their window do nothing. Exits 1 if a "
    "task failed.",
)
@click.option("-v", "--verbose", count=True, help="Log debug details.")
@log_options(quiet=True)
def run(
    config_path: Path | None,
    socket_path: Path | None,
    once: bool,
    verbose: int,
    quiet: bool,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Archive by policy until stopped: the main job.

    Starts a worker as a child process (restarting it if it dies), or uses the one at
    --socket; then every `check_interval` seconds checks each policy: rows older than its
    `older_than` move to the archive handle, and a table holding more than `max_rows`
    moves its oldest rows until it is back at `max_rows - rows_per_archive` (only rows
    matching its `where`; `mode = "purge"` deletes them instead). SIGTERM or SIGINT stop
    it cleanly.

    Examples:

        archivist run --config archivist.toml
        archivist run --log-format json -q
        archivist run --config archivist.toml --once    # from cron or a systemd timer
    """
    config = load(config_path)
    _setup_logs(config, log_format, log_level, verbose=verbose, quiet=quiet)
    if once:
        run_async(_run_once(config, socket_path))
        return
    run_async(_run(config, socket_path, watch=True))


async def _run_once(config: Config, socket_path: Path | None) -> None:
    from archivist.daemon.runtime import Launch, interrupt_on_signals, running, until_done

    launch = Launch(socket=socket_path, private_socket=socket_path is None, watch=False)
    async with running(config, launch) as daemon:
        interrupt = interrupt_on_signals()
        records = await daemon.check_once()
        await asyncio.gather(*(until_done(daemon, record, interrupt) for record in records))
        holding = dict(daemon.holding)
    _report_records(records, holding)


def _report_records(records: Sequence[TaskRecord], holding: Mapping[str, str]) -> None:
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


@main.command(context_settings=CONTEXT)
@config_option
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The socket of a worker that runs already (see `archivist worker`).",
)
@click.option("-v", "--verbose", count=True, help="Log debug details.")
@log_options(quiet=True)
def daemon(
    config_path: Path | None,
    socket_path: Path,
    verbose: int,
    quiet: bool,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Run the daemon alone, against a worker that runs already.

    Like `archivist run`, but never starts a worker: it connects to --socket and
    reconnects (with backoff) whenever the connection drops.

    Example:

        archivist worker --socket /tmp/arch/worker.sock &
        archivist daemon --config archivist.toml --socket /tmp/arch/worker.sock
    """
    config = load(config_path)
    _setup_logs(config, log_format, log_level, verbose=verbose, quiet=quiet)
    run_async(_run(config, socket_path, watch=True))


def _setup_logs(
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


async def _run(config: Config, socket_path: Path | None, *, watch: bool) -> None:
    from archivist.daemon.runtime import Launch, running

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running(config, Launch(socket=socket_path, watch=watch)):
        await stop.wait()
        log.info("stopping on signal")


@main.command(context_settings=CONTEXT)
@click.argument("collection", required=False)
@config_option
@socket_option
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    help="Move the N oldest rows (or all there are). Default: what the policy says is over "
    "its limit.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, protocol.MAX_BATCH_SIZE),
    help="Rows per batch. Default: the policy's batch_size.",
)
@click.option("--dry-run", is_flag=True, help="Say what would move, and move nothing.")
@click.option(
    "--wait",
    is_flag=True,
    help="If another archivist is moving COLLECTION now, wait until it is done instead of "
    "exiting with an error.",
)
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Every policy now (windows aside), instead of one COLLECTION.",
)
@click.option("-v", "--verbose", count=True, help="Log debug details.")
@log_options(quiet=False)
def archive(
    collection: str | None,
    config_path: Path | None,
    socket_path: Path | None,
    max_rows: int | None,
    batch_size: int | None,
    dry_run: bool,
    wait: bool,
    every: bool,
    verbose: int,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Archive COLLECTION now, show progress, and exit.

    Without --max-rows it moves what the policy asks for now: every row older than
    older_than, or the oldest rows over max_rows (nothing if the table is within its
    policy); a purge policy deletes them, a copy policy copies them. Exits 0 on success
    and 1 with the error on failure.

    One archivist moves a collection at a time, on any host: while another one (an
    `archivist run`, here or on another host) holds the collection's lock in the source
    database, this exits 1 naming it (host:pid since when), or with --wait waits for it.

    Examples:

        archivist archive chat_messages --config archivist.toml --max-rows 50000
        archivist archive chat_messages --config archivist.toml --dry-run
        archivist archive --all --config archivist.toml
    """
    config = load(config_path)
    # The progress bar is the output: logs only from warnings up, unless asked.
    _setup_logs(
        config, log_format, log_level, verbose=verbose, quiet=False, default_level="warning"
    )
    if every == (collection is not None):
        fail("give one COLLECTION, or --all for every policy", 2)
    if collection is None:
        if max_rows is not None:
            fail("--max-rows goes with one COLLECTION, not --all", 2)
        run_async(_archive_all(config, socket_path, batch_size, dry_run))
        return
    # JSON logs own stderr (a log pipeline parses every line): progress then goes to stdout.
    json_logs = (log_format or config.daemon.log_format) == "json"
    run_async(
        _archive(config, collection, socket_path, max_rows, batch_size, dry_run, wait, json_logs)
    )


async def _archive_all(
    config: Config, socket_path: Path | None, batch_size: int | None, dry_run: bool
) -> None:
    from archivist.daemon.runtime import Launch, interrupt_on_signals, running, until_done

    if dry_run:
        for entry in config.archive:
            await _dry_run(config, entry.collection, None, Console())
        return
    launch = Launch(socket=socket_path, private_socket=True, quiet_worker=True, watch=False)
    records: list[TaskRecord] = []
    async with running(config, launch) as service:
        interrupt = interrupt_on_signals()
        skipped: dict[str, str] = {}
        for policy in service.policies.values():
            try:
                # The lock first: what is due is counted once nobody else moves it.
                await service.movers.take(policy.collection)
                decision, filter_ = await service.due(policy)
                if not decision.rows:
                    await service.movers.release(policy.collection)
                    continue
                records.append(
                    await service.submit(
                        policy.collection, decision.rows, batch_size=batch_size, filter_=filter_
                    )
                )
            except ArchivistError as exc:
                if service.tracker.unfinished(policy.collection) is None:
                    await service.movers.release(policy.collection)
                skipped[policy.collection] = f"skipped: {exc.message}"
        await asyncio.gather(*(until_done(service, record, interrupt) for record in records))
    _report_records(records, skipped)
    if skipped:
        fail(f"{len(skipped)} policy(ies) skipped: {', '.join(skipped)}")


async def _archive(
    config: Config,
    collection: str,
    socket_path: Path | None,
    max_rows: int | None,
    batch_size: int | None,
    dry_run: bool,
    wait: bool = False,
    json_logs: bool = False,
) -> None:
    from archivist.daemon.runtime import Launch, archive_now, running, take_mover
    from archivist.ui import ArchiveProgress, print_summary

    console = Console()
    launch = Launch(socket=socket_path, private_socket=True, quiet_worker=True, watch=False)
    if dry_run:
        await _dry_run(config, collection, max_rows, console)
        return
    with ArchiveProgress(collection, console if json_logs else None) as bar:
        async with running(config, launch, on_update=bar.update) as service:
            policy = service.policies.get(collection)
            if policy is None:
                raise UnknownCollection(
                    f"{collection!r} is not an archivable collection; "
                    f"known: {', '.join(sorted(service.policies)) or 'none'}"
                )
            # The lock first: what is over the policy is counted once nobody else moves it.
            await take_mover(service, collection, wait=wait, say=bar.say)
            rows, filter_ = max_rows, None
            if rows is None:
                decision, filter_ = await service.due(policy)
                rows = decision.rows
            if rows == 0:
                console.print(f"{collection}: within its policy; nothing to archive.")
                return
            interrupt = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, interrupt.set)
            record = await archive_now(
                service, collection, rows, batch_size, interrupt=interrupt, filter_=filter_
            )
    print_summary(console, record)
    if record.state == "cancelled":
        fail(f"interrupted after {record.archived:,} rows; run it again to move the rest", 130)


async def _dry_run(config: Config, collection: str, max_rows: int | None, console: Console) -> None:
    from archivist.data import DataDaemon
    from archivist.ui import print_plan

    data = DataDaemon(config)
    await data.start(refuse=False)
    try:
        plan = await data.plan(collection, max_rows)
    finally:
        await data.close()
    print_plan(console, plan)


@main.command(context_settings=CONTEXT)
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
@click.option("--json", "as_json", is_flag=True, help="Print the worker's answer as JSON.")
def status(config_path: Path | None, socket_path: Path | None, as_json: bool) -> None:
    """Show queued, running (with progress) and recently finished tasks, and per policy
    the table's size, growth and the rate archivist moves it at (from the daemon's last
    check).

    With --config, also each policy with a window ("waiting for window 01:00-05:00" or
    "in its window"), and each policy's foreign keys and ON DELETE triggers, read from its
    source database.

    Examples:

        archivist status --config archivist.toml
        archivist status --socket /tmp/arch/worker.sock --json
    """
    from archivist.config import find_config
    from archivist.worker.paths import default_socket_path

    if config_path is None and socket_path is None:
        config_path = find_config(None, required=False)
    config = load(config_path) if config_path is not None else None
    if socket_path is None and config is not None:
        configured = config.worker.socket
        socket_path = Path(configured) if configured else None
    run_async(_status(socket_path or default_socket_path(), as_json, config))
    if config is not None and not as_json:
        for line in _window_lines(config):
            click.echo(line)


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


async def _status(socket_path: Path, as_json: bool, config: Config | None = None) -> None:
    from archivist.daemon.connection import WorkerConnection
    from archivist.daemon.keepup import read_state
    from archivist.ui import print_keepup, print_movers, print_status

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


@main.command(context_settings=CONTEXT)
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


@main.command(context_settings=CONTEXT)
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
