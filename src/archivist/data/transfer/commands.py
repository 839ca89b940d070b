"""``data/copy`` and the ``matching`` form of ``data/delete`` (`Transfers`): finds the link
between two handles, prepares a collection's statements for it once, and runs each batch
with the runner of the link's kind (`attached` or `piped_pg`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import msgspec

from archivist.data.catalog import Catalog
from archivist.data.handles import Handle
from archivist.data.listing import cursor_position, position_params
from archivist.data.params import CopyParams, CursorParam, parse_params
from archivist.data.relations import ForeignKey, guarded, with_kept
from archivist.data.schema import TableInfo
from archivist.data.transfer import ahead, attached, piped_pg, streamed
from archivist.data.transfer.ahead import Ahead, Held, Page
from archivist.data.transfer.attached import MOVES, Attached, transactional
from archivist.data.transfer.link import Link, TakenBack, compatible, find_link
from archivist.data.transfer.pages import Pages, pages_for
from archivist.data.transfer.piped_pg import Piped
from archivist.data.transfer.streamed import Streamed
from archivist.data.values import JSONObject, decode_values, decoder_for
from archivist.errors import InvalidParams, Unsupported

log = logging.getLogger(__name__)

Statements: TypeAlias = Attached | Piped | Streamed
"""A collection's statements on one link, of the link's kind."""


def statements_for(
    link: Link,
    source: TableInfo,
    dest: TableInfo,
    *,
    moves: bool = False,
    refs: tuple[ForeignKey, ...] = (),
) -> Statements:
    """The statements a collection's batches run on ``link``; their deletes keep every row
    still referenced through ``refs``."""
    if link.streamed:
        return streamed.statements(link, source, dest, refs)
    if link.dest_schema is None:
        return piped_pg.statements(link, source, refs)
    return attached.statements(link, source, moves=moves, refs=refs)


class Transfers:
    """``data/copy`` and the ``matching`` form of ``data/delete`` over one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._links: dict[tuple[str, str], Link | str] = {}
        self._statements: dict[tuple[str, str, str], Statements] = {}
        self._pages: dict[tuple[str, str, str, tuple[bool, ...]], tuple[Statements, Pages]] = {}
        """How `copy` reads a page, by the page's shape (`ListQuery.build` with ``bound``),
        with the statements it was made for: building it anew is a noticeable part of a
        batch's time in the daemon."""
        self._closing = False
        """Closed: a page read by a move still running starts no move ahead."""
        self._held: dict[tuple[str, str, str], list[Held]] = {}
        """The moves made ahead (`ahead`) of each collection's next requests, in page
        order, by the collection and its two handles."""

    def link(self, source: Handle, dest: Handle) -> Link:
        key = (source.name, dest.name)
        if key not in self._links:
            self._links[key] = find_link(source, dest)
            if isinstance(self._links[key], Link):
                log.info("rows are copied by the daemon from '%s' to '%s'", *key)
        found = self._links[key]
        if isinstance(found, str):
            raise Unsupported(
                f"unsupported: the daemon cannot copy rows from handle "
                f"'{source.name}' to '{dest.name}': {found}"
            )
        return found

    def describe(
        self, source: Handle, dest: Handle, info: TableInfo, copy: TableInfo | None
    ) -> str:
        """How a task's rows would move between these handles, for people (``--dry-run``);
        ``copy`` is the destination table, None while it is still to be created alike."""
        try:
            link = self.link(source, dest)
        except Unsupported:
            return f"through the worker ({self._links[(source.name, dest.name)]})"
        problem = (
            None
            if copy is None
            else compatible(info, copy, link.runner.engine.dialect, streamed=link.streamed)
        )
        if problem is not None:
            return f"through the worker (the archive table differs: {problem})"
        how = "inside the database" if link.dest_schema else "by binary COPY between the databases"
        if link.streamed:
            how = "streaming them from one connection to the other (bulk writes, digests)"
        return f"copied by the daemon {how}, each row deleted where its copy is identical"

    async def close(self) -> None:
        self._closing = True
        held, self._held = [one for queue in self._held.values() for one in queue], {}
        for one in held:
            await ahead.drop(one)
        for link in self._links.values():
            if isinstance(link, Link):
                await link.runner.close()
                if link.deleter is not link.runner:
                    await link.deleter.close()
        self._links.clear()
        self._statements.clear()
        self._pages.clear()

    async def _prepare(self, collection: str, source_name: str, dest_name: str) -> _Prepared:
        entity, source, info = await self.catalog.table(collection, source_name)
        refs = guarded(info.referenced_by, entity.on_children)
        if dest_name == source.name:
            raise InvalidParams("invalid params: the destination must be another handle")
        link = self.link(source, self.catalog.handle(dest_name))
        _, dest, dest_info = await self.catalog.table(collection, dest_name)
        key = (collection, source.name, dest.name)
        statements = self._statements.get(key)
        stale = isinstance(statements, Streamed) and statements.dest is not dest_info
        if statements is None or statements.source is not info or stale:
            problem = compatible(
                info, dest_info, link.runner.engine.dialect, streamed=link.streamed
            )
            if problem is not None:
                raise Unsupported(
                    f"unsupported: {collection} on handle '{dest.name}' cannot take the rows "
                    f"as stored: {problem}"
                )
            moves = False
            if link.dest_schema is not None and link.runner.dialect_name in MOVES:
                moves = await source.transaction(transactional, info.table.name, link.dest_schema)
                if not moves:
                    log.info(
                        "%s: a table has no transactions; each batch is copied, then deleted "
                        "where its copy is identical",
                        collection,
                    )
            statements = self._statements[key] = statements_for(
                link, info, dest_info, moves=moves, refs=refs
            )
        return _Prepared(entity.order_by, link, statements)

    # --- data/copy ------------------------------------------------------------------------

    async def copy(self, params: JSONObject) -> JSONObject:
        """Copy the source's next rows (``limit``, in the collection's archive order or
        ``orderBy``, after ``cursor``) to ``destHandle``, overwriting older copies by key;
        answer their keys as ``items``, and the ``cursor`` just past the last one."""
        p = parse_params(params, CopyParams)
        if p.fields is not None:
            raise InvalidParams("invalid params: data/copy takes no fields")
        prepared = await self._prepare(p.collection, p.db_handle, p.dest_handle)
        info = prepared.statements.source
        order = p.order_by[0].field if p.order_by else prepared.order_by
        info.codec.check_fields([order], what="field in orderBy")
        if p.order_by and p.order_by[0].direction != "asc":
            raise InvalidParams("invalid params: data/copy copies in ascending order only")
        if p.cursor is not None and (p.cursor.field != order or p.cursor.direction != "after"):
            raise InvalidParams("invalid params: the cursor must be after, on the orderBy field")
        names = list(dict.fromkeys([info.pk, order]))
        statements, link = prepared.statements, prepared.link
        pages = self._pages_of(p, info, order, prepared)
        moved: int | None = None
        if p.move and _moves(statements):
            going = _Going(p, params, info, names, order, prepared, pages)
            try:
                keys, last, moved = await self._move(going)
            except TakenBack as back:  # copied, not deleted: data/delete compares the rows
                keys, last, moved = back.keys, back.last, None
        elif isinstance(statements, Piped):
            keys, last = await link.runner.transaction(
                piped_pg.copy_rows, pages, link.dest.engine, statements
            )
        elif isinstance(statements, Streamed):
            keys, last = await link.runner.transaction(
                streamed.copy_rows, pages, link.dest.engine, statements
            )
        elif p.move and statements.take is not None and statements.remove is not None:
            keys, last, moved = await link.runner.transaction(
                attached.move_rows, pages, statements, write=True
            )
        else:
            # Not a write transaction for SQLite's sake: BEGIN IMMEDIATE would take the
            # write lock of every attached database, the source's too, for the whole copy;
            # the INSERT takes the destination's alone.
            keys, last = await link.runner.transaction(attached.copy_rows, pages, statements)
        # Only the keys, and where the next page starts: encoding every row's order value
        # (a timestamp, say) cost more than the rest of the command.
        items = info.codec.encode_column(info.pk, keys)
        result: JSONObject = {
            "items": items,
            "count": len(items),
            "copied": len(items),
            "collection": info.name,
            "primaryKey": info.pk,
            "orderBy": order,
        }
        if moved is not None:
            result["deleted"] = moved
        cursor = _cursor_after(info, names, order, last)
        if cursor is not None:
            result["cursor"] = cursor
        return result

    def _pages_of(self, p: CopyParams, info: TableInfo, order: str, prepared: _Prepared) -> Pages:
        """How to read the page ``p`` names (built once per shape of page)."""
        statements, link = prepared.statements, prepared.link
        position = [] if p.cursor is None else cursor_position(info, p.cursor)
        shape = (p.collection, link.runner.name, order, tuple(v is None for v in position))
        cached = self._pages.get(shape)
        if p.filter is not None:
            # A task's filter (its cutoff) is bound into the query: built for each page,
            # not kept, since every task has its own.
            cached = (statements, pages_for(info, p, prepared.order_by, link))
        elif cached is None or cached[0] is not statements:
            cached = self._pages[shape] = (statements, pages_for(info, p, prepared.order_by, link))
        return msgspec.structs.replace(cached[1], params=position_params(position, p.limit))

    async def _move(
        self, going: _Going
    ) -> tuple[list[object], Sequence[object] | None, int | None]:
        """Move the page ``going`` names: claim the move made ahead for it if there is one,
        else move it now; with ``ahead``, the pages after it are moved ahead meanwhile."""
        p, link = going.p, going.link
        slot = (p.collection, p.db_handle, p.dest_handle)
        queue = self._held.get(slot, [])
        if queue:
            held = queue.pop(0)
            claimed = held.decide(held.expected == ahead.signature(going.params))
            if claimed and p.ahead:
                self._extend(slot, going, queue[-1] if queue else held)
            done = await held.outcome() if claimed else None
            if done is not None:
                log.debug("%s: a page moved ahead was claimed", p.collection)
                return done
            # Not this page, or it failed: the moves after it were made ahead of a page
            # that did not move as foreseen, and none of them stands either.
            for other in [held, *self._held.pop(slot, [])]:
                await ahead.drop(other)
        told: tuple[Ahead, ...] = ()
        if p.ahead and link.runner.dialect_name in ahead.SOURCES:
            loop = asyncio.get_running_loop()

            def on_page(page: Page) -> None:
                loop.call_soon_threadsafe(self._start_ahead, slot, going, page)

            told = (Ahead(on_page=on_page),)
        moved: tuple[list[object], Sequence[object] | None, int | None]
        moved = await link.runner.transaction(
            _mover(going.statements),
            going.pages,
            link.dest.engine,
            going.statements,
            *told,
            write=True,
        )
        return moved

    def _extend(self, slot: tuple[str, str, str], going: _Going, tail: Held) -> None:
        """Move the page after ``tail`` (the last move held ahead) ahead, once its page is
        known."""
        if tail.page is not None:
            self._start_ahead(slot, going, tail.page)
        else:
            tail.follow = lambda page: self._start_ahead(slot, going, page)

    def _start_ahead(self, slot: tuple[str, str, str], going: _Going, page: Page) -> None:
        """Start moving the page after ``page`` (a full one) ahead of its request, unless
        as many moves as `ahead.depth` allows are held ahead for this collection already;
        each, once it has read its page, starts the next."""
        keys, last = page
        p, info = going.p, going.info
        if self._closing:
            return
        queue = self._held.setdefault(slot, [])
        if len(queue) >= ahead.depth(p.ahead, p.limit) or len(keys) < p.limit:
            return
        cursor = _cursor_after(info, going.names, going.order, last)
        if cursor is None:
            return
        after = msgspec.structs.replace(p, cursor=parse_params(cursor, CursorParam))
        pages = self._pages_of(after, info, going.order, going.prepared)
        held = Held(ahead.signature(going.params, cursor))
        loop = asyncio.get_running_loop()

        def paged(page: Page) -> None:
            held.page = page
            if held.follow is not None:
                held.follow(page)
            elif self._held.get(slot, [None])[-1] is held:
                self._start_ahead(slot, going, page)

        def on_page(page: Page) -> None:
            loop.call_soon_threadsafe(paged, page)

        link = going.link
        held.task = loop.create_task(
            link.runner.transaction(
                _mover(going.statements),
                pages,
                link.dest.engine,
                going.statements,
                Ahead(on_page=on_page, held=held),
                write=True,
            )
        )
        queue.append(held)

    # --- data/delete with matching ------------------------------------------------------

    async def delete_matching(
        self, collection: str, source_name: str, dest_name: str, raw_ids: Sequence[object]
    ) -> JSONObject:
        """Delete the rows of ``raw_ids`` whose identical copy is in ``dest_name``; the others
        stay and are answered as ``skipped`` (their keys, in the order given)."""
        prepared = await self._prepare(collection, source_name, dest_name)
        info = prepared.statements.source
        spec = info.spec(info.pk)
        keys = list(dict.fromkeys(decode_values(spec, raw_ids, where="ids.")))
        if any(key is None for key in keys):
            raise InvalidParams("invalid params: an id must not be null")
        runner, statements = prepared.link.runner, prepared.statements
        if isinstance(statements, Piped):
            # The driver answers keys as it reads them (a UUID as uuid.UUID): decoded like
            # the keys given, they compare equal.
            same = decoder_for(spec)
            digests = await prepared.link.dest.transaction(piped_pg.digests, statements, keys, same)
            deleted, left, referenced = await runner.transaction(
                piped_pg.delete_rows, statements, keys, digests, same, write=True
            )
        elif isinstance(statements, Streamed):
            theirs = await prepared.link.dest.transaction(
                streamed.dest_digest, statements, statements.dest_keys(keys)
            )
            deleted, left, referenced = await runner.transaction(
                streamed.delete_rows,
                statements,
                keys,
                theirs,
                prepared.link.dest.engine,
                write=True,
            )
        elif runner.dialect_name == "sqlite":
            deleter = prepared.link.deleter
            deleted, left, referenced = await deleter.run(
                attached.delete_sqlite, deleter.engine, statements, keys
            )
        else:
            deleted, left, referenced = await runner.transaction(
                attached.delete_rows, statements, keys, write=True
            )
        held = set(left) - set(referenced)
        skipped = [info.codec.encode_field(info.pk, key) for key in keys if key in held]
        answer: JSONObject = {"deleted": deleted, "skipped": skipped}
        return with_kept(answer, len(set(referenced) & set(left)), statements.refs)


