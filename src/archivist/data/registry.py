"""Archivable entities: the ``@archive`` decorator for SQLAlchemy models (or functions returning a
``Table``) and the registry that merges them with the config's ``[[archive]]`` entries.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import sqlalchemy as sa

from archivist.config import DEFAULT_BATCH_SIZE, Config, rules_of
from archivist.data.relations import ON_CHILDREN, OnChildren
from archivist.errors import ConfigError, UnknownCollection
from archivist.policy import Rules, parse_rules
from archivist.protocol import MAX_BATCH_SIZE

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def is_identifier(name: object) -> bool:
    """A SQL identifier: letters, digits and ``_``, not starting with a digit."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 128
        and not name[0].isdigit()
        and all(ch in _IDENT_CHARS for ch in name)
    )


@dataclass(frozen=True)
class Entity:
    """An archivable collection and its policy. ``origin`` says where it was declared, for
    messages (``archivist.toml: archive[0]`` or ``myapp.models.ChatMessage``); ``key`` is the
    prefix for its keys (``archive[0].``) or empty for Python declarations."""

    collection: str
    order_by: str
    max_rows: int | None
    """None: no limit on the table's size (an age or copy policy)."""
    rows_per_archive: int | None
    batch_size: int
    source_handle: str = "primary"
    dest_handle: str = "archive"
    min_rate: float | None = None
    """Rows/s archivist moves at least while yielding to the application (None: only what
    keeping up asks, docs/configuration.md)."""
    rules: Rules = field(default_factory=Rules)
    """Age, where, mode, window (`archivist.policy`)."""
    table: sa.Table | None = field(default=None, compare=False, repr=False)
    origin: str = field(default="<python>", compare=False)
    module: str = field(default="", compare=False)
    children: tuple[str, ...] = ()
    """Tables whose rows move to the archive with the rows they reference."""
    on_children: OnChildren = "refuse"
    """What to do about other rows that reference this collection's rows."""
    parent: str | None = None
    """For a policy's named child (made by the data daemon, never a policy itself): the
    collection whose rows it moves with."""
    reclaim: bool | Literal["full"] = False
    """After a task that moved rows, reclaim the table's space without blocking the
    application (`archivist.data.reclaim`); "full" adds MariaDB's OPTIMIZE TABLE."""

    def where(self, key: str) -> str:
        """``"<origin>.<key>"`` or, for config entries, ``"<file>: archive[i].<key>"``."""
        return f"{self.origin}.{key}"

    def rows_to_archive(self, count: int) -> int:
        """Rows to move from a table of ``count`` rows: none while it is within ``max_rows``;
        once over, enough to bring it back to ``max_rows - rows_per_archive``, so that it is
        not over again a few rows later."""
        if self.max_rows is None or count <= self.max_rows:
            return 0  # no max_rows (an age or copy policy): never over it
        return min(count, count - (self.max_rows - (self.rows_per_archive or 0)))


ArchivePolicy = Entity  # the policy and the entity are one record


