"""``retention``: archived rows older than a policy's retention leave the archive for good,
in batches, by the age column; a dry run only counts them; the daemon expires at its check
(``archivist run --once``) and ``archivist expire`` does it now. SQL-table archives on
SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from archivist.cold import archives
from archivist.cold.retention import expire
from archivist.errors import ConfigError
from coldsupport import Cold
from datasupport import ENGINES, message
from e2esupport import archivist, count, write_config

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def aged(days: list[int], now: dt.datetime = NOW) -> list[dict[str, object]]:
    """Rows whose created_at is ``days[i]`` days before ``now`` (ids 1, 2, ...)."""
    return [
        message(i, created_at=(now - dt.timedelta(days=age)).isoformat())
        for i, age in enumerate(days, start=1)
    ]


@pytest.fixture(params=ENGINES)
def cold(request: pytest.FixtureRequest, fresh_db: Callable[[str], str]) -> Iterator[Cold]:
    trip = Cold(fresh_db("sqlite"), fresh_db(str(request.param)), retention="1y")
    yield trip
    trip.close()


@pytest.mark.timeout(120)
def test_rows_past_retention_leave_the_archive_in_batches(
    cold: Cold, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archives, "EXPIRE_BATCH", 3)
    cold.archive(aged([100, 200, 300, 364, 366, 400, 500, 700, 900, 1000, 2000]))
    batches: list[int] = []

    dry = cold.run(expire(cold.data, "chat_messages", now=NOW, dry_run=True))
    assert dry.expired.rows == 7  # type: ignore[attr-defined]
    assert len(cold.items("archive")) == 11

    done = cold.run(expire(cold.data, "chat_messages", now=NOW, progress=batches.append))

    assert done.expired.rows == 7  # type: ignore[attr-defined]
    assert batches == [3, 3, 1]
    assert [item["id"] for item in cold.items("archive")] == [1, 2, 3, 4]
    # 1y before 2026-06-01 12:00 UTC is 2025-06-01 12:00 UTC: by the calendar.
    assert done.before == dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)  # type: ignore[attr-defined]
    again = cold.run(expire(cold.data, "chat_messages", now=NOW))
    assert again.expired.rows == 0  # type: ignore[attr-defined]


def test_a_policy_without_retention_cannot_expire(fresh_db: Callable[[str], str]) -> None:
    trip = Cold(fresh_db("sqlite"), fresh_db("sqlite"))
    try:
        with pytest.raises(ConfigError, match="has no retention"):
            trip.run(expire(trip.data, "chat_messages", now=NOW))
    finally:
        trip.close()


def _config(tmp_path: Path, primary: str, archive: str) -> str:
    entry: dict[str, object] = {
        "collection": "chat_messages",
        "order_by": "created_at",
        "older_than": "30d",
        "retention": "1y",
    }
    handles = {"primary": primary, "archive": archive}
    return str(write_config(tmp_path / "archivist.toml", handles, [entry]))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("engine", ["sqlite", "mysql"])
def test_the_daemons_check_and_the_expire_command_apply_retention(
    engine: str, fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    primary, archive = fresh_db("sqlite"), fresh_db(engine)
    now = dt.datetime.now(dt.UTC)
    trip = Cold(primary, archive, retention="1y", older_than="30d")
    try:
        trip.archive(aged([40, 100, 400, 800], now))
        trip.execute("data/create", dbHandle="primary", items=aged([1, 2, 500], now)[:2])
    finally:
        trip.close()
    config = _config(tmp_path, primary, archive)

    dry = archivist("expire", "--config", config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 2 archived row(s) older than 1y" in dry.stdout
    assert count(archive) == 4

    once = archivist("run", "--once", "--config", config)
    assert once.returncode == 0, once.stderr
    assert count(archive) == 2 and count(primary) == 2

    # The same databases again, to archive a row past retention.
    trip = Cold(primary, archive, retention="1y", older_than="30d", create=False)
    try:
        trip.archive(aged([0, 0, 0, 0, 0, 600], now)[5:])
    finally:
        trip.close()
    done = archivist("expire", "chat_messages", "--config", config)
    assert done.returncode == 0, done.stderr
    assert "deleted 1 archived row(s) older than 1y" in done.stdout
    assert count(archive) == 2
