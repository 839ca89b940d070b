"""The second servers that cross-server tests use are really other servers: a table made
through ``second_db`` is not visible on the shared server, and the ports differ."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.engine import make_url

from datasupport import sql


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_a_second_server_is_another_server(
    engine: str, fresh_db: Callable[[str], str], second_db: Callable[[str], str]
) -> None:
    shared, second = fresh_db(engine), second_db(engine)
    assert make_url(shared).port != make_url(second).port
    sql(second, "CREATE TABLE only_here (id INTEGER PRIMARY KEY)")
    sql(second, "INSERT INTO only_here VALUES (7)")
    assert sql(second, "SELECT id FROM only_here") == [(7,)]
    with pytest.raises(Exception, match="only_here"):
        sql(shared, "SELECT id FROM only_here")
