"""Rows an interrupted task left in both databases are settled though the table is within
its policy (`archivist.daemon.settling`): a daemon killed between a batch's copy and its
delete leaves the table at exactly ``max_rows`` with its oldest rows also archived, and no
task would start to finish them. A real `archivist run --once` (daemon and worker) settles
those identical to their archived copy, their children first, and keeps and reports one
that differs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from e2esupport import archivist, write_config

ORDERS, ITEMS, NOTES = "orders", "order_items", "order_item_notes"
TABLE_ROWS = 1000  # exactly max_rows: within the policy
IN_BOTH = 150  # the oldest orders, also in the archive (with ids 1..150)
CHANGED = 5  # one of them, updated in the primary after it was copied
ITEMS_COPIED = 100  # items (and notes) of orders 1..100 are archived too; 101..150 not yet


def execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def ids(url: str, table: str) -> set[int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return {int(r[0]) for r in connection.exec_driver_sql(f"SELECT id FROM {table}")}
    finally:
        engine.dispose()


def note_of(url: str, order: int) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            query = f"SELECT note FROM {ORDERS} WHERE id = {order}"
            return str(connection.exec_driver_sql(query).scalar_one())
    finally:
        engine.dispose()


def make_tables(url: str, *, children: bool, references: bool) -> None:
    """``orders(id, created_at, note)``, and with ``children`` ``order_items`` (item j of
    order j) and ``order_item_notes`` (a note for each even item); ``references``: the
    primary's foreign keys, ON DELETE CASCADE (the archive's tables have none)."""
    execute(
        url,
        f"CREATE TABLE {ORDERS} (id INTEGER PRIMARY KEY, created_at INTEGER NOT NULL,"
        " note VARCHAR(100))",
    )
    if not children:
        return
    fk = " REFERENCES {} (id) ON DELETE CASCADE" if references else ""
    execute(
        url,
        f"CREATE TABLE {ITEMS} (id INTEGER PRIMARY KEY,"
        f" order_id INTEGER{fk.format(ORDERS)}, sku VARCHAR(40))",
        f"CREATE TABLE {NOTES} (id INTEGER PRIMARY KEY,"
        f" item_id INTEGER NOT NULL{fk.format(ITEMS)}, body VARCHAR(100))",
    )


def fill(url: str, orders: range, *, children: bool, changed: bool = False) -> None:
    """Orders (and their items and notes) of ``orders``, as the primary holds them; with
    ``changed``, order `CHANGED` as it was copied, before its update."""

    def note(i: int) -> str:
        return f"order {i} (before)" if changed and i == CHANGED else f"order {i}"

    rows = ", ".join(f"({i}, {i}, '{note(i)}')" for i in orders)
    execute(url, f"INSERT INTO {ORDERS} VALUES {rows}")
    if children:
        fill_children(url, orders)


def fill_children(url: str, orders: range) -> None:
    """The items of ``orders`` (item j of order j) and the notes of the even ones."""
    execute(
        url,
        f"INSERT INTO {ITEMS} VALUES " + ", ".join(f"({j}, {j}, 'sku{j}')" for j in orders),
        f"INSERT INTO {NOTES} VALUES "
        + ", ".join(f"({j}, {j}, 'note {j}')" for j in orders if j % 2 == 0),
    )


@pytest.mark.parametrize("children", [True, False], ids=["children", "no_children"])
@pytest.mark.parametrize(
    ("source", "dest"),
    [("sqlite", "sqlite"), ("postgresql", "mysql"), ("mysql", "mysql")],
    ids=["sqlite_to_sqlite", "postgresql_to_mariadb", "mariadb_to_mariadb"],
)
def test_rows_left_in_both_at_max_rows_are_settled_and_a_changed_one_is_kept(
    fresh_db: Callable[[str], str], tmp_path: Path, source: str, dest: str, children: bool
) -> None:
    """1,000 orders (``max_rows`` 1,000: within the policy); orders 1-150 are also in the
    archive, as a daemon killed between their copy and their delete leaves them, order 5's
    copy older than the primary's row; with children, the items and notes of orders 1-100
    are archived too (101-150's not yet). `archivist run --once` moves orders 1-150 but 5,
    with their items and notes (copied first where they were not), and says so; order 5
    stays in the primary, unchanged, its copy too, and the log names it. Before, the run
    found the table within its policy and left the 150 rows in both databases."""
    primary, archive = fresh_db(source), fresh_db(dest)
    make_tables(primary, children=children, references=True)
    make_tables(archive, children=children, references=False)
    fill(primary, range(1, TABLE_ROWS + 1), children=children)
    fill(archive, range(1, IN_BOTH + 1), children=False, changed=True)
    if children:
        fill_children(archive, range(1, ITEMS_COPIED + 1))
    policy: dict[str, object] = {
        "collection": ORDERS,
        "order_by": "created_at",
        "max_rows": TABLE_ROWS,
        "rows_per_archive": 100,
        "batch_size": 50,  # 150 rows in both: three batches in flight
    }
    if children:
        policy["children"] = [ITEMS, NOTES]
    config = write_config(
        tmp_path / "archivist.toml", {"primary": primary, "archive": archive}, [policy]
    )

    result = archivist("run", "--once", "--config", str(config), "--log-level", "info")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    settled = set(range(1, IN_BOTH + 1)) - {CHANGED}
    stayed = set(range(IN_BOTH + 1, TABLE_ROWS + 1)) | {CHANGED}
    assert ids(primary, ORDERS) == stayed
    assert ids(archive, ORDERS) == settled | {CHANGED}
    assert note_of(primary, CHANGED) == f"order {CHANGED}"
    assert note_of(archive, CHANGED) == f"order {CHANGED} (before)"
    if children:
        # Order 5's item and note stay with it (its archived copies were there before).
        assert ids(primary, ITEMS) == stayed
        assert ids(archive, ITEMS) == settled | {CHANGED}
        assert ids(primary, NOTES) == {j for j in stayed if j % 2 == 0}
        assert ids(archive, NOTES) == {j for j in settled | {CHANGED} if j % 2 == 0}
    assert f"orders: {len(settled)} row(s) left in both primary and archive" in output, output
    assert f"settled {len(settled)} row(s) left in both primary and archive" in output, output
    assert "orders: 1 row(s) in both primary and archive differ from their archived copy" in (
        output
    )
    assert f"id={CHANGED}" in output


@pytest.mark.parametrize("which", [ORDERS, "--all"])
def test_a_one_shot_archive_settles_them_too(
    fresh_db: Callable[[str], str], tmp_path: Path, which: str
) -> None:
    """`archivist archive orders` (and `--all`) on the same table: within its policy, it
    settles the 149 rows and keeps order 5 rather than saying there is nothing to do."""
    primary, archive = fresh_db("sqlite"), fresh_db("sqlite")
    make_tables(primary, children=False, references=True)
    make_tables(archive, children=False, references=False)
    fill(primary, range(1, TABLE_ROWS + 1), children=False)
    fill(archive, range(1, IN_BOTH + 1), children=False, changed=True)
    policy: dict[str, object] = {
        "collection": ORDERS,
        "order_by": "created_at",
        "max_rows": TABLE_ROWS,
        "rows_per_archive": 100,
        "batch_size": 50,
    }
    config = write_config(
        tmp_path / "archivist.toml", {"primary": primary, "archive": archive}, [policy]
    )

    result = archivist("archive", which, "--config", str(config), "--log-level", "info")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "nothing to archive" not in output
    assert ids(primary, ORDERS) == set(range(IN_BOTH + 1, TABLE_ROWS + 1)) | {CHANGED}
    assert ids(archive, ORDERS) == set(range(1, IN_BOTH + 1))
    assert "settled 149 row(s) left in both primary and archive" in output, output
    assert "1 row(s) in both primary and archive differ from their archived copy" in output


def test_rows_left_in_both_with_an_iceberg_archive_are_settled(
    fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    """The same gap with an Iceberg archive: `archivist archive orders --max-rows 150`
    archives orders 1-150, which are then put back in the SQLite primary as a kill before
    their delete leaves them (order 5 updated since). `archivist run --once` finds the
    table within its policy, settles the 149 (found committed, deleted from the source)
    and keeps order 5; the Iceberg table holds orders 1-150 once each."""
    from icebergsupport import lake_url, load_table, read_with_pyarrow

    primary = fresh_db("sqlite")
    make_tables(primary, children=False, references=True)
    fill(primary, range(1, TABLE_ROWS + 1), children=False)
    policy: dict[str, object] = {
        "collection": ORDERS,
        "order_by": "created_at",
        "max_rows": TABLE_ROWS,
        "rows_per_archive": 100,
        "batch_size": 50,
    }
    lake = tmp_path / "lake"
    lake.mkdir()
    config = write_config(
        tmp_path / "archivist.toml", {"primary": primary, "archive": lake_url(lake)}, [policy]
    )
    moved = archivist("archive", ORDERS, "--config", str(config), "--max-rows", str(IN_BOTH))
    assert moved.returncode == 0, moved.stdout + moved.stderr
    rows = ", ".join(
        f"({i}, {i}, '{f'order {i} (after)' if i == CHANGED else f'order {i}'}')"
        for i in range(1, IN_BOTH + 1)
    )
    execute(primary, f"INSERT INTO {ORDERS} VALUES {rows}")

    result = archivist("run", "--once", "--config", str(config), "--log-level", "info")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert ids(primary, ORDERS) == set(range(IN_BOTH + 1, TABLE_ROWS + 1)) | {CHANGED}
    assert note_of(primary, CHANGED) == f"order {CHANGED} (after)"
    archived = read_with_pyarrow(load_table(lake, ORDERS)).to_pydict()
    assert sorted(archived["id"]) == list(range(1, IN_BOTH + 1))
    assert archived["note"][archived["id"].index(CHANGED)] == f"order {CHANGED}"
    assert "settled 149 row(s) left in both primary and archive" in output, output
    assert "1 row(s) in both primary and archive differ from their archived copy" in output
