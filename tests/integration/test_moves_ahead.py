"""Moves ahead (`archivist.data.transfer.ahead`): a ``data/copy`` with ``move`` and
``ahead`` has the daemon move the next pages beside it and hold them uncommitted; the
request for exactly that page claims it, any other request or none in time rolls it back.
Real servers: two PostgreSQL databases of one server and of two (binary COPY), and
PostgreSQL into MariaDB (LOAD DATA lines); from MariaDB no move is made ahead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from archivist.config import make_config
from archivist.data import DataDaemon
from archivist.data.transfer import ahead
from datasupport import chat_policy, run
from e2esupport import make_chat_table

ROWS = 60


def daemon_for(primary: str, archive: str) -> DataDaemon:
    policy = chat_policy(order_by="created_at")
    return DataDaemon(make_config({"primary": primary, "archive": archive}, [policy]))


async def move(daemon: DataDaemon, cursor: Any = None, **params: Any) -> Any:
    named = {"collection": "chat_messages", "dbHandle": "primary", "destHandle": "archive"}
    if cursor is not None:
        named["cursor"] = cursor
    return await daemon.execute("data/copy", {**named, "move": True, **params}, caller="worker")


def ids_in(url: str) -> list[int]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            found = connection.exec_driver_sql("SELECT id FROM chat_messages ORDER BY id")
            return [int(row[0]) for row in found]
    finally:
        engine.dispose()


PAIRS = {
    "pg one server": ("postgresql", "postgresql", False),
    "pg two servers": ("postgresql", "postgresql", True),
    "pg to mariadb": ("postgresql", "mysql", True),
}


@pytest.fixture(params=list(PAIRS))
def pair(
    request: pytest.FixtureRequest,
    fresh_db: Callable[[str], str],
    second_db: Callable[[str], str],
) -> tuple[str, str]:
    source, dest, second = PAIRS[request.param]
    primary = fresh_db(source)
    archive = second_db(dest) if second else fresh_db(dest)
    make_chat_table(primary, ROWS)
    return primary, archive


def moves_in_a_row(
    primary: str, archive: str, aheads: list[bool | int], caplog: pytest.LogCaptureFixture
) -> list[Any]:
    """One move of 10 rows per entry of ``aheads`` (its ``ahead``), each after the last;
    the data layer's transfer logs captured meanwhile."""

    async def go() -> list[Any]:
        daemon = daemon_for(primary, archive)
        await daemon.start()
        answers: list[Any] = []
        try:
            with caplog.at_level(logging.DEBUG, logger="archivist.data.transfer"):
                cursor = None
                for ahead_too in aheads:
                    answer = await move(daemon, cursor, limit=10, ahead=ahead_too)
                    answers.append(answer)
                    cursor = answer["cursor"]
        finally:
            await daemon.close()
        return answers

    return run(go())


def ids_of(answer: Any) -> list[int]:
    return [int(item["id"]) for item in answer["items"]]