def _cursor_after(
    info: TableInfo, names: list[str], order: str, last: Sequence[object] | None
) -> JSONObject | None:
    """The cursor just past a page whose last row is ``last`` (its key and order value, in
    ``names``' order); None past a NULL (the worker lists from the start)."""
    end = info.codec.encode_tuples(names, [last])[0] if last is not None else {}
    if end.get(order) is None:
        return None
    return {"field": order, "value": end[order], "id": end[info.pk], "direction": "after"}


def _mover(statements: Statements) -> Callable[..., Any]:
    """What moves a batch on these statements (`_moves`)."""
    return piped_pg.move_rows if isinstance(statements, Piped) else streamed.move_rows


def _moves(statements: Statements) -> bool:
    """Whether a copy on these statements can delete its rows in the same call (a move
    between two servers or engines, or two PostgreSQL databases: `move_rows`)."""
    if isinstance(statements, Piped):
        return bool(statements.take_out)
    return isinstance(statements, Streamed) and statements.take is not None


class _Going(msgspec.Struct, frozen=True):
    """A ``data/copy`` that moves its page: what moving it, or the page after it, takes."""

    p: CopyParams
    params: JSONObject
    info: TableInfo
    names: list[str]
    order: str
    prepared: _Prepared
    pages: Pages

    @property
    def link(self) -> Link:
        return self.prepared.link

    @property
    def statements(self) -> Statements:
        return self.prepared.statements


class _Prepared(msgspec.Struct, frozen=True):
    order_by: str
    link: Link
    statements: Statements
