"""The DataDaemon's database side: named handles, archivable entities, the data commands of
PROTOCOL.md on a command bus, and archive-table schema management.
"""

from __future__ import annotations

from archivist.data.bus import WORKER_ALLOWLIST, CommandBus
from archivist.data.columns import UTC_COMMENT, ColumnSpec, Kind, UTCDateTime
from archivist.data.handles import Handle
from archivist.data.registry import ArchivePolicy, Entity, EntityRegistry, archive
from archivist.data.service import ArchivePlan, DataDaemon

__all__ = [
    "UTC_COMMENT",
    "WORKER_ALLOWLIST",
    "ArchivePlan",
    "ArchivePolicy",
    "ColumnSpec",
    "CommandBus",
    "DataDaemon",
    "Entity",
    "EntityRegistry",
    "Handle",
    "Kind",
    "UTCDateTime",
    "archive",
]
