"""``archivist demo``: a SQLite chat_messages table archived down to its policy, end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from archivist import sample
from archivist.config import ArchiveConfig, Config, make_config
from archivist.daemon.runtime import Launch, interrupt_on_signals, running, until_done
from archivist.data.locks import lock_file
from archivist.errors import ArchivistError
from archivist.ui import ArchiveProgress, print_summary

# The demo marks its directory with this file, listing what it made, and on a rerun removes
# only those files: `archivist demo --dir .` must never empty a user's directory.
MARKER: Final = ".archivist-demo"
DATABASES: Final = ("primary.db", "archive.db")
# SQLite's companions of a database file, left behind by a crash or a WAL-mode reader.
SIDECARS: Final = ("", "-journal", "-wal", "-shm")
COLLECTION: Final = "chat_messages"
# The mover lock file the demo's run leaves beside its primary (SQLite's mover lock): the
# demo's own file, so listed and removed on a rerun like the databases.
LOCK_FILE: Final = Path(lock_file("primary.db", COLLECTION)).name
MADE: Final = (
    *(database + sidecar for database in DATABASES for sidecar in SIDECARS),
    LOCK_FILE,
)


def files_to_remove(directory: Path) -> list[Path]:
    """What a rerun of the demo in `directory` may delete: the files a previous demo there
    listed in its marker and that the demo makes, nothing else. Raises
    `ArchivistError` for a non-empty directory with no marker (not the demo's)."""
    if not directory.exists():
        return []
    if not directory.is_dir():
        raise ArchivistError(f"{directory} is not a directory; choose another --dir")
    entries = {entry.name for entry in directory.iterdir()}
    if not entries:
        return []
    if MARKER not in entries:
        raise ArchivistError(
            f"{directory} is not empty and is not a previous demo's directory (it has no "
            f"{MARKER} file); the demo deletes only files it made itself, so it will not "
            "use it. Choose a new or empty directory with --dir."
        )
    listed = set((directory / MARKER).read_text(encoding="utf-8").split())
    # Only names the demo makes, even if the marker was edited to list others.
    return [directory / name for name in MADE if name in listed and name in entries]


def demo_config(directory: Path, rows: int) -> Config:
    """Two SQLite files and one policy: keep at most rows/2, archive down by rows/20 more."""
    max_rows = max(rows // 2, 1)
    headroom = max(rows // 20, 1)
    return make_config(
        {
            "primary": f"sqlite:///{(directory / 'primary.db').resolve()}",
            "archive": f"sqlite:///{(directory / 'archive.db').resolve()}",
        },
        [
            ArchiveConfig(
                collection="chat_messages",
                order_by="created_at",
                max_rows=max_rows,
                rows_per_archive=headroom,
                batch_size=2000,
            )
        ],
        source="demo",
    )


def create_primary(directory: Path, rows: int) -> None:
    engine = sa.create_engine(f"sqlite:///{directory / 'primary.db'}")
    try:
        metadata = sa.MetaData()
        table = sample.chat_messages_table(metadata)
        metadata.create_all(engine)
        sample.fill(engine, table, rows)
    finally:
        engine.dispose()


def count_rows(directory: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for handle in ("primary", "archive"):
        path = directory / f"{handle}.db"
        if not path.exists():
            counts[handle] = 0
            continue
        engine = sa.create_engine(f"sqlite:///{path}")
        try:
            with engine.connect() as connection:
                exists = sa.inspect(connection).has_table("chat_messages")
                counts[handle] = (
                    connection.execute(sa.text("SELECT count(*) FROM chat_messages")).scalar_one()
                    if exists
                    else 0
                )
        finally:
            engine.dispose()
    return counts


def prepare_demo(directory: Path, rows: int, console: Console) -> Config:
    """Recreate the demo's databases, removing only what a previous demo in `directory`
    made; returns the demo's configuration."""
    stale = files_to_remove(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The marker is written before anything else, so a demo interrupted half-way is still
    # recognised as the demo's on the next run.
    (directory / MARKER).write_text(
        "# made by `archivist demo`; it deletes only the files listed here on its next run\n"
        + "".join(f"{name}\n" for name in MADE),
        encoding="utf-8",
    )
    for path in stale:
        path.unlink(missing_ok=True)
    console.print(f"Creating {directory / 'primary.db'} with {rows:,} chat_messages rows ...")
    started = time.monotonic()
    create_primary(directory, rows)
    console.print(f"  done in {time.monotonic() - started:.1f} s")
    return demo_config(directory, rows)


async def run_demo(config: Config, directory: Path, console: Console) -> None:
    """Archive the demo table down to its policy through a real worker, then show counts."""
    policy = config.archive[0]
    assert policy.max_rows is not None and policy.rows_per_archive is not None
    console.print(
        f"Policy: keep at most {policy.max_rows:,} rows; when over, archive the oldest "
        f"(by {policy.order_by}) down to {policy.max_rows - policy.rows_per_archive:,}."
    )
    before = count_rows(directory)
    launch = Launch(private_socket=True, quiet_worker=True, watch=False)
    with ArchiveProgress("chat_messages", console) as bar:
        async with running(config, launch, on_update=bar.update) as daemon:
            interrupt = interrupt_on_signals()
            records = await daemon.check_once()
            for record in records:
                await until_done(daemon, record, interrupt)
    if not records:
        raise ArchivistError("the policy check queued nothing; the demo table is within limits")
    record = records[0]
    if record.state != "success":
        raise ArchivistError(f"archiving failed: {record.error}")
    print_summary(console, record)
    after = count_rows(directory)
    table = Table(title="chat_messages rows", box=None, header_style="bold")
    table.add_column("database")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for handle in ("primary", "archive"):
        table.add_row(
            f"{handle} ({directory / (handle + '.db')})",
            f"{before[handle]:,}",
            f"{after[handle]:,}",
        )
    console.print(table)
    console.print(
        "Every archived row was copied to the archive inside the database, and deleted "
        "from the primary only where SQLite found its copy identical, column by column. "
        "Run `archivist demo --help` for options."
    )
