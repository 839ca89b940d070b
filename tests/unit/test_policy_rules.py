"""The pure rules of a policy: durations, cutoffs, the decision of a check, task filters,
time windows (with an injected clock: nothing here sleeps)."""

from __future__ import annotations

import datetime as dt

import pytest

from archivist.config import ArchiveConfig, make_config
from archivist.data.registry import make_entity
from archivist.errors import ConfigError
from archivist.policy import (
    Decision,
    Duration,
    cutoff,
    decide,
    hold_reason,
    parse_duration,
    parse_rules,
    parse_window,
    task_filter,
    window_state,
)

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "months", "seconds"),
    [
        ("90d", 0, 90 * 86400),
        ("45s", 0, 45),
        ("30m", 0, 1800),
        ("12h", 0, 43200),
        ("2w", 0, 14 * 86400),
        (" 7 d ", 0, 7 * 86400),
        ("P3M", 3, 0),
        ("P1Y", 12, 0),
        ("PT12H", 0, 43200),
        ("P1Y2M10DT2H30M", 14, 10 * 86400 + 2 * 3600 + 30 * 60),
        ("P2W", 0, 14 * 86400),
        ("pt0.5s", 0, 0.5),
    ],
)
def test_durations_in_short_units_and_iso_8601(text: str, months: int, seconds: float) -> None:
    duration = parse_duration(text)
    assert (duration.months, duration.seconds) == (months, seconds)


@pytest.mark.parametrize("text", ["", "90", "90 days", "d", "P", "PT", "P1H", "0d", "PT0S", "-1d"])
def test_a_bad_duration_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|longer than zero"):
        parse_duration(text)


def test_months_and_years_are_calendar_arithmetic_from_now() -> None:
    assert Duration(months=3).before(at("2024-05-15T10:00:00")) == at("2024-02-15T10:00:00")
    # The day is clamped to the month's end: 31 March minus a month is 29 February (2024).
    assert Duration(months=1).before(at("2024-03-31T00:00:00")) == at("2024-02-29T00:00:00")
    assert Duration(months=12).before(at("2024-02-29T12:00:00")) == at("2023-02-28T12:00:00")
    assert Duration(months=14).before(at("2024-01-10T00:00:00")) == at("2022-11-10T00:00:00")
    both = parse_duration("P1Y2M10DT2H30M")
    assert both.before(at("2024-05-20T12:00:00")) == at("2023-03-10T09:30:00")


def test_the_cutoff_is_utc_whatever_the_clocks_zone() -> None:
    berlin = dt.timezone(dt.timedelta(hours=2))
    now = dt.datetime(2024, 6, 1, 2, 0, tzinfo=berlin)  # 2024-06-01 00:00 UTC
    assert cutoff(now, parse_duration("1d")) == at("2024-05-31T00:00:00")
    assert cutoff(now, parse_duration("1d")).utcoffset() == dt.timedelta(0)
    with pytest.raises(ValueError, match="aware"):
        cutoff(dt.datetime(2024, 6, 1), parse_duration("1d"))


# --- what a check decides --------------------------------------------------------------------


def test_the_larger_of_age_and_excess_is_moved() -> None:
    # 1,000 rows, max_rows 900 down to 800: 200 over; 300 are old: the age rule wins.
    assert decide(excess=200, aged=300) == Decision(300, "age")
    # Only 50 are old: the oldest 200 go (which include them when the age is order_by).
    assert decide(excess=200, aged=50) == Decision(200, "count")
    # Within max_rows: the old rows still go.
    assert decide(excess=0, aged=50) == Decision(50, "age")
    assert decide(excess=0, aged=0) == Decision(0, "none")
    # max_rows only (today's rule).
    assert decide(excess=101, aged=None) == Decision(101, "count")
    assert decide(excess=0, aged=None) == Decision(0, "none")


def test_a_policy_without_max_rows_is_never_over_it() -> None:
    age_only = make_entity("events", order_by="ts", max_rows=None, rows_per_archive=None)
    assert age_only.rows_to_archive(10**9) == 0
    limited = make_entity("events", order_by="ts", max_rows=900, rows_per_archive=100)
    assert limited.rows_to_archive(1000) == 200


def test_a_tasks_filter_is_where_and_the_age_below_the_cutoff() -> None:
    where = {"status": "closed", "tenant_id": {"$in": [1, 2]}}
    assert task_filter(where, "created_at", "2024-01-01T00:00:00+00:00") == {
        "status": "closed",
        "tenant_id": {"$in": [1, 2]},
        "created_at": {"$lt": "2024-01-01T00:00:00+00:00"},
    }
    assert task_filter(None, "ts", 1700000000) == {"ts": {"$lt": 1700000000}}
    assert task_filter(where, None, None) == where
    assert task_filter(None, None, None) is None
    # A where on the age column keeps its own conditions beside the cutoff.
    assert task_filter({"ts": {"$gte": 5}}, "ts", 9) == {"ts": {"$gte": 5, "$lt": 9}}
    assert task_filter({"ts": 5}, "ts", 9) == {"ts": {"$eq": 5, "$lt": 9}}


# --- rules and their errors ------------------------------------------------------------------


