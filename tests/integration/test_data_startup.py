"""DataDaemon start-up: a config that does not match the database is a clear error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from archivist.config import ArchiveConfig, load_config, make_config
from archivist.data import DataDaemon
from archivist.data.columns import ColumnSpec, Kind
from archivist.errors import ConfigError
from datasupport import create_table, run

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


def test_two_databases_on_one_server_are_distinct(
    pg_url: str, fresh_db: Callable[[str], str]
) -> None:
    create_table(pg_url)
    other = fresh_db("postgresql")
    start_with({"primary": pg_url, "archive": other})
