"""The size of a SQLite delete's slices while the application writes: each should hold the
write lock for about `SLICE_HOLD`, whatever the machine and the table make that in rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archivist.data import slicing
from archivist.data.handles import create_engine
from archivist.data.slicing import SLICE_HOLD, SLICE_LADDER, SLICE_ROWS, next_slice


def test_a_slice_that_held_the_lock_too_long_shrinks_to_what_fits() -> None:
    # 200 rows took 7 ms (measured on a slow machine): 0.8 ms fits about 23 rows.
    assert next_slice(200, [0.007]) == 20
    # So slow that not even the smallest size fits: the smallest.
    assert next_slice(200, [1.0]) == SLICE_LADDER[0]


def test_a_quick_slice_grows_one_size_up_at_a_time_and_never_past_the_largest() -> None:
    assert next_slice(20, [SLICE_HOLD / 100]) == 30
    assert next_slice(SLICE_ROWS, [SLICE_HOLD / 100]) == SLICE_ROWS


def test_a_slice_that_waited_for_the_lock_once_does_not_shrink_the_next() -> None:
    """The quickest of the last few times is weighed: one slow time among them, a wait for
    an application's commit, says nothing of how long the slice itself holds the lock."""
    per_row = SLICE_HOLD / 50
    assert next_slice(50, [50 * per_row, 0.020, 50 * per_row]) == 50
    assert next_slice(50, [0.020]) == SLICE_LADDER[0]


@given(
    size=st.sampled_from(SLICE_LADDER),
    held=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=4),
)
def test_the_next_slice_is_always_on_the_ladder_and_fits_or_is_the_smallest(
    size: int, held: list[float]
) -> None:
    chosen = next_slice(size, held)
    assert chosen in SLICE_LADDER
    per_row = max(min(held), 1e-6) / size
    larger = [step for step in SLICE_LADDER if step > size]
    assert chosen <= (larger[0] if larger else SLICE_ROWS)
    assert chosen == SLICE_LADDER[0] or chosen * per_row <= SLICE_HOLD * (1 + 1e-9)


def test_a_short_last_slice_does_not_grow_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last slice of a delete is often short (5 rows of 10, padded): it is quicker, but
    says nothing new of how long a full slice holds the lock, so it is not weighed."""
    monkeypatch.setattr(slicing, "SLICE_HOLD", 0.001)
    path = tmp_path / "primary.db"
    engine = create_engine(f"sqlite:///{path}")
    app = sqlite3.connect(path)
    try:
        with app:
            app.execute("CREATE TABLE app_log (n INTEGER)")
        with engine.connect() as connection:
            info = connection.connection.info
            info[slicing.BUSY_SLICE] = 10
            sizes = []
            for part in slicing.adaptive_slices(
                connection, connection.connection.dbapi_connection, 25, 1000
            ):
                sizes.append(part.size)
                part.held = 0.00009 * min(part.size, 25 - part.start)  # 10 rows: 0.9 ms
                with app:
                    app.execute("INSERT INTO app_log VALUES (1)")  # the application writes
            assert sizes == [10, 10, 10]
            assert info[slicing.BUSY_SLICE] == 10
    finally:
        app.close()
        engine.dispose()
