"""Sends a data command to the Iceberg handles' commands when it names one (`LakeRouter`),
else to the database commands. Imports pyiceberg and pyarrow only when a configuration has
an Iceberg handle, so a daemon without one starts as fast as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import msgspec

from archivist.config import Config
from archivist.data.catalog import Catalog
from archivist.data.registry import Entity
from archivist.data.values import JSONObject
from archivist.errors import ConfigError, InvalidParams

if TYPE_CHECKING:
    from archivist.data.iceberg.commands import ColdSettings, LakeCommands

Command = Callable[[JSONObject], Awaitable[JSONObject]]


class LakeRouter:
    """The Iceberg handles of one daemon, and the routing of commands to them."""

    def __init__(self, catalog: Catalog, config: Config, urls: Mapping[str, str]) -> None:
        self.names = frozenset(urls)
        self.commands: LakeCommands | None = None
        if not urls:
            return
        from archivist.data.iceberg.commands import ColdSettings, LakeCommands
        from archivist.data.iceberg.lake import Lake

        lakes = {}
        for name, url in urls.items():
            try:
                lakes[name] = Lake(name, url)
            except ConfigError as exc:
                raise ConfigError(config.where(f"handles.{name}: {exc.message}")) from None
        default = ColdSettings()
        settings = {
            entry.collection: ColdSettings(
                partition=entry.partition or default.partition,
                rows_per_file=entry.rows_per_file or default.rows_per_file,
            )
            for entry in config.archive
        }
        self.commands = LakeCommands(catalog, lakes, settings)

    def is_lake(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names

    @property
    def lake_commands(self) -> LakeCommands:
        assert self.commands is not None
        return self.commands

    def route(
        self, sql: Command, method: str, *, key: str = "dbHandle", matching: bool = False
    ) -> Command:
        """``sql``, or, where the command names an Iceberg handle by ``key`` (or, for
        ``data/delete``, by ``matching``), the Iceberg command ``method``."""
        if not self.names:
            return sql

        async def routed(params: JSONObject) -> JSONObject:
            if method in ("count", "size") and not self.is_lake(params.get(key)):
                await self._settle_before_count(params)
            if method == "size":
                return await sql(params)
            if self.is_lake(params.get(key)):
                result: JSONObject = await getattr(self.lake_commands, method)(params)
                return result
            if matching and self.is_lake(params.get("matching")):
                return await self._delete_matching(params)
            return await sql(params)

        return routed

    async def _settle_before_count(self, params: JSONObject) -> None:
        """Before a source table is counted, its rows staged for an Iceberg archive are
        committed and deleted: else a policy check, or the next task, would count rows
        already on their way, and move others in their place."""
        collection = params.get("collection")
        registry = self.lake_commands.catalog.registry
        if not isinstance(collection, str) or collection not in registry:
            return
        entity = registry.get(collection)
        if self.is_lake(entity.dest_handle) and params.get("dbHandle") == entity.source_handle:
            await self.lake_commands.settle(collection)

    async def _delete_matching(self, params: JSONObject) -> JSONObject:
        raw_ids = params.get("ids")
        if isinstance(raw_ids, msgspec.Raw):
            raw_ids = msgspec.json.decode(raw_ids)
        if not isinstance(raw_ids, list) or "expected" in params or "id" in params:
            raise InvalidParams("invalid params: matching needs ids, and neither id nor expected")
        return await self.lake_commands.delete_matching(
            str(params.get("collection")),
            str(params.get("dbHandle")),
            str(params.get("matching")),
            raw_ids,
        )

    # --- what the data daemon asks ------------------------------------------------------------

    async def ensure(self, entity: Entity) -> str:
        return await self.lake_commands.ensure(entity)

    async def reach(self, name: str) -> None:
        """Open the catalog of Iceberg handle ``name`` (DatabaseError if it cannot be)."""
        lake = self.lake_commands.lake(name)
        await lake.run(lambda: lake.catalog)

    async def plan(self, entity: Entity) -> str:
        return await self.lake_commands.plan(entity)

    def settings_of(self, collection: str) -> ColdSettings:
        return self.lake_commands.settings_of(collection)

    def started(self, collection: str, task_id: str) -> None:
        """The task now moving ``collection`` (its commits' summaries name it)."""
        if self.commands is not None:
            self.commands.task_of[collection] = task_id

    async def settle(self, collection: str | None = None) -> None:
        if self.commands is not None:
            await self.commands.settle(collection)

    async def close(self) -> None:
        if self.commands is None:
            return
        await self.commands.close()
        for lake in self.commands.lakes.values():
            await lake.close()
