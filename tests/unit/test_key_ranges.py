"""How copies and deletes name a list of integer keys: MariaDB's statements write runs of
consecutive keys as ``BETWEEN`` ranges and the others in an ``IN`` list; PostgreSQL's name
the longest run as a range and the others in a list (one statement shape, prepared once).
Either must hold for the keys and for no other integer, whatever lies between them:
checked by a real SQL engine (SQLite in memory) over every integer around and between the
keys."""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import mysql

from archivist.data.transfer.attached import ByKeys
from archivist.data.transfer.keys import RUN, key_ranges, key_span

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


KEYS = st.lists(
    st.one_of(st.integers(-50, 50), st.integers(-BIG, -BIG + 20), st.integers(BIG - 20, BIG)),
    max_size=80,
)


def around(keys: list[int]) -> set[int]:
    """Every integer near a key, and all of -60..60: the keys, the holes between them, and
    the integers just outside every run."""
    candidates = {n for key in keys for n in range(key - RUN - 1, key + RUN + 2)}
    candidates |= set(range(-60, 61))
    return {n for n in candidates if -BIG - 1 <= n <= BIG}


def held(condition: str, candidates: set[int]) -> set[int]:
    """The candidates for which a real SQL engine finds the condition true."""
    with sqlite3.connect(":memory:") as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        connection.executemany("INSERT INTO t VALUES (?)", [(n,) for n in sorted(candidates)])
        found = connection.execute(f"SELECT id FROM t WHERE {condition}")
        return {row[0] for row in found}


@given(KEYS)
def test_the_condition_holds_for_exactly_the_keys(keys: list[int]) -> None:
    assert held(key_ranges("t.id", keys), around(keys)) == set(keys)


def span_condition(keys: list[int]) -> str:
    first, last, others = key_span(keys)
    listed = ", ".join(map(str, others)) or "NULL"
    return f"(t.id BETWEEN {first} AND {last} OR t.id IN ({listed}))"


def test_the_longest_run_becomes_the_range_and_the_rest_the_list() -> None:
    assert key_span([5, 1, 2, 3, 4, 9, 10, 11, 12, 13, 14]) == (9, 14, [1, 2, 3, 4, 5])
    assert key_span([1, 2, 3, 7]) == (1, 0, [1, 2, 3, 7])  # no run of RUN keys: empty range
    assert key_span([]) == (1, 0, [])


@given(KEYS)
def test_the_span_names_exactly_the_keys(keys: list[int]) -> None:
    assert held(span_condition(keys), around(keys)) == set(keys)


def test_a_hostile_column_name_gets_its_ranges_in_the_right_place() -> None:
    """The keyed column is found by its exact quoted text, even when its name holds a
    backtick and `` IN (``; the statement's text around it is left as it was."""
    name = "i`d IN (x"
    table = sa.Table("my table", sa.MetaData(), sa.Column(name, sa.BigInteger), schema="s x")
    keys = sa.bindparam("keys", expanding=True)
    statement = sa.delete(table).where(table.c[name].in_(keys))
    by_keys = ByKeys.of(statement, table.c[name], mysql.dialect())
    column = "`s x`.`my table`.`i``d IN (x`"
    assert by_keys.column == column
    written = by_keys.text.replace(f"{column} IN (__[POSTCOMPILE_keys])", "<keys>")
    assert written == "DELETE FROM `s x`.`my table` WHERE <keys>"
