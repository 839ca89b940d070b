"""Moves a batch's child rows (the ``archive`` message's ``children`` extension) before the
batch itself: for each named child table, the rows that reference the batch's keys are
listed, copied, read back and compared, their own children moved the same way, and only
then deleted, each only where it is still equal to its copy. The batch's parents are
deleted after, by the usual guarded delete, which keeps any parent a row still references
(one added meanwhile moves with the next run).

A crash at any instant leaves every child row in the source, the archive or both; a rerun
lists the batch again, overwrites the copies by key and deletes what is left.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from archivist.errors import ArchivistError, VerifyMismatch
from archivist.protocol import Child, JSONObject

log = logging.getLogger(__name__)

PAGE: Final = 1000
"""Child rows listed at a time, and parent keys named in one listing's filter."""

Execute = Callable[[str, JSONObject], Awaitable[JSONObject]]


class BadChildAnswer(ArchivistError):
    code = "bad_answer"


@dataclass
class ChildMover:
    """The children of one task, between its source and destination handles."""

    execute: Execute
    source_handle: str
    dest_handle: str
    task_id: str
    budget: int | None = None
    """Bytes of rows one listing may answer (``maxBytes``): a truncated listing goes on
    from its last row."""
    delete: bool = True
    """False in mode "copy": children are copied and verified, and stay like their parents."""
    moved: int = 0
    """Child rows deleted from the source (moved) so far."""
    left: int = 0
    """Child rows copied but left in the source (changed since listed, or referenced)."""

    async def move(self, children: Sequence[Child], keys: Sequence[object]) -> None:
        """Move every row of ``children`` that references one of ``keys``."""
        for child in children:
            for start in range(0, len(keys), PAGE):
                await self._move_child(child, list(keys[start : start + PAGE]))

    async def _move_child(self, child: Child, keys: list[object]) -> None:
        source: JSONObject = {"collection": child.collection, "dbHandle": self.source_handle}
        dest: JSONObject = {"collection": child.collection, "dbHandle": self.dest_handle}
        column = child.columns[0]
        cursor: JSONObject | None = None
        while True:
            params: JSONObject = {**source, "filter": {column: {"$in": keys}}, "limit": PAGE}
            if self.budget is not None:
                params["maxBytes"] = self.budget
            if cursor is not None:
                params["cursor"] = cursor
            listed = await self.execute("data/list", params)
            items = _items(listed)
            if not items:
                return
            pk = listed.get("primaryKey")
            if not isinstance(pk, str):
                raise BadChildAnswer("data/list answered without its primaryKey")
            ids = [_key(item, pk) for item in items]
            await self.execute("data/create", {**dest, "items": items, "onConflict": "replace"})
            copies = await self._read_copies(dest, pk, ids)
            _verify(items, copies, pk, child.collection, self.dest_handle)
            if child.children:
                await self.move(child.children, ids)
            if self.delete:
                await self._delete(child, source, ids, items)
            # A listing cut short by its byte budget (``truncated``) has more rows after it,
            # though fewer than PAGE: stopping there would leave children, and so parents.
            if len(items) < PAGE and listed.get("truncated") is not True:
                return
            cursor = {"field": pk, "value": ids[-1], "direction": "after"}

    async def _read_copies(self, dest: JSONObject, pk: str, ids: list[object]) -> list[JSONObject]:
        """The destination's rows under ``ids``, in as many listings as their bytes need."""
        copies: list[JSONObject] = []
        wanted = ids
        while wanted:
            params: JSONObject = {**dest, "filter": {pk: {"$in": wanted}}, "limit": len(wanted)}
            if self.budget is not None:
                params["maxBytes"] = self.budget
            answer = await self.execute("data/list", params)
            found = _items(answer)
            copies += found
            if answer.get("truncated") is not True or not found:
                break
            seen = {copy.get(pk) for copy in found}
            wanted = [key for key in wanted if key not in seen]
        return copies

    async def _delete(
        self, child: Child, source: JSONObject, ids: list[object], items: list[JSONObject]
    ) -> None:
        answer = await self.execute("data/delete", {**source, "ids": ids, "expected": items})
        deleted = answer.get("deleted")
        if not isinstance(deleted, int):
            raise BadChildAnswer("data/delete answered without an integer 'deleted'")
        self.moved += deleted
        if deleted < len(items):
            self.left += len(items) - deleted
            log.info(
                "task %s: %d row(s) of %s stay in %s (changed, or still referenced); "
                "their parents stay too",
                self.task_id,
                len(items) - deleted,
                child.collection,
                self.source_handle,
            )


def _items(answer: JSONObject) -> list[JSONObject]:
    items = answer.get("items")
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise BadChildAnswer("data/list answered without a list of items")
    return items


def _key(item: JSONObject, pk: str) -> object:
    key = item.get(pk)
    if key is None or isinstance(key, list | dict):
        raise BadChildAnswer(f"a child row's primary key {pk!r} is not a scalar: {key!r}")
    return key


def _verify(
    originals: Sequence[JSONObject],
    copies: Sequence[JSONObject],
    pk: str,
    collection: str,
    dest: str,
) -> None:
    by_key = {copy.get(pk): copy for copy in copies}
    for original in originals:
        copy = by_key.get(original[pk])
        if copy is None or any(copy.get(name) != value for name, value in original.items()):
            raise VerifyMismatch(
                f"{collection} row {pk}={original[pk]!r} is missing or differs in {dest} after "
                "copy; nothing was deleted"
            )
