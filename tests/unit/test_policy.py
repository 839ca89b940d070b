"""The policy's arithmetic, and the daemon's policy loop on an in-memory data service."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from archivist.daemon.service import ArchiveDaemon, DaemonOptions
from archivist.data.locks import MoverLock, me
from archivist.data.registry import Entity, make_entity
from archivist.errors import BadAnswer
from archivist.protocol import JSONObject


def _policy(
    collection: str = "chat_messages", *, max_rows: int = 100, per_archive: int = 20
) -> Entity:
    return make_entity(
        collection, order_by="created_at", max_rows=max_rows, rows_per_archive=per_archive
    )


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, 0), (99, 0), (100, 0), (101, 21), (150, 70), (1_000, 920)],
)
def test_rows_to_archive_bring_a_table_over_its_limit_back_below_it(
    count: int, expected: int
) -> None:
    assert _policy().rows_to_archive(count) == expected


def test_rows_to_archive_never_exceed_the_rows_there_are() -> None:
    # rows_per_archive above max_rows: the target would be below zero.
    assert _policy(max_rows=10, per_archive=50).rows_to_archive(11) == 11


class _Counts:
    """The DataDaemon as the ArchiveDaemon sees it, over a dict of row counts; a collection
    missing from it answers ``data/count`` without a count (``data/size`` without a size)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.ensured: list[str] = []

    async def execute(self, name: str, params: JSONObject, *, caller: str = "local") -> JSONObject:
        assert name in ("data/count", "data/size")
        collection = params["collection"]
        assert isinstance(collection, str)
        if collection not in self.counts:
            return {}
        if name == "data/size":
            return {"rows": self.counts[collection], "exact": True, "method": "count"}
        return {"count": self.counts[collection]}

    async def ensure_archive_table(self, collection: str) -> None:
        self.ensured.append(collection)

    async def take_mover(self, collection: str) -> MoverLock:
        return MoverLock(collection, me(), "in memory")  # nobody else moves: always ours


def _daemon(data: _Counts, *collections: str) -> ArchiveDaemon:
    policies = [_policy(name) for name in collections]
    return ArchiveDaemon(data, policies, DaemonOptions(socket_path=Path("unused.sock")))


def test_count_without_a_count_raises_instead_of_reading_zero() -> None:
    daemon = _daemon(_Counts({}), "broken")
    with pytest.raises(BadAnswer, match="broken"):
        asyncio.run(daemon.count("broken", "primary"))


def test_a_policy_whose_count_fails_is_logged_and_the_next_one_still_checked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = _Counts({"healthy": 150})
    daemon = _daemon(data, "broken", "healthy")
    with caplog.at_level(logging.ERROR, logger="archivist.daemon.service"):
        queued = asyncio.run(daemon.check_once())
    assert [(r.collection, r.max_rows) for r in queued] == [("healthy", 70)]
    assert data.ensured == ["healthy"]
    assert any(
        "broken: size check failed" in r.getMessage() and "without a size" in r.getMessage()
        for r in caplog.records
    )
