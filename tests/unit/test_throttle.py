"""The worker's throttle: pause file, load limits, a design-only daemon, one budget per database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from archivist.errors import RemoteError
from archivist.protocol import JSONObject
from archivist.worker.throttle import REREAD_AFTER, Throttle, ThrottleSettings, capped_rest


class LoadReadings:
    """Answers data/load with the readings it is given, in turn (the last one repeats)."""

    def __init__(self, *readings: JSONObject) -> None:
        self.readings = list(readings)
        self.calls = 0

    async def __call__(self, target: str, params: JSONObject) -> JSONObject:
        assert target == "data/load"
        self.calls += 1
        return self.readings[min(self.calls, len(self.readings)) - 1]


def wait(throttle: Throttle, execute: LoadReadings) -> list[str | None]:
    reasons: list[str | None] = []
    asyncio.run(throttle.wait_turn("primary", execute, reasons.append, lambda: False))
    return reasons


def test_a_quiet_database_lets_the_batch_start_at_once() -> None:
    reasons = wait(Throttle(ThrottleSettings()), LoadReadings({"latencyMs": 0.3}))
    assert reasons == [None]


def test_a_slow_probe_pauses_until_it_is_fast_again() -> None:
    throttle = Throttle(ThrottleSettings(max_latency_ms=50, load_interval=0.01))
    readings = LoadReadings({"latencyMs": 120.0}, {"latencyMs": 80.0}, {"latencyMs": 2.0})
    reasons = wait(throttle, readings)
    assert reasons[-1] is None
    assert reasons[0] == "primary probe took 120 ms (limit 50 ms)"
    assert readings.calls == 3


def test_too_many_busy_connections_pause_with_the_engines_metric_named() -> None:
    throttle = Throttle(ThrottleSettings(max_active=4, load_interval=0.01))
    readings = LoadReadings(
        {"latencyMs": 1.0, "active": 9, "metric": "active backends"},
        {"latencyMs": 1.0, "active": 2, "metric": "active backends"},
    )
    reasons = wait(throttle, readings)
    assert reasons == ["primary has 9 active backends (limit 4)", None]


def test_the_daemons_hold_keeps_batches_waiting_until_it_clears() -> None:
    # A replica lags: the daemon says so in data/load's optional "hold", and the worker
    # waits with that reason, even with no load limits of its own.
    throttle = Throttle(ThrottleSettings(max_latency_ms=None, max_active=None, load_interval=0.01))
    readings = LoadReadings(
        {"latencyMs": 1.0, "hold": "replica1 lags 12 s"},
        {"latencyMs": 1.0, "hold": "replica1 lags 13 s"},
        {"latencyMs": 1.0},
    )
    reasons = wait(throttle, readings)
    assert reasons == ["replica1 lags 12 s", "replica1 lags 13 s", None]
    assert readings.calls == 3


def test_a_failed_load_reading_is_not_the_end_of_the_daemons_holds() -> None:
    # data/load fails once with a database error (the source restarting): the worker asks
    # again, and still sees the daemon's hold (a lagging replica) after it.
    class Flaky(LoadReadings):
        failed = False

        async def __call__(self, target: str, params: JSONObject) -> JSONObject:
            if not self.failed:
                self.failed = True
                raise RemoteError("database error on handle 'primary': gone", "db_error")
            return await super().__call__(target, params)

    throttle = Throttle(ThrottleSettings(load_interval=0.01))
    readings = Flaky({"latencyMs": 1.0, "hold": "replica1 lags 12 s"}, {"latencyMs": 1.0})
    first = wait(throttle, readings)
    assert first == [None]  # no reading: nothing to wait for (the batch itself may fail)
    assert wait(throttle, readings) == ["replica1 lags 12 s", None]


def test_a_daemon_without_data_load_is_not_asked_again() -> None:
    class DesignOnly:
        calls = 0

        async def __call__(self, target: str, params: JSONObject) -> JSONObject:
            self.calls += 1
            raise RemoteError("unknown command 'data/load'", "unknown_command")

    throttle = Throttle(ThrottleSettings())
    daemon = DesignOnly()
    for _ in range(3):
        asyncio.run(throttle.wait_turn("primary", daemon, lambda _: None, lambda: False))
    assert daemon.calls == 1


def test_the_pause_file_holds_batches_while_it_exists(tmp_path: Path) -> None:
    pause = tmp_path / "pause"
    pause.touch()
    throttle = Throttle(ThrottleSettings(pause_file=pause, max_latency_ms=None, max_active=None))
    reasons: list[str | None] = []

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, pause.unlink)
        started = loop.time()
        quiet = LoadReadings({"latencyMs": 0.3})
        await throttle.wait_turn("primary", quiet, reasons.append, lambda: False)
        return loop.time() - started

    waited = asyncio.run(scenario())
    assert waited >= 0.45
    assert reasons[0] == f"pause file {pause} exists"
    assert reasons[-1] is None


def test_tasks_on_one_database_take_turns_and_other_databases_do_not_wait() -> None:
    throttle = Throttle(ThrottleSettings(per_database=1))
    inside: dict[str, int] = {"primary": 0, "other": 0}
    most: dict[str, int] = {"primary": 0, "other": 0, "both": 0}

    async def batch(database: str) -> None:
        async with throttle.budget(database):
            inside[database] += 1
            most[database] = max(most[database], inside[database])
            most["both"] = max(most["both"], sum(inside.values()))
            await asyncio.sleep(0.01)
            inside[database] -= 1

    async def scenario() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(3):
                group.create_task(batch("primary"))
                group.create_task(batch("other"))

    asyncio.run(scenario())
    assert most == {"primary": 1, "other": 1, "both": 2}


def test_the_rest_after_a_batch_is_the_pause_plus_the_nice_ratio_of_its_duration() -> None:
    assert ThrottleSettings().rest_after(0.4) == 0.0
    assert ThrottleSettings(pause=0.25).rest_after(0.4) == 0.25
    assert ThrottleSettings(nice_ratio=1.5).rest_after(0.4) == pytest.approx(0.6)
    assert ThrottleSettings(pause=0.25, nice_ratio=2).rest_after(0.5) == 1.25
    assert ThrottleSettings(pause=0.25, nice_ratio=2).rest_after(-1) == 0.25


def test_yielding_to_the_application_rests_the_yield_ratio_of_the_batch_at_least() -> None:
    assert ThrottleSettings().rest_after(0.1, yielding=True) == pytest.approx(20.0)  # default 200
    assert ThrottleSettings(yield_ratio=5).rest_after(0.1, yielding=True) == pytest.approx(0.5)
    # The longer of the two rests, not their sum: pause and nice_ratio still hold alone.
    assert ThrottleSettings(pause=2.0, yield_ratio=5).rest_after(0.1, yielding=True) == 2.0
    assert ThrottleSettings(pause=2.0, yield_ratio=5).rest_after(0.1) == 2.0
    assert ThrottleSettings(yield_ratio=0).rest_after(0.1, yielding=True) == 0.0


def yields(throttle: Throttle, execute: LoadReadings, since: float | None = None) -> str | None:
    return asyncio.run(throttle.yielding("primary", execute, since=since))


def test_a_task_yields_while_other_sessions_use_its_database() -> None:
    throttle = Throttle(ThrottleSettings(load_interval=0.0))
    assert yields(throttle, LoadReadings({"latencyMs": 1.0, "others": 1})) == (
        "yielding to 1 other session using primary"
    )
    assert yields(throttle, LoadReadings({"latencyMs": 1.0, "others": 3})) == (
        "yielding to 3 other sessions using primary"
    )
    assert yields(throttle, LoadReadings({"latencyMs": 1.0, "others": 0})) is None
    # A daemon that does not count other sessions (or says nonsense) is not yielded to.
    assert yields(throttle, LoadReadings({"latencyMs": 1.0})) is None
    assert yields(throttle, LoadReadings({"latencyMs": 1.0, "others": True})) is None
    assert yields(throttle, LoadReadings({"latencyMs": 1.0, "others": "2"})) is None


def test_a_zero_yield_ratio_never_asks_whether_to_yield() -> None:
    readings = LoadReadings({"latencyMs": 1.0, "others": 5})
    assert yields(Throttle(ThrottleSettings(yield_ratio=0)), readings) is None
    assert readings.calls == 0


def test_whether_to_yield_is_read_again_when_the_last_reading_is_older_than_asked() -> None:
    throttle = Throttle(ThrottleSettings(load_interval=3600))
    readings = LoadReadings({"latencyMs": 1.0, "others": 0}, {"latencyMs": 1.0, "others": 1})
    assert yields(throttle, readings) is None
    assert yields(throttle, readings) is None  # the reading is reused within load_interval
    assert readings.calls == 1
    # Asked for one newer than a moment (a delete) just after it was taken: still reused,
    # for REREAD_AFTER, so that a task does not read the load after every batch.
    assert yields(throttle, readings, since=time.monotonic()) is None
    assert readings.calls == 1
    time.sleep(REREAD_AFTER)
    assert yields(throttle, readings, since=time.monotonic()) is not None
    assert readings.calls == 2


def test_the_daemons_min_rate_caps_the_yielding_rest_and_nothing_else() -> None:
    # 500 rows in 0.5 s at yield_ratio 200 would rest 100 s (5 rows/s); at 100 rows/s at
    # least, batch plus rest may last 5 s: 4.5 s of rest.
    assert capped_rest(500, 0.5, 100.0, 100.0) == pytest.approx(4.5)
    assert 500 / (0.5 + capped_rest(500, 0.5, 100.0, 100.0)) == pytest.approx(100.0)
    # A rest already short enough is kept: the rate is a floor, not a target.
    assert capped_rest(500, 0.5, 1.0, 100.0) == 1.0
    # A batch slower than the rate gets no rest at all, never a negative one.
    assert capped_rest(100, 2.0, 400.0, 100.0) == 0.0
    # No rate (or no rows to judge by): the rest as asked.
    assert capped_rest(500, 0.5, 100.0, None) == 100.0
    assert capped_rest(500, 0.5, 100.0, 0.0) == 100.0
    assert capped_rest(0, 0.5, 100.0, 100.0) == 100.0
    settings = ThrottleSettings()
    assert settings.rest_after(0.5, yielding=True, batch_rows=500, min_rate=100.0) == (
        pytest.approx(4.5)
    )
    # The plain pause and nice_ratio, which the user set, are not cut by the rate.
    assert ThrottleSettings(pause=8.0).rest_after(
        0.5, yielding=True, batch_rows=500, min_rate=100.0
    ) == pytest.approx(8.0)
    assert settings.rest_after(0.5, batch_rows=500, min_rate=100.0) == 0.0
