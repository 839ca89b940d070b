"""Which rows ``data/copy`` takes next: a page of the source's keys in the copy's order
after the cursor, and the last row's order value (the next cursor), read in one snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from archivist.data.columns import Kind
from archivist.data.listing import ListQuery
from archivist.data.params import CopyParams
from archivist.data.schema import TableInfo
from archivist.data.transfer import canonical
from archivist.data.transfer.link import Link
from archivist.errors import DatabaseError

PAGE_ALIAS: Final = "archivist_page"
"""The page's alias where MariaDB/MySQL read its keys joined in one value."""
EXACT_MAX: Final = frozenset({Kind.INTEGER, Kind.DECIMAL, Kind.DATE, Kind.DATETIME})
"""Order columns whose largest value on a page is, to the byte, the last row's: no collation
makes two different values of these kinds compare equal."""


class Pages(msgspec.Struct, frozen=True):
    """How ``data/copy`` reads the next page: its keys alone, then the last row's key and
    order value (the cursor), both in one snapshot of the source."""

    keys: sa.Select[Any]
    last: sa.Select[Any] | None
    """The page's last row (key, order value) by ``:key``; None when the order is the key.
    Only the last row's order value is needed, and decoding every row's (a timestamp,
    parsed in Python by PyMySQL) is a large part of MariaDB's copy."""
    snapshot: str | None
    """Sent first on a server, so both reads see one snapshot whatever the server's default
    isolation: a row changed in between must not move the cursor past rows not copied."""
    joined: sa.Select[Any, Any, Any, Any] | None = None
    """Instead of both (`_joined_page`): the keys joined in one value, the last row's order
    value and the page's size, in one statement (so in one snapshot)."""
    params: Mapping[str, object] = msgspec.field(default_factory=dict)
    """Which page: the parameters of `keys` and `joined` (`position_params`)."""
    digested: sa.Select[Any, Any, Any, Any, Any] | None = None
    """PostgreSQL, with `joined`: the same and the digest of the page's rows
    (`canonical`), in one statement (`read_digested`)."""

    def begin(self, connection: Connection) -> Pages:
        """Send the snapshot now, before anything else the transaction runs (a server
        refuses it after a query), and answer the pages to read with (without it)."""
        if self.snapshot is None:
            return self
        connection.exec_driver_sql(self.snapshot)
        return msgspec.structs.replace(self, snapshot=None)

    def read_digested(
        self, connection: Connection
    ) -> tuple[list[object], Sequence[object] | None, tuple[str, int]] | None:
        """The page's keys, its last row and the digest of its rows, read in one statement;
        None where there is no such statement (then `read`, and a digest by key)."""
        if self.digested is None:
            return None
        row = connection.execute(self.digested, self.params).one()
        keys, last = _split_page(row[:4], by_key=self.last is None)
        digest = row[4]
        return keys, last, (canonical.EMPTY_DIGEST if not keys else str(digest), len(keys))

    def read(self, connection: Connection) -> tuple[list[object], Sequence[object] | None]:
        """The page's keys and its last row (None on an empty page)."""
        if self.joined is not None:
            row = connection.execute(self.joined, self.params).one()
            return _split_page(row, by_key=self.last is None)
        if self.snapshot is not None:
            connection.exec_driver_sql(self.snapshot)
        keys: list[object] = list(connection.execute(self.keys, self.params).scalars())
        if not keys:
            return keys, None
        if self.last is None:
            return keys, (keys[-1],)
        return keys, connection.execute(self.last, {"key": keys[-1]}).first()


def pages_for(info: TableInfo, p: CopyParams, default_order: str, link: Link) -> Pages:
    """How to read the pages of ``p``'s shape (its parameters are set per page)."""
    listing = ListQuery.build(info, p, default_order, bound=True).query
    order = p.order_by[0].field if p.order_by else default_order
    pk = info.table.c[info.pk]
    by_key = order == info.pk
    dialect = link.runner.engine.dialect
    joined = _joined_page(listing, info, order, dialect)
    return Pages(
        digested=_digested_page(listing, info, order, dialect) if joined is not None else None,
        keys=listing.with_only_columns(pk),
        last=None
        if by_key
        else sa.select(pk, info.table.c[order]).where(pk == sa.bindparam("key")),
        snapshot=None if by_key or joined is not None else _SNAPSHOT.get(link.runner.dialect_name),
        joined=joined,
    )


