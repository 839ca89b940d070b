"""``archivist restore``, ``archivist expire`` and ``archivist query``: the cold tier's
commands over a policy's archive (`archivist.cold`)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from archivist.cli.common import (
    CONTEXT,
    config_option,
    fail,
    load,
    log_options,
    run_async,
    setup_logs,
)

if TYPE_CHECKING:
    from archivist.cold.restore import Restored
    from archivist.config import Config
    from archivist.data import DataDaemon


@asynccontextmanager
async def _data(config: Config) -> AsyncIterator[DataDaemon]:
    from archivist.data import DataDaemon

    data = DataDaemon(config)
    # Like --dry-run: a policy that would refuse to archive does not stop a restore.
    await data.start(refuse=False)
    try:
        yield data
    finally:
        await data.close()


def _where(text: str | None) -> dict[str, object] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--where is not JSON: {exc}", 2)
    if not isinstance(value, dict):
        fail("--where must be a JSON object, e.g. '{\"tenant_id\": 7}'", 2)
    return value


@click.command(context_settings=CONTEXT)
@click.argument("collection")
@config_option
@click.option(
    "--where",
    "where",
    metavar="JSON",
    help="Which archived rows, in data/list's filter syntax: "
    '\'{"tenant_id": 7, "status": {"$in": ["closed", "spam"]}}\' '
    "(operators $eq $ne $gt $gte $lt $lte $in $nin $exists).",
)
@click.option(
    "--since",
    metavar="VALUE",
    help="Rows whose order_by column is at least VALUE (a date or time, UTC unless it "
    "names its offset, or a number).",
)
@click.option("--until", metavar="VALUE", help="Rows whose order_by column is below VALUE.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Rows per batch.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Overwrite rows the source holds under the same key with other content "
    "(default: report them as conflicts and leave them in the archive).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be restored, and change nothing.")
@click.option("-v", "--verbose", count=True, help="Log debug details.")
@log_options(quiet=False)
def restore(
    collection: str,
    config_path: Path | None,
    where: str | None,
    since: str | None,
    until: str | None,
    batch_size: int,
    replace: bool,
    dry_run: bool,
    verbose: int,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Move archived rows of COLLECTION back into its source table.

    Batch by batch: copies the rows into the source, reads the copies back and compares
    them with the archived rows, and only then deletes those from the archive. A row the
    source already holds identically (a rerun after a crash) just leaves the archive; one
    it holds with other content is a conflict: named, left in the archive, and the command
    exits 1, unless --replace. It holds the collection's mover lock, so no archivist
    archives the table meanwhile (exits 1 naming the holder if one does now).

    Rows older than the policy's older_than are archived again at the next check: pause
    the policy, or change it, while they must stay.

    Examples:

        archivist restore chat_messages --config archivist.toml --where '{"room_id": 42}'
        archivist restore chat_messages --since 2024-03-01 --until 2024-04-01 --dry-run
    """
    config = load(config_path)
    setup_logs(config, log_format, log_level, verbose=verbose, quiet=False, default_level="warning")
    filter_ = _where(where)
    reports: list[Restored] = []
    run_async(
        _restore(config, collection, filter_, (since, until), batch_size, replace, dry_run, reports)
    )
    report = reports[0]
    for line in report.lines():
        click.echo(line)
    if not dry_run and (report.conflicts or report.left):
        sys.exit(1)


