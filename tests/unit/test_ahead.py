"""How far the daemon moves pages ahead of a request (`archivist.data.transfer.ahead`):
never past the rows the caller says will follow, never more than DEPTH pages."""

from __future__ import annotations

from archivist.data.transfer.ahead import DEPTH, depth, signature


def test_pages_moved_ahead_stop_at_the_rows_that_follow() -> None:
    assert DEPTH == 2
    assert depth(True, 1000) == DEPTH  # the caller does not say: as many as allowed
    assert depth(False, 1000) == 0
    assert depth(0, 1000) == 0
    assert depth(999, 1000) == 0  # the last page will be smaller: its request differs
    assert depth(1000, 1000) == 1
    assert depth(1999, 1000) == 1
    assert depth(2000, 1000) == 2
    assert depth(50_000, 1000) == DEPTH


def test_a_request_is_recognised_whatever_it_says_follows() -> None:
    """The request for a page moved ahead says fewer rows follow than the one before it:
    ``ahead`` is not part of what it is recognised by."""
    named = {"collection": "chat_messages", "limit": 1000, "cursor": {"field": "id"}}
    assert signature({**named, "ahead": 3000}) == signature({**named, "ahead": 2000})
    assert signature({**named, "ahead": True}) == signature(named)
    assert signature({**named, "limit": 500}) != signature(named)
