"""Wide rows (a BLOB column, like attachments) move instead of looping (issue 24, section 5).

A real worker process and the daemon in process, on every engine, through both paths (the
daemon's ``data/copy``, and rows through the worker). Rows of ~1 KB, ~1 MB and ~20 MB: the
last are wider than a frame (16 MiB) and are moved by the daemon itself (``data/relay``).
Every row must arrive byte for byte, and the source be emptied.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
import re
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from archivist import protocol
from archivist.config import ArchiveConfig, WorkerConfig, make_config
from archivist.daemon.runtime import Launch, archive_now, running
from archivist.daemon.tracker import TaskRecord
from archivist.data.bus import JSONObject
from archivist.errors import ArchivistError, Unsupported
from datasupport import run, started
from e2esupport import COPY_COMMANDS, PATHS, count, policy

pytestmark = pytest.mark.timeout(300)

KB, MB = 1000, 1000 * 1000
BASE = dt.datetime(2024, 1, 1)
MARIADB_PACKET = 64 * 1024 * 1024
"""``max_allowed_packet`` the 20 MB rows need on MariaDB (the server's default is 16 MiB)."""


def body(key: int, size: int) -> bytes:
    return random.Random(key).randbytes(size)


def make_attachments(url: str, sizes: list[int]) -> dict[int, tuple[dt.datetime, str]]:
    """A table ``attachments(id, created_at, body)`` with one row of each size, in this
    order of ``created_at``; returns each row's ``created_at`` and the digest of its body."""
    engine = sa.create_engine(url)
    if engine.dialect.name in ("mysql", "mariadb"):
        raise_mariadb_packet(engine)
        engine.dispose()  # new connections see the new GLOBAL value
        engine = sa.create_engine(url)
    metadata = sa.MetaData()
    blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
    table = sa.Table(
        "attachments",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("body", blob),
    )
    expected: dict[int, tuple[dt.datetime, str]] = {}
    try:
        metadata.create_all(engine)
        for key, size in enumerate(sizes, start=1):
            data = body(key, size)
            created = BASE + dt.timedelta(minutes=key)
            with engine.begin() as connection:
                connection.execute(table.insert(), {"id": key, "created_at": created, "body": data})
            expected[key] = (created, hashlib.sha256(data).hexdigest())
    finally:
        engine.dispose()
    return expected


def raise_mariadb_packet(engine: sa.Engine) -> None:
    """A 20 MB row does not fit MariaDB's default ``max_allowed_packet`` (16 MiB): this
    raises the GLOBAL value on the shared test server (as root) to 64 MiB, never lowers it.
    Connections opened afterwards (the daemon's) pick it up."""
    with engine.connect() as connection:
        current = int(connection.exec_driver_sql("SELECT @@global.max_allowed_packet").scalar_one())
        if current < MARIADB_PACKET:
            connection.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {MARIADB_PACKET}")


def stored(url: str) -> dict[int, tuple[dt.datetime, str]]:
    """Each row of ``attachments``: its ``created_at`` and the digest of its body."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql("SELECT id, created_at, body FROM attachments")
            return {
                int(key): (_naive(created), hashlib.sha256(bytes(data)).hexdigest())
                for key, created, data in rows
            }
    finally:
        engine.dispose()


def _naive(value: Any) -> dt.datetime:
    if isinstance(value, str):  # SQLite keeps timestamps as text
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    return value.replace(tzinfo=None)


class Calls:
    """What the worker asked of the daemon: each ``data/list`` answer's size and whether it
    was cut short, and each ``data/relay``."""

    def __init__(self) -> None:
        self.listed: list[tuple[int, int, bool]] = []
        """(limit asked, bytes of the answer's result, truncated)."""
        self.relayed: list[object] = []
        self.copies = 0


def archive(
    primary: str,
    archive_url: str,
    rows: int,
    *,
    path: str,
    batch_size: int = 1000,
    frame_limit: int = protocol.DEFAULT_FRAME_LIMIT,
    relay: Callable[[JSONObject], Any] | None = None,
) -> tuple[TaskRecord, Calls]:
    """Archive ``rows`` rows of ``attachments`` with a real worker; what was asked of the
    daemon on the way."""
    config = make_config(
        {"primary": primary, "archive": archive_url},
        [policy("attachments", max_rows=1, rows_per_archive=1, batch_size=batch_size)],
        worker=WorkerConfig(
            in_database=path == "in_database", frame_limit=frame_limit, max_latency_ms=10_000.0
        ),
    )
    calls = Calls()

    async def scenario() -> TaskRecord:
        async with running(config, Launch(private_socket=True, watch=False)) as daemon:
            bus = daemon.data.bus
            listing, copying = bus.command("data/list"), bus.command(COPY_COMMANDS[path])

            async def list_rows(params: JSONObject) -> JSONObject:
                result = await listing(params)
                if params.get("dbHandle") == "primary":
                    size = len(msgspec.json.encode(result))
                    limit = params.get("limit")
                    assert isinstance(limit, int)
                    calls.listed.append((limit, size, result.get("truncated") is True))
                return result

            async def relay_rows(params: JSONObject) -> JSONObject:
                ids = params.get("ids")
                assert isinstance(ids, list)
                calls.relayed += ids
                return await (relay or relaying)(params)

            if "data/relay" in bus:  # a daemon without it: the worker must say so at once
                relaying = bus.command("data/relay")
                bus.register("data/relay", relay_rows, replace=True)

            async def copy_rows(params: JSONObject) -> JSONObject:
                calls.copies += 1
                return await copying(params)

            bus.register("data/list", list_rows, replace=True)
            bus.register(COPY_COMMANDS[path], copy_rows, replace=True)
            return await archive_now(daemon, "attachments", rows)

    return asyncio.run(scenario()), calls


SIZES = [1 * KB] * 20 + [1 * MB] * 4 + [20 * MB] + [1 * KB] * 20 + [1 * MB] * 4 + [20 * MB]
"""Rows of ~1 KB, ~1 MB and ~20 MB, the wide ones between narrow ones (few of the widest:
the suite must stay quick)."""


@PATHS
@pytest.mark.parametrize("engine", ["sqlite", "postgresql", "mysql"])
def test_rows_of_1_kb_1_mb_and_20_mb_all_arrive_identical(
    engine: str, path: str, fresh_db: Callable[[str], str]
) -> None:
    primary, archive_url = fresh_db(engine), fresh_db(engine)
    expected = make_attachments(primary, SIZES)

    record, calls = archive(primary, archive_url, len(SIZES), path=path)

    assert record.state == "success" and record.archived == len(SIZES)
    assert record.attempts == 1
    assert stored(archive_url) == expected
    assert count(primary, "attachments") == 0
    print(
        f"{engine} {path}: {len(expected)} rows compared ({sum(SIZES) / MB:.0f} MB), "
        f"{len(calls.listed)} listings, {len(calls.relayed)} relayed, {calls.copies} copies"
    )
    if path == "rows":
        # Every answer fits its frame; each 20 MB row, wider than any, went by the daemon.
        assert all(size <= protocol.DEFAULT_FRAME_LIMIT for _, size, _ in calls.listed)
        assert sorted(calls.relayed) == [k for k, s in enumerate(SIZES, 1) if s == 20 * MB]
    else:
        assert calls.relayed == []  # data/copy: rows never cross the socket, whatever wide


def test_300_rows_of_300_kb_through_the_worker_move_in_one_attempt(
    fresh_db: Callable[[str], str], capfd: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: 300 rows of 300 KB, batch_size 1,000, rows through the worker.
    Before: each listing's answer (~120 MB of JSON) broke the 16 MiB frame, the connection
    dropped and the same batch was asked for again: 251 attempts, 0 rows moved."""
    primary, archive_url = fresh_db("sqlite"), fresh_db("sqlite")
    expected = make_attachments(primary, [300 * KB] * 300)

    record, calls = archive(primary, archive_url, 300, path="rows", batch_size=1000)
    log = capfd.readouterr().err

    assert record.state == "success" and record.archived == 300
    assert record.attempts == 1
    assert "retrying in" not in log and "connection lost" not in log
    assert stored(archive_url) == expected
    assert count(primary, "attachments") == 0
    # The batch sizer learned the rows' width: after the first answers (cut short to fit
    # the frame), the worker asks for what fits, and no later answer needs cutting.
    budget = protocol.row_budget(protocol.DEFAULT_FRAME_LIMIT)
    fitting = budget // (400 * KB)  # a 300 KB body is 400 KB of base64
    assert all(size <= protocol.DEFAULT_FRAME_LIMIT for _, size, _ in calls.listed)
    assert sum(truncated for _, _, truncated in calls.listed) <= 2, calls.listed
    assert all(limit <= fitting for limit, _, _ in calls.listed[2:]), calls.listed
    assert len(calls.listed) <= 2 * (300 // fitting + 2)
    truncated = sum(t for _, _, t in calls.listed)
    print(
        f"300 x 300 KB: 1 attempt, 0 retries, {len(calls.listed)} listings of the primary "
        f"({truncated} cut short to fit), batches of {calls.listed[-2][0]} rows, largest "
        f"answer {max(size for _, size, _ in calls.listed)} bytes"
    )


def test_a_row_wider_than_a_frame_fails_the_task_at_once_where_the_daemon_cannot_move_it(
    fresh_db: Callable[[str], str],
) -> None:
    """A daemon without ``data/relay`` (one written from the design alone): the task fails
    at once, naming the collection, the row's key and its size; no retry, nothing lost.
    A 1 MiB frame limit stands for the 16 MiB one, so that a 2 MB row is too wide."""
    primary, archive_url = fresh_db("sqlite"), fresh_db("sqlite")
    expected = make_attachments(primary, [1 * KB] * 5 + [2 * MB] + [1 * KB] * 5)

    async def refuse(params: JSONObject) -> JSONObject:
        raise Unsupported("this daemon cannot move rows itself")

    with pytest.raises(ArchivistError) as failed:
        archive(primary, archive_url, 11, path="rows", frame_limit=1024 * 1024, relay=refuse)

    message = str(failed.value)
    said = re.search(r"row id=6 of attachments is (\d+) bytes as JSON", message)
    assert said is not None, message
    assert int(said.group(1)) > 2 * MB * 4 // 3  # its body as base64, in its JSON
    assert "daemon cannot move it itself" in message
    # The five rows before it moved; it and the rest stayed.
    assert stored(archive_url) == {k: v for k, v in expected.items() if k <= 5}
    assert stored(primary) == {k: v for k, v in expected.items() if k > 5}


def test_a_small_frame_limit_moves_every_row_in_batches_that_fit(
    fresh_db: Callable[[str], str],
) -> None:
    """``[worker] frame_limit`` bounds both sides: with 1 MiB frames, rows of 100 KB move in
    batches of a few rows, and a 2 MB row by the daemon."""
    primary, archive_url = fresh_db("sqlite"), fresh_db("sqlite")
    expected = make_attachments(primary, [100 * KB] * 30 + [2 * MB] + [100 * KB] * 10)
    limit = 1024 * 1024

    record, calls = archive(primary, archive_url, 41, path="rows", frame_limit=limit)

    assert record.state == "success" and record.archived == 41 and record.attempts == 1
    assert stored(archive_url) == expected
    assert count(primary, "attachments") == 0
    assert calls.relayed == [31]
    assert all(size <= limit for _, size, _ in calls.listed)


def test_the_first_listing_of_wide_rows_reads_only_what_fits_into_the_daemons_memory(
    sqlite_url: str,
) -> None:
    """A table's rows' width is learned from its first row, read alone, before the first
    page: 20 rows of 1 MB asked for on a 3 MB budget read 1 row and then 2, never all 20
    (at 20 MB a row, a page of 1,000 would be 20 GB in the daemon)."""
    make_attachments(sqlite_url, [1_000_000] * 20)
    limits: list[object] = []

    async def go() -> JSONObject:
        policies = [
            ArchiveConfig(
                collection="attachments", order_by="created_at", max_rows=1, rows_per_archive=1
            )
        ]
        async with started(sqlite_url, policies=policies) as daemon:
            engine = daemon.handle("primary").engine

            @sa.event.listens_for(engine, "before_cursor_execute")
            def note(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
                if "attachments" in statement and "LIMIT" in statement.upper():
                    limits.append(params[-2])  # LIMIT ? OFFSET ?

            listed = await daemon.execute(
                "data/list",
                {
                    "collection": "attachments",
                    "dbHandle": "primary",
                    "limit": 20,
                    "maxBytes": 3_000_000,
                },
            )
            sa.event.remove(engine, "before_cursor_execute", note)
            return listed

    listed = run(go())
    assert listed["truncated"] is True
    assert [item["id"] for item in listed["items"]] == [1, 2]  # type: ignore[index,union-attr]
    assert limits == [1, 2], limits
