"""Key-range arithmetic for statements that name a page of integer keys: runs of
consecutive keys written as ranges (``BETWEEN``) instead of one by one, never naming a key
outside the page.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Final

RUN: Final = 4
"""The fewest consecutive integer keys written in as one range (``BETWEEN``) rather than
one by one in the ``IN`` list."""


def _runs(ordered: Sequence[int]) -> list[tuple[int, int]]:
    """The runs of consecutive integers of ``ordered`` (sorted, distinct), as index spans
    ``(start, end)``; every integer from the first of a run to its last is in it."""
    count = len(ordered)
    bounds = [0, *[i for i in range(1, count) if ordered[i] != ordered[i - 1] + 1], count]
    return list(itertools.pairwise(bounds))


def key_ranges(column: str, keys: Sequence[int]) -> str:
    """A condition on ``column`` that holds for exactly the integer ``keys``: each run of at
    least `RUN` consecutive keys as one ``BETWEEN``, the others in one ``IN`` list. Every
    integer of a run is one of the keys, so a row outside them is never named, whatever
    rows lie between runs. A range is one descent of the key's index where the ``IN`` list
    takes one per key, so the server's statements of a batch of consecutive keys cost less
    (docs/performance.md); scattered keys cost a little more Python to write in than the
    bare ``IN`` list."""
    ordered = sorted(set(keys))
    if len(ordered) >= RUN and ordered[-1] - ordered[0] + 1 == len(ordered):
        return f"({column} BETWEEN {ordered[0]} AND {ordered[-1]})"
    spans = _runs(ordered)
    ranges = [
        f"{column} BETWEEN {ordered[start]} AND {ordered[end - 1]}"
        for start, end in spans
        if end - start >= RUN
    ]
    if not ranges:
        return f"({column} IN ({', '.join(map(str, ordered))}))" if ordered else "FALSE"
    single = [key for start, end in spans if end - start < RUN for key in ordered[start:end]]
    if single:
        ranges.append(f"{column} IN ({', '.join(map(str, single))})")
    return f"({' OR '.join(ranges)})"


def key_span(keys: Sequence[int]) -> tuple[int, int, list[int]]:
    """The integer ``keys`` as the first and last key of their longest run of consecutive
    keys and the other keys, for a statement of one shape at every call (PostgreSQL
    prepares it): ``pk BETWEEN first AND last OR pk = ANY(others)``. With no run of `RUN`
    keys, the range is empty (1, 0) and every key is in the list. Consecutive keys so named
    cost the server less than by ``= ANY`` alone (one descent of the key's index), in the
    copy, the digests and the guarded delete alike."""
    ordered = sorted(set(keys))
    if len(ordered) >= RUN and ordered[-1] - ordered[0] + 1 == len(ordered):
        return ordered[0], ordered[-1], []
    start, end = max(_runs(ordered), key=lambda run: run[1] - run[0])
    if end - start < RUN:
        return 1, 0, ordered
    return ordered[start], ordered[end - 1], ordered[:start] + ordered[end:]
