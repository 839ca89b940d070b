"""The service files stay in step with the command line: every command line in
contrib/systemd/ and the Dockerfile parses as ``archivist`` parses it, and every
``ARCHIVIST_*`` variable they set is an option (`environment_overrides` accepts it)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest

from archivist.cli import main
from archivist.config import environment_overrides

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "contrib" / "systemd").glob("*.service"))


def _parses(args: list[str]) -> None:
    """Parse ``archivist ARGS`` without running it (options and their values checked)."""
    command = main.get_command(click.Context(main), args[0])
    assert command is not None, args
    command.make_context(args[0], args[1:], parent=click.Context(main))


def _unit_settings(path: Path, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", path.read_text(), flags=re.MULTILINE)


def test_there_is_a_notify_service_a_oneshot_and_its_timer() -> None:
    names = {path.name for path in (ROOT / "contrib" / "systemd").iterdir()}
    assert names == {"archivist.service", "archivist-once.service", "archivist-once.timer"}
    service = ROOT / "contrib" / "systemd" / "archivist.service"
    assert _unit_settings(service, "Type") == ["notify"]
    assert _unit_settings(service, "WatchdogSec")
    assert _unit_settings(ROOT / "contrib" / "systemd" / "archivist-once.service", "Type") == [
        "oneshot"
    ]


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.name)
def test_a_units_command_and_variables_are_archivists(unit: Path) -> None:
    (exec_start,) = _unit_settings(unit, "ExecStart")
    program, *args = shlex.split(exec_start)
    assert program.endswith("/archivist")
    _parses(args)
    variables = dict(
        shlex.split(value)[0].split("=", 1) for value in _unit_settings(unit, "Environment")
    )
    archivist = {k: v for k, v in variables.items() if k.startswith("ARCHIVIST_")}
    environment_overrides(archivist)  # an unknown or ill-typed one raises


def test_the_dockerfiles_command_and_variables_are_archivists() -> None:
    text = (ROOT / "Dockerfile").read_text()
    (entrypoint,) = re.findall(r"^ENTRYPOINT (\[.*\])$", text, flags=re.MULTILINE)
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, flags=re.MULTILINE)
    assert json.loads(entrypoint) == ["archivist"]
    _parses(json.loads(cmd))
    joined = text.replace("\\\n", " ")
    variables = dict(re.findall(r"\b(ARCHIVIST_[A-Z_]+)=(\S+)", joined))
    assert "ARCHIVIST_DAEMON_METRICS" in variables
    environment_overrides(variables)
