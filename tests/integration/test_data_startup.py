"""DataDaemon start-up: a config that does not match the database is a clear error."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from archivist.config import ArchiveConfig, load_config, make_config
from archivist.daemon.runtime import Launch, running
from archivist.daemon.supervisor import WorkerProcess
from archivist.data import DataDaemon
from archivist.data.columns import ColumnSpec, Kind
from archivist.errors import ConfigError
from datasupport import create_table, run, sql

CONFIG = """
[handles]
primary = "sqlite:///primary.db"
archive = "sqlite:///archive.db"

[[archive]]
collection = "{collection}"
order_by = "{order_by}"
max_rows = 100
rows_per_archive = 10
"""


def start(tmp_path: Path, collection: str = "chat_messages", order_by: str = "created_at") -> None:
    path = tmp_path / "archivist.toml"
    path.write_text(CONFIG.format(collection=collection, order_by=order_by))

    async def go() -> None:
        daemon = DataDaemon(load_config(path))
        await daemon.start()
        await daemon.close()

    run(go())


def test_config_matching_the_database_starts(tmp_path: Path) -> None:
    create_table(f"sqlite:///{tmp_path / 'primary.db'}")
    start(tmp_path)
    assert (tmp_path / "primary.db").exists()


def test_a_sqlite_daemon_imports_no_other_engines_dialect(tmp_path: Path) -> None:
    """The data daemon of a SQLite-only configuration starts, copies and deletes without
    importing SQLAlchemy's PostgreSQL or MariaDB/MySQL dialects (~30 ms of every start)."""
    create_table(f"sqlite:///{tmp_path / 'primary.db'}")
    (tmp_path / "archivist.toml").write_text(
        CONFIG.format(collection="chat_messages", order_by="created_at")
    )
    script = (
        "import asyncio, sys\n"
        "from archivist.config import load_config\n"
        "from archivist.data import DataDaemon\n"
        "async def go():\n"
        "    daemon = DataDaemon(load_config('archivist.toml'))\n"
        "    await daemon.start()\n"
        "    where = {'collection': 'chat_messages', 'dbHandle': 'primary'}\n"
        "    item = {'id': 1, 'room': 'r', 'created_at': '2024-01-01T00:00:00+00:00'}\n"
        "    await daemon.execute('data/create', {**where, 'items': [item]})\n"
        "    await daemon.execute('data/copy', {**where, 'destHandle': 'archive'})\n"
        "    await daemon.execute('data/delete', {**where, 'ids': [1], 'matching': 'archive'})\n"
        "    print(await daemon.execute('data/count', where))\n"
        "    await daemon.close()\n"
        "asyncio.run(go())\n"
        "names = [m.split('.') for m in sys.modules if m.startswith('sqlalchemy.dialects.')]\n"
        "print(sorted({name[2] for name in names}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert done.stdout.splitlines() == ["{'count': 0}", "['_typing', 'sqlite']"]


def test_missing_table_is_an_error_naming_file_and_key(tmp_path: Path) -> None:
    create_table(f"sqlite:///{tmp_path / 'primary.db'}")
    with pytest.raises(ConfigError) as caught:
        start(tmp_path, collection="nope")
    assert "archivist.toml: archive[0].collection" in caught.value.message
    assert "nope" in caught.value.message


def test_missing_order_by_column_is_an_error_naming_file_and_key(tmp_path: Path) -> None:
    create_table(f"sqlite:///{tmp_path / 'primary.db'}")
    with pytest.raises(ConfigError) as caught:
        start(tmp_path, order_by="foo")
    assert (
        "archivist.toml: archive[0].order_by: column 'foo' does not exist in table chat_messages"
        in caught.value.message
    )


def test_table_without_primary_key_is_an_error(tmp_path: Path) -> None:
    create_table(
        f"sqlite:///{tmp_path / 'primary.db'}",
        columns=[ColumnSpec("id", Kind.INTEGER), ColumnSpec("created_at", Kind.DATETIME)],
        pk=(),
    )
    with pytest.raises(ConfigError, match="no primary key"):
        start(tmp_path)


def test_plan_reports_what_would_move_without_moving_it(tmp_path: Path) -> None:
    from datasupport import started

    url = f"sqlite:///{tmp_path / 'primary.db'}"
    create_table(url)

    async def go() -> object:
        async with started(url, f"sqlite:///{tmp_path / 'archive.db'}") as daemon:
            items = [
                {
                    "id": i,
                    "room": "r",
                    "created_at": f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}+00:00",
                }
                for i in range(1, 121)
            ]
            await daemon.execute(
                "data/create",
                {"collection": "chat_messages", "dbHandle": "primary", "items": items},
            )
            plan = await daemon.plan("chat_messages")
            assert await daemon.count("chat_messages") == 120
            return plan

    plan = run(go())
    assert plan.to_archive == 30  # type: ignore[attr-defined]
    assert plan.oldest == "2024-01-01T00:00:01+00:00"  # type: ignore[attr-defined]
    assert plan.newest == "2024-01-01T00:00:30+00:00"  # type: ignore[attr-defined]
    assert plan.archive_table == "will be created"  # type: ignore[attr-defined]
    assert plan.path.startswith("copied by the daemon inside the database")  # type: ignore[attr-defined]


