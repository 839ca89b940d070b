"""``archivist restore``: archived rows back into their source table, with archiving's
discipline in reverse: copy into the source, read the copies back and compare them with
the archived rows, and only then remove those rows from the archive.

A batch's rows are sorted first (`sort_batch`): rows the source lacks are inserted; rows it
holds identically (a rerun after a crash) need no write; rows it holds with other content
are conflicts, reported by key and left in the archive, unless ``replace`` overwrites them.
The collection's mover lock is held throughout, so the daemon never archives the table
while rows come back into it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from archivist.cold.archives import ColdArchive, archive_of
from archivist.data import DataDaemon
from archivist.data.columns import ColumnSpec, Kind
from archivist.data.create import differs
from archivist.data.locks import MoverLock
from archivist.data.values import JSONObject
from archivist.errors import ArchivistError, BadAnswer, InvalidParams, MoverLost, SchemaError
from archivist.policy import utc_now

log = logging.getLogger(__name__)

DEFAULT_BATCH: Final = 1000
MAX_SHOWN: Final = 20
"""Conflicting keys a report names; the rest are counted."""


# --- pure parts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One page of archived rows, sorted by what the source holds of them."""

    new: list[JSONObject] = field(default_factory=list)
    """Not in the source: to insert."""
    same: list[JSONObject] = field(default_factory=list)
    """In the source with the same content (restored before): nothing to write."""
    differing: list[JSONObject] = field(default_factory=list)
    """In the source with other content: conflicts, or to overwrite with ``replace``."""


def sort_batch(
    archived: Sequence[JSONObject], current: Mapping[object, JSONObject], pk: str
) -> Batch:
    """Sort ``archived`` rows by what the source holds under their key (``current``, by the
    key's JSON form). Rows compare on the archived row's columns: a column the source has
    and the archive lacks (added since) is not compared."""
    batch = Batch()
    for item in archived:
        present = current.get(_key(item[pk]))
        if present is None:
            batch.new.append(item)
        elif differs(item, present):
            batch.differing.append(item)
        else:
            batch.same.append(item)
    return batch


def _key(value: object) -> object:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def bound_value(spec: ColumnSpec, text: str) -> object:
    """A ``--since``/``--until`` bound in the order column's JSON form: a number for a
    number column, and for a timestamp column a date or a time without offset taken as
    UTC (``2024-01-01`` is its midnight)."""
    if spec.kind in (Kind.INTEGER, Kind.FLOAT):
        try:
            return int(text) if spec.kind is Kind.INTEGER else float(text)
        except ValueError:
            raise InvalidParams(f"{spec.name} holds numbers; {text!r} is not one") from None
    if spec.kind is Kind.DATETIME:
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidParams(
                f"{spec.name} holds timestamps; {text!r} is not one (write 2024-01-31 or "
                "2024-01-31T12:00:00, in UTC unless it names its offset)"
            ) from None
        if spec.timezone:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            return moment.astimezone(dt.UTC).isoformat()
        if moment.tzinfo is not None:
            moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
        return moment.isoformat()
    return text


def restore_filter(
    where: Mapping[str, object] | None,
    order_by: str,
    since: object | None,
    until: object | None,
) -> dict[str, object] | None:
    """The archived rows to restore: ``where`` (the ``data/list`` filter syntax) and the
    order column from ``since`` (inclusive) until ``until`` (exclusive)."""
    chosen: dict[str, object] = dict(where or {})
    bounds: dict[str, object] = {}
    if since is not None:
        bounds["$gte"] = since
    if until is not None:
        bounds["$lt"] = until
    if bounds:
        if order_by in chosen:
            raise InvalidParams(
                f"--where names {order_by} too; give its bounds in --where or with "
                "--since/--until, not both"
            )
        chosen[order_by] = bounds
    return chosen or None


