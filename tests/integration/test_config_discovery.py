"""A real ``archivist archive --dry-run`` finds its config file without ``--config``
(``$ARCHIVIST_CONFIG``, ./archivist.toml, $XDG_CONFIG_HOME/archivist/archivist.toml) and
takes options from ``ARCHIVIST_*`` variables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from e2esupport import make_chat_table, write_config

POLICY = {
    "collection": "chat_messages",
    "order_by": "created_at",
    "max_rows": 100,
    "rows_per_archive": 50,
}


def dry_run(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ARCHIVIST_") and key != "XDG_CONFIG_HOME"
    }
    environ |= {"HOME": str(cwd / "home"), "COLUMNS": "200", **env}
    return subprocess.run(
        [sys.executable, "-m", "archivist", "archive", "chat_messages", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=environ,
    )


def setup(folder: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_chat_table(f"sqlite:///{folder / 'primary.db'}", rows)
    return write_config(
        folder / "archivist.toml",
        {"primary": "sqlite:///primary.db", "archive": "sqlite:///archive.db"},
        [POLICY],
    )


def planned(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())


def test_the_config_in_the_current_folder_is_found(tmp_path: Path) -> None:
    setup(tmp_path, 130)
    assert "130" in planned(dry_run(tmp_path))


def test_archivist_config_comes_before_the_current_folder(tmp_path: Path) -> None:
    setup(tmp_path, 130)
    other = setup(tmp_path / "other", 170)
    shown = planned(dry_run(tmp_path, ARCHIVIST_CONFIG=str(other)))
    assert "170" in shown and "130" not in shown


def test_the_xdg_config_folder_is_searched(tmp_path: Path) -> None:
    setup(tmp_path / "xdg" / "archivist", 150)
    (tmp_path / "work").mkdir()
    shown = planned(dry_run(tmp_path / "work", XDG_CONFIG_HOME=str(tmp_path / "xdg")))
    assert "150" in shown


def test_no_config_lists_the_places_looked(tmp_path: Path) -> None:
    done = dry_run(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert "ARCHIVIST_CONFIG" in message
    assert str(tmp_path / "archivist.toml") in message
    assert str(tmp_path / "xdg" / "archivist" / "archivist.toml") in message
    assert "/etc/archivist/archivist.toml" in message


def test_a_handle_from_the_environment_replaces_the_files(tmp_path: Path) -> None:
    setup(tmp_path, 130)
    other = tmp_path / "other"
    other.mkdir()
    make_chat_table(f"sqlite:///{other / 'primary.db'}", 190)
    shown = planned(dry_run(tmp_path, ARCHIVIST_HANDLES_PRIMARY=f"sqlite:///{other}/primary.db"))
    assert "190" in shown and "130" not in shown


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    setup(tmp_path, 130)
    done = dry_run(tmp_path, ARCHIVIST_WORKER_CONCURRENCY="many")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "ARCHIVIST_WORKER_CONCURRENCY" in done.stderr and "int" in done.stderr


def test_a_typo_in_an_environment_key_gets_a_suggestion(tmp_path: Path) -> None:
    setup(tmp_path, 130)
    done = dry_run(tmp_path, ARCHIVIST_DAEMON_CHECK_INTERVALL="5")
    assert done.returncode == 1
    assert "ARCHIVIST_DAEMON_CHECK_INTERVALL" in done.stderr
    assert "did you mean daemon.check_interval" in done.stderr
