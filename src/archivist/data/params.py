"""The params of the data commands (PROTOCOL.md and its extensions) as typed structs, and
`parse_params`, which validates a command's params into one with errors naming the path.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from archivist.errors import InvalidParams

DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 100_000
MAX_ITEMS: Final = 100_000

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class _Params(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    collection: Name
    db_handle: Name


class OrderByParam(msgspec.Struct, forbid_unknown_fields=True):
    field: Name
    direction: Literal["asc", "desc"] = "asc"


class CursorParam(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    field: Name
    value: Any
    direction: Literal["after", "before"] = "after"
    # Extension: the primary key of the row at the cursor, so rows sharing ``value`` are not
    # skipped (a tuple cursor). The field name ``id`` is used whatever the key column is called.
    id: Any = msgspec.UNSET


class ListParams(_Params):
    filter: dict[str, Any] | None = None
    order_by: list[OrderByParam] | None = None
    limit: Annotated[int, msgspec.Meta(ge=0, le=MAX_LIMIT)] = DEFAULT_LIMIT
    cursor: CursorParam | None = None
    fields: list[Name] | None = None
    # Extension: the most bytes of rows (their JSON) the answer may hold (`data.budget`).
    max_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = None


class LoadParams(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    db_handle: Name


class CountParams(_Params):
    filter: dict[str, Any] | None = None
    # Extension: count at most this many rows (reading no more), for a caller that needs
    # ``min(limit, count)``: a task's start, whose rows are bounded, not the table's.
    limit: Annotated[int, msgspec.Meta(ge=0)] | None = None


class SizeParams(_Params):
    """``data/size`` (daemon-internal, `archivist.data.size`): the size of the rows
    ``filter`` selects, exact wherever it is over ``maxRows`` (None: the cheap figures)."""

    filter: dict[str, Any] | None = None
    max_rows: Annotated[int, msgspec.Meta(ge=0)] | None = None


class CreateParams(_Params):
    data: dict[str, Any] | None = None
    # Items are checked one by one when decoded (a typed list would copy every item).
    items: Annotated[list[Any], msgspec.Meta(max_length=MAX_ITEMS)] | None = None
    on_conflict: Literal["error", "replace"] = "error"
    # Extension: "skip" writes the other items and names the unstorable ones in the answer.
    on_unstorable: Literal["error", "skip"] = "error"


class DeleteParams(_Params):
    id: Any = msgspec.UNSET
    ids: Annotated[list[Any], msgspec.Meta(max_length=MAX_ITEMS)] | None = None
    expected: Annotated[list[Any], msgspec.Meta(max_length=MAX_ITEMS)] | None = None
    # Extension: delete only rows with an identical copy on this handle (`Transfers`).
    matching: Name | None = None


class CopyParams(ListParams, kw_only=True):
    """``data/copy``: ``data/list``'s paging params (one ascending ``orderBy``, a cursor
    ``after``, a ``filter``; no ``fields``), and the handle to copy to."""

    dest_handle: Name
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT
    order_by: Annotated[list[OrderByParam], msgspec.Meta(max_length=1)] | None = None
    move: bool = False
    """Also delete the copied rows from the source, in the copy's transaction, where the
    daemon can (`archivist.data.transfer.attached.MOVES`); the answer then says how many
    went (``deleted``)."""
    ahead: bool | Annotated[int, msgspec.Meta(ge=0)] = False
    """With ``move``: the caller asks for the page after this one (these parameters, the
    cursor answered) as soon as it has the answer, so the daemon may move that page
    meanwhile and hold it uncommitted until asked for (`archivist.data.transfer.ahead`).
    An integer: how many rows the caller will still ask for after this page, the most the
    daemon moves ahead (in whole pages of ``limit``); ``true``: as many as it likes."""


P = TypeVar("P", bound=msgspec.Struct)


def parse_params(params: object, type_: type[P]) -> P:
    """Validate ``params`` into ``type_``; errors are InvalidParams naming the path."""
    try:
        return msgspec.convert(params, type_, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid params: {exc}") from None
