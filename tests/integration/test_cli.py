"""The command line as a user meets it: help that teaches, one-line errors, the demo."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from e2esupport import count, ids, make_chat_table, wait_for, write_config

COMMANDS = ("worker", "run", "daemon", "archive", "status", "demo")


def archivist(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archivist", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    shown = archivist(command, "--help")
    assert shown.returncode == 0
    assert "Example" in shown.stdout
    assert f"archivist {command}" in shown.stdout


def test_wrong_arguments_give_one_clear_line_not_a_traceback() -> None:
    done = archivist("archive", "chat_messages", "--config", "x.toml", "--batch-size", "0")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--batch-size" in done.stderr


def test_a_bad_config_names_the_file_and_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[handles]\nprimary = "sqlite:///p.db"\n[[archive]]\ncollection = "t"\n'
        'order_by = "c"\nmax_rows = 0\nrows_per_archive = 1\n'
    )
    done = archivist("archive", "t", "--config", str(config))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "bad.toml" in lines[0] and "max_rows" in lines[0]


def test_status_without_a_worker_says_where_it_looked(tmp_path: Path) -> None:
    done = archivist("status", "--socket", str(tmp_path / "none.sock"))
    assert done.returncode == 1
    assert "no worker answers at" in done.stderr and "none.sock" in done.stderr


def test_demo_archives_a_fresh_sqlite_table_down_to_its_policy(tmp_path: Path) -> None:
    done = archivist("demo", "--rows", "4000", "--dir", str(tmp_path / "demo"))

    assert done.returncode == 0, done.stderr
    assert "archived 2,200 rows" in " ".join(done.stdout.split())
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'demo' / 'primary.db'}")
    archive = sa.create_engine(f"sqlite:///{tmp_path / 'demo' / 'archive.db'}")
    with engine.connect() as a, archive.connect() as b:
        assert a.execute(sa.text("SELECT count(*) FROM chat_messages")).scalar_one() == 1800
        assert b.execute(sa.text("SELECT count(*) FROM chat_messages")).scalar_one() == 2200
        oldest_left = a.execute(sa.text("SELECT min(id) FROM chat_messages")).scalar_one()
        newest_archived = b.execute(sa.text("SELECT max(id) FROM chat_messages")).scalar_one()
    engine.dispose()
    archive.dispose()
    assert newest_archived < oldest_left


def test_demo_refuses_a_directory_with_a_users_file_and_reuses_its_own(tmp_path: Path) -> None:
    users = tmp_path / "work"
    users.mkdir()
    (users / "thesis.tex").write_text("years of work")

    refused = archivist("demo", "--rows", "200", "--dir", ".", cwd=users)

    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert "not a previous demo's directory" in refused.stderr
    assert sorted(path.name for path in users.iterdir()) == ["thesis.tex"]
    assert (users / "thesis.tex").read_text() == "years of work"

    demo = tmp_path / "demo"
    first = archivist("demo", "--rows", "200", "--dir", str(demo))
    assert first.returncode == 0, first.stderr
    (demo / "archivist.toml").write_text("# the user's, beside the demo's files")
    again = archivist("demo", "--rows", "400", "--dir", str(demo))

    assert again.returncode == 0, again.stderr
    assert (demo / "archivist.toml").exists()
    # Every file the demo leaves is its own and listed in its marker (the SQLite mover lock
    # file too), so the next rerun removes it; nothing is left unexplained.
    listed = set((demo / ".archivist-demo").read_text().split())
    left = {path.name for path in demo.iterdir()} - {"archivist.toml", ".archivist-demo"}
    assert "primary.db.archivist-chat_messages.lock" in left
    assert left <= listed, left - listed
    engine = sa.create_engine(f"sqlite:///{demo / 'primary.db'}")
    archive = sa.create_engine(f"sqlite:///{demo / 'archive.db'}")
    with engine.connect() as a, archive.connect() as b:
        # Recreated from scratch, not added to the first run's rows.
        assert a.execute(sa.text("SELECT count(*) FROM chat_messages")).scalar_one() == 180
        assert b.execute(sa.text("SELECT count(*) FROM chat_messages")).scalar_one() == 220
    engine.dispose()
    archive.dispose()


def test_interrupting_archive_stops_after_a_batch_and_says_how_far_it_got(tmp_path: Path) -> None:
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    make_chat_table(primary, 60_000)
    config = write_config(
        tmp_path / "archivist.toml",
        {"primary": primary, "archive": archive},
        [
            {
                "collection": "chat_messages",
                "order_by": "created_at",
                "max_rows": 1000,
                "rows_per_archive": 100,
                "batch_size": 200,
            }
        ],
        # Copied inside the database, 60,000 rows would be gone before the signal.
        worker={"pause": 0.05},
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "archivist",
            "archive",
            "chat_messages",
            "--config",
            str(config),
            "--max-rows",
            "60000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: count(archive) >= 1000, 60, "archiving to start")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    assert process.returncode == 130, err
    assert "interrupted after" in err and "Traceback" not in err
    moved = count(archive)
    assert 1000 <= moved < 60_000
    assert count(primary) + moved == 60_000
    assert not ids(primary) & ids(archive)
    assert f"archived {moved:,} rows" in " ".join(out.split())


@pytest.mark.parametrize("command", ["run", "daemon", "worker", "archive"])
def test_long_running_commands_take_log_options(command: str) -> None:
    shown = " ".join(archivist(command, "--help").stdout.split())
    assert "--log-format [text|json]" in shown
    assert "--log-level [debug|info|warning|error]" in shown
    if command in ("run", "daemon", "worker"):
        assert "-q, --quiet" in shown


@pytest.mark.parametrize("command", ["run", "daemon", "archive"])
def test_help_says_where_the_config_is_looked_for(command: str) -> None:
    shown = " ".join(archivist(command, "--help").stdout.split())
    assert "$ARCHIVIST_CONFIG" in shown and "/etc/archivist/archivist.toml" in shown
