"""Adaptive batch sizing: sizes follow a target time per batch, within their bounds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from archivist.worker.batching import BatchSizer


def test_fast_batches_keep_the_task_batch_size_as_the_ceiling() -> None:
    sizer = BatchSizer.for_task(1000, target=0.5, minimum=100)
    for _ in range(5):
        size = sizer.record(rows=sizer.size, seconds=0.01)
    assert size == 1000


def test_slow_batches_shrink_toward_the_target_time() -> None:
    sizer = BatchSizer.for_task(10_000, target=0.5, minimum=100)
    sizer.record(rows=10_000, seconds=0.9)  # 11,111 rows/s: just under the hard cut
    assert sizer.size == 5556
    sizer.record(rows=5556, seconds=0.5)  # the average of 11,111 and 11,112 rows/s
    assert 5500 <= sizer.size <= 5600


def test_a_batch_far_over_the_target_cuts_the_next_one_at_once() -> None:
    sizer = BatchSizer.for_task(10_000, target=0.5, minimum=100)
    sizer.record(rows=10_000, seconds=0.5)
    assert sizer.size == 10_000
    sizer.record(rows=10_000, seconds=5.0)  # the database slowed down tenfold
    assert sizer.size == 1000


def test_size_never_goes_below_the_minimum() -> None:
    sizer = BatchSizer.for_task(5000, target=0.5, minimum=200)
    sizer.record(rows=5000, seconds=500.0)
    assert sizer.size == 200


def test_zero_target_keeps_the_size_fixed() -> None:
    sizer = BatchSizer.for_task(700, target=0, minimum=100)
    assert sizer.record(rows=700, seconds=30.0) == 700


def test_a_minimum_above_the_batch_size_yields_to_it() -> None:
    sizer = BatchSizer.for_task(50, target=0.5, minimum=100)
    sizer.record(rows=50, seconds=100.0)
    assert sizer.size == 50


@given(
    batch_size=st.integers(1, 100_000),
    minimum=st.integers(1, 1000),
    runs=st.lists(
        st.tuples(st.integers(1, 100_000), st.floats(1e-6, 1e4, allow_nan=False)), max_size=20
    ),
)
def test_size_always_stays_within_its_bounds(
    batch_size: int, minimum: int, runs: list[tuple[int, float]]
) -> None:
    sizer = BatchSizer.for_task(batch_size, target=0.5, minimum=minimum)
    for rows, seconds in runs:
        size = sizer.record(rows, seconds)
        assert min(batch_size, minimum) <= size <= batch_size


def test_wide_rows_shrink_batches_to_what_fits_the_frame_even_below_the_minimum() -> None:
    sizer = BatchSizer.for_task(1000, target=0.5, minimum=100, budget=14_000_000)
    assert sizer.size == 1000
    sizer.learn_width(rows=36, size=36 * 400_000)  # 300 KB rows: 400 KB of base64 each
    assert sizer.size == 35
    sizer.record(rows=35, seconds=0.01)  # fast, but no wider a batch fits the frame
    assert sizer.size == 35


def test_batches_grow_back_when_the_rows_narrow() -> None:
    sizer = BatchSizer.for_task(1000, target=0.5, minimum=100, budget=14_000_000)
    sizer.learn_width(rows=10, size=10 * 1_000_000)
    assert sizer.size == 14
    sizer.learn_width(rows=14, size=14 * 1_000)
    assert sizer.size == 1000


def test_a_fixed_batch_size_is_still_kept_within_the_frame() -> None:
    sizer = BatchSizer.for_task(1000, target=0, minimum=100, budget=1_000_000)
    sizer.learn_width(rows=5, size=5 * 100_000)
    assert sizer.size == 10
    assert sizer.record(rows=10, seconds=5.0) == 10


def test_a_row_wider_than_the_budget_still_makes_batches_of_one() -> None:
    sizer = BatchSizer.for_task(1000, target=0.5, minimum=100, budget=1_000_000)
    sizer.learn_width(rows=1, size=30_000_000)
    assert sizer.size == 1
