"""What a policy asks of the ArchiveDaemon: the protocols it sees a policy and the DataDaemon
through, how many rows a check finds due (and the filter choosing them), and keep-up logging."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Protocol, runtime_checkable

import msgspec

from archivist.daemon.keepup import KeepUp
from archivist.daemon.movers import HeldLock
from archivist.errors import BadAnswer
from archivist.policy import Decision, Rules, decide, task_filter, with_condition
from archivist.protocol import Child, JSONObject
from archivist.sizing import Size

# Logged as the daemon, as before this module was split from it.
log = logging.getLogger("archivist.daemon.service")


class Policy(Protocol):
    """What the daemon needs to know of an archivable entity."""

    @property
    def collection(self) -> str: ...
    @property
    def order_by(self) -> str: ...
    @property
    def max_rows(self) -> int | None: ...
    @property
    def rows_per_archive(self) -> int | None: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def source_handle(self) -> str: ...
    @property
    def dest_handle(self) -> str: ...
    @property
    def min_rate(self) -> float | None: ...
    def rows_to_archive(self, count: int) -> int:
        """Rows to move from a source of ``count`` rows (0: within its limit)."""
        ...

    @property
    def rules(self) -> Rules: ...


class DataService(Protocol):
    """The DataDaemon as the ArchiveDaemon uses it."""

    async def execute(
        self, name: str, params: JSONObject, *, caller: str = "local"
    ) -> JSONObject: ...

    async def ensure_archive_table(self, collection: str) -> list[Child] | None:
        """Ensure the archive tables (the collection's and its named children's); answer
        the children's tree for the ``archive`` message (None or empty: none)."""
        ...

    async def take_mover(self, collection: str) -> HeldLock: ...
    async def task_filter(
        self, collection: str, now: dt.datetime | None = None
    ) -> dict[str, object] | None: ...


@runtime_checkable
class TaskAware(Protocol):
    """A data service that wants to know which task moves a collection now (an Iceberg
    archive names it in its commits' summaries)."""

    def task_started(self, collection: str, task_id: str) -> None: ...


async def due(
    data: DataService, policy: Policy, now: dt.datetime, size: Size | None = None
) -> tuple[Decision, dict[str, object] | None]:
    """What the policy asks for now: how many rows, and the filter that chooses them
    (its ``where``, and its age cutoff computed now, once, for the whole task).
    ``size``: the policy's size just measured (`measure`), if any.

    ``max_rows`` is answered by ``data/size``, which reads no row while the key range or
    the engine's statistics put the table well within it (and counts it exactly near or
    over it); an age policy counts only the rows older than its cutoff."""
    rules = policy.rules
    everything = task_filter(rules.where, None, None)
    by_age = None
    if rules.older_than is not None:
        by_age = await data.task_filter(policy.collection, now)
    if rules.mode == "copy":
        return await _due_copy(data, policy, by_age if by_age is not None else everything)
    aged = None
    if by_age is not None:
        aged = await count_rows(data, policy.collection, policy.source_handle, by_age)
    excess = 0
    if policy.max_rows is not None:
        if size is None:
            size = await measure(data, policy, everything)
        # An inexact size is one the statistics settled as within max_rows.
        if size.exact and size.rows is not None:
            excess = policy.rows_to_archive(size.rows)
    decision = decide(excess=excess, aged=aged)
    if decision.basis == "age":
        return msgspec.structs.replace(decision, source=aged), by_age
    if decision.basis == "count" and size is not None:
        decision = msgspec.structs.replace(decision, source=size.rows)
    return decision, everything


async def measure(
    data: DataService, policy: Policy, filter_: dict[str, object] | None = None
) -> Size:
    """The policy's rows (``filter_``: its ``where``), exact wherever they are over its
    ``max_rows`` (`archivist.data.size`; without max_rows, the cheap figures only)."""
    params: JSONObject = {"collection": policy.collection, "dbHandle": policy.source_handle}
    if filter_ is not None:
        params["filter"] = filter_
    if policy.max_rows is not None:
        params["maxRows"] = policy.max_rows
    result = await data.execute("data/size", params)
    return Size.from_wire(result, policy.collection)


async def _due_copy(
    data: DataService, policy: Policy, filter_: dict[str, object] | None
) -> tuple[Decision, dict[str, object] | None]:
    """A copy policy deletes nothing, so what it copied stays eligible: it copies the
    rows from the highest ``order_by`` value in the archive on (that value included,
    since rows sharing it may not all have been copied; copies are idempotent), and
    only once some row lies beyond it."""
    await data.ensure_archive_table(policy.collection)
    listed = await data.execute(
        "data/list",
        {
            "collection": policy.collection,
            "dbHandle": policy.dest_handle,
            "orderBy": [{"field": policy.order_by, "direction": "desc"}],
            "limit": 1,
        },
    )
    items = listed.get("items")
    last = items[0].get(policy.order_by) if isinstance(items, list) and items else None
    if last is None:
        rows = await count_rows(data, policy.collection, policy.source_handle, filter_)
        return Decision(rows, "copy" if rows else "none", source=rows), filter_
    beyond = with_condition(filter_, policy.order_by, "$gt", last)
    if not await count_rows(data, policy.collection, policy.source_handle, beyond):
        return Decision(0, "none"), filter_
    from_last = with_condition(filter_, policy.order_by, "$gte", last)
    rows = await count_rows(data, policy.collection, policy.source_handle, from_last)
    return Decision(rows, "copy", source=rows), from_last


async def count_rows(
    data: DataService,
    collection: str,
    handle: str,
    filter_: dict[str, object] | None = None,
    *,
    limit: int | None = None,
) -> int:
    """The rows ``filter_`` selects on ``handle``; with ``limit``, at most that many (and
    no more read)."""
    params: JSONObject = {"collection": collection, "dbHandle": handle}
    if filter_ is not None:
        params["filter"] = filter_
    if limit is not None:
        params["limit"] = limit
    result = await data.execute("data/count", params)
    count = result.get("count")
    if not isinstance(count, int) or isinstance(count, bool):
        raise BadAnswer(f"data/count of {collection} on {handle} answered without a count")
    return count


def keep_up(policy: Policy, state: KeepUp, count: int, moved: int, *, exact: bool = True) -> None:
    """Tell the collection's keep-up state what this check measured (and the rows its tasks
    moved since); log when it asks archivist to yield less, or relaxes. ``exact``: False
    when ``count`` is an estimate (a table the statistics settled as within its limit)."""
    before = state.rate
    state.observe(count, time.monotonic(), moved, exact=exact)
    after = state.rate
    if after == before:
        return
    growth = state.growth or 0.0
    if after is not None and (before is None or after > before):
        log.info(
            "%s: %d row(s) is over max_rows %d and grows %.0f rows/s; yielding less: "
            "at least %.0f rows/s",
            policy.collection,
            count,
            policy.max_rows,
            growth,
            after,
        )
    else:
        log.info(
            "%s: kept up (%d row(s), growing %.0f rows/s); relaxing to %s",
            policy.collection,
            count,
            growth,
            f"at least {after:.0f} rows/s" if after is not None else "full yielding",
        )
