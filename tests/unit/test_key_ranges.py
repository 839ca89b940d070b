"""The condition MariaDB's copy and delete use for a list of integer keys: runs of
consecutive keys as ``BETWEEN`` ranges, the others in an ``IN`` list. It must hold for the
keys and for no other integer, whatever lies between them; checked by a real SQL engine
(SQLite in memory) over every integer around and between the keys."""

from __future__ import annotations

import sqlite3

from hypothesis import given
from hypothesis import strategies as st

from archivist.data.transfer import RUN, key_ranges

BIG = 2**63 - 1


def test_runs_become_ranges_and_short_runs_stay_in_the_list() -> None:
    assert key_ranges("t.id", [3, 1, 2, 4]) == "(t.id BETWEEN 1 AND 4)"
    keys = [4, 3, 2, 1, 7, 9, 10, 11, 12, 13, 20, 21, 9]
    assert key_ranges("t.id", keys) == (
        "(t.id BETWEEN 1 AND 4 OR t.id BETWEEN 9 AND 13 OR t.id IN (7, 20, 21))"
    )
    assert key_ranges("t.id", list(range(RUN - 1))) == "(t.id IN (0, 1, 2))"
    assert key_ranges("t.id", [-BIG, BIG]) == f"(t.id IN ({-BIG}, {BIG}))"
    assert key_ranges("t.id", []) == "FALSE"


def held(keys: list[int], candidates: set[int]) -> set[int]:
    with sqlite3.connect(":memory:") as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        connection.executemany("INSERT INTO t VALUES (?)", [(n,) for n in sorted(candidates)])
        found = connection.execute(f"SELECT id FROM t WHERE {key_ranges('t.id', keys)}")
        return {row[0] for row in found}


@given(
    st.lists(
        st.one_of(
            st.integers(-50, 50),
            st.integers(-BIG, -BIG + 20),
            st.integers(BIG - 20, BIG),
        ),
        max_size=80,
    )
)
def test_the_condition_holds_for_exactly_the_keys(keys: list[int]) -> None:
    candidates = {n for key in keys for n in range(key - RUN - 1, key + RUN + 2)}
    candidates |= set(range(-60, 61))
    candidates = {n for n in candidates if -BIG - 1 <= n <= BIG}
    assert held(keys, candidates) == set(keys)
