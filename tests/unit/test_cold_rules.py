"""The cold tier's pure parts: retention as a policy key, how restore sorts a batch of
archived rows against the source, and the --since/--until bounds."""

from __future__ import annotations

import asyncio

import pytest

from archivist.cold.restore import bound_value, restore_filter, sort_batch
from archivist.config import ArchiveConfig, make_config
from archivist.daemon.expiry import Expirer, ExpirySchedule
from archivist.data.columns import ColumnSpec, Kind
from archivist.errors import ConfigError, DatabaseError, InvalidParams, MoverBusy
from archivist.policy import parse_duration, parse_rules


def test_years_are_calendar_years() -> None:
    assert parse_duration("7y").months == 84
    with pytest.raises(ValueError, match="whole number"):
        parse_duration("1.5y")


def test_retention_is_a_policy_rule() -> None:
    rules = parse_rules(older_than="90d", retention="7y")
    assert rules.retention is not None and rules.retention.months == 84
    assert parse_rules(older_than="90d").retention is None


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"older_than": "90d", "retention": "30d"}, "not longer than older_than 90d"),
        ({"older_than": "P3M", "retention": "90d"}, "not longer than older_than P3M"),
        ({"older_than": "90d", "retention": "soon"}, "retention: not a duration"),
        ({"older_than": "90d", "retention": "1y", "mode": "purge"}, "archives nothing"),
    ],
)
def test_a_bad_retention_names_the_key(keys: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_rules(**keys)  # type: ignore[arg-type]


def test_the_config_file_names_the_policy_of_a_bad_retention() -> None:
    entry = ArchiveConfig(collection="t", order_by="c", older_than="90d", retention="1d")
    with pytest.raises(ConfigError, match=r"archive\[0\]\.retention: 1d is not longer"):
        make_config({"primary": "sqlite://", "archive": "sqlite://"}, [entry])


def test_a_batch_sorts_into_new_identical_and_differing_rows() -> None:
    archived = [
        {"id": 1, "body": "a"},
        {"id": 2, "body": "b"},
        {"id": 3, "body": "c", "meta": {"x": [1]}},
    ]
    current = {
        2: {"id": 2, "body": "b", "added_later": 5},  # a column the archive lacks: not compared
        3: {"id": 3, "body": "c", "meta": {"x": [2]}},
    }
    batch = sort_batch(archived, current, "id")
    assert [row["id"] for row in batch.new] == [1]
    assert [row["id"] for row in batch.same] == [2]
    assert [row["id"] for row in batch.differing] == [3]


def test_since_and_until_bound_the_order_column() -> None:
    assert restore_filter(None, "created_at", "2024-01-01", None) == {
        "created_at": {"$gte": "2024-01-01"}
    }
    assert restore_filter({"room": 1}, "at", 5, 9) == {"room": 1, "at": {"$gte": 5, "$lt": 9}}
    assert restore_filter({"room": 1}, "at", None, None) == {"room": 1}
    assert restore_filter(None, "at", None, None) is None
    with pytest.raises(InvalidParams, match="not both"):
        restore_filter({"at": {"$gt": 1}}, "at", 5, None)


def test_bounds_take_the_columns_form() -> None:
    aware = ColumnSpec("at", Kind.DATETIME, timezone=True)
    naive = ColumnSpec("at", Kind.DATETIME)
    assert bound_value(aware, "2024-03-01") == "2024-03-01T00:00:00+00:00"
    assert bound_value(aware, "2024-03-01T02:00:00+02:00") == "2024-03-01T00:00:00+00:00"
    assert bound_value(naive, "2024-03-01") == "2024-03-01T00:00:00"
    assert bound_value(ColumnSpec("n", Kind.INTEGER), "42") == 42
    with pytest.raises(InvalidParams, match="not one"):
        bound_value(ColumnSpec("n", Kind.INTEGER), "yesterday")
    with pytest.raises(InvalidParams, match="timestamps"):
        bound_value(aware, "March")


def test_expiry_runs_at_the_first_check_then_once_an_interval() -> None:
    schedule = ExpirySchedule(["a", "b"], interval=100.0)
    assert schedule.due(0.0) == ["a", "b"]
    schedule.ran("a", 5.0)
    assert schedule.due(50.0) == ["b"]
    assert schedule.due(105.0) == ["a", "b"]
    assert not ExpirySchedule([])


def test_an_expiry_that_fails_or_finds_the_lock_held_is_tried_at_the_next_check() -> None:
    outcomes: list[BaseException | None] = [MoverBusy("held by h:1"), DatabaseError("down"), None]
    runs: list[str] = []
    clock = [0.0]

    async def run(collection: str) -> None:
        runs.append(collection)
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    async def checks() -> None:
        expirer = Expirer(run, ["t"], interval=100.0, clock=lambda: clock[0])
        for moment in (0.0, 1.0, 2.0, 3.0):
            clock[0] = moment
            expirer.start(busy=lambda _: False)
            await expirer.wait()
        expirer.start(busy=lambda _: True)  # due later, but a task of it runs: not now
        clock[0] = 500.0
        expirer.start(busy=lambda _: True)
        await expirer.wait()

    asyncio.run(checks())
    assert runs == ["t", "t", "t"]  # busy, failed, done; then not due until 102
