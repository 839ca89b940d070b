"""``archivist archive``: one collection (or ``--all``) now, with progress, or ``--dry-run``."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from archivist import protocol
from archivist.cli.common import (
    CONTEXT,
    config_option,
    fail,
    load,
    log_options,
    report_records,
    run_async,
    setup_logs,
    socket_option,
)
from archivist.errors import ArchivistError, UnknownCollection

if TYPE_CHECKING:
    from archivist.config import Config
    from archivist.daemon.tracker import TaskRecord
    from archivist.ui import Printer


@click.command(context_settings=CONTEXT)
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
    setup_logs(config, log_format, log_level, verbose=verbose, quiet=False, default_level="warning")
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
        from archivist.ui import make_console

        for entry in config.archive:
            await _dry_run(config, entry.collection, None, make_console())
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
                    # Rows an interrupted run left in both databases are settled still.
                    settling = await service.settle(policy)
                    if settling is not None:
                        records.append(settling)
                    else:
                        await service.movers.release(policy.collection)
                    continue
                records.append(
                    await service.submit(
                        policy.collection,
                        decision.rows,
                        batch_size=batch_size,
                        filter_=filter_,
                        source_rows=decision.source,
                    )
                )
            except ArchivistError as exc:
                if service.tracker.unfinished(policy.collection) is None:
                    await service.movers.release(policy.collection)
                skipped[policy.collection] = f"skipped: {exc.message}"
        await asyncio.gather(*(until_done(service, record, interrupt) for record in records))
    report_records(records, skipped)
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
    from archivist.daemon.runtime import Launch, archive_now, running, take_mover, until_done
    from archivist.ui import ArchiveProgress, make_console, print_summary

    # rich only on a terminal: a script's or a timer's one-shot does not import it.
    console = make_console()
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
            rows, filter_, source_rows = max_rows, None, None
            settling = None
            if rows is None:
                decision, filter_ = await service.due(policy)
                rows, source_rows = decision.rows, decision.source
                if rows == 0:
                    # Rows an interrupted run left in both databases are settled still.
                    settling = await service.settle(policy)
            if rows == 0 and settling is None:
                console.print(f"{collection}: within its policy; nothing to archive.")
                return
            interrupt = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, interrupt.set)
            if settling is not None:
                record = settling
                await until_done(service, record, interrupt)
            else:
                record = await archive_now(
                    service,
                    collection,
                    rows,
                    batch_size,
                    interrupt=interrupt,
                    filter_=filter_,
                    source_rows=source_rows,
                )
    print_summary(console, record)
    if record.state == "cancelled":
        fail(f"interrupted after {record.archived:,} rows; run it again to move the rest", 130)


async def _dry_run(config: Config, collection: str, max_rows: int | None, console: Printer) -> None:
    from archivist.data import DataDaemon
    from archivist.ui import print_plan

    data = DataDaemon(config)
    await data.start(refuse=False)
    try:
        plan = await data.plan(collection, max_rows)
    finally:
        await data.close()
    print_plan(console, plan)