@dataclass
class Restored:
    """What a restore did (or, in a dry run, would do)."""

    collection: str
    source: str
    archive: str
    to_restore: int = 0
    """Archived rows the filter matched when it began."""
    restored: int = 0
    """Rows written into the source, verified, and removed from the archive."""
    present: int = 0
    """Rows the source held already, identical: removed from the archive."""
    replaced: int = 0
    """Rows the source held with other content, overwritten (``replace``)."""
    conflicts: list[object] = field(default_factory=list)
    """Keys of rows the source holds with other content, left in the archive."""
    left: list[object] = field(default_factory=list)
    """Keys of rows left in the archive for another reason: the copy in the source did not
    read back equal, or the archived row changed or went meanwhile."""
    batches: int = 0
    requeued: int = 0
    """Restored rows older than the policy's ``older_than``: the next check archives them
    again unless the policy is paused or changed."""
    dry_run: bool = False

    @property
    def moved(self) -> int:
        return self.restored + self.present + self.replaced

    def lines(self) -> list[str]:
        """The report, for people."""
        verb = "would restore" if self.dry_run else "restored"
        out = [
            f"{self.collection}: {verb} {self.moved:,} of {self.to_restore:,} archived row(s) "
            f"from {self.archive} into {self.source}"
            + (
                f" ({self.present:,} already there, identical; {self.replaced:,} replaced)"
                if self.present or self.replaced
                else ""
            )
        ]
        if self.conflicts:
            shown = ", ".join(str(key) for key in self.conflicts[:MAX_SHOWN])
            more = len(self.conflicts) - MAX_SHOWN
            out.append(
                f"{len(self.conflicts):,} conflict(s): the source holds other content under "
                f"key(s) {shown}{f' and {more:,} more' if more > 0 else ''}; "
                + (
                    "--replace would overwrite them"
                    if self.dry_run
                    else "left in the archive (--replace overwrites them)"
                )
            )
        if self.left:
            shown = ", ".join(str(key) for key in self.left[:MAX_SHOWN])
            out.append(
                f"{len(self.left):,} row(s) left in the archive: they changed in the source "
                f"or the archive while being restored (key(s) {shown}); run it again"
            )
        if self.requeued:
            out.append(
                f"warning: {self.requeued:,} restored row(s) are older than the policy's "
                "older_than: the next check archives them again unless you pause the policy "
                "or change it"
            )
        if self.dry_run:
            out.append("dry run: nothing was restored")
        return out


# --- the I/O loop -----------------------------------------------------------------------------


