"""``data/relay``: the daemon moves a few rows between any two handles itself, for rows too
wide to cross the worker's socket in any frame.

The same copy, verify, delete as the worker's, done where both connections are: the rows
are read from the source, written to the destination (``onConflict: "replace"``: the source
is authoritative), read back and compared item by item, and only then deleted from the
source where each still equals what was copied (``expected``). A crash at any instant leaves
every row in the source, the destination, or both; the copy is committed before the delete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec

from archivist.data.params import Name, parse_params
from archivist.data.values import JSONObject
from archivist.errors import DataError, VerifyMismatch

if TYPE_CHECKING:
    from archivist.data.commands import DataCommands

MAX_RELAY: Final = 100
"""Keys one call moves at most: each row is held in the daemon's memory whole."""


class RelayParams(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    collection: Name
    db_handle: Name
    dest_handle: Name
    ids: Annotated[list[Any], msgspec.Meta(min_length=1, max_length=MAX_RELAY)]


async def relay(commands: DataCommands, params: JSONObject) -> JSONObject:
    """Move the rows ``ids`` names from ``dbHandle`` to ``destHandle``; answers
    ``{"copied", "deleted", "skipped": [keys kept], "primaryKey"}``."""
    p = parse_params(params, RelayParams)
    _, _, info = await commands.catalog.table(p.collection, p.db_handle)
    by_keys: JSONObject = {"filter": {info.pk: {"$in": p.ids}}, "limit": len(p.ids)}
    source: JSONObject = {"collection": p.collection, "dbHandle": p.db_handle}
    dest: JSONObject = {"collection": p.collection, "dbHandle": p.dest_handle}
    items = _items(await commands.list({**source, **by_keys}))
    result: JSONObject = {"copied": 0, "deleted": 0, "skipped": [], "primaryKey": info.pk}
    if not items:
        return {**result, "skipped": p.ids}
    await commands.create({**dest, "items": items, "onConflict": "replace"})
    copies = {item.get(info.pk): item for item in _items(await commands.list({**dest, **by_keys}))}
    for item in items:
        key = item.get(info.pk)
        copy = copies.get(key)
        if copy is None or any(copy.get(name) != value for name, value in item.items()):
            raise VerifyMismatch(
                f"row {info.pk}={key!r} of {p.collection} did not read back identical from "
                f"{p.dest_handle} after its copy; nothing was deleted"
            )
    keys = [item.get(info.pk) for item in items]
    deleted = await commands.delete({**source, "ids": keys, "expected": items})
    gone = {item.get(info.pk) for item in items}
    skipped = [key for key in p.ids if key not in gone]
    skipped_now = deleted.get("skipped")
    if isinstance(skipped_now, list):
        skipped += skipped_now
    gone_now = deleted.get("deleted", 0)
    return {**result, "copied": len(items), "deleted": gone_now, "skipped": skipped}


def _items(result: JSONObject) -> list[JSONObject]:
    items = result.get("items")
    if not isinstance(items, list):
        raise DataError("data/list answered without items")
    return [item for item in items if isinstance(item, dict)]
