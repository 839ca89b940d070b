"""A one-shot ``archivist archive`` starts by importing only what its path needs (issue 27:
start-up to first batch under 0.4 s). Nothing is timed here: each test lists the modules a
command loaded, so that an import that creeps back onto the path fails by name.
``bench/archive_bench.py --only startup`` measures the time."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from archivist import sample

NEVER = (
    "psycopg",
    "pymysql",
    "sqlalchemy.dialects.postgresql",
    "sqlalchemy.dialects.mysql",
    "prometheus_client",
    "pyiceberg",
    "pyarrow",
    "duckdb",
)
"""Another engine's dialect and driver, metrics, the cold tier: never on a SQLite path."""
OTHER_COMMANDS = tuple(
    f"archivist.cli.{name}"
    for name in ("archive", "check", "cold", "daemon", "demo", "status", "worker")
)

SCRIPT = """
import json, sys
from archivist.cli import main
code = main(sys.argv[1:], standalone_mode=False)
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded(*arguments: str, cwd: Path) -> set[str]:
    """The modules ``archivist ARGUMENTS`` imported, run in a fresh interpreter (its output
    a pipe, as under a script or a timer)."""
    env = {key: value for key, value in os.environ.items() if key != "FORCE_COLOR"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] in (0, None), done.stdout
    return set(result["modules"])


def heavy(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(name for name in names if name in modules)


def test_help_imports_neither_sqlalchemy_nor_rich_nor_other_commands(tmp_path: Path) -> None:
    modules = loaded("archive", "--help", cwd=tmp_path)
    assert heavy(modules, ("sqlalchemy", "rich", "archivist.data", *NEVER)) == []
    assert heavy(modules, OTHER_COMMANDS) == ["archivist.cli.archive"]


def test_the_worker_a_daemon_starts_imports_no_other_command(tmp_path: Path) -> None:
    """The worker each one-shot command starts is on the path to the first batch too."""
    modules = loaded("worker", "--help", cwd=tmp_path)
    assert heavy(modules, ("sqlalchemy", "rich", "archivist.data", *NEVER)) == []
    assert heavy(modules, OTHER_COMMANDS) == ["archivist.cli.worker"]


def test_a_sqlite_one_shot_archive_loads_only_its_path(tmp_path: Path) -> None:
    """A real one-shot archive of 1,000 rows between two SQLite files, its output a pipe:
    no other engine, no metrics, no cold tier, no other command, and no rich (the progress
    bar is for terminals)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'primary.db'}")
    table = sample.chat_messages_table(sa.MetaData(), "chat_messages")
    with engine.begin() as connection:
        table.create(connection)
        connection.execute(table.insert(), list(sample.generate_rows(1500)))
    engine.dispose()
    (tmp_path / "archivist.toml").write_text(
        "[handles]\n"
        'primary = "sqlite:///primary.db"\n'
        'archive = "sqlite:///archive.db"\n\n'
        "[[archive]]\n"
        'collection = "chat_messages"\n'
        'order_by = "created_at"\n'
        "max_rows = 100\n"
        "rows_per_archive = 10\n"
    )
    modules = loaded(
        "archive", "chat_messages", "--config", "archivist.toml", "--max-rows", "1000", cwd=tmp_path
    )
    with sqlite3.connect(tmp_path / "archive.db") as archive:
        assert archive.execute("SELECT count(*) FROM chat_messages").fetchone() == (1000,)
    assert "sqlalchemy.dialects.sqlite" in modules  # the path ran, through the data layer
    assert heavy(modules, ("rich", *NEVER)) == []
    assert heavy(modules, OTHER_COMMANDS) == ["archivist.cli.archive"]
