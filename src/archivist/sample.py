"""A realistic ``chat_messages`` table and a generator of its rows, for the demo and benchmarks."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator

import sqlalchemy as sa

from archivist.data.columns import UTC_COMMENT, UTCDateTime

BODY_WORDS = [
    "archive",
    "rows",
    "move",
    "batch",
    "verify",
    "copy",
    "delete",
    "queue",
    "worker",
    "daemon",
    "socket",
    "table",
    "index",
    "policy",
    "hot",
    "cold",
    "storage",
    "primary",
    "handle",
    "latency",
    "throughput",
    "message",
    "room",
    "sender",
]
EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def chat_messages_table(
    metadata: sa.MetaData, name: str = "chat_messages", *, index: bool = True
) -> sa.Table:
    """id, room_id, sender_id, created_at (a timestamp with time zone on every engine,
    indexed unless ``index`` is false), a ~200-byte body and ~100-byte JSON metadata."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("room_id", sa.Integer, nullable=False),
        sa.Column("sender_id", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False, index=index, comment=UTC_COMMENT),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=True),
    )


def generate_rows(count: int, *, start_id: int = 1, seed: int = 7) -> Iterator[dict[str, object]]:
    """``count`` rows with increasing ids and timestamps (one message every ~3 s)."""
    rng = random.Random(seed + start_id)
    moment = EPOCH + dt.timedelta(seconds=3 * start_id)
    for row_id in range(start_id, start_id + count):
        moment += dt.timedelta(milliseconds=rng.randint(500, 5500))
        words = rng.choices(BODY_WORDS, k=28)
        yield {
            "id": row_id,
            "room_id": rng.randint(1, 200),
            "sender_id": rng.randint(1, 5000),
            "created_at": moment,
            "body": " ".join(words)[:200],
            "metadata": {
                "client": rng.choice(("web", "ios", "android")),
                "edited": rng.random() < 0.05,
                "reactions": rng.randint(0, 9),
                "lang": rng.choice(("en", "de", "fr", "ja")),
            },
        }


def fill(engine: sa.Engine, table: sa.Table, count: int, *, start_id: int = 1) -> None:
    """Insert ``count`` generated rows in chunks, one transaction per chunk."""
    chunk: list[dict[str, object]] = []
    with engine.begin() as connection:
        for row in generate_rows(count, start_id=start_id):
            chunk.append(row)
            if len(chunk) == 5000:
                connection.execute(table.insert(), chunk)
                chunk = []
        if chunk:
            connection.execute(table.insert(), chunk)
