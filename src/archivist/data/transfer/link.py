"""Link discovery: whether and how one daemon connection reaches both databases of a
(source, destination) pair, whether the destination table takes the source's rows as stored,
and the conflict a copy over a link raises when the destination refuses a row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError

from archivist.data.handles import Handle
from archivist.data.schema import TableInfo, incompatibility
from archivist.errors import Conflict

DEST_SCHEMA: Final = "archivist_dest"
STREAMS: Final = frozenset({"sqlite", "postgresql", "mysql", "mariadb"})
"""Engines the daemon reads rows from and writes rows into itself."""
"""The schema name under which a SQLite source's connections attach the destination file."""


class Link(msgspec.Struct, frozen=True):
    """How the daemon reaches both databases of a (source, destination) pair."""

    runner: Handle
    """A handle on the source, made for this link: its connections see the source as their
    own database and, unless piped, the destination as ``dest_schema``."""
    dest: Handle
    dest_schema: str | None
    """None when no connection reaches both (PostgreSQL): rows are piped by ``COPY``."""
    deleter: Handle
    """Where SQLite's deletes run: one thread, so always the same connection, which then
    sees no commit of this daemon's own deletes as another writer's (`slicing`); on the
    servers, the runner."""
    streamed: bool = False
    """Two servers or two engines: the daemon reads the rows from one connection and writes
    them into the other with the destination's bulk path (`streamed`)."""


def _sqlite_file(url: URL) -> str | None:
    """The file of a SQLite URL, or None for an in-memory database or a URI filename (whose
    options, such as ``mode=ro``, an attachment would not keep)."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or "uri" in url.query:
        return None
    return os.path.abspath(database)


def _server(url: URL) -> tuple[object, ...]:
    """What reaches a server as one user: everything in a URL but its database."""
    return (url.drivername, url.username, url.password, url.host, url.port, url.query)


def find_link(source: Handle, dest: Handle) -> Link | str:
    """The link between two handles, or why there can be none."""
    for handle in (source, dest):
        if handle.dialect_name == "sqlite" and _sqlite_file(handle.url) is None:
            return "only a SQLite file named by its path can be reached by another connection"
        if handle.dialect_name not in STREAMS:
            return f"the daemon does not stream rows to or from {handle.dialect_name}"
    attach: dict[str, str] = {}
    if source.dialect_name != dest.dialect_name:
        return _streamed(source, dest, f"{source.dialect_name} to {dest.dialect_name}")
    if source.dialect_name == "sqlite":
        path = _sqlite_file(dest.url)
        assert path is not None
        attach[DEST_SCHEMA] = path
        schema = DEST_SCHEMA
    elif source.dialect_name in ("mysql", "mariadb"):
        if not dest.url.database or _server(source.url) != _server(dest.url):
            return _streamed(source, dest, "between two servers")
        schema = dest.url.database
    elif source.dialect_name == "postgresql":
        schema = None
    else:
        return f"one {source.dialect_name} connection cannot reach two databases"
    how = "copying inside the database" if schema else "copying with COPY"
    label = f"handles '{source.name}' and '{dest.name}' ({how})"
    name = f"{source.name}+{dest.name}"
    runner = Handle(name, source.url, threads=2, attach=attach, label=label)
    deleter = runner
    if attach:
        deleter = Handle(f"{name}-delete", source.url, threads=1, attach=attach, label=label)
    return Link(runner, dest, schema, deleter)


def _streamed(source: Handle, dest: Handle, how: str) -> Link:
    label = f"handles '{source.name}' and '{dest.name}' (streaming {how})"
    runner = Handle(f"{source.name}+{dest.name}", source.url, threads=2, label=label)
    return Link(runner, dest, None, runner, streamed=True)


def compatible(
    source: TableInfo, dest: TableInfo, dialect: sa.Dialect, *, streamed: bool = False
) -> str | None:
    """Why the destination table cannot take the source's rows as they are stored, if so.
    ``streamed``: the tables are on two engines or servers, and their columns are compared
    by kind (each value is written again, and must fit exactly: `incompatibility`)."""
    if dest.pk != source.pk:
        return f"its primary key is {dest.pk}, the source's {source.pk}"
    if streamed:
        for spec in source.columns:
            found = next((c for c in dest.columns if c.name == spec.name), None)
            if found is None:
                return f"it has no column {spec.name}"
            if (why := incompatibility(spec, found)) is not None:
                return why
        return None
    for column in source.table.c:
        other = dest.table.c.get(column.name)
        if other is None:
            return f"it has no column {column.name}"
        mine = column.type.compile(dialect=dialect)
        theirs = other.type.compile(dialect=dialect)
        if mine != theirs:
            return f"its column {column.name} is {theirs}, the source's {mine}"
    return None


class TakenBack(Exception):
    """A move whose digests differ: raised out of the source's transaction, which takes its
    delete back; the copy stays, and the command answers the page without ``deleted``.
    Not an `ArchivistError`: the handle lets it through as it is."""

    def __init__(self, keys: list[object], last: Sequence[object] | None) -> None:
        super().__init__("a moved batch's digests differ")
        self.keys = keys
        self.last = last


def one_version(connection: sa.Connection, dest: sa.Engine) -> bool:
    """Whether both servers are known to run one version, which writes a value of one type
    the same way on both (the destination's is known once it has been connected to: the
    first batch compares digests)."""
    theirs = dest.dialect.server_version_info
    return theirs is not None and theirs == connection.dialect.server_version_info


def same_batch(mine: tuple[str, int], theirs: tuple[str, int], deleted: int) -> bool:
    """Whether a moved batch's delete stands: the archive's digest of its copies
    (``theirs``) equals the source's (``mine``), and as many rows were deleted as it covers."""
    return theirs == mine and deleted == mine[1]


def take_back_unless_same(
    log: logging.Logger,
    name: str,
    page: tuple[list[object], Sequence[object] | None],
    mine: tuple[str, int],
    theirs: tuple[str, int],
    deleted: int,
    how: str = "",
) -> None:
    """Raise `TakenBack` for ``page`` (its keys and last row), with a line in ``log``, unless
    the archive's digest of a moved batch (``theirs``) equals the source's (``mine``) and
    as many rows were deleted as the source's digest covers."""
    if same_batch(mine, theirs, deleted):
        return
    log.info(
        "%s: a moved batch's digests differ (%d rows read, %d deleted, %d in the archive%s);"
        " its delete is taken back",
        name,
        mine[1],
        deleted,
        theirs[1],
        how,
    )
    raise TakenBack(*page)


def conflict(exc: IntegrityError) -> Conflict:
    return Conflict(
        "conflict: a copied row breaks a constraint of the destination table; nothing was "
        f"copied ({str(exc.orig).strip().splitlines()[0]})"
    )
