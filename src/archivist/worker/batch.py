"""A batch of source rows and how the daemon's answers about it are read: the items, their
primary keys, the keyset cursor past them, and the check that their copies are identical."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from archivist.errors import BadAnswer, VerifyMismatch
from archivist.protocol import JSONObject

DEFAULT_PRIMARY_KEY: Final = "id"


@dataclass(frozen=True)
class Batch:
    """Rows listed from the source, oldest first, and how they were asked for."""

    items: list[JSONObject]
    limit: int
    primary_key: str
    order_field: str | None
    after_cursor: bool
    copied: bool = False
    """Already copied by the daemon (``data/copy``): ``items`` hold only keys, and the
    delete's guard (``matching``) is the verification."""
    next_cursor: JSONObject | None = None
    """The cursor past the last row, as the daemon gave it (``data/copy``)."""
    moved: int | None = None
    """Rows the daemon also deleted from the source, in the copy's transaction
    (``data/copy`` with ``move``): the batch is done. None: its delete is still to run."""
    unstorable: set[object] = field(default_factory=set)
    """Keys of rows the destination cannot store (``data/create`` skipped them): they stay
    in the source, and the batch's copy, verification and delete are of the others."""
    truncated: bool = False
    """The daemon stopped the listing short of ``limit`` to fit its frame: rows may follow."""
    oversized: JSONObject | None = None
    """The next row, too wide for any frame (``{"id", "bytes"}``): ``items`` is empty."""

    @property
    def to_move(self) -> list[JSONObject]:
        """The rows this batch copies and deletes: all but the unstorable ones."""
        if not self.unstorable:
            return self.items
        return [item for item in self.items if item.get(self.primary_key) not in self.unstorable]

    @property
    def last_page(self) -> bool:
        """Whether the source has nothing after this batch."""
        return len(self.items) < self.limit and not self.truncated and self.oversized is None

    def cursor_after(self) -> JSONObject | None:
        """A keyset cursor just past this batch's last row, if the order is known."""
        if self.next_cursor is not None:
            return self.next_cursor
        if self.order_field is None or not self.items:
            return None
        last = self.items[-1]
        value = last.get(self.order_field)
        if value is None:
            return None
        return {
            "field": self.order_field,
            "value": value,
            "id": last.get(self.primary_key),
            "direction": "after",
        }


def verify(
    originals: Sequence[JSONObject], copies: Sequence[JSONObject], primary_key: str, dest: str
) -> None:
    by_key = {key_of(copy, primary_key): copy for copy in copies}
    for original in originals:
        key = key_of(original, primary_key)
        copy = by_key.get(key)
        if copy is None:
            raise VerifyMismatch(f"row {primary_key}={key!r} is missing from {dest} after copy")
        if any(copy.get(field) != value for field, value in original.items()):
            changed = sorted(f for f, v in original.items() if copy.get(f) != v)
            raise VerifyMismatch(
                f"row {primary_key}={key!r} differs in {dest} after copy "
                f"(fields: {', '.join(changed)}); nothing was deleted"
            )


def cursor_of(result: JSONObject) -> JSONObject | None:
    cursor = result.get("cursor")
    return cursor if isinstance(cursor, dict) else None


def items_of(result: JSONObject, command: str) -> list[JSONObject]:
    items = result.get("items")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadAnswer(f"{command} answered without a list of items")
    return items


def primary_key_of(result: JSONObject) -> str:
    primary_key = result.get("primaryKey", DEFAULT_PRIMARY_KEY)
    return primary_key if isinstance(primary_key, str) else DEFAULT_PRIMARY_KEY


def key_of(item: JSONObject, primary_key: str) -> object:
    if primary_key not in item:
        raise BadAnswer(f"an item has no primary key field {primary_key!r}")
    key = item[primary_key]
    if key is None or isinstance(key, list | dict):
        raise BadAnswer(f"an item's primary key {primary_key!r} is not a scalar: {key!r}")
    return key


def int_field(result: JSONObject, name: str, command: str) -> int:
    value = result.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadAnswer(f"{command} answered without an integer {name!r}")
    return value