async def _restore(
    config: Config,
    collection: str,
    where: dict[str, object] | None,
    span: tuple[str | None, str | None],
    batch_size: int,
    replace: bool,
    dry_run: bool,
    reports: list[Restored],
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from archivist.cold.archives import archive_of
    from archivist.cold.restore import Restore, bound_value, restore_filter

    since, until = span
    async with _data(config) as data:
        entity = data.entity(collection)
        filter_ = where
        if since is not None or until is not None:
            info = await archive_of(data, collection).info()
            if info is None:
                fail(f"{collection} has no archive table on handle '{entity.dest_handle}'")
            spec = info.spec(entity.order_by)
            filter_ = restore_filter(
                where,
                entity.order_by,
                None if since is None else bound_value(spec, since),
                None if until is None else bound_value(spec, until),
            )
        console = Console(stderr=True)
        # A bar on a terminal; elsewhere the log says each batch (at info).
        with Progress(
            "[bold]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            "rows",
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal or dry_run,
        ) as bar:
            task = bar.add_task(f"restoring {collection}", total=None)

            def show(report: Restored) -> None:
                bar.update(task, total=report.to_restore, completed=report.moved)

            job = Restore(
                data,
                collection,
                filter_,
                batch_size=batch_size,
                replace=replace,
                dry_run=dry_run,
                progress=show,
            )
            reports.append(await job.run())


@click.command(context_settings=CONTEXT)
@click.argument("collection", required=False)
@config_option
@click.option(
    "--dry-run", is_flag=True, help="Say how many archived rows would go, and delete nothing."
)
@click.option("-v", "--verbose", count=True, help="Log debug details.")
@log_options(quiet=False)
def expire(
    collection: str | None,
    config_path: Path | None,
    dry_run: bool,
    verbose: int,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Delete archived rows older than their policy's retention, now.

    For COLLECTION, or every policy with a retention key when none is named. Rows go by
    the policy's age column (age_field, else order_by), in batches, for good. The daemon
    (`archivist run`) does the same at its first check and then once a day; this is for
    cron, or to see what would go (--dry-run). Holds the collection's mover lock while it
    deletes (exits 1 naming the holder if another archivist moves the table now).

    Examples:

        archivist expire --config archivist.toml --dry-run
        archivist expire chat_messages --config archivist.toml
    """
    config = load(config_path)
    setup_logs(config, log_format, log_level, verbose=verbose, quiet=False, default_level="warning")
    run_async(_expire(config, collection, dry_run))


async def _expire(config: Config, collection: str | None, dry_run: bool) -> None:
    from archivist.cold.retention import expire as expire_archive

    async with _data(config) as data:
        names = (
            [collection]
            if collection is not None
            else [entity.collection for entity in data.policies() if entity.rules.retention]
        )
        if not names:
            click.echo("no policy has a retention key; nothing to expire")
            return
        for name in names:
            result = await expire_archive(data, name, dry_run=dry_run)
            click.echo(result.line())
        if dry_run:
            click.echo("dry run: nothing was deleted")


FORMATS = ("table", "csv", "json")


@click.command(context_settings=CONTEXT)
@click.argument("sql", required=False)
@config_option
@click.option(
    "--live",
    is_flag=True,
    help="Also COLLECTION_live (the live table) and COLLECTION_all (the live table and the "
    "archive together, a row in both counted once).",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(FORMATS),
    help="table (rich), csv (with a header line) or json (an array of objects). "
    "Default: table on a terminal, else csv.",
)
@click.option("--list", "list_views", is_flag=True, help="List the views and their columns.")
@click.option("-v", "--verbose", count=True, help="Log debug details.")
@log_options(quiet=False)
def query(
    sql: str | None,
    config_path: Path | None,
    live: bool,
    output: str | None,
    list_views: bool,
    verbose: int,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Run SQL over the archives with DuckDB, read-only.

    Each policy's archive is a view named after its collection (SQL archives through
    DuckDB's postgres, mysql and sqlite scanners, Iceberg tables through its iceberg
    extension), every column typed by its kind (timestamps with time zone are
    TIMESTAMPTZ, in UTC). Nothing is written anywhere. Values print as docs/values.md
    spells them (instants in UTC, decimals exact, bytes in base64).

    Examples:

        archivist query --config archivist.toml "SELECT count(*) FROM chat_messages"
        archivist query --live "SELECT room_id, count(*) FROM chat_messages_all GROUP BY 1"
        archivist query --format json "SELECT * FROM chat_messages WHERE id = 42"
    """
    config = load(config_path)
    setup_logs(config, log_format, log_level, verbose=verbose, quiet=False, default_level="warning")
    if sql is None and not list_views:
        fail('give a query, e.g. "SELECT count(*) FROM COLLECTION", or --list', 2)
    fmt = output or ("table" if sys.stdout.isatty() else "csv")
    run_async(_query(config, sql, live, fmt, list_views))


async def _query(config: Config, sql: str | None, live: bool, fmt: str, list_views: bool) -> None:
    from archivist.cold.query import build_views, connect, describe, execute

    async with _data(config) as data:
        views = await build_views(data, live=live)
    connection = connect(views)
    try:
        if list_views:
            _render(describe(connection, views), fmt)
            return
        assert sql is not None
        reader = execute(connection, sql, views)
        _render(reader, fmt)
    finally:
        connection.close()


def _render(reader: object, fmt: str) -> None:
    import duckdb

    from archivist.cold.output import write_csv, write_json, write_table

    writers = {"csv": write_csv, "json": write_json, "table": write_table}
    try:
        writers[fmt](reader, sys.stdout)
    except duckdb.Error as exc:
        fail(f"query failed: {str(exc).strip().splitlines()[0]}")
