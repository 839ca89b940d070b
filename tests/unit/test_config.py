"""Configuration: TOML names, defaults, and errors that name the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from archivist.config import ArchiveConfig, load_config, make_config, resolve_sqlite_path
from archivist.errors import ConfigError

FULL = """
[handles]
primary = "sqlite:///data/primary.db"
archive = "sqlite:///data/archive.db"

[worker]
socket = "/run/user/1000/archivist/worker.sock"
concurrency = 3

[daemon]
check_interval = 60
health_interval = 30
entities = ["myapp.models"]

[[archive]]
collection = "chat_messages"
order_by = "created_at"
max_rows = 10000
rows_per_archive = 1000
batch_size = 500
source_handle = "primary"
dest_handle = "archive"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "archivist.toml"
    path.write_text(text)
    return path


def test_full_example_loads_with_its_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    assert config.worker.socket == "/run/user/1000/archivist/worker.sock"
    assert config.worker.concurrency == 3
    assert config.worker.frame_limit == 16 * 1024 * 1024
    assert config.daemon.check_interval == 60
    assert config.daemon.entities == ["myapp.models"]
    entry = config.archive[0]
    assert (entry.collection, entry.order_by, entry.max_rows, entry.batch_size) == (
        "chat_messages",
        "created_at",
        10000,
        500,
    )


def test_relative_sqlite_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    assert config.handles["primary"] == f"sqlite:///{tmp_path.resolve()}/data/primary.db"


def test_defaults_fill_optional_keys(tmp_path: Path) -> None:
    text = """
[handles]
primary = "sqlite:///p.db"
archive = "postgresql://u:pw@localhost/db"
[[archive]]
collection = "events"
order_by = "ts"
max_rows = 10
rows_per_archive = 4
"""
    config = load_config(write(tmp_path, text))
    entry = config.archive[0]
    assert entry.batch_size is None and entry.effective_batch_size == 4
    assert (entry.source_handle, entry.dest_handle) == ("primary", "archive")
    assert config.daemon.health_interval == 30
    assert config.handles["archive"] == "postgresql://u:pw@localhost/db"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (FULL.replace("max_rows = 10000", 'max_rows = "many"'), "archive[0].max_rows"),
        (FULL.replace("concurrency = 3", "concurrency = 0"), "worker.concurrency"),
        (FULL.replace('order_by = "created_at"', 'order_by = "x; DROP"'), "archive[0].order_by"),
        (FULL.replace('dest_handle = "archive"', 'dest_handle = "cold"'), "archive[0].dest_handle"),
        (FULL.replace("[daemon]", "[daemon]\ncolour = 1"), "daemon"),
        (
            FULL + "\n[[archive]]\ncollection='chat_messages'\norder_by='a'\n"
            "max_rows=1\nrows_per_archive=1\n",
            "archive[1].collection",
        ),
        ("[handles\n", "not valid TOML"),
        (FULL.replace("batch_size = 500", "batch_size = 500\nmin_rate = 0"), "min_rate"),
        (FULL.replace("batch_size = 500", "batch_size = 500\nmin_rate = 'x'"), "min_rate"),
    ],
)
def test_bad_config_is_an_error_naming_file_and_key(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in caught.value.message
    assert fragment in caught.value.message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_config_can_be_built_in_python() -> None:
    config = make_config(
        {"primary": "sqlite://", "archive": "sqlite://"},
        [ArchiveConfig(collection="t", order_by="ts", max_rows=5, rows_per_archive=2)],
    )
    assert config.archive[0].effective_batch_size == 2
    with pytest.raises(ConfigError, match="unknown handle 'cold'"):
        make_config(
            {"primary": "sqlite://"},
            [
                ArchiveConfig(
                    collection="t",
                    order_by="ts",
                    max_rows=5,
                    rows_per_archive=2,
                    dest_handle="cold",
                )
            ],
        )


def test_worker_settings_reach_the_worker_it_starts_as_options_it_accepts(
    tmp_path: Path,
) -> None:
    """The daemon starts its worker with the [worker] pacing keys as options; the worker's
    command line must accept every one of them with the configured values."""
    from archivist.cli import worker

    text = FULL.replace(
        "concurrency = 3", "concurrency = 3\nnice_ratio = 1.5\npause = 0.1\nyield_ratio = 4"
    )
    config = load_config(write(tmp_path, text))
    args = config.worker.command_line()
    assert args[args.index("--nice-ratio") + 1] == "1.5"
    context = worker.make_context("worker", list(args))
    assert context.params["nice_ratio"] == 1.5
    assert context.params["yield_ratio"] == 4
    assert context.params["pause"] == 0.1
    assert context.params["batch_time"] is None  # not given: the table's default holds


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("not a url", "handles.primary: not a database URL"),
        ("/var/data/primary.db", "handles.primary: not a database URL"),
        ("postgresql://db.example:abc/app", "its port 'abc' is not a number"),
    ],
)
def test_a_handle_that_is_no_database_url_is_an_error_naming_it(
    tmp_path: Path, url: str, problem: str
) -> None:
    path = write(tmp_path, FULL.replace('"sqlite:///data/primary.db"', f'"{url}"'))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert problem in caught.value.message
    assert str(path) in caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///data/p.db",
        "sqlite+pysqlite:///data/p.db?timeout=5",
        "sqlite:///data/with%20space%25.db",
        "sqlite:///:memory:",
        "sqlite://",
        "sqlite:///file:p.db?mode=ro&uri=true",
        "sqlite:////abs/p.db",
        "postgresql+psycopg://u:p%40ss@[::1]:5432/app?sslmode=disable",
        "mysql+pymysql://root@127.0.0.1:3306/app",
    ],
)
def test_a_handle_url_is_read_as_sqlalchemy_reads_it(tmp_path: Path, url: str) -> None:
    """The config reads URLs with SQLAlchemy's own pattern (not SQLAlchemy, which the
    command line imports only once the worker is starting): the same database comes out,
    a relative SQLite file resolved against the config's folder, the rest untouched."""
    from sqlalchemy.engine import make_url

    resolved = make_url(resolve_sqlite_path(url, tmp_path))
    original = make_url(url)
    database = original.database
    relative = (
        original.drivername.startswith("sqlite")
        and database not in (None, "", ":memory:")
        and not database.startswith(("file:", "/"))
    )
    if relative:
        assert database is not None
        assert resolved.database == str((tmp_path / database).resolve())
        assert resolved.set(database=database) == original
    else:
        assert resolved == original


