"""One table of worker settings: the CLI, the [worker] keys and the child's command line
are all made from it and agree on every setting's name, default and value."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click
import pytest

from archivist.cli import worker
from archivist.config import config_from_dict
from archivist.worker.server import WorkerOptions
from archivist.worker.settings import DEFAULTS, SETTINGS, Setting, WorkerSettings, from_options

HANDLES = {"primary": "sqlite:///p.db", "archive": "sqlite:///a.db"}


def _other_value(spec: Setting) -> object:
    """A valid value of ``spec`` that is not its default."""
    if spec.multiple:
        return (1001, 1002)
    if spec.kind is bool:
        return not spec.default
    if spec.kind is str:
        return f"/tmp/archivist-test/{spec.name}"
    assert isinstance(spec.default, int | float)
    value = spec.default + 1 if spec.kind is int else spec.default + 1.5
    assert spec.le is None or value <= spec.le
    return value


def _option(spec: Setting) -> click.Option:
    (option,) = [p for p in worker.params if p.name == spec.name]
    assert isinstance(option, click.Option)
    return option


def _child_settings(settings: WorkerSettings) -> WorkerSettings:
    """The settings a worker started with ``settings.command_line()`` runs with: its own
    command line, parsed as ``archivist worker`` parses it."""
    context = worker.make_context("worker", settings.command_line())
    given = {name: value for name, value in context.params.items() if name in _NAMES}
    return from_options(given)


_NAMES = {spec.name for spec in SETTINGS}


def test_the_table_has_every_field_of_the_settings() -> None:
    assert [spec.name for spec in SETTINGS] == list(WorkerSettings.__struct_fields__)
    for spec in SETTINGS:
        assert spec.help, spec.name
        assert spec.default == getattr(WorkerSettings(), spec.name)


@pytest.mark.parametrize("spec", SETTINGS, ids=lambda spec: spec.name)
def test_each_setting_is_an_option_of_the_worker_that_leaves_its_default_alone(
    spec: Setting,
) -> None:
    option = _option(spec)
    on, _, off = spec.flag.partition("/")
    assert on in option.opts
    if off:
        assert off in option.secondary_opts
    assert option.default is None  # unset, the table's default holds
    assert option.multiple == spec.multiple
    assert option.help is not None and spec.help in option.help


@pytest.mark.parametrize("spec", SETTINGS, ids=lambda spec: spec.name)
def test_a_value_set_in_worker_config_reaches_the_child_worker(spec: Setting) -> None:
    value = _other_value(spec)
    config = config_from_dict({"handles": HANDLES, "worker": {spec.name: _toml(value)}})
    assert getattr(config.worker, spec.name) == value
    if spec.name == "socket":
        return  # the daemon gives its child the socket itself
    child = _child_settings(config.worker)
    assert getattr(child, spec.name) == value
    assert child == config.worker


def test_every_setting_at_once_reaches_the_child_and_its_options() -> None:
    values = {spec.name: _other_value(spec) for spec in SETTINGS if spec.name != "socket"}
    config = config_from_dict({"handles": HANDLES, "worker": dict(values)})
    child = _child_settings(config.worker)
    assert child == config.worker
    options = WorkerOptions.from_settings(child)
    effective = _effective(options)
    for name, value in values.items():
        assert effective[name] == value, name


def test_a_worker_given_no_option_runs_with_the_table_defaults() -> None:
    assert _child_settings(WorkerSettings()) == DEFAULTS
    assert WorkerSettings().command_line() == []
    # The worker's own structures take their defaults from the table too.
    assert WorkerOptions.from_settings(DEFAULTS) == WorkerOptions()


def _toml(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


_RENAMED = {"allow_uid": "allowed_uids", "socket": "socket_path"}


def _effective(options: WorkerOptions) -> dict[str, object]:
    """Every leaf of the worker's options, by the name of its setting."""
    found: dict[str, object] = {}
    for holder in (options, options.executor, options.executor.throttle):
        for item in fields(holder):
            found[item.name] = getattr(holder, item.name)
    for setting, name in _RENAMED.items():
        found[setting] = found[name]
    found["allow_uid"] = tuple(sorted(found["allow_uid"]))  # type: ignore[call-overload]
    if isinstance(found["pause_file"], Path):
        found["pause_file"] = str(found["pause_file"])
    return found


def test_the_daemon_waits_for_its_worker_longer_than_the_worker_gives_its_tasks() -> None:
    from archivist.daemon.supervisor import WorkerProcess

    config = config_from_dict({"handles": HANDLES, "worker": {"shutdown_timeout": 90.0}})
    process = WorkerProcess(Path("unused.sock"), shutdown_timeout=config.worker.shutdown_timeout)
    assert process.stop_timeout > 90.0
    assert WorkerProcess(Path("unused.sock")).stop_timeout > DEFAULTS.shutdown_timeout
