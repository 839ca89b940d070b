"""Space reclaim (`archivist.data.reclaim`) on real databases: what each engine ran, seen
from the database itself."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from archivist.data.handles import Handle
from archivist.data.reclaim import Reclaimed, ReclaimMode, reclaim
from datasupport import create_table, run, sql
from e2esupport import archivist, count, make_chat_table, write_config


def _reclaim(url: str, mode: ReclaimMode = True) -> Reclaimed:
    async def go() -> Reclaimed:
        handle = Handle("primary", url)
        try:
            return await reclaim(handle, "chat_messages", mode)
        finally:
            await handle.close()

    return run(go())


def _fill_and_delete(path: Path, *, auto_vacuum: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA auto_vacuum = {auto_vacuum}")
        db.execute("CREATE TABLE chat_messages (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany(
            "INSERT INTO chat_messages VALUES (?, ?)", ((i, "x" * 2000) for i in range(2000))
        )
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM chat_messages WHERE id >= 100")
    db.close()


def _freelist(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("PRAGMA freelist_count").fetchone()
    db.close()
    return int(count)


def test_sqlite_incremental_vacuum_frees_pages(tmp_path: Path) -> None:
    path = tmp_path / "primary.db"
    _fill_and_delete(path, auto_vacuum=2)
    before = _freelist(path)
    assert before > 500  # ~1,900 rows of 2 kB freed their pages
    size_before = path.stat().st_size

    done = _reclaim(f"sqlite:///{path}")

    assert done.statements == ("PRAGMA incremental_vacuum",)
    assert _freelist(path) < before // 10
    assert f"free pages {before} -> " in done.detail
    # The WAL checkpoint has run when the handle closed: the file itself shrank.
    assert path.stat().st_size < size_before


def test_sqlite_without_incremental_auto_vacuum_runs_nothing_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "primary.db"
    _fill_and_delete(path, auto_vacuum=0)
    before = _freelist(path)

    done = _reclaim(f"sqlite:///{path}")

    assert done.statements == ()
    assert "exclusive lock" in done.detail
    assert _freelist(path) == before


def _last_vacuum(url: str) -> object:
    rows = sql(
        url,
        "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables WHERE relname = 'chat_messages'",
    )
    return rows[0]


def test_postgresql_vacuum_analyze_runs_outside_a_transaction(pg_url: str) -> None:
    create_table(pg_url)
    assert _last_vacuum(pg_url) == (None, None)

    done = _reclaim(pg_url)

    assert done.statements == ("VACUUM (ANALYZE) chat_messages",)
    last_vacuum, last_analyze = _last_vacuum(pg_url)  # type: ignore[misc]
    assert last_vacuum is not None and last_analyze is not None


@pytest.mark.parametrize("mode", [True, "full"])
def test_mariadb_analyze_and_optimize_only_when_full(mysql_url: str, mode: ReclaimMode) -> None:
    create_table(mysql_url)

    done = _reclaim(mysql_url, mode)

    if mode == "full":
        assert done.statements == ("OPTIMIZE TABLE chat_messages", "ANALYZE TABLE chat_messages")
        assert "optimize" in done.detail
    else:
        assert done.statements == ("ANALYZE TABLE chat_messages",)
        assert "optimize" not in done.detail
    # The server's own status rows came back: ANALYZE ran and said OK.
    assert "analyze status: OK" in done.detail


@pytest.mark.parametrize("reclaim_key", [True, False])
def test_the_daemon_reclaims_after_a_task_that_moved_rows(
    tmp_path: Path, reclaim_key: bool
) -> None:
    """`archivist archive` on a SQLite primary with incremental auto-vacuum: with
    ``reclaim = true`` the pages its deletes freed are returned to the file system; without
    it they stay on the free list."""
    primary = tmp_path / "primary.db"
    with sqlite3.connect(primary) as db:
        db.execute("PRAGMA auto_vacuum = 2")
    db.close()
    url = f"sqlite:///{primary}"
    make_chat_table(url, 3000)
    entry: dict[str, object] = {
        "collection": "chat_messages",
        "order_by": "created_at",
        "max_rows": 1000,
        "rows_per_archive": 100,
        "batch_size": 500,
    }
    if reclaim_key:
        entry["reclaim"] = True
    config = write_config(
        tmp_path / "a.toml", {"primary": url, "archive": f"sqlite:///{tmp_path}/a.db"}, [entry]
    )

    result = archivist("archive", "chat_messages", "--config", str(config), "-v")

    assert result.returncode == 0, result.stderr
    assert count(url) == 900
    if reclaim_key:
        assert "reclaim: chat_messages on 'primary': PRAGMA incremental_vacuum" in result.stderr
        assert _freelist(primary) < 20
    else:
        assert "reclaim:" not in result.stderr
        assert _freelist(primary) > 50


MODELS = """
import sqlalchemy as sa

from archivist import archive
from archivist.sample import chat_messages_table


@archive(order_by="created_at", max_rows=1000, rows_per_archive=100, batch_size=500, reclaim=True)
def chat_messages() -> sa.Table:
    return chat_messages_table(sa.MetaData(), "chat_messages")
"""


def test_reclaim_in_the_decorator_reclaims_after_a_task(tmp_path: Path) -> None:
    """The same policy as above, declared with ``@archive(..., reclaim=True)`` in the
    application's module (``[daemon] entities``) instead of the config file."""
    import os
    import subprocess
    import sys

    primary = tmp_path / "primary.db"
    with sqlite3.connect(primary) as db:
        db.execute("PRAGMA auto_vacuum = 2")
    db.close()
    url = f"sqlite:///{primary}"
    make_chat_table(url, 3000)
    (tmp_path / "reclaim_models.py").write_text(MODELS)
    config = write_config(
        tmp_path / "a.toml",
        {"primary": url, "archive": f"sqlite:///{tmp_path}/a.db"},
        [],
    )
    config.write_text(
        config.read_text().replace("[daemon]\n", '[daemon]\nentities = ["reclaim_models"]\n', 1)
    )
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "archivist",
            "archive",
            "chat_messages",
            "--config",
            str(config),
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": path},
    )

    assert result.returncode == 0, result.stderr
    assert count(url) == 900
    assert "reclaim: chat_messages on 'primary': PRAGMA incremental_vacuum" in result.stderr
    assert _freelist(primary) < 20