class Restore:
    """Restores one collection's archived rows that a filter matches."""

    def __init__(
        self,
        data: DataDaemon,
        collection: str,
        filter_: dict[str, object] | None,
        *,
        batch_size: int = DEFAULT_BATCH,
        replace: bool = False,
        dry_run: bool = False,
        progress: Callable[[Restored], None] | None = None,
    ) -> None:
        self.data = data
        self.entity = data.entity(collection)
        self.archive: ColdArchive = archive_of(data, collection)
        self.filter = filter_
        self.batch_size = batch_size
        self.replace = replace
        self.dry_run = dry_run
        self.progress = progress
        self.report = Restored(
            collection=collection,
            source=self.entity.source_handle,
            archive=self.entity.dest_handle,
            dry_run=dry_run,
        )

    async def run(self) -> Restored:
        """Take the collection's mover lock (MoverBusy when another archivist moves it),
        then restore batch by batch; a dry run only reads."""
        lock = None if self.dry_run else await self.data.take_mover(self.entity.collection)
        try:
            await self._restore(lock)
        finally:
            if lock is not None:
                await lock.release()
        return self.report

    async def _restore(self, lock: MoverLock | None) -> None:
        entity, report = self.entity, self.report
        collection = entity.collection
        archived = await self.archive.info()
        if archived is None:
            raise SchemaError(
                f"{collection} has no archive table on handle '{entity.dest_handle}'; "
                "nothing to restore"
            )
        source = await self.data.table_info(collection, entity.source_handle)
        if source is None:
            raise SchemaError(f"{collection}: no table on source handle '{entity.source_handle}'")
        missing = [name for name in archived.column_names if name not in source.column_names]
        if missing:
            raise SchemaError(
                f"{collection}: archived rows hold column(s) {', '.join(missing)} that the "
                f"source table on '{entity.source_handle}' lacks; add them back to restore"
            )
        pk, order_by = archived.pk, entity.order_by
        report.to_restore = await self.archive.count(self.filter)
        log.info("%s: %d archived row(s) to restore", collection, report.to_restore)
        requeue = await self._requeue_filter()
        cursor: JSONObject | None = None
        while True:
            if lock is not None and not await lock.alive():
                raise MoverLost(f"{collection}: the mover lock was lost; run it again")
            params: JSONObject = {
                "filter": self.filter,
                "orderBy": [{"field": order_by, "direction": "asc"}],
                "limit": self.batch_size,
            }
            if cursor is not None:
                params["cursor"] = cursor
            page = await self.archive.rows(params)
            if not page:
                break
            last = page[-1]
            cursor = {"field": order_by, "value": last[order_by], "id": last[pk]}
            await self._batch(page, pk, requeue)
            report.batches += 1
            if self.progress is not None:
                self.progress(report)
            if len(page) < self.batch_size:
                break

    async def _batch(
        self, page: list[JSONObject], pk: str, requeue: dict[str, object] | None
    ) -> None:
        report = self.report
        keys = [item[pk] for item in page]
        batch = sort_batch(page, await self._current(keys, pk), pk)
        report.conflicts.extend(item[pk] for item in batch.differing if not self.replace)
        if self.dry_run:
            report.restored += len(batch.new)
            report.present += len(batch.same)
            report.replaced += len(batch.differing) if self.replace else 0
            return
        if batch.new:
            await self._create(batch.new, replace=False)
        overwritten = batch.differing if self.replace else []
        if overwritten:
            await self._create(overwritten, replace=True)
        # Verify: every row that is to leave the archive must read back equal from the source.
        leaving = [*batch.new, *batch.same, *overwritten]
        current = await self._current([item[pk] for item in leaving], pk)
        verified = [item for item in leaving if _equal(item, current.get(_key(item[pk])))]
        failed = [item[pk] for item in leaving if not _equal(item, current.get(_key(item[pk])))]
        deleted, skipped = await self.archive.remove(verified)
        report.left.extend(failed)
        report.left.extend(skipped)
        stayed = {_key(key) for key in [*failed, *skipped]}

        def done(items: list[JSONObject]) -> int:
            return sum(1 for item in items if _key(item[pk]) not in stayed)

        report.restored += done(batch.new)
        report.present += done(batch.same)
        report.replaced += done(overwritten)
        if requeue is not None and verified:
            report.requeued += await self._count_requeued(requeue, [i[pk] for i in verified], pk)
        log.info(
            "%s: batch of %d: %d restored, %d already present, %d replaced, %d conflict(s), "
            "%d removed from the archive",
            report.collection,
            len(page),
            len(batch.new),
            len(batch.same),
            len(overwritten),
            0 if self.replace else len(batch.differing),
            deleted,
        )

    async def _current(self, keys: list[object], pk: str) -> dict[object, JSONObject]:
        """The source's rows under ``keys``, by key."""
        if not keys:
            return {}
        answer = await self.data.execute(
            "data/list",
            {
                "collection": self.entity.collection,
                "dbHandle": self.entity.source_handle,
                "filter": {pk: {"$in": keys}},
                "limit": len(keys),
            },
        )
        items = answer.get("items")
        if not isinstance(items, list):
            raise BadAnswer(f"data/list of {self.entity.collection} answered without items")
        return {_key(item[pk]): item for item in items}

    async def _create(self, items: list[JSONObject], *, replace: bool) -> None:
        await self.data.execute(
            "data/create",
            {
                "collection": self.entity.collection,
                "dbHandle": self.entity.source_handle,
                "items": items,
                "onConflict": "replace" if replace else "error",
            },
        )

    async def _requeue_filter(self) -> dict[str, object] | None:
        """The filter of the source rows the policy's age rule would archive now (None:
        no age rule)."""
        rules = self.entity.rules
        if rules.older_than is None or rules.mode == "copy":
            return None
        try:
            return await self.data.task_filter(self.entity.collection, utc_now())
        except ArchivistError as exc:
            log.debug("cannot tell whether restored rows are due again: %s", exc.message)
            return None

    async def _count_requeued(self, requeue: dict[str, object], keys: list[object], pk: str) -> int:
        filter_ = {**requeue, pk: {"$in": keys}} if pk not in requeue else None
        if filter_ is None:
            return 0
        return await self.data.count(self.entity.collection, self.entity.source_handle, filter_)


def _equal(item: JSONObject, current: JSONObject | None) -> bool:
    return current is not None and not differs(item, current)


__all__ = [
    "Batch",
    "Restore",
    "Restored",
    "bound_value",
    "restore_filter",
    "sort_batch",
]
