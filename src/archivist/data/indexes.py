"""Which index a policy's batches use: each batch selects the oldest rows ``ORDER BY
order_by``, which an index whose first column is ``order_by`` answers by reading only the
batch; without one, every batch scans (and sorts) the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

PRIMARY_KEY = "PRIMARY KEY"
"""How the primary key is named when it is the index used and has no name of its own."""


class Index(msgspec.Struct, frozen=True):
    """One index as reflected: its name (None when the database gives it none) and columns
    (None for an expression)."""

    name: str | None
    columns: tuple[str | None, ...]


def index_for(column: str, indexes: Sequence[Index], primary_key: Index | None) -> str | None:
    """The name of the index that serves ``ORDER BY column``: the primary key when it starts
    with ``column``, else the narrowest index that does (the cheapest to read); None when no
    index starts with it, so that every batch scans the table."""
    if primary_key is not None and primary_key.columns[:1] == (column,):
        return primary_key.name or PRIMARY_KEY
    starting = [index for index in indexes if index.columns[:1] == (column,)]
    if not starting:
        return None
    best = min(starting, key=lambda index: (len(index.columns), index.name or ""))
    return best.name or f"({', '.join(str(c) for c in best.columns)})"


def missing_index_warning(collection: str, column: str, index: str | None) -> str | None:
    """The warning to show when no index serves ``column`` (None when one does)."""
    if index is not None:
        return None
    return (
        f"{collection}: no index starts with {column}, so every batch scans the whole "
        f"table; add one: CREATE INDEX ix_{collection}_{column} ON {collection} ({column})"
    )


def reflect_indexes(connection: Connection, table: str) -> tuple[list[Index], Index | None]:
    """The indexes (unique constraints included) and the primary key of ``table``."""
    inspector = sa.inspect(connection)
    found = [
        Index(entry.get("name"), tuple(entry.get("column_names") or ()))
        for entry in inspector.get_indexes(table)
    ]
    # A unique constraint is backed by an index that some dialects list only here (SQLite's
    # sqlite_autoindex_*).
    found += [
        Index(entry.get("name"), tuple(entry.get("column_names") or ()))
        for entry in inspector.get_unique_constraints(table)
    ]
    pk = inspector.get_pk_constraint(table)
    columns = tuple(pk.get("constrained_columns") or ())
    primary = Index(pk.get("name"), columns) if columns else None
    return found, primary


def order_index(connection: Connection, table: str, column: str) -> str | None:
    """The index that serves ``ORDER BY column`` on ``table`` (see `index_for`)."""
    indexes, primary = reflect_indexes(connection, table)
    return index_for(column, indexes, primary)
