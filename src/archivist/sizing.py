"""What a size check decides from what it measured, without I/O: whether the cheap figures
(the engine's estimate, a primary key's range) settle "is the table over max_rows?", and
the exact total from an index walk. The SQL that measures is in `archivist.data.size`;
this module imports no SQLAlchemy (the daemon's start-up does not need it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from archivist.errors import BadAnswer

ESTIMATE_MARGIN: Final = 0.5
"""A statistics estimate below this fraction of the limit settles that the table is within
it. InnoDB's estimate may be off by up to ~50% in either direction (its manual says 40 to
50%); PostgreSQL's, taken as the larger of two, over-estimates rather than under."""

Method = Literal["bound", "estimate", "index", "count"]


@dataclass(frozen=True)
class Size:
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
            isinstance(exact, bool) and method in ("bound", "estimate", "index", "count")
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


def exact_way(limit: int, *, estimate: int | None, indexed: bool) -> Literal["walk", "count"]:
    """How to count exactly once the cheap figures left it open: the index walk from the
    newest end reads at most ``limit + 1`` entries when the table is within its limit (and
    stops there when it is not); over it, it goes on to count the rows at or below the
    limit, so it reads every row, as ``count(*)`` does, one entry at a time, where
    PostgreSQL's ``count(*)`` reads in parallel (docs/performance.md). So: the walk unless
    the estimate says the table is over its limit (or there is no index to walk, or a
    limit of 0, which moves every row)."""
    if limit == 0 or not indexed:
        return "count"
    if estimate is not None and estimate > limit:
        return "count"
    return "walk"


def settled_size(bound: int | None, estimate: int | None) -> Size:
    """The inexact size a check reports when `closer_look` said no: the estimate, never
    above the bound."""
    if estimate is not None and estimate > 0:
        rows = estimate if bound is None else min(estimate, bound)
        return Size(rows, False, "estimate")
    return Size(bound, False, "bound")


def total_from_walk(limit: int, newest: Sequence[object], at_or_below: int, above: int) -> int:
    """The exact row count from the walk: ``newest`` holds the values at positions
    ``limit - 1`` and ``limit`` counted from the newest row (two: the table is over
    ``limit``); ``at_or_below`` is how many rows have a value at or below the second.
    When the two values differ, exactly ``limit`` rows lie above the second; when they are
    equal (rows sharing a value straddle the limit), ``above`` must be the count of rows
    above it, counted by the caller."""
    if len(newest) != 2:
        raise ValueError("total_from_walk needs the two values at the limit")
    if newest[0] != newest[1]:
        return limit + at_or_below
    return above + at_or_below
