"""The supervisor's restart delay: longer for each crash in a row, reset by a healthy run."""

from __future__ import annotations

from archivist.daemon.supervisor import RESTART_DELAYS, RestartBackoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def crash_after(backoff: RestartBackoff, clock: Clock, seconds: float) -> float:
    backoff.started()
    clock.now += seconds
    delay = backoff.delay_after_exit()
    clock.now += delay
    return delay


def test_crashes_in_a_row_wait_longer_up_to_the_last_delay() -> None:
    clock = Clock()
    backoff = RestartBackoff(clock=clock)

    delays = [crash_after(backoff, clock, 1.0) for _ in range(len(RESTART_DELAYS) + 2)]

    assert delays == [*RESTART_DELAYS, RESTART_DELAYS[-1], RESTART_DELAYS[-1]]


def test_a_healthy_run_starts_the_delays_over() -> None:
    clock = Clock()
    backoff = RestartBackoff(healthy_after=60.0, clock=clock)
    for _ in range(len(RESTART_DELAYS)):
        crash_after(backoff, clock, 1.0)

    # Days later, after a healthy week: the next crash restarts at once, not after 5 s.
    assert crash_after(backoff, clock, 7 * 86400.0) == RESTART_DELAYS[0]
    assert crash_after(backoff, clock, 1.0) == RESTART_DELAYS[1]


def test_a_run_just_short_of_healthy_keeps_the_row() -> None:
    clock = Clock()
    backoff = RestartBackoff(healthy_after=60.0, clock=clock)
    crash_after(backoff, clock, 1.0)

    assert crash_after(backoff, clock, 59.9) == RESTART_DELAYS[1]
    assert crash_after(backoff, clock, 60.0) == RESTART_DELAYS[0]


def test_an_exit_without_a_recorded_start_counts_as_a_crash() -> None:
    backoff = RestartBackoff(clock=Clock())

    assert backoff.delay_after_exit() == RESTART_DELAYS[0]
    assert backoff.delay_after_exit() == RESTART_DELAYS[1]