def make_entity(
    collection: str,
    *,
    order_by: str,
    max_rows: int | None,
    rows_per_archive: int | None,
    batch_size: int | None = None,
    source_handle: str = "primary",
    dest_handle: str = "archive",
    min_rate: float | None = None,
    rules: Rules | None = None,
    table: sa.Table | None = None,
    origin: str = "<python>",
    module: str = "",
    children: Iterable[str] = (),
    on_children: str = "refuse",
    reclaim: bool | str = False,
) -> Entity:
    """Validate and build an Entity; a bad value is a ConfigError naming ``origin``."""
    where = origin
    if on_children not in ON_CHILDREN:
        raise ConfigError(
            f"{where}: on_children must be one of {', '.join(repr(v) for v in ON_CHILDREN)}"
        )
    named = tuple(children)
    for child in named:
        if not is_identifier(child) or child == collection:
            raise ConfigError(
                f"{where}: children: {child!r} is not another table's name"
                + (
                    " (a table that references itself needs on_children)"
                    if child == collection
                    else ""
                )
            )
    if len(set(named)) != len(named):
        raise ConfigError(f"{where}: children: a table is named twice")
    if named and rules is not None and rules.mode == "purge":
        # A purge archives nothing: its children would be deleted unarchived, which is what
        # naming them is meant to prevent.
        raise ConfigError(
            f'{where}: children: a policy with mode = "purge" archives nothing, so it '
            "cannot move children; purge the child tables with their own policies first, "
            'or use mode "move"'
        )
    if not is_identifier(collection):
        raise ConfigError(f"{where}: collection '{collection}' is not a SQL identifier")
    if not is_identifier(order_by):
        raise ConfigError(f"{where}: order_by '{order_by}' is not a SQL identifier")
    if (max_rows is None) != (rows_per_archive is None):
        raise ConfigError(f"{where}: max_rows and rows_per_archive go together")
    for key, value in (("max_rows", max_rows), ("rows_per_archive", rows_per_archive)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{where}: {key} must be an integer >= 1")
    batch = (
        batch_size
        if batch_size is not None
        else min(rows_per_archive or DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE)
    )
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH_SIZE:
        raise ConfigError(f"{where}: batch_size must be an integer from 1 to {MAX_BATCH_SIZE}")
    if source_handle == dest_handle:
        raise ConfigError(f"{where}: dest_handle must differ from source_handle")
    if min_rate is not None and (
        not isinstance(min_rate, int | float) or isinstance(min_rate, bool) or min_rate <= 0
    ):
        raise ConfigError(f"{where}: min_rate must be a number of rows/s > 0")
    if reclaim is not True and reclaim is not False and reclaim != "full":
        raise ConfigError(f'{where}: reclaim must be true, false or "full", not {reclaim!r}')
    return Entity(
        collection=collection,
        order_by=order_by,
        max_rows=max_rows,
        rows_per_archive=rows_per_archive,
        batch_size=batch,
        source_handle=source_handle,
        dest_handle=dest_handle,
        min_rate=float(min_rate) if min_rate is not None else None,
        rules=rules or Rules(),
        table=table,
        origin=origin,
        module=module,
        children=named,
        on_children=on_children,
        reclaim="full" if reclaim == "full" else bool(reclaim),
    )


# Python declarations, in the order their modules ran. Registries pick from here by module.
_DECLARED: list[Callable[[], Entity]] = []


def archive(
    *,
    order_by: str,
    max_rows: int | None = None,
    rows_per_archive: int | None = None,
    batch_size: int | None = None,
    source_handle: str = "primary",
    dest_handle: str = "archive",
    collection: str | None = None,
    min_rate: float | None = None,
    older_than: str | None = None,
    age_field: str | None = None,
    time_unit: str | None = None,
    where: Mapping[str, object] | None = None,
    mode: str | None = None,
    window: str | None = None,
    timezone: str | None = None,
    max_runtime: str | None = None,
    retention: str | None = None,
    children: Iterable[str] = (),
    on_children: OnChildren = "refuse",
    reclaim: bool | Literal["full"] = False,
) -> Callable[[_T], _T]:
    """Declare a SQLAlchemy declarative model (or a function returning a ``Table``) archivable.

    The collection is the table's name unless ``collection`` is given. The same policy can be
    written as an ``[[archive]]`` entry in the config file, with the same keys
    (``older_than="90d"``, ``where={"status": "closed"}``, ``mode="purge"``,
    ``reclaim=True``, ...).
    """
    named = tuple(children)

    def decorate(target: _T) -> _T:
        module = str(getattr(target, "__module__", ""))
        origin = f"{module}.{getattr(target, '__qualname__', repr(target))}"
        if age_field is not None and not is_identifier(age_field):
            raise ConfigError(f"{origin}: age_field '{age_field}' is not a SQL identifier")
        if reclaim is not True and reclaim is not False and reclaim != "full":
            raise ConfigError(f'{origin}: reclaim must be true, false or "full", not {reclaim!r}')
        try:
            rules = parse_rules(
                older_than=older_than,
                age_field=age_field,
                time_unit=time_unit,
                where=where,
                mode=mode,
                window=window,
                timezone=timezone,
                max_runtime=max_runtime,
                retention=retention,
                max_rows=max_rows,
                order_by=order_by,
            )
        except ValueError as exc:
            raise ConfigError(f"{origin}.{exc}") from None

        def build() -> Entity:
            table = _table_of(target, origin)
            return make_entity(
                # A plain str: SQLAlchemy's quoted_name would not encode onto the wire.
                collection or str(table.name),
                order_by=order_by,
                max_rows=max_rows,
                rows_per_archive=rows_per_archive,
                batch_size=batch_size,
                source_handle=source_handle,
                dest_handle=dest_handle,
                min_rate=min_rate,
                rules=rules,
                table=table,
                origin=origin,
                module=module,
                children=named,
                on_children=on_children,
                reclaim=reclaim,
            )

        if collection is not None and not is_identifier(collection):
            raise ConfigError(f"{origin}: collection '{collection}' is not a SQL identifier")
        _DECLARED.append(build)
        return target

    return decorate


def _table_of(target: object, origin: str) -> sa.Table:
    table = getattr(target, "__table__", None)
    if table is None and callable(target):
        table = target()
    if not isinstance(table, sa.Table):
        raise ConfigError(
            f"{origin}: @archive needs a declarative model or a function returning a Table"
        )
    return table


def declared_entities(modules: Iterable[str] = ()) -> list[Entity]:
    """Entities declared with ``@archive`` in ``modules`` (or their submodules), after
    importing them; with no modules, every declaration made so far."""
    wanted = list(modules)
    for name in wanted:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"daemon.entities: cannot import module '{name}': {exc}") from None
    entities = [build() for build in _DECLARED]
    if not wanted:
        return entities
    return [
        entity
        for entity in entities
        if any(entity.module == name or entity.module.startswith(name + ".") for name in wanted)
    ]


