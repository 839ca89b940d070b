"""The @archive registry and the command bus, without a database."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from archivist.config import ArchiveConfig, make_config
from archivist.data import CommandBus, EntityRegistry, archive
from archivist.data.registry import declared_entities
from archivist.errors import (
    ArchivistError,
    ConfigError,
    Forbidden,
    InvalidParams,
    UnknownCollection,
    UnknownCommand,
)


class Base(DeclarativeBase):
    pass


@archive(max_rows=10_000, rows_per_archive=1_000, order_by="created_at")
class Event(Base):
    __tablename__ = "registry_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[int]


@archive(max_rows=50, rows_per_archive=5, order_by="ts", dest_handle="cold")
def audit_table() -> sa.Table:
    return sa.Table(
        "registry_audit",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ts", sa.DateTime),
    )


def test_decorated_model_and_table_function_become_entities() -> None:
    entities = {e.collection: e for e in declared_entities([__name__])}
    event = entities["registry_events"]
    assert (event.max_rows, event.rows_per_archive, event.batch_size, event.order_by) == (
        10_000,
        1_000,
        1_000,
        "created_at",
    )
    assert (event.source_handle, event.dest_handle) == ("primary", "archive")
    assert event.table is Event.__table__
    assert entities["registry_audit"].dest_handle == "cold"


def test_config_and_decorator_produce_the_same_registry() -> None:
    config = make_config(
        {"primary": "sqlite://", "archive": "sqlite://"},
        [
            ArchiveConfig(
                collection="registry_events",
                order_by="created_at",
                max_rows=10_000,
                rows_per_archive=1_000,
            )
        ],
    )
    from_config = EntityRegistry.from_config(config).get("registry_events")
    declared = {e.collection: e for e in declared_entities([__name__])}["registry_events"]
    assert from_config == declared


@archive(order_by="created_at", older_than="90d", reclaim="full")
class Reclaimed(Base):
    __tablename__ = "registry_reclaimed"
    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[int]


def test_reclaim_in_the_decorator_is_the_config_files_reclaim() -> None:
    config = make_config(
        {"primary": "sqlite://", "archive": "sqlite://"},
        [
            ArchiveConfig(
                collection="registry_reclaimed",
                order_by="created_at",
                older_than="90d",
                reclaim="full",
            )
        ],
    )
    from_config = EntityRegistry.from_config(config).get("registry_reclaimed")
    declared = {e.collection: e for e in declared_entities([__name__])}["registry_reclaimed"]
    assert declared.reclaim == "full"
    assert from_config == declared
    assert {e.collection: e for e in declared_entities([__name__])}["registry_events"].reclaim is (
        False
    )


def test_the_decorator_refuses_a_bad_reclaim() -> None:
    with pytest.raises(ConfigError, match=r'reclaim must be true, false or "full", not \'yes\''):
        archive(order_by="x", older_than="1d", reclaim="yes")(Event)  # type: ignore[arg-type]


def test_registry_rejects_unknown_collection() -> None:
    with pytest.raises(UnknownCollection):
        EntityRegistry().get("chat_messages")


def test_decorator_refuses_a_non_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from archivist.data import registry

    monkeypatch.setattr(registry, "_DECLARED", list(registry._DECLARED))
    archive(max_rows=1, rows_per_archive=1, order_by="x")(lambda: 42)
    with pytest.raises(ConfigError, match="Table"):
        declared_entities()


def test_entity_handles_must_be_configured() -> None:
    config = make_config({"primary": "sqlite://"}, daemon=None)
    config.daemon.entities = [__name__]
    with pytest.raises(ConfigError, match="unknown handle"):
        EntityRegistry.from_config(config)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def echo(params: dict[str, object]) -> dict[str, object]:
    return {"echo": params}


async def broken(params: dict[str, object]) -> dict[str, object]:
    raise RuntimeError("boom")


def test_bus_executes_registered_command() -> None:
    bus = CommandBus()
    bus.register("ping", echo)
    assert run(bus.execute("ping", {"a": 1}, caller="worker")) == {"echo": {"a": 1}}


def test_bus_forbids_commands_off_the_worker_allowlist() -> None:
    bus = CommandBus()
    bus.register("admin/drop", echo)
    with pytest.raises(Forbidden) as caught:
        run(bus.execute("admin/drop", {}, caller="worker"))
    assert caught.value.code == "forbidden"
    assert run(bus.execute("admin/drop", {})) == {"echo": {}}


def test_bus_unknown_command_and_bad_params_are_typed_errors() -> None:
    bus = CommandBus()
    with pytest.raises(UnknownCommand):
        run(bus.execute("nope", {}))
    bus.register("ping", echo)
    with pytest.raises(InvalidParams):
        run(bus.execute("ping", ["not", "an", "object"]))  # type: ignore[arg-type]


def test_bus_wraps_unexpected_exceptions_as_internal_errors() -> None:
    bus = CommandBus()
    bus.register("broken", broken)
    with pytest.raises(ArchivistError) as caught:
        run(bus.execute("broken", {}))
    assert caught.value.code == "internal"


def test_bus_gives_rows_left_raw_only_to_commands_made_for_them() -> None:
    rows = [msgspec.Raw(b'{"id":1,"body":"x"}'), msgspec.Raw(b'{"id":2}')]
    params = {"collection": "c", "items": rows, "expected": rows, "ids": [1, 2]}
    bus = CommandBus()
    bus.register("data/create", echo)
    decoded = run(bus.execute("data/create", params, caller="worker"))["echo"]
    assert decoded == {
        "collection": "c",
        "items": [{"id": 1, "body": "x"}, {"id": 2}],
        "expected": [{"id": 1, "body": "x"}, {"id": 2}],
        "ids": [1, 2],
    }
    bus.register("data/create", echo, replace=True, raw_rows=True)
    kept = run(bus.execute("data/create", params, caller="worker"))["echo"]["items"]
    assert all(isinstance(row, msgspec.Raw) for row in kept)
    bus.register("data/create", echo, replace=True)  # a wrapper registered later decodes again
    assert run(bus.execute("data/create", params))["echo"]["items"][0] == {"id": 1, "body": "x"}
    bus.register("data/create", echo, replace=True, raw_rows=True)
    whole = {"items": msgspec.Raw(b'[{"id":1,"body":"x"},{"id":2}]')}  # as a frame leaves it
    assert isinstance(run(bus.execute("data/create", whole))["echo"]["items"], msgspec.Raw)
    bus.register("data/create", echo, replace=True)
    assert run(bus.execute("data/create", whole))["echo"]["items"] == decoded["items"]
    for bad in ([msgspec.Raw(b'{"id": ')], msgspec.Raw(b"[" * 5000 + b"]" * 5000)):
        with pytest.raises(ArchivistError) as caught:
            run(bus.execute("data/create", {"items": bad}))
        assert caught.value.code == "invalid_json"
