"""An in-memory daemon for the executor: its `Callbacks` over plain Python tables.

`InMemoryDaemon` answers the data commands the worker's executor sends (``ping``,
``data/count``, ``data/list``, ``data/create``, ``data/delete``, ``data/copy``,
``data/relay``, ``data/load``) from dicts of rows keyed by primary key, one per (handle,
collection), and raises errors as the worker's connection would (a typed `RemoteError`
rebuilt from the wire code). Faults are injected per command: fail the Nth call with a code,
run a hook before a call (change a row between its copy and its delete), delay a call. It
lets the executor's copy-verify-delete loop run in process, in milliseconds, as
procrastinate's ``InMemoryConnector`` does for its worker. It is a fake of our own Protocol,
for unit tests: integration tests use the real daemon, real databases and real sockets.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, NoReturn

import msgspec

from archivist.errors import (
    ERRORS,
    ArchivistError,
    Conflict,
    InvalidParams,
    PeerError,
    RemoteError,
    UnstorableValue,
    Unsupported,
)
from archivist.protocol import JSONObject

Rows = dict[object, JSONObject]
"""One table: rows by primary key."""
Hook = Callable[[JSONObject], Awaitable[None] | None]
CopyMode = Literal["copy", "move", "unsupported"]


@dataclass
class Fault:
    """Fail calls of ``command`` (on ``handle``, if given): the ``nth`` matching call and the
    ``times - 1`` after it (``times=None``: every one from the ``nth`` on)."""

    command: str
    code: str
    nth: int = 1
    times: int | None = 1
    handle: str | None = None
    message: str = "injected fault"
    seen: int = 0
    raised: int = 0

    def hit(self, command: str, params: JSONObject) -> bool:
        if command != self.command or self.handle not in (None, params.get("dbHandle")):
            return False
        self.seen += 1
        if self.seen < self.nth or (self.times is not None and self.raised >= self.times):
            return False
        self.raised += 1
        return True


@dataclass
class InMemoryDaemon:
    """The executor's `Callbacks` over in-memory tables (see the module's docstring).

    ``copy`` says what ``data/copy`` does: copy inside the "database" (and leave the delete
    to ``data/delete`` with ``matching``), ``move`` (also delete, as on two MariaDB
    databases of one server), or answer ``unsupported`` (rows go through the worker).
    """

    primary_key: str = "id"
    order_by: str = "created_at"
    copy: CopyMode = "copy"
    load: JSONObject = field(default_factory=lambda: {"latencyMs": 0.1, "active": 0})
    tables: dict[tuple[str, str], Rows] = field(default_factory=dict)
    calls: list[tuple[str, JSONObject]] = field(default_factory=list)
    """Every call, in order, with its params."""
    progress_reports: list[tuple[int, int]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    hooks: dict[str, list[Hook]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    unstorable: frozenset[object] = frozenset()
    """Values (JSON form, ``"NaN"`` say) the destination of ``data/create`` cannot store: a
    row holding one is refused (`UnstorableValue`), or skipped and named with
    ``onUnstorable: "skip"``."""

    # --- setting up ----------------------------------------------------------------------

    def table(self, handle: str, collection: str) -> Rows:
        """The rows of ``collection`` on ``handle`` (created empty on first use)."""
        return self.tables.setdefault((handle, collection), {})

    def add_rows(self, handle: str, collection: str, rows: list[JSONObject]) -> None:
        table = self.table(handle, collection)
        for row in rows:
            table[row[self.primary_key]] = dict(row)

    def fail(
        self,
        command: str,
        code: str,
        *,
        nth: int = 1,
        times: int | None = 1,
        handle: str | None = None,
        message: str = "injected fault",
    ) -> Fault:
        """Fail calls of ``command`` with the error of wire ``code`` (see `Fault`)."""
        fault = Fault(command, code, nth, times, handle, message)
        self.faults.append(fault)
        return fault

    def before(self, command: str, hook: Hook) -> None:
        """Run ``hook(params)`` before each call of ``command`` is answered."""
        self.hooks.setdefault(command, []).append(hook)

    def delay(self, command: str, seconds: float) -> None:
        """Answer each call of ``command`` ``seconds`` late."""
        self.delays[command] = seconds

    def called(self, command: str) -> list[JSONObject]:
        """The params of every call of ``command`` so far."""
        return [params for name, params in self.calls if name == command]

    # --- Callbacks -----------------------------------------------------------------------

    async def progress(self, archived: int, total: int) -> None:
        self.progress_reports.append((archived, total))

    async def execute(self, target: str, params: JSONObject) -> JSONObject:
        self.calls.append((target, params))
        # A real answer comes back later: let the other coroutines run meanwhile.
        await asyncio.sleep(self.delays.get(target, 0))
        for hook in self.hooks.get(target, []):
            done = hook(params)
            if inspect.isawaitable(done):
                await done
        for fault in self.faults:
            if fault.hit(target, params):
                _raise(fault.code, f"{target} on {params.get('dbHandle')}: {fault.message}")
        handler = self._commands().get(target)
        if handler is None:
            _raise("unknown_command", f"unknown command {target!r}")
        try:
            return handler(params)
        except ArchivistError as exc:  # as the daemon answers it, and the worker reads it
            raise RemoteError.rebuild(exc.message, exc.code) from None

    def _commands(self) -> dict[str, Callable[[JSONObject], JSONObject]]:
        return {
            "ping": lambda _: {"message": "pong"},
            "data/count": lambda p: {"count": len(self._rows(p))},
            "data/list": self._list,
            "data/create": self._create,
            "data/delete": self._delete,
            "data/copy": self._copy,
            "data/relay": self._relay,
            "data/load": lambda _: dict(self.load),
        }

    # --- the commands --------------------------------------------------------------------

    def _rows(self, params: JSONObject, handle_param: str = "dbHandle") -> Rows:
        handle, collection = params[handle_param], params["collection"]
        assert isinstance(handle, str) and isinstance(collection, str)
        return self.table(handle, collection)

    def _page(self, params: JSONObject) -> tuple[list[JSONObject], str]:
        """The rows ``params`` list (order, cursor, filter, limit), copied, and their order."""
        order = self.order_by
        order_by = params.get("orderBy")
        if isinstance(order_by, list) and order_by:
            first = order_by[0]
            assert isinstance(first, dict) and first.get("direction", "asc") == "asc"
            order = str(first["field"])
        pk = self.primary_key
        rows = sorted(self._rows(params).values(), key=lambda r: _sort_key(r, order, pk))
        cursor = params.get("cursor")
        if isinstance(cursor, dict):
            assert cursor.get("field") == order and cursor.get("direction", "after") == "after"
            position = (cursor["value"], cursor.get("id"))
            rows = [r for r in rows if _after(r, order, pk, position)]
        filter_ = params.get("filter")
        if isinstance(filter_, dict):
            rows = [r for r in rows if _matches(r, filter_)]
        limit = params.get("limit", 1000)
        assert isinstance(limit, int)
        return [dict(r) for r in rows[:limit]], order

    def _list(self, params: JSONObject) -> JSONObject:
        items, order = self._page(params)
        result: JSONObject = {"items": items, "primaryKey": self.primary_key, "orderBy": order}
        max_bytes = params.get("maxBytes")
        if isinstance(max_bytes, int):
            # As the daemon bounds it (archivist.data.budget): the rows that fit, and why not
            # the rest; the widths are those of the rows' compact JSON.
            kept, size = 0, 2
            for item in items:
                one = len(msgspec.json.encode(item)) + (1 if kept else 0)
                if size + one > max_bytes:
                    break
                kept, size = kept + 1, size + one
            result["items"], result["bytes"] = items[:kept], size if kept else 2
            if kept < len(items):
                result["truncated"] = True
                if not kept:
                    first = items[0]
                    result["oversized"] = {
                        "id": first[self.primary_key],
                        "bytes": len(msgspec.json.encode(first)),
                    }
        return result

    def _relay(self, params: JSONObject) -> JSONObject:
        source, dest, ids = self._rows(params), self._rows(params, "destHandle"), params["ids"]
        assert isinstance(ids, list)
        moved = [key for key in ids if key in source]
        for key in moved:
            dest[key] = dict(source.pop(key))
        skipped = [key for key in ids if key not in moved]
        return {"copied": len(moved), "deleted": len(moved), "skipped": skipped}

    def _create(self, params: JSONObject) -> JSONObject:
        rows, items = self._rows(params), params["items"]
        assert isinstance(items, list)
        refused = [
            {"key": item[self.primary_key], "field": name, "value": value, "error": "unstorable"}
            for item in items
            for name, value in item.items()
            if isinstance(value, str | float) and value in self.unstorable
        ]
        if refused and params.get("onUnstorable", "error") != "skip":
            raise UnstorableValue(f"row {refused[0]['key']!r} holds {refused[0]['value']}")
        skipped = {entry["key"] for entry in refused}
        items = [item for item in items if item[self.primary_key] not in skipped]
        replace = params.get("onConflict", "error") == "replace"
        for item in items:
            key = item[self.primary_key]
            if not replace and key in rows and rows[key] != item:
                raise Conflict(f"a different row with key {key!r} exists")
        for item in items:
            rows[item[self.primary_key]] = dict(item)
        if refused:
            return {"created": len(items), "unstorable": list(refused)}
        return {"created": len(items)}

    def _delete(self, params: JSONObject) -> JSONObject:
        rows, ids = self._rows(params), params["ids"]
        assert isinstance(ids, list)
        expected = params.get("expected")
        if isinstance(expected, list):
            wanted = {item[self.primary_key]: item for item in expected}
        else:
            matching = params.get("matching")
            assert isinstance(matching, str), "data/delete needs expected or matching"
            wanted = self._rows({**params, "dbHandle": matching})
        deleted, skipped = 0, []
        for key in ids:
            if key in rows and key in wanted and rows[key] == wanted[key]:
                del rows[key]
                deleted += 1
            else:
                skipped.append(key)
        return {"deleted": deleted, "skipped": skipped}

    def _copy(self, params: JSONObject) -> JSONObject:
        if self.copy == "unsupported":
            raise Unsupported("no one connection reaches both handles")
        items, order = self._page(params)
        dest = self._rows(params, "destHandle")
        for item in items:
            dest[item[self.primary_key]] = dict(item)
        pk = self.primary_key
        result: JSONObject = {
            "items": [{pk: item[pk]} for item in items],
            "count": len(items),
            "copied": len(items),
            "collection": params["collection"],
            "primaryKey": pk,
            "orderBy": order,
        }
        if items and items[-1].get(order) is not None:
            last = items[-1]
            result["cursor"] = {
                "field": order,
                "value": last[order],
                "id": last[pk],
                "direction": "after",
            }
        if self.copy == "move" and params.get("move"):
            source = self._rows(params)
            for item in items:
                del source[item[pk]]
            result["deleted"] = len(items)
        return result


def _raise(code: str, message: str) -> NoReturn:
    """Raise what the worker's connection raises for an answer with ``code``: the transport's
    own errors (``timeout``, ``connection_closed``) as they are, the peer's rebuilt."""
    typed = ERRORS.get(code)
    if typed is not None and issubclass(typed, PeerError) and typed is not PeerError:
        raise typed(message)
    raise RemoteError.rebuild(message, code)


def _sort_key(row: JSONObject, order: str, pk: str) -> tuple[bool, object, object]:
    """NULLs first, then by the order value, then the key: the daemon's listing order."""
    value = row.get(order)
    return (value is not None, value if value is not None else 0, row[pk])


def _after(row: JSONObject, order: str, pk: str, position: tuple[object, object]) -> bool:
    value, key = position
    here = _sort_key(row, order, pk)
    if key is None:  # rows equal to the cursor's value are skipped
        return here[:2] > (True, value)
    return here > (True, value, key)


def _matches(row: JSONObject, filter_: JSONObject) -> bool:
    for name, condition in filter_.items():
        if not (isinstance(condition, dict) and len(condition) == 1):
            raise InvalidParams(f"only $in and $nin are served in memory, not {condition!r}")
        ((op, values),) = condition.items()
        if op not in ("$in", "$nin") or not isinstance(values, list):
            raise InvalidParams(f"only $in and $nin are served in memory, not {condition!r}")
        if (row.get(name) in values) != (op == "$in"):
            return False
    return True
