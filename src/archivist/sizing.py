"""What a size check decides from what it measured, without I/O: whether the cheap figures
(the engine's estimate, a primary key's range) settle "is the table over max_rows?". The
SQL that measures is in `archivist.data.size`; this module imports no SQLAlchemy (the
daemon's start-up does not need it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

import msgspec

from archivist.errors import BadAnswer

ESTIMATE_MARGIN: Final = 0.5
"""A statistics estimate below this fraction of the limit settles that the table is within
it. InnoDB's estimate may be off by up to ~50% in either direction (its manual says 40 to
50%); PostgreSQL's, taken as the larger of two, over-estimates rather than under."""

Method = Literal["bound", "estimate", "count"]


class Size(msgspec.Struct, frozen=True):
    """A table's size as measured: ``rows`` (exact when ``exact``; otherwise an estimate,
    or None when none was to be had), and how it was found."""

    rows: int | None
    exact: bool
    method: Method

    def wire(self) -> dict[str, object]:
        return {"rows": self.rows, "exact": self.exact, "method": self.method}

    @classmethod
    def from_wire(cls, answer: Mapping[str, object], what: str) -> Size:
        """A ``data/size`` answer; BadAnswer naming ``what`` when it is not one."""
        rows, exact, method = answer.get("rows"), answer.get("exact"), answer.get("method")
        if (rows is not None and (not isinstance(rows, int) or isinstance(rows, bool))) or not (
            isinstance(exact, bool) and method in ("bound", "estimate", "count")
        ):
            raise BadAnswer(f"data/size of {what} answered without a size")
        return cls(rows, exact, method)


def closer_look(limit: int, *, bound: int | None, estimate: int | None) -> bool:
    """Whether the cheap figures leave "is the table over ``limit``?" open. ``bound``
    never under-counts (a primary key range), so a bound within the limit settles it;
    ``estimate`` may err either way, so it settles it only well below the limit. An
    estimate of 0 or less settles nothing (a table never analysed, statistics reset)."""
    if bound is not None and bound <= limit:
        return False
    if estimate is None or estimate <= 0:
        return True
    return estimate >= limit * ESTIMATE_MARGIN


def settled_size(bound: int | None, estimate: int | None) -> Size:
    """The inexact size a check reports when `closer_look` said no: the estimate, never
    above the bound."""
    if estimate is not None and estimate > 0:
        rows = estimate if bound is None else min(estimate, bound)
        return Size(rows, False, "estimate")
    return Size(bound, False, "bound")