def start_with(handles: dict[str, str]) -> None:
    config = make_config(
        handles,
        [
            ArchiveConfig(
                collection="chat_messages", order_by="created_at", max_rows=10, rows_per_archive=1
            )
        ],
    )

    async def go() -> None:
        daemon = DataDaemon(config)
        await daemon.start()
        await daemon.close()

    run(go())


def test_one_sqlite_file_under_two_names_is_refused_before_anything_moves(
    tmp_path: Path,
) -> None:
    create_table(f"sqlite:///{tmp_path / 'primary.db'}")
    (tmp_path / "alias.db").symlink_to(tmp_path / "primary.db")
    with pytest.raises(ConfigError, match="reach the same database"):
        start_with(
            {
                "primary": f"sqlite:///{tmp_path / 'primary.db'}",
                "archive": f"sqlite:///{tmp_path / 'alias.db'}",
            }
        )


def test_one_server_database_under_two_host_names_is_refused(pg_url: str) -> None:
    create_table(pg_url)
    alias = pg_url.replace("127.0.0.1", "localhost")
    assert alias != pg_url
    with pytest.raises(ConfigError, match=r"archive\[0\]\.dest_handle: handles 'primary'"):
        start_with({"primary": pg_url, "archive": alias})


def test_one_mariadb_database_reached_as_another_user_is_refused(mysql_url: str) -> None:
    create_table(mysql_url)
    server = make_url(mysql_url)
    user = f"archivist_alias_{secrets.token_hex(4)}"
    sql(mysql_url, f"CREATE USER '{user}'@'%%' IDENTIFIED BY 'alias-pw'")
    try:
        sql(mysql_url, f"GRANT ALL ON `{server.database}`.* TO '{user}'@'%%'")
        alias = server.set(username=user, password="alias-pw", host="localhost")
        with pytest.raises(ConfigError, match="reach the same database"):
            start_with({"primary": mysql_url, "archive": alias.render_as_string(False)})
    finally:
        sql(mysql_url, f"DROP USER '{user}'@'%%'")


def test_two_databases_on_one_server_are_distinct(
    pg_url: str, fresh_db: Callable[[str], str]
) -> None:
    create_table(pg_url)
    other = fresh_db("postgresql")
    start_with({"primary": pg_url, "archive": other})


def _worker_children() -> set[int]:
    """This process's children running ``archivist worker`` (read from /proc)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and b"worker" in command:
            found.add(int(entry.name))
    return found


def test_a_start_that_fails_stops_the_worker_started_beside_it(tmp_path: Path) -> None:
    """The worker starts while the data daemon starts; when the data daemon cannot start,
    that worker is stopped (and reaped) before the error reaches the caller."""
    create_table(f"sqlite:///{tmp_path / 'primary.db'}")
    path = tmp_path / "archivist.toml"
    path.write_text(CONFIG.format(collection="nope", order_by="created_at"))
    config = load_config(path)
    started: list[int] = []

    async def go() -> None:
        spawn = WorkerProcess.spawn

        async def spawn_and_note(self: WorkerProcess) -> None:
            await spawn(self)
            assert self.pid is not None
            started.append(self.pid)

        WorkerProcess.spawn = spawn_and_note  # type: ignore[method-assign]
        try:
            async with running(config, Launch(private_socket=True, watch=False)):
                pass
        finally:
            WorkerProcess.spawn = spawn  # type: ignore[method-assign]

    before = _worker_children()
    with pytest.raises(ConfigError):
        run(go())
    assert len(started) == 1, "the worker was not started beside the data daemon"
    assert started[0] not in _worker_children() - before
    assert not Path(f"/proc/{started[0]}").exists(), "the worker still runs (or was not reaped)"
