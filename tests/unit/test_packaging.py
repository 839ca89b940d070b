"""The package's metadata: one version, the drivers as extras (an SQLite user installs
neither), the dev tools as a dependency group, and a LICENSE that matches."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import archivist

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_is_written_once() -> None:
    assert "version" not in PYPROJECT["project"]
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert importlib.metadata.version("archivist") == archivist.__version__


def test_the_drivers_are_extras() -> None:
    core = " ".join(PYPROJECT["project"]["dependencies"]).lower()
    assert "psycopg" not in core and "pymysql" not in core
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["postgresql"] == ["psycopg[binary]>=3.1.18"]
    assert extras["mysql"] == ["PyMySQL>=1.1"]


def test_dev_tools_are_a_dependency_group_with_pymysqls_types() -> None:
    dev = " ".join(PYPROJECT["dependency-groups"]["dev"])
    assert "pytest" in dev and "mypy" in dev and "types-PyMySQL" in dev
    assert "dev" not in PYPROJECT["project"]["optional-dependencies"]
    overrides = PYPROJECT["tool"]["mypy"].get("overrides", [])
    assert not any("pymysql.*" in entry.get("module", []) for entry in overrides)


def test_the_license_file_matches_the_metadata() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) the archivist authors" in text
