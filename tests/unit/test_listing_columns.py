"""`ListQuery.run_columns` (the Iceberg staging's read on SQLite): the same typed values and
stored forms as the row-by-row listing (`ListQuery.run`), column by column, in the listing's
order, a page before a cursor included."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from archivist.data.listing import ListQuery
from archivist.data.params import CursorParam, ListParams
from archivist.data.schema import build_info
from datasupport import BASE, CHAT_COLUMNS


@pytest.mark.parametrize("cursor", [None, "after", "before"])
def test_columns_hold_what_the_row_listing_holds(tmp_path: Path, cursor: str | None) -> None:
    info = build_info("chat_messages", "sqlite", list(CHAT_COLUMNS), ["id"])
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'source.db'}")
    info.table.metadata.create_all(engine)
    rows = [
        {
            "id": i,
            "room": f"room{i % 3}",
            "created_at": BASE + dt.timedelta(seconds=i // 2),
            "body": None if i % 5 == 0 else f"message {i} 😀",
            "score": i / 4,
            "meta": None if i % 7 == 0 else {"n": i, "t": "ü"},
        }
        for i in range(1, 41)
    ]
    at = None
    if cursor is not None:
        at = CursorParam(
            field="created_at",
            value=(BASE + dt.timedelta(seconds=10)).isoformat(),
            id=20,
            direction=cursor,  # type: ignore[arg-type]
        )
    params = ListParams(collection="chat_messages", db_handle="primary", limit=15, cursor=at)
    query = ListQuery.build(info, params, "created_at", stored=True)
    with engine.begin() as connection:
        connection.execute(info.table.insert(), rows)
        names, typed, stored = query.run(connection)
        column_names, columns, column_stored = query.run_columns(connection)
    engine.dispose()
    assert stored is not None and len(typed) == 15
    assert column_names == names
    assert columns == [list(values) for values in zip(*typed, strict=True)]
    assert column_stored == [tuple(values) for values in stored]
    # Typed as SQLAlchemy types them: instants with their zone, documents as objects.
    created = columns[names.index("created_at")]
    assert all(isinstance(v, dt.datetime) and v.tzinfo is not None for v in created)
    documents = [v for v in columns[names.index("meta")] if v is not None]
    assert documents and all(isinstance(v, dict) and v["t"] == "ü" for v in documents)
