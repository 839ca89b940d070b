"""Rows an interrupted task left in both databases: where to look for them, which of them
may be settled, and when the daemon looks.

A task copies a batch, then deletes it from the source; a daemon killed between the two
(up to three batches are in flight: one being deleted, one copied, one copied ahead)
leaves those rows in the source and the archive. Their policy may count them as within
its limit (a table left at exactly ``max_rows``), so no task would start to finish them.
They are always the source's oldest rows of the policy (tasks move the oldest first), so
a look at that many of them, and at the archive under their keys, finds them at a cost
that does not grow with the table. Those identical to their archived copy are settled by
a task limited to their keys: the same guarded, verified delete as any task's, children
first. A row that differs from its copy (updated after it was copied) is kept in the
source and reported: the policy does not ask for it to move.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

import msgspec

from archivist.errors import BadAnswer
from archivist.protocol import JSONObject

BATCHES_IN_FLIGHT: Final = 3
"""Batches of one task that may be in both databases at a kill: the one being deleted,
the one copied (its delete beside the next copy), and the one copied ahead."""

SHOWN_KEYS: Final = 10
"""Keys named in a log line about rows in both; the rest are counted."""

Execute = Callable[[str, JSONObject], Awaitable[JSONObject]]


def look_depth(batch_size: int) -> int:
    """How many of the source's oldest rows a look reads: all a kill can leave in both."""
    return BATCHES_IN_FLIGHT * batch_size


class InBoth(msgspec.Struct, frozen=True):
    """The rows a look found in both databases, by primary key, oldest first."""

    primary_key: str
    identical: list[object]
    """Equal to their archived copy: their move was cut short after the copy."""
    differing: list[object]
    """Changed since their copy: kept in the source (a later task that moves them
    replaces the copy)."""

    @property
    def settle_filter(self) -> dict[str, object]:
        """The ``filter`` of a task that moves the identical rows and no other."""
        return {self.primary_key: {"$in": list(self.identical)}}

    def named(self, keys: Sequence[object]) -> str:
        """Keys for a log line: the first `SHOWN_KEYS`, and how many more."""
        shown = ", ".join(f"{self.primary_key}={key!r}" for key in keys[:SHOWN_KEYS])
        more = len(keys) - SHOWN_KEYS
        return f"{shown} and {more} more" if more > 0 else shown


def split_in_both(
    originals: Sequence[JSONObject], copies: Iterable[JSONObject], primary_key: str
) -> InBoth:
    """Which source rows (``originals``, oldest first) have a copy (``copies``, the archive's
    rows under their keys), and whether each copy is identical, field by field, as the
    worker verifies a copy (`archivist.worker.batch.verify`)."""
    by_key = {copy.get(primary_key): copy for copy in copies}
    identical: list[object] = []
    differing: list[object] = []
    for original in originals:
        key = original.get(primary_key)
        copy = by_key.get(key)
        if copy is None:
            continue
        same = all(copy.get(name) == value for name, value in original.items())
        (identical if same else differing).append(key)
    return InBoth(primary_key, identical, differing)


class Looks:
    """Which collections are due a look for rows in both: each once when the daemon starts
    (a daemon killed before may have left some), and again after a task of it ends other
    than in success (cut short, it may have left some). Pure state, no I/O."""

    def __init__(self, collections: Iterable[str]) -> None:
        self._due = set(collections)

    def due(self, collection: str) -> bool:
        return collection in self._due

    def done(self, collection: str) -> None:
        """A look found what there was (and queued what may be settled)."""
        self._due.discard(collection)

    def ended(self, collection: str, state: str, *, settled: bool = False) -> None:
        """A task of ``collection`` ended in ``state``; ``settled``: it was one that settles
        rows in both, whose error is not looked into again (it would fail again, at every
        check: its error says why); cut short, it is."""
        if state != "success" and not (settled and state == "error"):
            self._due.add(collection)


async def find_in_both(
    execute: Execute,
    *,
    collection: str,
    source: str,
    dest: str,
    order_by: str,
    filter_: dict[str, object] | None,
    depth: int,
    max_bytes: int,
) -> InBoth:
    """The source's oldest ``depth`` rows of ``filter_`` (the policy's ``where``), in
    ``order_by`` order, that the archive holds too: two listings (the archive's by key),
    each within ``max_bytes`` of rows; a source listing cut short by it looks at fewer."""
    params: JSONObject = {
        "collection": collection,
        "dbHandle": source,
        "orderBy": [{"field": order_by, "direction": "asc"}],
        "limit": depth,
        "maxBytes": max_bytes,
    }
    if filter_ is not None:
        params["filter"] = filter_
    listed = await execute("data/list", params)
    originals = _items(listed)
    primary_key = listed.get("primaryKey", "id")
    if not isinstance(primary_key, str):
        raise BadAnswer(f"data/list of {collection} on {source} answered without its primaryKey")
    wanted = [item.get(primary_key) for item in originals]
    copies: list[JSONObject] = []
    while wanted:
        answer = await execute(
            "data/list",
            {
                "collection": collection,
                "dbHandle": dest,
                "filter": {primary_key: {"$in": wanted}},
                "limit": len(wanted),
                "maxBytes": max_bytes,
            },
        )
        found = _items(answer)
        copies += found
        if answer.get("truncated") is not True or not found:
            break  # a copy too wide to read back is not settled here: a task moves it
        seen = {copy.get(primary_key) for copy in found}
        wanted = [key for key in wanted if key not in seen]
    return split_in_both(originals, copies, primary_key)


def _items(answer: JSONObject) -> list[JSONObject]:
    items = answer.get("items")
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise BadAnswer("data/list answered without a list of items")
    return items