def _joined_page(
    listing: sa.Select[Any], info: TableInfo, order: str, dialect: sa.Dialect
) -> sa.Select[Any, Any, Any, Any] | None:
    """An order column with no NULLs whose largest value on a page is the last row's
    (`EXACT_MAX`), or the key itself: the page's keys in one value, in the listing's order
    (MariaDB/MySQL, integer keys: ``GROUP_CONCAT``; PostgreSQL: an array), its largest
    order value and its size (and, on MariaDB/MySQL, the length its keys' text must have),
    in one statement, so in one snapshot; None elsewhere. One row of one value is much less
    of the daemon's work than a page of one-key rows (PyMySQL parses each row in Python),
    and the last row costs no second round trip.

    MariaDB/MySQL sessions allow ``GROUP_CONCAT`` values of `handles.GROUP_CONCAT_MAX_LEN`
    bytes."""
    postgres = dialect.name == "postgresql"
    if not postgres and (
        dialect.name not in ("mysql", "mariadb") or info.spec(info.pk).kind is not Kind.INTEGER
    ):
        return None
    by_key = order == info.pk
    spec = info.spec(order)
    if not by_key and (spec.nullable or spec.kind not in EXACT_MAX):
        return None
    table = info.table
    page = listing.with_only_columns(*dict.fromkeys([table.c[info.pk], table.c[order]]))
    page_alias = page.subquery(PAGE_ALIAS)
    key_column = page_alias.c[info.pk]
    if postgres:
        from sqlalchemy.dialects.postgresql import aggregate_order_by

        ordering = [key_column] if by_key else [page_alias.c[order], key_column]
        return sa.select(
            sa.func.array_agg(aggregate_order_by(key_column, *ordering)),
            sa.func.max(page_alias.c[order]),
            sa.func.count(),
            sa.null(),
        ).select_from(page_alias)
    quote = dialect.identifier_preparer.quote
    key = f"{PAGE_ALIAS}.{quote(info.pk)}"
    joined_order = key if by_key else f"{PAGE_ALIAS}.{quote(order)}, {key}"
    joined: sa.ColumnClause[str] = sa.literal_column(
        f"GROUP_CONCAT({key} ORDER BY {joined_order} SEPARATOR ',')"
    )
    return sa.select(
        joined,
        sa.func.max(page_alias.c[order]),
        sa.func.count(),
        sa.func.sum(sa.func.char_length(key_column)),
    ).select_from(page_alias)


def _digested_page(
    listing: sa.Select[Any], info: TableInfo, order: str, dialect: sa.Dialect
) -> sa.Select[Any, Any, Any, Any, Any] | None:
    """PostgreSQL: `_joined_page` with a fifth column, the digest of the page's rows
    (`canonical.digest_sql`), all from one reading of the page."""
    if dialect.name != "postgresql":
        return None
    from sqlalchemy.dialects.postgresql import aggregate_order_by

    table = info.table
    quote = dialect.identifier_preparer.quote
    text = canonical.row_text_sql("postgresql", info.columns, quote)
    rows = listing.with_only_columns(*table.c).subquery(PAGE_ALIAS)
    # Each row's hash computed once (OFFSET 0 keeps the subquery from being merged into
    # the aggregates, which would compute it once per aggregate).
    hashed = (
        sa.select(
            rows.c[info.pk],
            *([] if order == info.pk else [rows.c[order]]),
            sa.literal_column(f'md5({text}) COLLATE "C"').label("archivist_hash"),
        )
        .offset(0)
        .subquery("archivist_hashed")
    )
    key = hashed.c[info.pk]
    ordering = [key] if order == info.pk else [hashed.c[order], key]
    digest: sa.ColumnClause[str] = sa.literal_column(
        "md5(string_agg(archivist_hashed.archivist_hash, '' ORDER BY"
        " archivist_hashed.archivist_hash))"
    )
    return sa.select(
        sa.func.array_agg(aggregate_order_by(key, *ordering)),
        sa.func.max(hashed.c[order]),
        sa.func.count(),
        sa.null(),
        digest,
    ).select_from(hashed)


def _split_page(
    row: Sequence[Any], *, by_key: bool
) -> tuple[list[object], Sequence[object] | None]:
    """The keys and the last row of a page read by `_joined_page`."""
    joined, last_order, size, digits = row
    if not size:
        return [], None
    if isinstance(joined, list):  # PostgreSQL's array, of keys as the driver reads them
        listed: list[object] = list(joined)
        return listed, (listed[-1],) if by_key else (listed[-1], last_order)
    if isinstance(joined, bytes):  # a binary string on servers that type it so
        joined = joined.decode("ascii")
    # A value cut short (a server's GROUP_CONCAT or packet limit) may still split into the
    # right number of keys, the last one cut: its length tells.
    if len(joined) != int(digits) + size - 1:
        raise DatabaseError(
            f"database error: the keys of a page of {size} rows did not fit in one value "
            "(group_concat_max_len or max_allowed_packet on the server); use a smaller "
            "batch size"
        )
    keys: list[object] = [int(key) for key in joined.split(",")]
    return keys, (keys[-1],) if by_key else (keys[-1], last_order)


_SNAPSHOT: Final = dict.fromkeys(
    ("postgresql", "mysql", "mariadb"), "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
)
"""SQLite's reads in one transaction see one snapshot already."""
