"""archivist inside an asyncio application.

The application declares its model with ``@archive`` and runs archivist's daemon in its own
event loop, beside its own tasks: the daemon keeps ``chat_messages`` at most 200 rows while
the application writes, and the application pauses it around a maintenance job of its own.

    python examples/embed.py --dir /tmp/embed-demo          # worker as a child process
    python examples/embed.py --dir /tmp/embed-demo --inline # worker in this process

tests/integration/test_embed.py runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import archivist
from archivist.config import DaemonConfig, WorkerConfig

MAX_ROWS = 200


class Base(DeclarativeBase):
    pass


@archivist.archive(order_by="created_at", max_rows=MAX_ROWS, rows_per_archive=50)
class ChatMessage(Base):
    __tablename__ = "chat_messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    room: Mapped[str] = mapped_column(sa.String(40))
    body: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(index=True)


def write(engine: sa.Engine, rows: int) -> None:
    """The application at work: ``rows`` new messages."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with Session(engine) as session:
        session.add_all(
            ChatMessage(room=f"room-{n % 7}", body=f"message {n}", created_at=now)
            for n in range(rows)
        )
        session.commit()


async def application(engine: sa.Engine, stop: asyncio.Event) -> int:
    """Writes 50 messages every 50 ms until stopped; how many it wrote."""
    written = 0
    while not stop.is_set():
        await asyncio.to_thread(write, engine, 50)
        written += 50
        await asyncio.sleep(0.05)
    return written


async def until_within_limit(daemon: archivist.Daemon) -> int:
    """Wait for a policy check that finds the table back within its limit; its rows."""
    async with asyncio.timeout(120):
        while True:
            (policy,) = daemon.status()["policies"]
            rows = policy["rows"]
            if policy["state"] == "idle" and rows is not None and rows <= MAX_ROWS:
                return int(rows)
            await asyncio.sleep(0.1)


async def main(directory: Path, inline: bool) -> None:
    primary = f"sqlite:///{directory / 'app.db'}"
    engine = sa.create_engine(primary)
    Base.metadata.create_all(engine)
    write(engine, 1000)  # a backlog from before archivist was set up

    config = archivist.make_config(
        {"primary": primary, "archive": f"sqlite:///{directory / 'archive.db'}"},
        worker=WorkerConfig(socket=str(directory / "worker.sock")),
        # The policies are this module's @archive models; check them every 0.2 s.
        daemon=DaemonConfig(entities=["__main__"], check_interval=0.2),
    )
    async with archivist.Daemon(config, worker="inline" if inline else "process") as daemon:
        stop = asyncio.Event()
        writing = asyncio.create_task(application(engine, stop))
        await asyncio.sleep(1.0)

        # Maintenance: no rows move meanwhile; other policies (none here) would go on.
        await daemon.pause("chat_messages", by="nightly-maintenance")
        (policy,) = daemon.status()["policies"]
        print(f"chat_messages: {policy['state']} ({policy['reason']})")
        await daemon.resume("chat_messages")

        stop.set()
        written = await writing
        rows = await until_within_limit(daemon)
        print(f"the application wrote {written} messages; chat_messages holds {rows}")
    engine.dispose()
    print("daemon stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="where the databases go")
    parser.add_argument("--inline", action="store_true", help="run the worker in this process")
    arguments = parser.parse_args()
    arguments.dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(arguments.dir, arguments.inline))
