"""Config discovery's order, ``ARCHIVIST_*`` variables typed by the config's own
declarations, and "did you mean" for a mistyped key."""

from __future__ import annotations

from pathlib import Path

import pytest

from archivist.config import environment_overrides, find_config, load_config
from archivist.errors import ConfigError


def test_discovery_order(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg" / "archivist"
    xdg.mkdir(parents=True)
    (xdg / "archivist.toml").write_text("")
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert find_config(None, environ=environ, cwd=tmp_path) == xdg / "archivist.toml"
    (tmp_path / "archivist.toml").write_text("")
    assert find_config(None, environ=environ, cwd=tmp_path) == tmp_path / "archivist.toml"
    named = {**environ, "ARCHIVIST_CONFIG": "/srv/a.toml"}
    assert find_config(None, environ=named, cwd=tmp_path) == Path("/srv/a.toml")
    assert find_config(Path("b.toml"), environ=named, cwd=tmp_path) == Path("b.toml")


def test_xdg_defaults_to_dot_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        find_config(None, environ={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert str(tmp_path / ".config" / "archivist" / "archivist.toml") in str(caught.value)
    assert find_config(None, environ={"HOME": str(tmp_path)}, cwd=tmp_path, required=False) is None


def test_variables_are_typed_by_the_declarations() -> None:
    overrides = environment_overrides(
        {
            "ARCHIVIST_WORKER_CONCURRENCY": "5",
            "ARCHIVIST_DAEMON_CHECK_INTERVAL": "2.5",
            "ARCHIVIST_DAEMON_ENTITIES": "a, b",
            "ARCHIVIST_HANDLES_PRIMARY": "postgres://app@db/app",
            "ARCHIVIST_CONFIG": "/x.toml",
            "ARCHIVIST_TEST_PG_URL": "not an option",
            "PATH": "/bin",
        }
    )
    assert overrides == {
        "worker": {"concurrency": 5},
        "daemon": {"check_interval": 2.5, "entities": ["a", "b"]},
        "handles": {"primary": "postgres://app@db/app"},
    }


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "ARCHIVIST_WORKER_CONCURRENCY",
            "0",
            "ARCHIVIST_WORKER_CONCURRENCY='0': Expected `int` >= 1",
        ),
        ("ARCHIVIST_DAEMON_CHECK_INTERVAL", "soon", "ARCHIVIST_DAEMON_CHECK_INTERVAL='soon'"),
        ("ARCHIVIST_WORKER_CONCURENCY", "3", "did you mean worker.concurrency?"),
        ("ARCHIVIST_WORKR_CONCURRENCY", "3", "did you mean ARCHIVIST_WORKER_CONCURRENCY?"),
    ],
)
def test_a_bad_variable_is_named(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        environment_overrides({variable: value})
    assert expected in str(caught.value)
    assert variable in str(caught.value)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[worker]\nconcurency = 3\n", "worker.concurency: unknown key; did you mean concurrency?"),
        ("[deamon]\n", "deamon: not a configuration table; did you mean daemon?"),
        (
            '[[archive]]\ncollection = "t"\norder_by = "c"\nmax_row = 1\n',
            "archive[0].max_row: unknown key; did you mean max_rows?",
        ),
    ],
)
def test_a_typo_in_the_file_gets_a_suggestion(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "archivist.toml"
    path.write_text('[handles]\nprimary = "sqlite:///p.db"\n' + toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value) == f"{path}: {expected}"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "archivist.toml"
    path.write_text('[handles]\nprimary = "sqlite:///p.db"\n[worker]\nconcurrency = 2\n')
    config = load_config(path, environ={"ARCHIVIST_WORKER_CONCURRENCY": "7"})
    assert config.worker.concurrency == 7