def test_rules_are_checked_and_errors_name_the_key() -> None:
    rules = parse_rules(older_than="90d", where={"a": 1}, window="22:00-04:00", max_runtime="2h")
    assert rules.older_than == parse_duration("90d")
    assert rules.max_runtime == 7200
    assert rules.mode == "move"
    problems = {
        "older_than: not a duration": {"older_than": "ninety days"},
        "max_rows: give max_rows, older_than, or both": {},
        "age_field: needs older_than": {"age_field": "ts", "max_rows": 5},
        "time_unit: expected": {"older_than": "1d", "time_unit": "us"},
        "mode: expected one of move, copy, purge": {"older_than": "1d", "mode": "delete"},
        "max_rows: a copy policy never deletes": {"mode": "copy", "max_rows": 5},
        "window: not a window": {"older_than": "1d", "window": "1-5"},
        "window: unknown time zone": {
            "older_than": "1d",
            "window": "01:00-05:00",
            "timezone": "Mars/Olympus",
        },
        "timezone: needs a window": {"older_than": "1d", "timezone": "UTC"},
        "max_runtime: months and years": {"older_than": "1d", "max_runtime": "P1M"},
        "where.ts: $lt on the age column conflicts": {
            "older_than": "1d",
            "age_field": "ts",
            "where": {"ts": {"$lt": 3}},
        },
    }
    for message, keys in problems.items():
        with pytest.raises(ValueError, match=message.replace("$", r"\$")):
            parse_rules(**keys)  # type: ignore[arg-type]


def test_the_config_file_names_the_policy_and_key_of_a_bad_rule() -> None:
    entry = ArchiveConfig(collection="events", order_by="ts", older_than="3 months")
    with pytest.raises(ConfigError, match=r"^<python>: archive\[0\]\.older_than: not a duration"):
        make_config({"primary": "sqlite://", "archive": "sqlite://"}, [entry])
    entry = ArchiveConfig(collection="events", order_by="ts", max_rows=10)
    with pytest.raises(ConfigError, match="max_rows and rows_per_archive go together"):
        make_config({"primary": "sqlite://", "archive": "sqlite://"}, [entry])


def test_a_purge_policy_needs_no_archive_handle() -> None:
    entry = ArchiveConfig(collection="sessions", order_by="ts", older_than="1d", mode="purge")
    config = make_config({"primary": "sqlite://"}, [entry])
    assert config.archive[0].mode == "purge"
    moving = ArchiveConfig(collection="sessions", order_by="ts", older_than="1d")
    with pytest.raises(ConfigError, match="unknown handle 'archive'"):
        make_config({"primary": "sqlite://"}, [moving])


# --- windows ---------------------------------------------------------------------------------


def test_a_window_within_a_day() -> None:
    window = parse_window("01:00-05:00")
    assert not window.contains(at("2024-06-01T00:59:59"))
    assert window.contains(at("2024-06-01T01:00:00"))
    assert window.contains(at("2024-06-01T04:59:59"))
    assert not window.contains(at("2024-06-01T05:00:00"))
    assert str(window) == "01:00-05:00"


def test_a_window_across_midnight() -> None:
    window = parse_window("22:00-04:00")
    assert window.contains(at("2024-06-01T23:30:00"))
    assert window.contains(at("2024-06-02T03:59:00"))
    assert not window.contains(at("2024-06-02T04:00:00"))
    assert not window.contains(at("2024-06-01T21:59:00"))
    # Both halves belong to the run that opened at 22:00 the day before.
    assert window.opened_at(at("2024-06-02T03:00:00")) == at("2024-06-01T22:00:00")
    assert window.opened_at(at("2024-06-01T23:00:00")) == at("2024-06-01T22:00:00")
    assert window.opened_at(at("2024-06-01T12:00:00")) is None


def test_a_window_in_a_time_zone_follows_its_summer_time() -> None:
    window = parse_window("01:00-05:00", "Europe/Berlin")
    assert window.contains(at("2024-01-15T00:30:00"))  # 01:30 CET (UTC+1)
    assert not window.contains(at("2024-01-15T04:30:00"))  # 05:30 CET
    assert window.contains(at("2024-07-15T02:30:00"))  # 04:30 CEST (UTC+2)
    assert not window.contains(at("2024-07-15T03:30:00"))  # 05:30 CEST


def test_the_window_state_of_a_policy() -> None:
    rules = parse_rules(older_than="1d", window="01:00-05:00", max_runtime="1h")
    assert window_state(rules, at("2024-06-01T00:30:00")) == "waiting"
    assert window_state(rules, at("2024-06-01T02:00:00")) == "open"
    opened = at("2024-06-01T01:00:00")
    assert window_state(rules, at("2024-06-01T02:00:00"), spent_in=opened) == "spent"
    assert window_state(rules, at("2024-06-02T02:00:00"), spent_in=opened) == "open"
    assert window_state(parse_rules(older_than="1d"), at("2024-06-01T12:00:00")) == "open"


@pytest.mark.parametrize("text", ["1:00-5", "25:00-05:00", "01:00-01:00", "01:60-02:00", "x"])
def test_a_bad_window_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="window"):
        parse_window(text)


def test_why_a_policy_holds_its_batches() -> None:
    rules = parse_rules(older_than="1d", window="01:00-05:00", max_runtime="2h")
    night = at("2024-06-01T01:30:00")
    assert hold_reason(rules, at("2024-06-01T12:00:00")) == "waiting for window 01:00-05:00"
    assert hold_reason(rules, night) is None
    assert hold_reason(rules, night, started=at("2024-06-01T01:00:00")) is None
    assert hold_reason(rules, at("2024-06-01T03:00:00"), started=at("2024-06-01T01:00:00")) == (
        "max_runtime 2h reached"
    )
    spent = "max_runtime used up in this window; waiting for window 01:00-05:00"
    assert hold_reason(rules, night, spent_in=at("2024-06-01T01:00:00")) == spent
    assert hold_reason(parse_rules(older_than="1d", max_runtime="90s"), night) is None
    no_window = parse_rules(older_than="1d", max_runtime="90s")
    assert hold_reason(no_window, night, started=night - dt.timedelta(seconds=90)) == (
        "max_runtime 90s reached"
    )
