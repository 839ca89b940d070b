"""Helpers for the cold tier's tests: a DataDaemon over a source and an archive, with rows
archived by the data commands, restored and expired in process."""

from __future__ import annotations

import asyncio

from archivist.cold.restore import Restore, Restored
from archivist.config import ArchiveConfig, make_config
from archivist.data import DataDaemon
from datasupport import CHAT_COLUMNS, create_table


class Cold:
    """A DataDaemon over a source and an archive, with rows archived by the data commands
    (list, create in the archive, delete from the source: what a worker does)."""

    def __init__(
        self,
        source_url: str,
        archive_url: str,
        collection: str = "chat_messages",
        columns: tuple[object, ...] = CHAT_COLUMNS,
        order_by: str = "created_at",
        create: bool = True,
        **policy: object,
    ) -> None:
        if create:
            create_table(source_url, collection, columns, index=order_by)  # type: ignore[arg-type]
        self.collection = collection
        entry = ArchiveConfig(
            collection=collection,
            order_by=order_by,
            **{"older_than": "90d", **policy},  # type: ignore[arg-type]
        )
        self.loop = asyncio.new_event_loop()
        self.data = DataDaemon(
            make_config({"primary": source_url, "archive": archive_url}, [entry])
        )
        self.run(self.data.start())
        self.run(self.data.ensure_archive_table(collection))

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def close(self) -> None:
        self.run(self.data.close())
        self.loop.close()

    def execute(self, name: str, **params: object) -> dict[str, object]:
        answer = self.run(self.data.execute(name, {"collection": self.collection, **params}))
        return answer  # type: ignore[return-value]

    def items(self, handle: str, ids: list[int] | None = None) -> list[dict[str, object]]:
        filter_ = {"id": {"$in": ids}} if ids is not None else None
        answer = self.execute("data/list", dbHandle=handle, filter=filter_, limit=100_000)
        return sorted(answer["items"], key=lambda item: item["id"])  # type: ignore[arg-type, index, return-value]

    def archive(self, items: list[dict[str, object]]) -> None:
        """Put ``items`` in the source, then move them to the archive."""
        self.execute("data/create", dbHandle="primary", items=items)
        ids = [item["id"] for item in items]
        listed = self.items("primary", ids)  # type: ignore[arg-type]
        self.execute("data/create", dbHandle="archive", items=listed)
        self.execute("data/delete", dbHandle="primary", ids=ids)

    def restore(self, filter_: dict[str, object] | None = None, **options: object) -> Restored:
        job = Restore(self.data, self.collection, filter_, **options)  # type: ignore[arg-type]
        return self.run(job.run())  # type: ignore[return-value]
