"""RecentRows: the stored form of listed rows is found only for an identical item of a like
table, and the memory it takes is bounded."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest

from archivist.data.columns import ColumnSpec, Kind
from archivist.data.schema import TableInfo, build_info
from archivist.data.stored import RecentRows, Remembered
from archivist.protocol import encode_json
from datasupport import CHAT_COLUMNS


def info(
    dialect: str = "sqlite",
    name: str = "chat_messages",
    columns: tuple[ColumnSpec, ...] = CHAT_COLUMNS,
) -> TableInfo:
    return build_info(name, dialect, list(columns), ["id"])


def item(i: int, body: str = "hello") -> dict[str, object]:
    return {"id": i, "room": "r", "created_at": "2024-01-01T00:00:00+00:00", "body": body}


def stored(i: int) -> tuple[object, ...]:
    return (i, "r", "2024-01-01 00:00:00.000000", "hello", None, None)


def forms(found: Sequence[Remembered | None]) -> list[tuple[object, ...] | None]:
    return [entry.stored if entry is not None else None for entry in found]


def raw(value: object) -> msgspec.Raw:
    """An item as the daemon's frame decoding leaves it: its JSON, undecoded."""
    return msgspec.Raw(encode_json(value))


def test_an_identical_item_of_a_like_table_finds_its_stored_form() -> None:
    recent = RecentRows()
    recent.remember(info(), "primary", [item(1), item(2)], [stored(1), stored(2)])
    assert forms(recent.find(info(), [item(2), item(1)])) == [stored(2), stored(1)]
    assert forms(recent.find(info(), [item(1)], handle="primary")) == [stored(1)]


def test_anything_but_an_identical_item_of_a_like_table_finds_nothing() -> None:
    recent = RecentRows()
    recent.remember(info(), "primary", [item(1)], [stored(1)])
    assert forms(recent.find(info(), [item(1, body="edited")])) == [None]
    assert forms(recent.find(info(), [item(3)])) == [None]
    assert forms(recent.find(info(), [item(1)], handle="other")) == [None]
    assert forms(recent.find(info(name="other_table"), [item(1)])) == [None]
    wider = (*CHAT_COLUMNS, ColumnSpec("extra", Kind.TEXT))
    assert forms(recent.find(info(columns=wider), [item(1)])) == [None]
    assert forms(recent.find(info(dialect="mysql"), [item(1)])) == [None]
    assert forms(recent.find(info(), [{"id": [1], "body": "x"}])) == [None]


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_rows_of_server_engines_are_not_remembered(dialect: str) -> None:
    recent = RecentRows()
    recent.remember(info(dialect), "primary", [item(1)], [stored(1)])
    assert len(recent) == 0
    assert forms(recent.find(info(dialect), [item(1)])) == [None]


def test_memory_is_bounded_oldest_first_and_deleted_rows_are_forgotten() -> None:
    recent = RecentRows(max_rows=3)
    ids = range(1, 6)
    recent.remember(info(), "primary", [item(i) for i in ids], [stored(i) for i in ids])
    assert len(recent) == 3
    assert forms(recent.find(info(), [item(i) for i in ids])) == [
        None,
        None,
        *map(stored, (3, 4, 5)),
    ]
    recent.forget(info(), [4, 99])
    assert len(recent) == 2
    assert forms(recent.find(info(), [item(4)])) == [None]


def test_a_read_back_copy_holding_the_remembered_stored_form_gives_the_listed_items() -> None:
    recent = RecentRows()
    recent.remember(info(), "primary", [item(1), item(2)], [stored(1), stored(2)])
    assert recent.covers(info(), [2, 1])
    assert not recent.covers(info(), [1, 3])
    assert not recent.covers(info(dialect="postgresql"), [1])
    assert recent.items_for(info(), [stored(2), stored(1)]) == [item(2), item(1)]


def test_a_read_back_copy_that_differs_in_any_stored_value_gives_nothing() -> None:
    recent = RecentRows()
    recent.remember(info(), "primary", [item(1), item(2)], [stored(1), stored(2)])
    tampered = (2, "r", "2024-01-01 00:00:00.000000", "HELLO", None, None)
    assert recent.items_for(info(), [stored(1), tampered]) is None
    assert recent.items_for(info(), [stored(1), (3, *stored(3)[1:])]) is None


def test_a_raw_item_is_found_by_its_bytes_alone() -> None:
    recent = RecentRows()
    recent.remember(info(), "primary", [item(1), item(2)], [stored(1), stored(2)])
    found = recent.find(info(), [raw(item(2)), raw(item(1))], handle="primary")
    assert forms(found) == [stored(2), stored(1)]
    assert [entry.item for entry in found if entry is not None] == [item(2), item(1)]


def test_a_raw_item_that_differs_by_a_byte_finds_nothing() -> None:
    recent = RecentRows()
    recent.remember(info(), "primary", [item(1)], [stored(1)])
    spaced = msgspec.Raw(encode_json(item(1)).replace(b":", b": ", 1))
    reordered = raw(dict(reversed(list(item(1).items()))))
    assert forms(recent.find(info(), [spaced, reordered, raw(item(1, body="edited"))])) == [
        None,
        None,
        None,
    ]
    assert forms(recent.find(info(), [raw(item(1))], handle="other")) == [None]
    assert forms(recent.find(info(name="other_table"), [raw(item(1))])) == [None]
    assert forms(recent.find(info(), [raw([1]), raw(None)])) == [None, None]


def test_a_row_listed_again_forgotten_or_evicted_is_no_longer_found_by_its_old_bytes() -> None:
    recent = RecentRows(max_rows=2)
    recent.remember(info(), "primary", [item(1)], [stored(1)])
    recent.remember(info(), "primary", [item(1, body="edited")], [stored(1)])
    assert forms(recent.find(info(), [raw(item(1))])) == [None]
    assert forms(recent.find(info(), [raw(item(1, body="edited"))])) == [stored(1)]
    recent.forget(info(), [1])
    assert forms(recent.find(info(), [raw(item(1, body="edited"))])) == [None]
    recent.remember(info(), "primary", [item(i) for i in (2, 3, 4)], [stored(i) for i in (2, 3, 4)])
    assert forms(recent.find(info(), [raw(item(i)) for i in (2, 3, 4)])) == [
        None,
        stored(3),
        stored(4),
    ]
    assert len(recent._by_json) == len(recent) == 2
