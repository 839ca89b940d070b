"""The keep-up rule against a simulated table: the application adds rows at a steady rate,
archivist moves them at the rate the policy's state gives, checks come at a fixed interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from archivist.daemon.keepup import KeepUp, read_state, write_state

MAX_ROWS = 50_000
ROWS_PER_ARCHIVE = 1_000
BATCH = 1_000
INTERVAL = 5.0
YIELDING = 69.0
"""Rows/s archivist moves while it yields fully (the benchmark's figure on SQLite)."""


@dataclass
class Simulated:
    """A table, the application adding ``growth`` rows/s, and the daemon's policy loop."""

    growth: float
    keep_up: bool = True
    rows: float = MAX_ROWS + 5_000.0
    t: float = 0.0

    def __post_init__(self) -> None:
        self.policy = KeepUp(max_rows=MAX_ROWS)
        self.task_left = 0.0
        self.task_rate = 0.0
        self.moved = 0.0
        self.counts: list[int] = []
        self.rates: list[float | None] = []
        self.task_rates: list[float] = []

    def check(self) -> None:
        """One check, as the daemon's: observe, then queue a task if none is unfinished."""
        count = round(self.rows)
        self.policy.observe(count, self.t, round(self.moved))
        self.moved = 0.0
        self.counts.append(count)
        self.rates.append(self.policy.rate)
        if self.task_left <= 0 and count > MAX_ROWS:
            self.task_left = count - (MAX_ROWS - ROWS_PER_ARCHIVE)
            asked = self.policy.rate if self.keep_up else None
            # The worker rests less when asked (never more): the task moves at the faster.
            self.task_rate = max(YIELDING, asked or 0.0)
            self.task_rates.append(self.task_rate)

    def run(self, checks: int, step: float = 0.1) -> None:
        for _ in range(checks):
            self.check()
            for _ in range(round(INTERVAL / step)):
                self.t += step
                self.rows += self.growth * step
                if self.task_left > 0:
                    moved = min(self.task_left, self.task_rate * step)
                    self.task_left -= moved
                    self.rows -= moved
                    self.moved += moved


def test_a_table_outgrowing_yielding_archivist_comes_back_within_its_limit() -> None:
    table = Simulated(growth=120.0)
    table.run(checks=120)
    # The first task (no growth known yet) runs at the yielding rate and falls behind...
    assert table.counts[2] > table.counts[0]
    # ...the daemon asks for 1.5x the growth it measured...
    assert table.rates[-1] == pytest.approx(180.0, rel=0.05)
    # ...and the table converges back, then stays within max_rows + batch_size.
    settled = next(i for i, c in enumerate(table.counts) if c <= MAX_ROWS + BATCH)
    assert settled < 60
    assert max(table.counts[settled:]) <= MAX_ROWS + BATCH


def test_without_keeping_up_the_same_table_grows_without_bound() -> None:
    table = Simulated(growth=120.0, keep_up=False)
    table.run(checks=120)
    assert table.counts[-1] > table.counts[0] + 20_000
    assert min(table.counts[60:]) > MAX_ROWS + BATCH


def test_an_application_that_yielding_keeps_up_with_is_never_hurried() -> None:
    table = Simulated(growth=30.0)
    table.run(checks=60)
    # A floor may be asked (a table over its limit between a task's end and the next
    # check grows), but at 1.5x the growth it stays below what yielding moves anyway.
    assert all(rate is None or rate < YIELDING for rate in table.rates)
    assert set(table.task_rates) == {YIELDING}
    assert max(table.counts[40:]) <= MAX_ROWS + BATCH


def test_the_rate_relaxes_once_the_application_goes_quiet() -> None:
    table = Simulated(growth=120.0)
    table.run(checks=60)
    assert table.policy.rate is not None
    table.growth = 0.0
    table.run(checks=20)
    assert table.policy.rate is None
    assert table.policy.state == "within"
    assert table.counts[-1] <= MAX_ROWS


def test_a_steady_application_keeps_its_rate_after_relaxing() -> None:
    """Relaxing asks for 1.5x the growth measured then: never less than the application
    adds, or the table would fall behind again."""
    table = Simulated(growth=120.0)
    table.run(checks=120)
    assert table.policy.state == "keeps up"
    assert table.policy.rate is not None and table.policy.rate >= 120.0


def test_min_rate_is_a_floor_from_the_first_check() -> None:
    policy = KeepUp(max_rows=100, min_rate=500.0)
    assert policy.rate == 500.0
    assert policy.state == "unknown"
    policy.observe(150, 0.0, 0)
    policy.observe(200, 10.0, 100)  # 150 rows/s added: 225 asked, below the floor
    assert policy.growth == pytest.approx(15.0)
    assert policy.rate == 500.0
    assert policy.state == "behind"


def test_growth_counts_the_rows_archivist_moved_meanwhile() -> None:
    policy = KeepUp(max_rows=100)
    policy.observe(200, 0.0, 0)
    policy.observe(210, 10.0, 90)  # +10 net while 90 moved: the application added 100
    assert policy.growth == pytest.approx(10.0)
    assert policy.moving == pytest.approx(9.0)
    assert policy.rate == pytest.approx(15.0)
    policy.observe(150, 20.0, 160)  # shrinking: kept up, not relaxed yet
    assert policy.state == "keeps up"
    assert policy.rate == pytest.approx(15.0)


def test_a_table_just_crossing_its_limit_is_not_behind() -> None:
    policy = KeepUp(max_rows=100)
    policy.observe(90, 0.0, 0)
    policy.observe(120, 10.0, 0)
    assert policy.state == "within"
    assert policy.rate is None
    policy.observe(140, 20.0, 0)  # still over, and larger: the task did not keep up
    assert policy.state == "behind"
    assert policy.rate == pytest.approx(3.0)


def test_the_state_file_beside_the_socket_is_what_status_reads(tmp_path: Path) -> None:
    socket = tmp_path / "worker.sock"
    assert read_state(socket) is None  # no daemon has checked yet
    state = KeepUp(max_rows=10)
    state.observe(12, 0.0, 0)
    state.observe(15, 1.0, 0)
    write_state(socket, {"t": state})
    document = read_state(socket)
    assert document is not None and isinstance(document["at"], float)
    assert document["policies"] == {
        "t": {
            "rows": 15,
            "exact": True,
            "maxRows": 10,
            "growth": 3.0,
            "moving": 0.0,
            "minRate": 4.5,
            "state": "behind",
        }
    }
    assert [p.name for p in tmp_path.iterdir()] == ["worker.sock.keepup.json"]
