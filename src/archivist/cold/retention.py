"""``retention``: archived rows older than a policy's retention are deleted from its archive
for good, by the policy's age column (``age_field``, else ``order_by``).

The cutoff is computed once per run (now minus ``retention``, in the column's JSON form, as
a task's age cutoff is); the archive's kind deletes the rows (`ColdArchive.expire`). A run
holds the collection's mover lock, so it never races a restore of the same rows.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from archivist.cold.archives import Expired, archive_of
from archivist.data import DataDaemon
from archivist.errors import ConfigError
from archivist.policy import cutoff, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Expiry:
    """One policy's expiry run (or dry run)."""

    collection: str
    archive: str
    retention: str
    before: dt.datetime
    """Rows whose age column is before this instant (UTC) went."""
    expired: Expired
    dry_run: bool = False

    def line(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        detail = f" ({self.expired.detail})" if self.expired.detail else ""
        return (
            f"{self.collection}: {verb} {self.expired.rows:,} archived row(s) older than "
            f"{self.retention} (before {self.before.isoformat(timespec='seconds')}) from "
            f"{self.archive}{detail}"
        )


async def expire(
    data: DataDaemon,
    collection: str,
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Expiry:
    """Delete ``collection``'s archived rows older than its policy's retention (a dry run
    only counts them). ConfigError if the policy has no retention; MoverBusy if another
    archivist moves the collection now."""
    entity = data.entity(collection)
    rules = entity.rules
    if rules.retention is None:
        raise ConfigError(f"{entity.where('retention')}: {collection}'s policy has no retention")
    archive = archive_of(data, collection)
    column = rules.age_column(entity.order_by)
    before = cutoff(now or utc_now(), rules.retention)
    info = await archive.info()
    if info is None:
        expired = Expired(0, "no archive table yet")
        return Expiry(
            collection, entity.dest_handle, str(rules.retention), before, expired, dry_run
        )
    value = await archive.cutoff(column, rules.time_unit, before)
    filter_: dict[str, object] = {column: {"$lt": value}}
    lock = None if dry_run else await data.take_mover(collection)
    try:
        expired = await archive.expire(filter_, dry_run=dry_run, progress=progress)
    finally:
        if lock is not None:
            await lock.release()
    result = Expiry(collection, entity.dest_handle, str(rules.retention), before, expired, dry_run)
    if not dry_run and expired.rows:
        log.info("%s", result.line())
    return result
