"""Rows left in both databases (`archivist.daemon.settling`): which rows a look finds and
which it may settle, when the daemon looks, in process (`InMemoryDaemon` plays the data
commands)."""

from __future__ import annotations

import asyncio

from archivist.daemon.settling import InBoth, Looks, find_in_both, look_depth, split_in_both
from archivist.protocol import JSONObject
from archivist.testing import InMemoryDaemon


def order(i: int, note: str | None = None) -> JSONObject:
    return {"id": i, "created_at": i, "note": note if note is not None else f"order {i}"}


def test_only_rows_with_an_identical_copy_are_settled_and_changed_ones_are_named() -> None:
    originals = [order(i) for i in range(1, 6)]
    copies = [order(1), order(2, "before"), order(4), {"id": 5, "created_at": 5}]
    found = split_in_both(originals, copies, "id")
    assert found.identical == [1, 4]
    # A copy missing a field differs too; row 3 has no copy: not in both.
    assert found.differing == [2, 5]
    assert found.settle_filter == {"id": {"$in": [1, 4]}}


def test_a_look_reads_every_batch_a_kill_can_leave_in_both() -> None:
    assert look_depth(100) == 300


def test_log_lines_name_ten_keys_and_count_the_rest() -> None:
    found = InBoth("id", list(range(1, 13)), [])
    assert found.named(found.identical) == (
        "id=1, id=2, id=3, id=4, id=5, id=6, id=7, id=8, id=9, id=10 and 2 more"
    )
    assert found.named([7]) == "id=7"


def test_each_collection_is_looked_at_once_at_start_and_again_after_a_task_cut_short() -> None:
    looks = Looks(["orders", "events"])
    assert looks.due("orders") and looks.due("events")
    looks.done("orders")
    assert not looks.due("orders")
    looks.ended("orders", "success")
    assert not looks.due("orders")
    for state in ("cancelled", "error", "lost"):
        looks.done("orders")
        looks.ended("orders", state)
        assert looks.due("orders"), state
    # A settling task that failed is not retried at every check; one cut short is.
    looks.done("orders")
    looks.ended("orders", "error", settled=True)
    assert not looks.due("orders")
    looks.ended("orders", "cancelled", settled=True)
    assert looks.due("orders")


def _daemon() -> InMemoryDaemon:
    daemon = InMemoryDaemon()
    daemon.add_rows("primary", "orders", [order(i) for i in range(1, 1001)])
    daemon.add_rows("archive", "orders", [order(i) for i in range(1, 151)])
    daemon.add_rows("archive", "orders", [order(5, "before")])
    daemon.add_rows("archive", "orders", [order(i) for i in range(400, 410)])  # not oldest
    return daemon


def _find(daemon: InMemoryDaemon, depth: int, max_bytes: int = 1_000_000) -> InBoth:
    return asyncio.run(
        find_in_both(
            daemon.execute,
            collection="orders",
            source="primary",
            dest="archive",
            order_by="created_at",
            filter_=None,
            depth=depth,
            max_bytes=max_bytes,
        )
    )


def test_a_look_finds_the_oldest_rows_in_both_in_two_listings() -> None:
    daemon = _daemon()
    found = _find(daemon, depth=300)
    assert found.identical == [i for i in range(1, 151) if i != 5]
    assert found.differing == [5]
    listings = daemon.called("data/list")
    assert len(listings) == 2
    assert listings[0]["dbHandle"] == "primary" and listings[0]["limit"] == 300
    assert listings[1]["dbHandle"] == "archive"
    assert listings[1]["filter"] == {"id": {"$in": list(range(1, 301))}}


def test_a_look_reads_no_further_than_its_depth() -> None:
    found = _find(_daemon(), depth=100)
    assert found.identical == [i for i in range(1, 101) if i != 5]
    assert found.differing == [5]


def test_a_look_cut_short_by_its_byte_budget_settles_the_rows_it_read() -> None:
    daemon = _daemon()
    found = _find(daemon, depth=300, max_bytes=2000)  # about 40 rows of 50 bytes
    read = daemon.called("data/list")[1]["filter"]["id"]["$in"]  # type: ignore[index]
    assert isinstance(read, list) and 10 < len(read) < 100
    assert read == list(range(1, len(read) + 1))
    assert found.identical == [i for i in read if i != 5]
    assert found.differing == [5]
