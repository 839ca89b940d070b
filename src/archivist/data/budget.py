"""Keeps a ``data/list`` answer within a byte budget (``maxBytes``: what one frame to the
worker carries): the rows that fit, the answer's extension fields saying it was cut short
and where to go on, and the width of each table's rows, so that a page of wide rows is
not even read past what can be sent.

Pure: sizes are those of the rows' compact JSON, as `archivist.protocol.encode` writes it
(escapes, and binary values as base64, included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from archivist.data.values import JSONObject

_encode = msgspec.json.Encoder().encode


@dataclass
class Widths:
    """The mean size of the rows last listed from each table of each handle."""

    seen: dict[tuple[str, str], float] = field(default_factory=dict)

    def known(self, handle: str, table: str) -> bool:
        return (handle, table) in self.seen

    def rows(self, handle: str, table: str, limit: int, max_bytes: int) -> int:
        """How many of the ``limit`` rows asked for to read, so their JSON fits in
        ``max_bytes`` if they are as wide as the rows seen last (at least one)."""
        width = self.seen.get((handle, table))
        if width is None:
            # Unknown: its first row was not there to learn from; the page is cut if need be.
            return limit
        return max(1, min(limit, int(max_bytes / max(width, 1.0))))

    def learn(self, handle: str, table: str, rows: int, size: int) -> None:
        if rows > 0:
            self.seen[(handle, table)] = size / rows


class Fit(msgspec.Struct, frozen=True):
    rows: int
    """How many of the items, from the first, fit."""
    size: int
    """The bytes of the JSON array of those rows."""
    measured: int
    """Rows whose size was measured (all fitting ones, and the first that did not)."""
    measured_size: int
    refused: int | None
    """The bytes of the first row that did not fit, or None when all fit."""


def fit(items: Sequence[JSONObject], max_bytes: int) -> Fit:
    """How many items, from the first, fit in a JSON array of ``max_bytes`` bytes."""
    whole = len(_encode(items))
    if whole <= max_bytes:
        return Fit(len(items), whole, len(items), whole, None)
    size = 2  # the brackets
    for index, item in enumerate(items):
        one = len(_encode(item)) + (1 if index else 0)  # a comma before every row but one
        if size + one > max_bytes:
            return Fit(index, size, index + 1, size + one, one)
        size += one
    raise AssertionError("a list too long for max_bytes has a row that does not fit")


def cursor_after(item: JSONObject, order_field: str, pk: str) -> JSONObject | None:
    """The keyset cursor just past ``item`` (``data/list``'s ``cursor`` param)."""
    if order_field not in item or item[order_field] is None or pk not in item:
        return None
    return {"field": order_field, "value": item[order_field], "id": item[pk], "direction": "after"}


def bound(
    items: list[JSONObject],
    *,
    max_bytes: int,
    asked: int,
    read: int,
    pk: str,
    order_field: str | None,
) -> tuple[list[JSONObject], JSONObject, Fit]:
    """The items to answer, the answer's extension fields, and what was measured.

    ``asked`` rows were asked for, ``read`` at most were read (`Widths.rows`): a page that
    holds fewer than asked because of the budget is ``truncated``, with the ``cursor``
    past its last row (when the listing is in ``order_field``'s ascending order); a first
    row that alone is over the budget is named in ``oversized`` (its key and size).
    """
    measured = fit(items, max_bytes)
    kept = items[: measured.rows]
    extra: JSONObject = {"bytes": measured.size}
    cut = measured.rows < len(items) or (len(items) == read < asked)
    if cut:
        extra["truncated"] = True
        if kept and order_field is not None:
            cursor = cursor_after(kept[-1], order_field, pk)
            if cursor is not None:
                extra["cursor"] = cursor
        if not kept and measured.refused is not None:
            extra["oversized"] = {"id": items[0].get(pk), "bytes": measured.refused}
    return kept, extra, measured
