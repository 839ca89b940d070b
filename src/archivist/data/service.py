"""The DataDaemon: handles, the registry of archivable entities and the command bus, started
and closed together; what the ArchiveDaemon and the CLI use of the database side.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Iterable, Mapping
from types import TracebackType

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from archivist.config import Config
from archivist.data.age import age_problem, cutoff_value
from archivist.data.bus import CommandBus, JSONObject
from archivist.data.catalog import Catalog
from archivist.data.commands import DataCommands
from archivist.data.filters import compile_filter
from archivist.data.handles import Handle
from archivist.data.iceberg.routing import LakeRouter
from archivist.data.iceberg.url import is_lake_url
from archivist.data.indexes import missing_index_warning, order_index
from archivist.data.locks import Holder, MoverLock, acquire, holder_of
from archivist.data.reclaim import Reclaimed, reclaim
from archivist.data.registry import Entity, EntityRegistry
from archivist.data.relations import (
    ChildTable,
    Relations,
    foreign_keys,
    primary_keys,
    reflect_relations,
    review,
)
from archivist.data.relay import relay
from archivist.data.replicas import REPLICA_DIALECTS, ReplicaWatch
from archivist.data.schema import TableInfo, plan_archive_table, require_single_pk
from archivist.data.storable import column_warnings
from archivist.data.transfer.commands import Transfers
from archivist.data.values import encode_value
from archivist.errors import (
    ArchivistError,
    BadAnswer,
    ConfigError,
    DatabaseError,
    SchemaError,
)
from archivist.policy import cutoff, decide, task_filter, utc_now
from archivist.protocol import Child
from archivist.sizing import Size

log = logging.getLogger(__name__)


class ArchivePlan(msgspec.Struct, frozen=True):
    """What archiving a collection now would do (``archivist archive --dry-run``)."""

    collection: str
    source_handle: str
    dest_handle: str
    rows: int
    max_rows: int | None
    rows_per_archive: int | None
    batch_size: int
    to_archive: int
    archive_table: str  # "exists", "will be created", "will gain columns a, b"
    order_by: str = ""
    oldest: object = None  # the order_by value (JSON form) of the first row that would move
    newest: object = None  # ... and of the last
    path: str = ""  # how rows would move: copied by the daemon, or through the worker
    warnings: tuple[str, ...] = ()  # source columns that hold values the archive cannot store
    index: str | None = None  # the index that serves order_by (None: every batch scans)
    mode: str = "move"  # move, copy (no delete) or purge (delete, no archive)
    cutoff: str | None = None  # older_than and its cutoff (UTC), for an age policy
    relations: tuple[str, ...] = ()  # foreign keys and ON DELETE triggers, for people
    refusal: str | None = None  # why the policy refuses to run, if it does
    children: tuple[str, ...] = ()  # tables whose rows move with the collection's
    rows_exact: bool = True  # False: ``rows`` is the engine's estimate (well within max_rows)


class DataDaemon:
    """The database side: named handles, archivable entities, and the data commands on a bus."""

    def __init__(
        self,
        config: Config,
        *,
        entities: Iterable[Entity] = (),
        bus: CommandBus | None = None,
    ) -> None:
        self.config = config
        self.registry = EntityRegistry.from_config(config, entities)
        self.handles: dict[str, Handle] = {}
        lake_urls = {name: url for name, url in config.handles.items() if is_lake_url(url)}
        try:
            for name, url in config.handles.items():
                if name not in lake_urls:
                    self.handles[name] = Handle(name, url)
        except ConfigError as exc:
            self._dispose_now()
            raise ConfigError(config.where(exc.message)) from None
        self.catalog = Catalog(self.registry, self.handles)
        self.lakes = LakeRouter(self.catalog, config, lake_urls)
        """The Iceberg handles (`archivist.data.iceberg`): archives, never sources."""
        watched = config.replica_checks.items()
        self.replicas = ReplicaWatch(
            {name: (check.replicas, check.max_lag) for name, check in watched}, self.handles
        )
        self._check_replica_engines()
        self.transfers = Transfers(self.catalog)
        self.commands = DataCommands(self.catalog, self.transfers)
        self.bus = bus or CommandBus()
        self.bus.register("ping", self.commands.ping, replace=True)
        routed = self.lakes.route
        self.bus.register("data/list", routed(self.commands.list, "list"), replace=True)
        self.bus.register("data/count", routed(self.commands.count, "count"), replace=True)
        # Daemon-internal (not on the worker's allowlist): the policy checks' size.
        self.bus.register("data/size", routed(self.commands.size, "size"), replace=True)
        self.bus.register(
            "data/create",
            routed(self.commands.create, "create"),
            replace=True,
            raw_rows=True,
        )
        self.bus.register(
            "data/delete",
            routed(self.commands.delete, "delete", matching=True),
            replace=True,
            raw_rows=True,
        )
        self.bus.register("data/load", self.load, replace=True)
        self.bus.register(
            "data/copy", routed(self.transfers.copy, "copy", key="destHandle"), replace=True
        )
        self.bus.register("data/relay", functools.partial(relay, self.commands), replace=True)
        self._started = False
        self._refuse = True
        self._distinct: set[tuple[str, str]] = set()
        self._trees: dict[str, tuple[ChildTable, ...]] = {}

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, *, refuse: bool = True) -> None:
        """Check every entity against its source table (exists, has ``order_by``, one primary
        key, no reference its deletes would change: `archivist.data.relations.refusal`); a
        problem is a ConfigError naming the file (or declaration) and the key. Without
        ``refuse`` (``--dry-run``, ``status``), a policy that would refuse is only shown."""
        self._refuse = refuse
        try:
            for entity in self.policies():
                await self._check_entity(entity)
                await self._warn_missing_index(entity)
            await self._check_distinct_databases()
        except BaseException:
            await self.close()
            raise
        self._started = True
        log.info(
            "data daemon ready: handles %s, collections %s",
            ", ".join(self.handles),
            ", ".join(self.registry.collections()) or "(none)",
        )

    async def close(self) -> None:
        """Dispose every engine and stop the database threads."""
        await self.lakes.close()
        await self.replicas.close()
        await self.transfers.close()
        for handle in self.handles.values():
            await handle.close()
        self._started = False

    async def __aenter__(self) -> DataDaemon:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_replica_engines(self) -> None:
        for name, check in self.config.replica_checks.items():
            for replica in check.replicas:
                handle = self.handles.get(replica)
                dialect = handle.dialect_name if handle is not None else "Iceberg"
                if dialect not in REPLICA_DIALECTS:
                    self._dispose_now()
                    raise ConfigError(
                        self.config.where(
                            f"handles.{name}.replicas: '{replica}' is a {dialect} database; a "
                            "replica is a PostgreSQL standby or a MariaDB/MySQL replica"
                        )
                    )

    async def load(self, params: JSONObject) -> JSONObject:
        """``data/load``: how busy the database is (`DataCommands.load`), and ``hold``, why
        no batch may start on it now, while one of its replicas lags (an optional field)."""
        answer = await self.commands.load(params)
        source = params.get("dbHandle")
        hold = await self.replicas.hold(source) if isinstance(source, str) else None
        if hold is not None:
            answer["hold"] = hold
        return answer

    def _dispose_now(self) -> None:
        for handle in self.handles.values():
            handle.engine.dispose()

    async def _check_distinct_databases(self) -> None:
        """At start-up, check every policy's handles that can be reached now; the others are
        checked before their first archive task (`ensure_archive_table`)."""
        for entity in self.registry:
            try:
                await self._require_distinct(entity)
            except DatabaseError as exc:
                log.warning("%s: cannot check its handles yet: %s", entity.collection, exc.message)

    async def _require_distinct(self, entity: Entity) -> None:
        """Refuse a policy whose source and destination are one database under two names:
        its rows would be copied onto themselves, verified, and deleted."""
        pair = (entity.source_handle, entity.dest_handle)
        if entity.rules.mode == "purge" or pair in self._distinct or self.lakes.is_lake(pair[1]):
            return
        source = await self.catalog.handle(pair[0]).identity()
        dest = await self.catalog.handle(pair[1]).identity()
        if source == dest:
            raise ConfigError(
                f"{entity.where('dest_handle')}: handles '{pair[0]}' and '{pair[1]}' reach the "
                f"same database; archiving {entity.collection} there would delete the rows it "
                "copies onto themselves"
            )
        self._distinct.add(pair)

    async def order_index(self, collection: str) -> str | None:
        """The index that serves ``collection``'s batches on its source (None: none does)."""
        entity = self.catalog.entity(collection)
        return await self.catalog.handle(entity.source_handle).transaction(
            order_index, entity.collection, entity.order_by
        )

    async def _warn_missing_index(self, entity: Entity) -> None:
        warning = missing_index_warning(
            entity.collection, entity.order_by, await self.order_index(entity.collection)
        )
        if warning is not None:
            log.warning("%s", warning)

    async def _check_entity(self, entity: Entity) -> None:
        if entity.table is not None and entity.order_by not in entity.table.c:
            raise ConfigError(
                f"{entity.where('order_by')}: column '{entity.order_by}' does not exist in "
                f"table {entity.table.name}"
            )
        handle = self.catalog.handle(entity.source_handle)
        info = await self.catalog.reflect(handle, entity.collection, fresh=True)
        if info is None:
            raise ConfigError(
                f"{entity.where('collection')}: table {entity.collection} does not exist on "
                f"handle '{handle.name}'"
            )
        if entity.order_by not in info.column_names:
            raise ConfigError(
                f"{entity.where('order_by')}: column '{entity.order_by}' does not exist in "
                f"table {entity.collection}"
            )
        problem = require_single_pk(info)
        if problem:
            raise ConfigError(f"{entity.where('collection')}: {problem}")
        rules = entity.rules
        if rules.where is not None:
            try:
                compile_filter(info, rules.where)
            except ArchivistError as exc:
                raise ConfigError(f"{entity.where('where')}: {exc.message}") from None
        if rules.older_than is not None:
            key = "age_field" if rules.age_field else "order_by"
            problem = age_problem(info, rules.age_column(entity.order_by), rules.time_unit)
            if problem:
                raise ConfigError(f"{entity.where(key)}: {problem}")
        relations = await self.relations(entity.collection)
        for trigger in relations.triggers:
            log.warning(
                "%s: ON DELETE trigger %s runs for every archived row",
                entity.collection,
                trigger.describe(),
            )
        try:
            problem = await self._review(entity)
        except SchemaError as exc:
            raise ConfigError(f"{entity.where('children')}: {exc.message}") from None
        if problem and self._refuse:
            raise ConfigError(f"{entity.where('on_children')}: {problem}")

    async def relations(self, collection: str) -> Relations:
        """The foreign keys into and out of ``collection``'s source table, and its
        ``ON DELETE`` triggers, read from the database now."""
        entity = self.catalog.entity(collection)
        handle = self.catalog.handle(entity.source_handle)
        return await handle.transaction(reflect_relations, entity.collection)

    async def _review(self, entity: Entity) -> str | None:
        """Read the foreign keys of ``entity``'s source database now: keep the tree of its
        named children (each registered as a collection the worker may move, as its own
        source table names it), and answer why the policy must refuse to run, if it must.
        Named children that cannot be moved are a SchemaError."""
        handle = self.catalog.handle(entity.source_handle)
        keys = await handle.transaction(foreign_keys)
        found = await handle.transaction(primary_keys, [entity.collection, *entity.children])
        try:
            tree, problem = review(
                entity.collection, entity.children, entity.on_children, keys, found
            )
        except ValueError as exc:
            raise SchemaError(str(exc)) from None
        self._trees[entity.collection] = tree
        for node in (node for child in tree for node in child.walk()):
            other = self.registry.get(node.table) if node.table in self.registry else None
            if other is not None and other.parent != entity.collection:
                raise SchemaError(
                    f"children: {node.table} is archived by {other.parent or 'its own policy'}"
                    f" ({other.origin}); a table can move with one policy only"
                )
            self.registry.replace(
                dataclasses.replace(
                    entity,
                    collection=node.table,
                    order_by=found[node.table][0],
                    table=None,
                    children=(),
                    parent=entity.collection,
                    origin=entity.where("children"),
                )
            )
        return problem

    async def _require_no_refusal(self, entity: Entity) -> None:
        """Before each task: a reference added since start-up refuses it too."""
        problem = await self._review(entity)
        if problem:
            raise SchemaError(problem)

    def children(self, collection: str) -> list[Child]:
        """The named children of ``collection``'s policy, as the ``archive`` message's
        extension carries them (empty without them)."""

        def wire(node: ChildTable) -> Child:
            return Child(
                collection=node.table,
                columns=[node.column],
                references=[node.references],
                children=[wire(child) for child in node.children],
            )

        return [wire(node) for node in self._trees.get(collection, ())]

    # --- what the daemon and CLI call -----------------------------------------------------

    async def execute(
        self, name: str, params: Mapping[str, object] | None = None, *, caller: str = "local"
    ) -> JSONObject:
        """Run a command on the bus (see ``CommandBus.execute``)."""
        return await self.bus.execute(name, params, caller=caller)

    def policies(self) -> list[Entity]:
        """Every archivable entity with its policy (a policy's named children are moved
        with it, and are none)."""
        return [entity for entity in self.registry if entity.parent is None]

    def entity(self, collection: str) -> Entity:
        return self.catalog.entity(collection)

    def handle(self, name: str) -> Handle:
        return self.catalog.handle(name)

    async def ensure_archive_table(self, collection: str) -> list[Child]:
        """Make the archive table on the entity's destination handle mirror its source table
        (create it, or add new columns), and its named children's; SchemaError for changes
        it cannot make safely, or a reference that refuses the policy now. Answers the
        children's tree, as the ``archive`` message carries it (`children`)."""
        entity = self.catalog.entity(collection)
        await self._require_distinct(entity)
        await self._require_no_refusal(entity)
        await self._ensure(entity)
        for node in (node for child in self._trees.get(collection, ()) for node in child.walk()):
            await self._ensure(self.catalog.entity(node.table))
        return self.children(collection)

    async def _ensure(self, entity: Entity) -> None:
        if self.lakes.is_lake(entity.dest_handle):
            await self.lakes.ensure(entity)
        else:
            await self.catalog.ensure_archive_table(entity)

    def task_started(self, collection: str, task_id: str) -> None:
        """The task now moving ``collection`` (an Iceberg archive's commits name it)."""
        self.lakes.started(collection, task_id)

    async def reclaim(self, collection: str) -> Reclaimed | None:
        """The policy's space reclaim of ``collection``'s source table (its ``reclaim``, in
        the config file or the decorator; None when it has none)."""
        if collection in self.registry and self.lakes.is_lake(self.entity(collection).dest_handle):
            # The task has ended: what it staged for its archive is committed now.
            await self.lakes.settle(collection)
        entity = self.catalog.entity(collection)
        if not entity.reclaim:
            return None
        return await reclaim(self.catalog.handle(entity.source_handle), collection, entity.reclaim)

    async def take_mover(self, collection: str) -> MoverLock:
        """Take ``collection``'s mover lock in its source database (`archivist.data.locks`);
        MoverBusy naming the holder when another process has it."""
        entity = self.catalog.entity(collection)
        return await acquire(self.catalog.handle(entity.source_handle), collection)

    async def mover(self, collection: str) -> Holder | None:
        """Who holds ``collection``'s mover lock now (None: nobody)."""
        entity = self.catalog.entity(collection)
        return await holder_of(self.catalog.handle(entity.source_handle), collection)

    async def table_info(self, collection: str, handle: str) -> TableInfo | None:
        """The reflected table of ``collection`` on ``handle`` (None if it has none)."""
        self.catalog.entity(collection)
        return await self.catalog.reflect(self.catalog.handle(handle), collection)

    async def task_filter(
        self, collection: str, now: dt.datetime | None = None
    ) -> dict[str, object] | None:
        """The filter of a task of ``collection`` starting ``now`` (default: the daemon's
        clock, UTC): its ``where`` and, for an age policy, its age column below the cutoff
        ``now - older_than`` in the column's JSON form. None: every row."""
        entity = self.catalog.entity(collection)
        rules = entity.rules
        if rules.older_than is None:
            return task_filter(rules.where, None, None)
        column = rules.age_column(entity.order_by)
        handle = self.catalog.handle(entity.source_handle)
        info = await self.catalog.reflect(handle, collection)
        if info is None:
            raise SchemaError(f"collection {collection}: no table on '{handle.name}'")
        instant = cutoff(now or utc_now(), rules.older_than)
        value = await handle.transaction(cutoff_value, info, column, rules.time_unit, instant)
        return task_filter(rules.where, column, value)

    async def count(
        self,
        collection: str,
        handle: str | None = None,
        filter_: dict[str, object] | None = None,
    ) -> int:
        entity = self.catalog.entity(collection)
        params: JSONObject = {"collection": collection, "dbHandle": handle or entity.source_handle}
        if filter_ is not None:
            params["filter"] = filter_
        result = await self.execute("data/count", params)
        count = result.get("count")
        if not isinstance(count, int) or isinstance(count, bool):
            raise BadAnswer(f"data/count of {collection} answered without a count")
        return count

    async def size(self, collection: str) -> Size:
        """The rows of ``collection``'s policy (its ``where``) on its source, exact wherever
        over ``max_rows``, without reading the whole table where it can
        (`archivist.data.size`)."""
        entity = self.catalog.entity(collection)
        params: JSONObject = {"collection": collection, "dbHandle": entity.source_handle}
        everything = task_filter(entity.rules.where, None, None)
        if everything is not None:
            params["filter"] = everything
        if entity.max_rows is not None:
            params["maxRows"] = entity.max_rows
        result = await self.execute("data/size", params)
        return Size.from_wire(result, collection)

    async def plan(self, collection: str, max_rows: int | None = None) -> ArchivePlan:
        """What archiving ``collection`` would do now, without doing it."""
        entity = self.catalog.entity(collection)
        rules = entity.rules
        chosen = everything = task_filter(rules.where, None, None)
        size = await self.size(collection)
        if size.rows is None or (max_rows is not None and not size.exact):
            # No estimate to show (an age policy on SQLite), or --max-rows N needs the rows
            # there are.
            size = Size(await self.count(collection, filter_=everything), True, "count")
        rows = size.rows or 0
        instant = by_age = None
        if max_rows is None:
            aged = None
            if rules.older_than is not None:
                now = utc_now()
                before = cutoff(now, rules.older_than).isoformat(timespec="seconds")
                instant = f"{rules.older_than}, before {before}"
                by_age = await self.task_filter(collection, now)
                aged = await self.count(collection, filter_=by_age)
            excess = entity.rows_to_archive(rows) if size.exact else 0
            decision = decide(excess=excess, aged=aged)
            to_archive = decision.rows
            if decision.basis == "age":
                chosen = by_age
        else:
            to_archive = max(0, min(rows, max_rows))
        source = await self.catalog.reflect(
            self.catalog.handle(entity.source_handle), collection, fresh=True
        )
        if source is None:
            raise SchemaError(f"collection {collection}: no table on '{entity.source_handle}'")
        warnings: tuple[str, ...] = ()
        if rules.mode == "purge":
            state, path = "not used (mode purge)", "deleted in place, not archived"
        else:
            state, path, warnings = await self._plan_archive(entity, source)
        index = await self.order_index(collection)
        missing = missing_index_warning(collection, entity.order_by, index)
        if missing is not None:
            warnings = (*warnings, missing)
        relations = await self.relations(collection)
        try:
            problem = await self._review(entity)
        except SchemaError as exc:
            problem = exc.message
        oldest = newest = None
        if to_archive > 0:
            oldest, newest = await self.catalog.handle(entity.source_handle).transaction(
                _order_span, source, entity.order_by, to_archive, chosen
            )
        return ArchivePlan(
            order_by=entity.order_by,
            oldest=oldest,
            newest=newest,
            collection=collection,
            source_handle=entity.source_handle,
            dest_handle=entity.dest_handle,
            rows=rows,
            rows_exact=size.exact,
            max_rows=entity.max_rows,
            rows_per_archive=entity.rows_per_archive,
            batch_size=entity.batch_size,
            to_archive=to_archive,
            archive_table=state,
            path=path,
            mode=rules.mode,
            cutoff=instant,
            warnings=warnings,
            index=index,
            relations=tuple(relations.lines()),
            refusal=problem,
            children=tuple(
                node.table for child in self._trees.get(collection, ()) for node in child.walk()
            ),
        )

    async def _plan_archive(
        self, entity: Entity, source: TableInfo
    ) -> tuple[str, str, tuple[str, ...]]:
        """What the archive table needs, and how rows would move to it."""
        if self.lakes.is_lake(entity.dest_handle):
            settings = self.lakes.settings_of(entity.collection)
            return (
                await self.lakes.plan(entity),
                "staged by the daemon, committed to Iceberg in files of up to "
                f"{settings.rows_per_file:,} rows, then deleted where the commit reads back "
                "identical",
                (),
            )
        dest = await self.catalog.reflect(
            self.catalog.handle(entity.dest_handle), entity.collection, fresh=True
        )
        change_ok, change_planned = False, False
        try:
            change = plan_archive_table(source, dest, entity.order_by)
        except ArchivistError as exc:
            state = f"cannot be updated: {exc.message}"
        else:
            change_ok, change_planned = True, not change.empty
            if change.create:
                state = "will be created"
            elif change.add_columns:
                state = "will gain columns " + ", ".join(c.name for c in change.add_columns)
            else:
                state = "exists"
        if not self.config.worker.in_database:
            path = "through the worker ([worker] in_database = false)"
        else:
            path = self.transfers.describe(
                self.catalog.handle(entity.source_handle),
                self.catalog.handle(entity.dest_handle),
                source,
                dest if change_ok and not change_planned else None,
            )
        warnings = column_warnings(
            source.dialect_name,
            source.columns,
            self.catalog.handle(entity.dest_handle).dialect_name,
            dest.columns if dest is not None else None,
        )
        return state, path, tuple(warnings)


def _order_span(
    connection: Connection,
    info: TableInfo,
    order_by: str,
    rows: int,
    filter_: dict[str, object] | None = None,
) -> tuple[object, object]:
    """The ``order_by`` values of the first and the ``rows``-th row (of those ``filter_``
    matches) in archive order."""
    column, pk = info.table.c[order_by], info.table.c[info.pk]
    base = sa.select(column).where(compile_filter(info, filter_)).order_by(column.asc(), pk.asc())
    first = connection.execute(base.limit(1)).scalar_one_or_none()
    last = connection.execute(base.offset(rows - 1).limit(1)).scalar_one_or_none()
    spec = info.spec(order_by)
    return encode_value(spec, first), encode_value(spec, last)