class EntityRegistry:
    """The archivable entities by collection name."""

    def __init__(self, entities: Iterable[Entity] = ()) -> None:
        self._entities: dict[str, Entity] = {}
        for entity in entities:
            self.add(entity)

    @classmethod
    def from_config(cls, config: Config, extra: Iterable[Entity] = ()) -> EntityRegistry:
        """Entities declared in ``config.daemon.entities`` modules, then ``extra``, then the
        config's ``[[archive]]`` entries (which override a Python declaration of the same
        collection)."""
        registry = cls()
        if config.daemon.entities:
            for entity in declared_entities(config.daemon.entities):
                registry.add(entity)
        for entity in extra:
            registry.add(entity)
        for index, entry in enumerate(config.archive):
            origin = config.where(f"archive[{index}]")
            entity = make_entity(
                entry.collection,
                order_by=entry.order_by,
                max_rows=entry.max_rows,
                rows_per_archive=entry.rows_per_archive,
                batch_size=entry.batch_size,
                source_handle=entry.source_handle,
                dest_handle=entry.dest_handle,
                min_rate=entry.min_rate,
                rules=rules_of(entry),
                origin=origin,
                children=entry.children,
                on_children=entry.on_children,
                reclaim=entry.reclaim,
            )
            if entity.collection in registry:
                log.info("%s overrides the Python declaration of %s", origin, entity.collection)
            registry.add(entity, replace=True)
        for entity in registry:
            for key in ("source_handle", "dest_handle"):
                if key == "dest_handle" and entity.rules.mode == "purge":
                    continue  # a purge archives nothing: it needs no archive handle
                handle = getattr(entity, key)
                if handle not in config.handles:
                    raise ConfigError(f"{entity.where(key)}: unknown handle '{handle}'")
        return registry

    def add(self, entity: Entity, *, replace: bool = False) -> None:
        existing = self._entities.get(entity.collection)
        if existing is not None and not replace:
            raise ConfigError(
                f"{entity.origin}: collection '{entity.collection}' is already declared "
                f"by {existing.origin}"
            )
        self._entities[entity.collection] = entity

    def get(self, collection: str) -> Entity:
        """The entity of ``collection``; UnknownCollection if it is not declared."""
        entity = self._entities.get(collection)
        if entity is None:
            shown = collection if is_identifier(collection) else repr(collection[:64])
            raise UnknownCollection(f"unknown collection {shown}: not a declared archivable entity")
        return entity

    def replace(self, entity: Entity) -> None:
        self._entities[entity.collection] = entity

    def __contains__(self, collection: object) -> bool:
        return collection in self._entities

    def __iter__(self) -> Iterator[Entity]:
        return iter(list(self._entities.values()))

    def __len__(self) -> int:
        return len(self._entities)

    def collections(self) -> list[str]:
        return list(self._entities)