@pytest.mark.timeout(120)
def test_the_page_moved_ahead_is_claimed_by_the_request_for_it(
    pair: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    primary, archive = pair
    before = ids_in(primary)

    # The last one without `ahead`: it still claims.
    answers = moves_in_a_row(primary, archive, [True, True, True, True, False], caplog)
    assert [ids_of(answer) for answer in answers] == [before[i : i + 10] for i in range(0, 50, 10)]
    assert all(answer["deleted"] == 10 for answer in answers)
    claimed = caplog.text.count("a page moved ahead was claimed")
    # The daemon knows both servers' versions from its start: the first move moves the
    # second page ahead, and each claim the next one.
    assert claimed == 4, caplog.text
    assert ids_in(primary) == before[50:]
    assert ids_in(archive) == before[:50]


@pytest.mark.timeout(120)
def test_no_page_is_moved_ahead_past_the_rows_the_caller_says_will_follow(
    pair: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """``ahead`` as the rows still to be asked for after each page (the worker's): the
    last pages of a task are claimed, and none past its end is moved, held and rolled
    back (with ``true`` the daemon moves two pages ahead whatever follows)."""
    primary, archive = pair
    before = ids_in(primary)

    answers = moves_in_a_row(primary, archive, [30, 20, 10, 0], caplog)
    assert [ids_of(answer) for answer in answers] == [before[i : i + 10] for i in range(0, 40, 10)]
    assert caplog.text.count("a page moved ahead was claimed") == 3, caplog.text
    assert "a move ahead failed" not in caplog.text, caplog.text
    assert ids_in(primary) == before[40:]
    assert ids_in(archive) == before[:40]


@pytest.mark.timeout(120)
def test_a_page_moved_ahead_and_not_asked_for_in_time_is_rolled_back(
    pair: tuple[str, str],
) -> None:
    primary, archive = pair
    before = ids_in(primary)

    async def go() -> tuple[list[int], list[int], Any]:
        daemon = daemon_for(primary, archive)
        await daemon.start()
        try:
            first = await move(daemon, limit=10, ahead=True)
            second = await move(daemon, first["cursor"], limit=10, ahead=True)
            await asyncio.sleep(ahead.HOLD_FOR + 0.3)
            # Held, then rolled back: in neither database's committed state twice.
            source, copies = ids_in(primary), ids_in(archive)
            third = await move(daemon, second["cursor"], limit=10)
        finally:
            await daemon.close()
        return source, copies, third

    source, copies, third = run(go())
    assert source == before[20:]
    assert copies == before[:20]
    assert ids_of(third) == before[20:30] and third["deleted"] == 10
    assert ids_in(primary) == before[30:]
    assert ids_in(archive) == before[:30]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("other", ["limit", "cursor", "filter"])
def test_a_request_for_another_page_drops_the_page_moved_ahead_and_moves_its_own(
    pair: tuple[str, str], other: str, caplog: pytest.LogCaptureFixture
) -> None:
    primary, archive = pair
    before = ids_in(primary)

    async def go() -> Any:
        daemon = daemon_for(primary, archive)
        await daemon.start()
        try:
            first = await move(daemon, limit=10, ahead=True)
            second = await move(daemon, first["cursor"], limit=10, ahead=True)
            asked: dict[str, Any] = {"limit": 10, "cursor": second["cursor"]}
            if other == "limit":
                asked["limit"] = 7
            elif other == "cursor":
                asked["cursor"] = first["cursor"]  # a page already moved: from there on
            else:
                asked["filter"] = {"id": {"$gt": 0}}
            with caplog.at_level(logging.DEBUG, logger="archivist.data.transfer"):
                return await move(daemon, asked.pop("cursor"), **asked)
        finally:
            await daemon.close()

    third = run(go())
    want = before[20:27] if other == "limit" else before[20:30]
    assert ids_of(third) == want and third["deleted"] == len(want)
    assert "a page moved ahead was claimed" not in caplog.text
    assert ids_in(primary) == before[20 + len(want) :]
    assert ids_in(archive) == before[: 20 + len(want)]


@pytest.mark.timeout(120)
def test_no_move_is_made_ahead_from_mariadb(
    fresh_db: Callable[[str], str],
    second_db: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its locking reads' next-key locks would make the next page's move wait for this
    one's: every page is moved when asked for, all of them exactly."""
    primary, archive = fresh_db("mysql"), second_db("mysql")
    make_chat_table(primary, ROWS)
    before = ids_in(primary)

    answers = moves_in_a_row(primary, archive, [True, True, True], caplog)
    assert [ids_of(answer) for answer in answers] == [before[i : i + 10] for i in range(0, 30, 10)]
    assert "moved ahead" not in caplog.text and "move ahead" not in caplog.text
    assert ids_in(primary) == before[30:]
    assert ids_in(archive) == before[:30]
