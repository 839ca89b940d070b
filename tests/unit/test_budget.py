"""Listings bounded by bytes (`archivist.data.budget`), the daemon's bound on a worker's
``data/list`` (`within_frame`) and the share of a frame rows may take (`row_budget`)."""

from __future__ import annotations

import msgspec

from archivist import protocol
from archivist.daemon.service import within_frame
from archivist.data.budget import Widths, bound, fit


def row(key: int, width: int) -> dict[str, object]:
    return {"id": key, "created_at": f"2024-01-01T00:00:{key:02d}", "body": "x" * width}


def size_of(items: object) -> int:
    return len(msgspec.json.encode(items))


def test_a_page_that_fits_is_answered_whole_with_its_size() -> None:
    items = [row(k, 100) for k in range(1, 11)]
    kept, extra, _ = bound(
        items, max_bytes=10_000, asked=10, read=10, pk="id", order_field="created_at"
    )
    assert kept == items
    assert extra == {"bytes": size_of(items)}


def test_a_page_over_the_budget_stops_before_it_and_says_where_to_go_on() -> None:
    items = [row(k, 1000) for k in range(1, 11)]
    budget = size_of(items[:4]) + 10  # four rows and a little: not five
    kept, extra, _ = bound(
        items, max_bytes=budget, asked=10, read=10, pk="id", order_field="created_at"
    )
    assert kept == items[:4]
    assert extra["bytes"] == size_of(items[:4]) <= budget
    assert extra["truncated"] is True
    assert extra["cursor"] == {
        "field": "created_at",
        "value": "2024-01-01T00:00:04",
        "id": 4,
        "direction": "after",
    }
    assert "oversized" not in extra


def test_a_first_row_wider_than_the_budget_is_named_with_its_size() -> None:
    items = [row(7, 5000), row(8, 10)]
    kept, extra, _ = bound(
        items, max_bytes=1000, asked=2, read=2, pk="id", order_field="created_at"
    )
    assert kept == []
    assert extra["truncated"] is True
    assert extra["oversized"] == {"id": 7, "bytes": size_of(items[0])}
    assert "cursor" not in extra


def test_a_page_read_short_for_the_width_is_truncated_but_one_that_ran_out_is_not() -> None:
    items = [row(k, 10) for k in range(1, 4)]
    _, short, _ = bound(items, max_bytes=10**6, asked=10, read=3, pk="id", order_field="id")
    _, ended, _ = bound(items, max_bytes=10**6, asked=10, read=5, pk="id", order_field="id")
    assert short["truncated"] is True
    assert "truncated" not in ended


def test_without_an_ascending_order_a_truncated_page_has_no_cursor() -> None:
    items = [row(k, 1000) for k in range(1, 5)]
    _, extra, _ = bound(items, max_bytes=2500, asked=4, read=4, pk="id", order_field=None)
    assert extra["truncated"] is True and "cursor" not in extra


def test_fit_counts_escapes_and_separators_exactly() -> None:
    items: list[dict[str, object]] = [{"id": 1, "text": 'a"b\\c\n'}, {"id": 2, "text": "é😀"}]
    whole = size_of(items)
    assert fit(items, whole).rows == 2
    assert fit(items, whole - 1).rows == 1
    assert fit(items, whole - 1).size == size_of(items[:1])


def test_widths_size_the_next_read_to_the_budget() -> None:
    widths = Widths()
    assert widths.rows("h", "t", 1000, 10_000_000) == 1000  # not known yet
    widths.learn("h", "t", rows=10, size=10 * 400_000)
    assert widths.rows("h", "t", 1000, 14_000_000) == 35
    assert widths.rows("h", "t", 10, 14_000_000) == 10
    assert widths.rows("h", "t", 1000, 100) == 1  # always at least one row
    assert widths.rows("other", "t", 5, 100) == 5


def test_the_daemon_bounds_a_workers_listing_to_its_own_frame() -> None:
    limit = protocol.DEFAULT_FRAME_LIMIT
    budget = protocol.row_budget(limit)
    params: dict[str, object] = {"collection": "c", "dbHandle": "h"}
    assert within_frame("data/list", params, limit)["maxBytes"] == budget
    bigger = {**params, "maxBytes": 10 * budget}
    assert within_frame("data/list", bigger, limit)["maxBytes"] == budget
    smaller = {**params, "maxBytes": 1000}
    assert within_frame("data/list", smaller, limit) == smaller
    wrong = {**params, "maxBytes": "a lot"}
    assert within_frame("data/list", wrong, limit) == wrong  # refused by validation
    assert within_frame("data/count", params, limit) == params


def test_rows_leave_room_in_a_frame_for_everything_around_them() -> None:
    limit = protocol.DEFAULT_FRAME_LIMIT
    assert limit - limit // 8 - protocol.ENVELOPE_BYTES == protocol.row_budget(limit)
    assert protocol.row_budget(100) == 1