def test_reading_the_config_does_not_import_sqlalchemy(tmp_path: Path) -> None:
    """`archivist archive` and `run` start the worker right after reading the config, and
    import SQLAlchemy (~0.25 s) while it starts, not before."""
    path = write(tmp_path, FULL)
    script = (
        "import sys\n"
        "from archivist import cli\n"
        "from archivist.daemon import runtime\n"
        f"cli.load({str(path)!r})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_min_rate_reaches_the_policy_from_the_file_and_the_decorator(tmp_path: Path) -> None:
    from archivist.data.registry import EntityRegistry, make_entity

    text = FULL.replace("batch_size = 500", "min_rate = 150").replace('["myapp.models"]', "[]")
    config = load_config(write(tmp_path, text))
    assert config.archive[0].min_rate == 150.0
    (entity,) = EntityRegistry.from_config(config)
    assert entity.min_rate == 150.0
    assert make_entity("t", order_by="id", max_rows=1, rows_per_archive=1).min_rate is None
    with pytest.raises(ConfigError, match="min_rate must be a number of rows/s > 0"):
        make_entity("t", order_by="id", max_rows=1, rows_per_archive=1, min_rate=-1)


def test_reclaim_is_off_true_or_full(tmp_path: Path) -> None:
    from archivist.config import config_from_dict

    def policy(value: object) -> dict[str, object]:
        entry = {"collection": "t", "order_by": "id", "max_rows": 10, "rows_per_archive": 1}
        return {
            "handles": {"primary": "sqlite://", "archive": "sqlite:///a.db"},
            "archive": [{**entry, "reclaim": value}],
        }

    assert config_from_dict(policy(True)).archive[0].reclaim is True
    assert config_from_dict(policy("full")).archive[0].reclaim == "full"
    assert (
        ArchiveConfig(collection="t", order_by="id", max_rows=1, rows_per_archive=1).reclaim
        is False
    )
    with pytest.raises(ConfigError, match=r"archive\[0\]\.reclaim"):
        config_from_dict(policy("yes"))
