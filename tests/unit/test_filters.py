"""How key lists are bound: on PostgreSQL one array parameter, so a statement's text does not
depend on how many keys it names (compiled and parsed once); elsewhere an IN list."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from archivist.data.filters import compile_filter, one_of
from archivist.data.schema import build_info
from datasupport import CHAT_COLUMNS


def sql_of(dialect_name: str, keys: list[object], *, negate: bool = False) -> tuple[str, int]:
    info = build_info("chat_messages", dialect_name, list(CHAT_COLUMNS), ["id"])
    dialect = postgresql.dialect() if dialect_name == "postgresql" else sqlite.dialect()
    query = sa.select(info.table.c.id).where(one_of(info, info.table.c.id, keys, negate=negate))
    compiled = query.compile(dialect=dialect)
    return str(compiled), len(compiled.params)


def test_postgresql_binds_a_key_list_as_one_array_whatever_its_length() -> None:
    few, many = sql_of("postgresql", [1, 2, 3]), sql_of("postgresql", list(range(1000)))
    assert few[0] == many[0]
    assert "= ANY (" in few[0]
    assert (few[1], many[1]) == (1, 1)
    assert "!= ALL (" in sql_of("postgresql", [1, 2], negate=True)[0]


def test_other_engines_bind_an_in_list() -> None:
    text, _ = sql_of("sqlite", [1, 2, 3])
    assert " IN (" in text


def test_a_filters_in_operator_uses_the_array_on_postgresql() -> None:
    info = build_info("chat_messages", "postgresql", list(CHAT_COLUMNS), ["id"])
    condition = compile_filter(info, {"id": {"$in": [1, 2]}, "room": {"$nin": ["a"]}})
    text = str(condition.compile(dialect=postgresql.dialect()))
    assert "= ANY (" in text and "!= ALL (" in text
