"""``archivist check`` against real databases: the report, every problem listed, the exit."""

from __future__ import annotations

import json
from pathlib import Path

from e2esupport import archivist, make_chat_table, write_config

POLICY: dict[str, object] = {
    "collection": "chat_messages",
    "order_by": "created_at",
    "max_rows": 100,
    "rows_per_archive": 10,
}
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nothing"
"""A server nobody runs: port 1 refuses at once."""


def test_check_reports_a_healthy_policy(any_url: str, tmp_path: Path) -> None:
    make_chat_table(any_url, 150)
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    config = write_config(tmp_path / "a.toml", {"primary": any_url, "archive": archive}, [POLICY])

    result = archivist("check", "--config", str(config))

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    text = result.stdout
    assert "rows: 150 (max_rows 100, rows_per_archive 10)" in text
    # The rule `run` uses: back to max_rows - rows_per_archive = 90, so 60 rows.
    assert "eligible now: 60" in text
    assert "run now: would archive 60 rows" in text
    assert "index: none" not in text
    assert "no problems found" in text

    as_json = archivist("check", "--config", str(config), "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["ok"] is True and report["problems"] == []
    (policy,) = report["policies"]
    assert policy["rows"] == 150 and policy["eligible"] == 60
    assert policy["index"] is not None
    assert policy["oldest"] is not None and policy["newest"] is not None
    assert policy["oldest"] < policy["newest"]
    assert policy["would"] == "would archive 60 rows"


def test_check_lists_every_problem_and_exits_non_zero(any_url: str, tmp_path: Path) -> None:
    """An archive handle that cannot be reached and a policy whose table is missing: both
    are listed, and the exit is 1."""
    make_chat_table(any_url, 20)
    config = write_config(
        tmp_path / "a.toml",
        {"primary": any_url, "archive": UNREACHABLE, "other": f"sqlite:///{tmp_path}/o.db"},
        [POLICY, {**POLICY, "collection": "no_such_table", "dest_handle": "other"}],
    )

    result = archivist("check", "--config", str(config))

    assert result.returncode == 1, result.stdout + result.stderr
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert "3 problems:" in result.stdout
    flat = " ".join(result.stdout.split())
    assert "handle 'archive':" in flat
    assert "chat_messages: its archive handle 'archive' cannot be reached" in flat
    assert "no_such_table: table no_such_table does not exist on handle 'primary'" in flat

    report = json.loads(archivist("check", "--config", str(config), "--json").stdout)
    assert report["ok"] is False
    assert len(report["problems"]) == 3
    by_name = {p["collection"]: p for p in report["policies"]}
    assert by_name["chat_messages"]["would"].startswith("refused: ")
    assert by_name["chat_messages"]["rows"] == 20  # the source was still inspected
    assert by_name["no_such_table"]["would"].startswith("refused: ")


def test_check_warns_of_a_missing_index_and_within_policy(any_url: str, tmp_path: Path) -> None:
    make_chat_table(any_url, 20)
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    config = write_config(
        tmp_path / "a.toml",
        {"primary": any_url, "archive": archive},
        [{**POLICY, "order_by": "room_id"}],
    )

    result = archivist("check", "--config", str(config))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "index: none (every batch scans the table)" in result.stdout
    assert "warning: chat_messages: no index starts with room_id" in result.stdout
    assert "run now: within policy" in result.stdout


def test_check_creates_no_sqlite_file(tmp_path: Path) -> None:
    """A SQLite source whose file is missing is a problem; a missing archive file is not
    (archiving creates it); and check leaves no empty file behind (connecting would)."""
    missing = tmp_path / "missing.db"
    archive = tmp_path / "archive.db"
    config = write_config(
        tmp_path / "a.toml",
        {"primary": f"sqlite:///{missing}", "archive": f"sqlite:///{archive}"},
        [POLICY],
    )

    result = archivist("check", "--config", str(config))

    assert result.returncode == 1
    flat = " ".join(result.stdout.split())
    assert "1 problem:" in flat
    assert (
        f"table chat_messages does not exist: handle 'primary' has no SQLite file {missing}" in flat
    )
    assert "will be created (with its SQLite file)" in flat
    assert not missing.exists() and not archive.exists()
