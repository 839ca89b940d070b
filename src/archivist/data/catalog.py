"""Finds a collection's table on a handle: the registry check, the handle lookup, the reflection
cache (one reflection per handle and table, dropped after schema changes) and archive-table
upkeep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from archivist.data.handles import Handle
from archivist.data.registry import Entity, EntityRegistry, is_identifier
from archivist.data.schema import (
    TableInfo,
    apply_change,
    plan_archive_table,
    reflect_table,
    require_single_pk,
)
from archivist.errors import InvalidParams, SchemaError, UnknownCollection, UnknownHandle

log = logging.getLogger(__name__)


class Catalog:
    """Collections and handles as the data commands see them."""

    def __init__(self, registry: EntityRegistry, handles: Mapping[str, Handle]) -> None:
        self.registry = registry
        self.handles = handles
        self._tables: dict[tuple[str, str], TableInfo] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def handle(self, name: str) -> Handle:
        handle = self.handles.get(name)
        if handle is None:
            shown = name if is_identifier(name) else repr(name[:64])
            raise UnknownHandle(f"unknown handle {shown}; configured: {', '.join(self.handles)}")
        return handle

    def entity(self, collection: str) -> Entity:
        if not is_identifier(collection):
            raise InvalidParams(f"collection {collection[:64]!r} is not a SQL identifier")
        return self.registry.get(collection)

    async def reflect(self, handle: Handle, name: str, *, fresh: bool = False) -> TableInfo | None:
        """The table on ``handle`` (cached), or None if there is none."""
        key = (handle.name, name)
        if not fresh and key in self._tables:
            return self._tables[key]
        info = await handle.run(_reflect, handle, name)
        if info is None:
            self._tables.pop(key, None)
        else:
            self._tables[key] = info
        return info

    def invalidate(self, handle: str, name: str) -> None:
        self._tables.pop((handle, name), None)

    async def table(self, collection: str, handle_name: str) -> tuple[Entity, Handle, TableInfo]:
        """The entity, handle and table for a data command; every failure a typed error.

        On the entity's destination handle a missing archive table is created on first use."""
        entity = self.entity(collection)
        handle = self.handle(handle_name)
        info = await self.reflect(handle, entity.collection)
        if info is None and handle.name == entity.dest_handle:
            await self.ensure_archive_table(entity)
            info = await self.reflect(handle, entity.collection)
        if info is None:
            raise UnknownCollection(
                f"collection {collection} has no table on handle '{handle.name}'"
            )
        problem = require_single_pk(info)
        if problem:
            raise SchemaError(f"handle '{handle.name}': {problem}")
        return entity, handle, info

    async def ensure_archive_table(self, entity: Entity) -> None:
        """Create the archive table on the destination handle, or add the columns the source
        gained; an unsafe difference raises SchemaError and changes nothing."""
        key = (entity.dest_handle, entity.collection)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            source_handle = self.handle(entity.source_handle)
            dest_handle = self.handle(entity.dest_handle)
            source = await self.reflect(source_handle, entity.collection, fresh=True)
            if source is None:
                raise SchemaError(
                    f"collection {entity.collection}: no table on source handle "
                    f"'{source_handle.name}'"
                )
            problem = require_single_pk(source)
            if problem:
                raise SchemaError(f"handle '{source_handle.name}': {problem}")
            dest = await self.reflect(dest_handle, entity.collection, fresh=True)
            change = plan_archive_table(source, dest, entity.order_by)
            if change.empty:
                return
            try:
                await dest_handle.transaction(
                    apply_change, source, change, entity.order_by, write=True
                )
            finally:
                self.invalidate(dest_handle.name, entity.collection)


def _reflect(handle: Handle, name: str) -> TableInfo | None:
    with handle.engine.connect() as connection:
        return reflect_table(connection, name)
