"""Foreign keys and triggers around an archived table (issue 24, section 1), on SQLite,
PostgreSQL and MariaDB (InnoDB): a policy whose deletes would cascade refuses before
anything moves; a row other rows still reference is never deleted (kept, reported, and
the rest moves); a table that references itself; the explicit cascade; triggers shown.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

import support
from archivist.config import ArchiveConfig, WorkerConfig, make_config
from archivist.daemon.runtime import Launch, running
from archivist.data import DataDaemon
from datasupport import ENGINES, run
from e2esupport import archivist, write_config

ORDERS = "orders"
ITEMS = "order_items"
FK = "fk_items_order"


def engine_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else sa.make_url(url).get_backend_name()


def execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def rows(url: str, query: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.exec_driver_sql(query)]
    finally:
        engine.dispose()


def ids(url: str, table: str) -> set[int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table(table):
                return set()
            return {int(r[0]) for r in connection.exec_driver_sql(f"SELECT id FROM {table}")}
    finally:
        engine.dispose()


def make_orders(
    url: str,
    on_delete: str,
    item_order: Callable[[int], int] = lambda j: j,
    *,
    orders: int = 200,
    items: int = 200,
) -> None:
    """The issue's schema: ``orders(id, created_at, note)`` and ``order_items(id, order_id
    REFERENCES orders(id) ON DELETE <on_delete>, sku)``; item ``j`` references order
    ``item_order(j)``."""
    execute(
        url,
        f"CREATE TABLE {ORDERS} (id INTEGER PRIMARY KEY, created_at INTEGER NOT NULL,"
        " note VARCHAR(100))",
        f"CREATE TABLE {ITEMS} (id INTEGER PRIMARY KEY, order_id INTEGER, sku VARCHAR(40),"
        f" CONSTRAINT {FK} FOREIGN KEY (order_id) REFERENCES {ORDERS} (id)"
        f" ON DELETE {on_delete})",
    )
    values = ", ".join(f"({i}, {i}, 'order {i}')" for i in range(1, orders + 1))
    execute(url, f"INSERT INTO {ORDERS} VALUES {values}")
    if items:
        values = ", ".join(f"({j}, {item_order(j)}, 'sku{j}')" for j in range(1, items + 1))
        execute(url, f"INSERT INTO {ITEMS} VALUES {values}")


def orders_policy(**extra: object) -> dict[str, object]:
    return {
        "collection": ORDERS,
        "order_by": "created_at",
        "max_rows": 100,
        "rows_per_archive": 50,
        "batch_size": 50,
        **extra,
    }


def config_file(
    tmp_path: Path, primary: str, archive: str, policy: dict[str, object], in_database: bool = True
) -> str:
    path = write_config(
        tmp_path / "archivist.toml",
        {"primary": primary, "archive": archive},
        [policy],
        worker={"in_database": in_database, "batch_time": 0},
    )
    return str(path)


@pytest.fixture(params=ENGINES)
def pair(request: pytest.FixtureRequest, fresh_db: Callable[[str], str]) -> tuple[str, str]:
    """A primary and an archive database on one engine (one server: the in-database path
    where the daemon has one)."""
    engine = str(request.param)
    return fresh_db(engine), fresh_db(engine)


# --- refuse before anything moves -------------------------------------------------------------


def test_the_issue_reproduction_refuses_and_changes_nothing(
    pair: tuple[str, str], tmp_path: Path
) -> None:
    """200 orders, 200 items ON DELETE CASCADE, max_rows 100: archivist archived 150
    orders and the cascade deleted 150 items copied nowhere. Now it refuses, naming the
    child, the constraint and both ways out, and nothing changes."""
    primary, archive = pair
    make_orders(primary, "CASCADE")
    result = archivist("archive", ORDERS, "--config", config_file(tmp_path, *pair, orders_policy()))
    assert result.returncode == 1, result.stdout + result.stderr
    message = result.stderr
    assert "refusing to archive" in message and ITEMS in message and FK in message, message
    assert 'children = ["order_items"]' in message and 'on_children = "keep"' in message, message
    assert 'on_children = "cascade"' in message and "not archived" in message, message
    assert len(ids(primary, ORDERS)) == 200
    assert len(ids(primary, ITEMS)) == 200
    assert ids(archive, ORDERS) == set()


def test_a_policy_that_would_cascade_does_not_start_the_daemon(
    sqlite_url: str, tmp_path: Path
) -> None:
    """``archivist run`` refuses at start-up, before any task, and exits non-zero."""
    make_orders(sqlite_url, "SET NULL")
    archive = str(tmp_path / "archive.sqlite")
    config = config_file(tmp_path, sqlite_url, f"sqlite:///{archive}", orders_policy())
    result = archivist("run", "--config", config, timeout=60)
    assert result.returncode == 1
    assert "refusing to archive" in result.stderr and "change" in result.stderr, result.stderr
    assert len(ids(sqlite_url, ORDERS)) == 200
    assert rows(sqlite_url, f"SELECT count(*) FROM {ITEMS} WHERE order_id IS NULL") == [(0,)]


def test_dry_run_lists_the_foreign_keys_triggers_and_the_refusal(
    pair: tuple[str, str], tmp_path: Path
) -> None:
    primary, archive = pair
    make_orders(primary, "CASCADE")
    engine = engine_of(primary)
    execute(primary, "CREATE TABLE audit (order_id INTEGER)")
    if engine == "sqlite":
        execute(
            primary,
            f"CREATE TRIGGER orders_audit AFTER DELETE ON {ORDERS}"
            " BEGIN INSERT INTO audit VALUES (old.id); END",
        )
    elif engine == "postgresql":
        execute(
            primary,
            "CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN INSERT INTO audit VALUES (OLD.id); RETURN OLD; END $$",
            f"CREATE TRIGGER orders_audit AFTER DELETE ON {ORDERS}"
            " FOR EACH ROW EXECUTE FUNCTION audit_fn()",
        )
    else:
        execute(
            primary,
            f"CREATE TRIGGER orders_audit AFTER DELETE ON {ORDERS}"
            " FOR EACH ROW INSERT INTO audit VALUES (OLD.id)",
        )
    config = config_file(tmp_path, primary, archive, orders_policy())
    result = archivist("archive", ORDERS, "--config", config, "--dry-run")
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert f"referenced by {ITEMS}.order_id -> {ORDERS}.id ({FK}, ON DELETE CASCADE)" in out, out
    assert "ON DELETE trigger orders_audit (AFTER DELETE)" in out, out
    assert "would refuse" in out and "nothing was moved" in out, out
    assert len(ids(primary, ORDERS)) == 200


def test_check_lists_the_foreign_keys_triggers_window_and_the_refusal(
    pair: tuple[str, str], tmp_path: Path
) -> None:
    """``archivist check`` shows what the policy meets in the database: the key that would
    cascade (a problem, exit 1, nothing moved), an ON DELETE trigger (a warning), the
    window; and with ``on_children = "keep"`` the same schema is no problem."""
    primary, archive = pair
    make_orders(primary, "CASCADE")
    execute(primary, "CREATE TABLE audit (order_id INTEGER)")
    if engine_of(primary) == "postgresql":
        execute(
            primary,
            "CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN INSERT INTO audit VALUES (OLD.id); RETURN OLD; END $$",
            f"CREATE TRIGGER orders_audit AFTER DELETE ON {ORDERS}"
            " FOR EACH ROW EXECUTE FUNCTION audit_fn()",
        )
    elif engine_of(primary) == "sqlite":
        execute(
            primary,
            f"CREATE TRIGGER orders_audit AFTER DELETE ON {ORDERS}"
            " BEGIN INSERT INTO audit VALUES (old.id); END",
        )
    else:
        execute(
            primary,
            f"CREATE TRIGGER orders_audit AFTER DELETE ON {ORDERS}"
            " FOR EACH ROW INSERT INTO audit VALUES (OLD.id)",
        )
    windowed = orders_policy(window="01:00-05:00", timezone="Europe/Berlin")
    result = archivist("check", "--config", config_file(tmp_path, primary, archive, windowed))
    assert result.returncode == 1, result.stdout + result.stderr
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    out = " ".join(result.stdout.split())
    assert f"referenced by {ITEMS}.order_id -> {ORDERS}.id ({FK}, ON DELETE CASCADE)" in out, out
    assert "orders_audit (AFTER DELETE)" in out, out
    assert "ON DELETE trigger(s) run for every archived row" in out, out
    assert "window: 01:00-05:00" in out, out
    assert "refusing to archive" in out, out
    assert len(ids(primary, ORDERS)) == 200 and len(ids(primary, ITEMS)) == 200

    kept = orders_policy(on_children="keep")
    result = archivist("check", "--config", config_file(tmp_path, primary, archive, kept), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    (policy,) = json.loads(result.stdout)["policies"]
    assert policy["triggers"] == ["orders_audit (AFTER DELETE)"]
    assert any(FK in line for line in policy["foreign_keys"]), policy


# --- RESTRICT / NO ACTION: kept, reported, the rest moves ---------------------------------------


RESTRICTING = {"sqlite": "NO ACTION", "postgresql": "RESTRICT", "mysql": "NO ACTION"}
REFERENCED = {10, 20, 30}


def _item_order(j: int) -> int:
    """Three items reference old orders (10, 20, 30); the rest reference new ones."""
    return sorted(REFERENCED)[j - 1] if j <= 3 else 151 + j % 50


@pytest.mark.parametrize("in_database", [True, False], ids=["in_database", "rows"])
def test_referenced_rows_are_kept_reported_and_the_rest_moves(
    pair: tuple[str, str], tmp_path: Path, in_database: bool
) -> None:
    primary, archive = pair
    make_orders(primary, RESTRICTING[engine_of(primary)], _item_order)
    config = config_file(tmp_path, primary, archive, orders_policy(), in_database=in_database)
    result = archivist("archive", ORDERS, "--config", config)
    assert result.returncode == 1, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "moved 147 row(s); kept 3 in primary: still referenced by order_items" in message, (
        message
    )
    assert FK in message
    expected = REFERENCED | set(range(151, 201))
    assert ids(primary, ORDERS) == expected
    assert ids(archive, ORDERS) >= set(range(1, 151)) - REFERENCED
    assert len(ids(primary, ITEMS)) == 200


def test_the_complete_message_and_status_say_how_many_rows_were_kept(
    any_url: str, fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    """Through a real worker process: ``complete`` carries code ``rows_kept`` and the
    error; the worker's ``status`` shows it for the finished task."""
    primary = any_url
    archive = fresh_db(engine_of(primary))
    make_orders(primary, RESTRICTING[engine_of(primary)], _item_order)
    config = make_config(
        {"primary": primary, "archive": archive},
        [ArchiveConfig(**orders_policy())],  # type: ignore[arg-type]
        worker=WorkerConfig(batch_time=0),
    )

    async def go() -> tuple[str | None, str | None, str | None, int]:
        launch = Launch(private_socket=True, quiet_worker=True, watch=False)
        async with running(config, launch) as daemon:
            record = await daemon.submit(ORDERS, 150)
            await record.done.wait()
            connection = await daemon.connection()
            status = await connection.status()
            shown = next(t for t in status.finished if t.task_id == record.task_id)
            return record.code, record.error, shown.error, record.archived

    code, error, shown, archived = run(go())
    assert code == "rows_kept"
    assert error is not None and "kept 3 in primary" in error and ITEMS in error
    assert shown == error
    assert archived == 147


def test_status_with_a_config_shows_each_policys_foreign_keys(
    sqlite_url: str, tmp_path: Path, worker: support.WorkerProcess
) -> None:
    make_orders(sqlite_url, "NO ACTION", _item_order)
    path = write_config(
        tmp_path / "archivist.toml",
        {"primary": sqlite_url, "archive": f"sqlite:///{tmp_path / 'archive.sqlite'}"},
        [orders_policy()],
        socket=worker.socket_path,
    )
    result = archivist("status", "--config", str(path))
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert f"orders: referenced by {ITEMS}.order_id -> {ORDERS}.id ({FK}, ON DELETE NO ACTION)" in (
        out
    ), out


# --- a table that references itself -----------------------------------------------------------


def make_thread(url: str) -> None:
    """``chat_messages.reply_to REFERENCES chat_messages(id) ON DELETE SET NULL``: newer
    messages (151..200) reply to old ones (5, 15, 25)."""
    execute(
        url,
        "CREATE TABLE chat_messages (id INTEGER PRIMARY KEY, created_at INTEGER NOT NULL,"
        " reply_to INTEGER, CONSTRAINT fk_reply FOREIGN KEY (reply_to)"
        " REFERENCES chat_messages (id) ON DELETE SET NULL)",
    )
    values = ", ".join(
        f"({i}, {i}, {(5, 15, 25)[i % 3] if i > 150 else 'NULL'})" for i in range(1, 201)
    )
    execute(url, f"INSERT INTO chat_messages VALUES {values}")


def test_a_table_that_references_itself_is_refused_then_kept_when_asked(
    pair: tuple[str, str], tmp_path: Path
) -> None:
    primary, _ = pair
    make_thread(primary)
    policy = orders_policy(collection="chat_messages")
    result = archivist("archive", "chat_messages", "--config", config_file(tmp_path, *pair, policy))
    assert result.returncode == 1
    assert "fk_reply" in result.stderr and 'on_children = "keep"' in result.stderr, result.stderr
    assert len(ids(primary, "chat_messages")) == 200
    before = rows(primary, "SELECT id, reply_to FROM chat_messages WHERE reply_to IS NOT NULL")

    policy["on_children"] = "keep"
    result = archivist("archive", "chat_messages", "--config", config_file(tmp_path, *pair, policy))
    assert result.returncode == 1, result.stderr
    assert "kept 3 in primary" in result.stderr, result.stderr
    assert ids(primary, "chat_messages") == {5, 15, 25} | set(range(151, 201))
    after = rows(primary, "SELECT id, reply_to FROM chat_messages WHERE reply_to IS NOT NULL")
    assert sorted(after) == sorted(before)  # no reply lost its parent (SET NULL never ran)


# --- the explicit cascade ---------------------------------------------------------------------


def test_on_children_cascade_lets_the_database_delete_the_children(
    pair: tuple[str, str], tmp_path: Path
) -> None:
    """The opt-in does what it says: the parents move and the database deletes their
    children, which are not archived."""
    primary, archive = pair
    make_orders(primary, "CASCADE")
    policy = orders_policy(on_children="cascade")
    result = archivist("archive", ORDERS, "--config", config_file(tmp_path, *pair, policy))
    assert result.returncode == 0, result.stderr
    assert ids(primary, ORDERS) == set(range(151, 201))
    assert ids(archive, ORDERS) == set(range(1, 151))
    assert ids(primary, ITEMS) == set(range(151, 201))


# --- the guard against a child inserted between copy and delete ----------------------------------


def _insert_child_meanwhile(url: str, started: threading.Event, release: threading.Event) -> None:
    """An application transaction that inserts a child of order 1 and commits only when
    told: meanwhile it holds its share lock on the parent."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"INSERT INTO {ITEMS} VALUES (9001, 1, 'late')")
            started.set()
            release.wait(30)
    finally:
        engine.dispose()


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
@pytest.mark.parametrize("guard", ["expected", "matching"])
def test_a_child_committed_while_the_delete_waits_keeps_its_parent(
    fresh_db: Callable[[str], str], engine: str, guard: str
) -> None:
    """The race of point 3: a child of a copied parent is inserted and not yet committed
    when the delete starts; it commits while the delete waits for the parent's row. The
    parent must be kept and the child not lost (with on_children = "keep" the FK cascades:
    deleting the parent would delete the new child too)."""
    primary, archive = fresh_db(engine), fresh_db(engine)
    make_orders(primary, "CASCADE", orders=5, items=0)
    policy = ArchiveConfig(**orders_policy(on_children="keep"))  # type: ignore[arg-type]
    config = make_config({"primary": primary, "archive": archive}, [policy])

    async def go() -> dict[str, object]:
        data = DataDaemon(config)
        await data.start()
        try:
            source = {"collection": ORDERS, "dbHandle": "primary"}
            if guard == "matching":
                await data.execute("data/copy", {**source, "destHandle": "archive"})
                params: dict[str, object] = {**source, "ids": [1, 2], "matching": "archive"}
            else:
                listed = await data.execute("data/list", source)
                items = [item for item in listed["items"] if item["id"] in (1, 2)]  # type: ignore[attr-defined, index]
                await data.execute(
                    "data/create", {"collection": ORDERS, "dbHandle": "archive", "items": items}
                )
                params = {**source, "ids": [1, 2], "expected": items}
            started, release = threading.Event(), threading.Event()
            app = threading.Thread(target=_insert_child_meanwhile, args=(primary, started, release))
            app.start()
            assert started.wait(30)
            delete = asyncio.ensure_future(data.execute("data/delete", params))
            await asyncio.sleep(0.5)
            waiting = not delete.done()  # the delete waits for the application's lock
            release.set()
            answer = await delete
            app.join(30)
            answer["waited"] = waiting
            return answer
        finally:
            await data.close()

    answer = run(go())
    assert answer["deleted"] == 1 and answer["kept"] == 1, answer
    assert answer["waited"] is True
    assert ids(primary, ORDERS) == {1, 3, 4, 5}
    assert rows(primary, f"SELECT id, order_id FROM {ITEMS} WHERE id = 9001") == [(9001, 1)]


def test_sqlite_keeps_a_parent_whose_child_came_after_its_copy(
    sqlite_url: str, tmp_path: Path
) -> None:
    """SQLite has one writer: a child committed between copy and delete is seen by the
    delete's one guarded statement, on both delete paths."""
    archive = f"sqlite:///{tmp_path / 'archive.sqlite'}"
    make_orders(sqlite_url, "CASCADE", lambda j: 5, orders=5, items=1)
    policy = ArchiveConfig(**orders_policy(on_children="keep"))  # type: ignore[arg-type]
    config = make_config({"primary": sqlite_url, "archive": archive}, [policy])

    async def go() -> list[dict[str, object]]:
        data = DataDaemon(config)
        await data.start()
        answers = []
        try:
            source = {"collection": ORDERS, "dbHandle": "primary"}
            await data.execute("data/copy", {**source, "destHandle": "archive"})
            listed = await data.execute("data/list", source)
            items = [item for item in listed["items"] if item["id"] in (3, 4)]  # type: ignore[attr-defined, index]
            execute(sqlite_url, f"INSERT INTO {ITEMS} VALUES (9001, 1, 'late')")
            execute(sqlite_url, f"INSERT INTO {ITEMS} VALUES (9002, 3, 'late')")
            answers.append(
                await data.execute("data/delete", {**source, "ids": [1, 2], "matching": "archive"})
            )
            answers.append(
                await data.execute("data/delete", {**source, "ids": [3, 4], "expected": items})
            )
        finally:
            await data.close()
        return answers

    matching, expected = run(go())
    assert matching["deleted"] == 1 and matching["kept"] == 1 and matching["skipped"] == []
    assert expected["deleted"] == 1 and expected["kept"] == 1 and expected["skipped"] == []
    assert ids(sqlite_url, ORDERS) == {1, 3, 5}
    assert ids(sqlite_url, ITEMS) == {1, 9001, 9002}


# --- children moved with their parents --------------------------------------------------------


NOTES = "order_item_notes"


def make_notes(url: str, on_delete: str = "CASCADE") -> None:
    """Grandchildren: a note for every even item (``order_item_notes.item_id REFERENCES
    order_items(id)``)."""
    execute(
        url,
        f"CREATE TABLE {NOTES} (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL,"
        f" body VARCHAR(100), CONSTRAINT fk_notes_item FOREIGN KEY (item_id)"
        f" REFERENCES {ITEMS} (id) ON DELETE {on_delete})",
    )
    values = ", ".join(f"({j}, {j}, 'note {j}')" for j in range(2, 201, 2))
    execute(url, f"INSERT INTO {NOTES} VALUES {values}")


def assert_moved_with_children(primary: str, archive: str) -> None:
    """Orders 1..150 with their items and notes are in the archive only; the rest in the
    primary only: nothing lost, nothing in both."""
    moved, stayed = set(range(1, 151)), set(range(151, 201))
    assert ids(primary, ORDERS) == stayed
    assert ids(archive, ORDERS) == moved
    assert ids(primary, ITEMS) == stayed  # item j references order j
    assert ids(archive, ITEMS) == moved
    assert ids(primary, NOTES) == {j for j in stayed if j % 2 == 0}
    assert ids(archive, NOTES) == {j for j in moved if j % 2 == 0}
    copied = rows(archive, f"SELECT id, order_id, sku FROM {ITEMS} WHERE id = 7")
    assert copied == [(7, 7, "sku7")]


@pytest.mark.parametrize("in_database", [True, False], ids=["in_database", "rows"])
def test_children_move_with_their_parents(
    pair: tuple[str, str], tmp_path: Path, in_database: bool
) -> None:
    """``children = ["order_items", "order_item_notes"]``: each batch of orders moves with
    its items and their notes, children first; 450 rows compared."""
    primary, archive = pair
    make_orders(primary, "CASCADE")
    make_notes(primary)
    policy = orders_policy(children=[ITEMS, NOTES])
    config = config_file(tmp_path, primary, archive, policy, in_database=in_database)
    dry = archivist("archive", ORDERS, "--config", config, "--dry-run")
    assert f"with their children (moved first): {ITEMS}, {NOTES}" in dry.stdout, dry.stdout
    result = archivist("archive", ORDERS, "--config", config)
    assert result.returncode == 0, result.stderr
    assert_moved_with_children(primary, archive)


@pytest.mark.parametrize("in_database", [True, False], ids=["in_database", "rows"])
def test_a_copy_policy_copies_the_children_and_deletes_nothing(
    pair: tuple[str, str], tmp_path: Path, in_database: bool
) -> None:
    """``mode = "copy"`` with children (``older_than``: ``created_at`` is epoch seconds in
    1970, so every order): the 200 orders with their items and notes are copied and
    verified, and the primary keeps all 500 rows."""
    primary, archive = pair
    make_orders(primary, "CASCADE")
    make_notes(primary)
    policy = {
        "collection": ORDERS,
        "order_by": "created_at",
        "mode": "copy",
        "older_than": "1d",
        "time_unit": "s",
        "batch_size": 50,
        "children": [ITEMS, NOTES],
    }
    config = config_file(tmp_path, primary, archive, policy, in_database=in_database)
    result = archivist("archive", ORDERS, "--config", config)
    assert result.returncode == 0, result.stderr
    assert ids(primary, ORDERS) == set(range(1, 201))
    assert ids(primary, ITEMS) == set(range(1, 201))
    assert ids(primary, NOTES) == set(range(2, 201, 2))
    assert ids(archive, ORDERS) == set(range(1, 201))
    assert ids(archive, ITEMS) == set(range(1, 201))
    assert ids(archive, NOTES) == set(range(2, 201, 2))


@pytest.mark.parametrize("in_database", [True, False], ids=["in_database", "rows"])
def test_children_listed_over_several_frames_all_move_before_their_parents(
    pair: tuple[str, str], tmp_path: Path, in_database: bool
) -> None:
    """Ten items per order and an 80 KiB frame (6 KiB of rows): a batch's items do not
    fit in one listing (``truncated``, fewer rows than asked). Every page of them moves,
    so every parent goes in the same task and none is kept as still referenced; 3,300
    rows compared."""
    primary, archive = pair
    make_orders(primary, "CASCADE", lambda j: (j - 1) // 10 + 1, items=2000)
    path = write_config(
        tmp_path / "archivist.toml",
        {"primary": primary, "archive": archive},
        [orders_policy(children=[ITEMS])],
        worker={"in_database": in_database, "batch_time": 0, "frame_limit": 81920},
    )
    result = archivist("archive", ORDERS, "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "kept" not in result.stdout, result.stdout
    assert ids(primary, ORDERS) == set(range(151, 201))
    assert ids(archive, ORDERS) == set(range(1, 151))
    assert ids(primary, ITEMS) == set(range(1501, 2001))
    assert ids(archive, ITEMS) == set(range(1, 1501))


def test_a_parent_wider_than_a_frame_moves_after_its_children(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Order 7's note is 20 KB, over the 6 KiB of rows an 80 KiB frame carries: the daemon
    relays it (``data/relay``), after its item moved; without that the relay's guarded
    delete keeps it and the task lists it again until it fails."""
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    make_orders(sqlite_url, "CASCADE")
    execute(sqlite_url, f"UPDATE {ORDERS} SET note = '{'x' * 20_000}' WHERE id = 7")
    path = write_config(
        tmp_path / "archivist.toml",
        {"primary": sqlite_url, "archive": archive},
        [orders_policy(children=[ITEMS])],
        worker={"in_database": False, "batch_time": 0, "frame_limit": 81920},
    )
    result = archivist("archive", ORDERS, "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert ids(sqlite_url, ORDERS) == set(range(151, 201))
    assert ids(archive, ORDERS) == set(range(1, 151))
    assert ids(sqlite_url, ITEMS) == set(range(151, 201))
    assert ids(archive, ITEMS) == set(range(1, 151))
    assert rows(archive, f"SELECT length(note) FROM {ORDERS} WHERE id = 7") == [(20_000,)]


@pytest.mark.parametrize(("source", "dest"), [("sqlite", "postgresql"), ("postgresql", "mysql")])
def test_children_move_with_their_parents_across_engines(
    fresh_db: Callable[[str], str], tmp_path: Path, source: str, dest: str
) -> None:
    primary, archive = fresh_db(source), fresh_db(dest)
    make_orders(primary, "CASCADE")
    make_notes(primary)
    config = config_file(tmp_path, primary, archive, orders_policy(children=[ITEMS, NOTES]))
    result = archivist("archive", ORDERS, "--config", config)
    assert result.returncode == 0, result.stderr
    assert_moved_with_children(primary, archive)


def test_an_unnamed_grandchild_that_would_cascade_still_refuses(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Naming order_items is not enough when deleting an item cascades to its notes."""
    make_orders(sqlite_url, "CASCADE")
    make_notes(sqlite_url)
    archive = f"sqlite:///{tmp_path / 'archive.sqlite'}"
    config = config_file(tmp_path, sqlite_url, archive, orders_policy(children=[ITEMS]))
    result = archivist("archive", ORDERS, "--config", config)
    assert result.returncode == 1
    assert "its child order_items: refusing" in result.stderr and "fk_notes_item" in result.stderr
    assert len(ids(sqlite_url, NOTES)) == 100 and len(ids(sqlite_url, ORDERS)) == 200


def test_a_named_child_that_does_not_reference_the_parent_is_a_clear_error(
    sqlite_url: str, tmp_path: Path
) -> None:
    make_orders(sqlite_url, "CASCADE")
    execute(sqlite_url, "CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    archive = f"sqlite:///{tmp_path / 'archive.sqlite'}"
    policy = orders_policy(children=[ITEMS, "customers"])
    result = archivist(
        "archive", ORDERS, "--config", config_file(tmp_path, sqlite_url, archive, policy)
    )
    assert result.returncode == 1
    assert "archive[0].children: children: customers has no foreign key to orders" in (
        result.stderr
    ), result.stderr


# --- crashes while parents move with their children ------------------------------------------


CRASH_ORDERS = 3000
CRASH_KEEP = 900  # max_rows 1000, rows_per_archive 100
CRASH_MAX = 1000
CRASH_TABLES = (ORDERS, ITEMS, NOTES)


def _snapshot(url: str, table: str) -> dict[int, tuple[object, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table(table):
                return {}
            result = connection.exec_driver_sql(f"SELECT * FROM {table}")
            return {int(row[0]): tuple(row) for row in result}
    finally:
        engine.dispose()


def _ids_now(engine: sa.Engine) -> set[int]:
    with engine.connect() as connection:
        return {int(row[0]) for row in connection.exec_driver_sql(f"SELECT id FROM {ORDERS}")}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("source", "dest"),
    [("sqlite", "sqlite"), ("postgresql", "mysql"), ("mysql", "mysql")],
    ids=["sqlite_to_sqlite", "postgresql_to_mariadb", "mariadb_to_mariadb"],
)
def test_sigkills_while_children_move_lose_and_duplicate_nothing(
    fresh_db: Callable[[str], str],
    tmp_path: Path,
    run_process: Callable[..., subprocess.Popen[str]],
    record_property: Callable[[str, object], None],
    source: str,
    dest: str,
) -> None:
    """A worker and a daemon move 2,100 of 3,000 orders with their items and notes; the
    worker (then the daemon) is SIGKILLed at seeded random moments, and the daemon once
    more if it is seen with the primary within max_rows while rows are in both (a restart
    used to leave those there for good). After every kill every row of the three tables is
    in the primary or the archive, each archived row equal to its original; at the end no
    row of any of them is in both and the primary holds its newest 900 to 1,000 rows
    (within its policy: a task cut short by the daemon's death may stop anywhere there)."""
    seed = int(os.environ.get("ARCHIVIST_CRASH_SEED") or secrets.randbits(32))
    print(f"crash seed {seed}")
    rng = random.Random(f"{seed}-{source}-{dest}")
    primary, archive = fresh_db(source), fresh_db(dest)
    make_orders(primary, "CASCADE", orders=CRASH_ORDERS, items=CRASH_ORDERS)
    make_notes(primary)
    execute(
        primary,
        f"INSERT INTO {NOTES} VALUES "
        + ", ".join(f"({j}, {j}, 'note {j}')" for j in range(202, CRASH_ORDERS + 1, 2)),
    )
    originals = {table: _snapshot(primary, table) for table in CRASH_TABLES}
    socket_dir = support.short_socket_dir()
    socket = socket_dir / "worker.sock"
    log = tmp_path / "archivist.log"
    policy = {
        "collection": ORDERS,
        "order_by": "created_at",
        "max_rows": CRASH_MAX,
        "rows_per_archive": CRASH_MAX - CRASH_KEEP,
        "batch_size": 100,
        "children": [ITEMS, NOTES],
    }
    config = write_config(
        tmp_path / "archivist.toml", {"primary": primary, "archive": archive}, [policy]
    )
    started = run_process  # the fixture's factory; every process is killed at the end
    processes: dict[str, subprocess.Popen[str]] = {}

    def start(victim: str) -> None:
        args = (
            ("worker", "--socket", str(socket))
            if victim == "worker"
            else ("daemon", "--config", str(config), "--socket", str(socket))
        )
        processes[victim] = started(*args, output=log)

    compared = kills = 0

    def check(after: str) -> set[tuple[str, int]]:
        """Asserts nothing is lost or changed; answers the rows in both, by table."""
        nonlocal compared
        in_both: set[tuple[str, int]] = set()
        for table in CRASH_TABLES:
            in_primary = set(_snapshot(primary, table))
            archived = _snapshot(archive, table)
            lost = set(originals[table]) - in_primary - set(archived)
            assert not lost, f"seed {seed}, {after}: {table} lost {sorted(lost)[:10]}"
            changed = [k for k, row in archived.items() if row != originals[table].get(k)]
            assert not changed, f"seed {seed}, {after}: {table} rows differ: {changed[:5]}"
            compared += len(archived)
            in_both |= {(table, key) for key in in_primary & set(archived)}
        return in_both

    try:
        start("worker")
        start("daemon")
        for victim in ("worker", "worker", "worker", "daemon", "worker", "daemon"):
            # Never more than the task will ever archive: such a target is never reached.
            target = min(
                len(_snapshot(archive, ORDERS)) + rng.randint(50, 250),
                CRASH_ORDERS - CRASH_KEEP,
            )
            deadline = time.monotonic() + 60
            while len(_snapshot(archive, ORDERS)) < target:
                for name, process in processes.items():
                    assert process.poll() is None, f"the {name} exited: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, (
                    f"seed {seed}: no progress: {log.read_text()[-3000:]}"
                )
                time.sleep(0.02)
            if len(_snapshot(primary, ORDERS)) <= CRASH_KEEP + 100:
                break  # too close to the end for another kill
            time.sleep(rng.uniform(0, 0.05))
            processes[victim].send_signal(signal.SIGKILL)
            assert processes[victim].wait(10) == -signal.SIGKILL
            kills += 1
            check(f"{victim} kill {kills}")
            start(victim)
        # One more daemon kill where rows used to stay in both for good: the primary
        # within max_rows while a batch is in both databases (its restart finds the table
        # within its policy, and must settle them all the same). The moment may pass
        # unseen between two looks; the figures say whether it came.
        gap_kill = False
        deadline, still_since, seen = time.monotonic() + 30, time.monotonic(), (0, 0)
        looks = [sa.create_engine(url) for url in (primary, archive)]  # pooled: quick looks
        try:
            while time.monotonic() < deadline:
                held, archived_ids = (_ids_now(engine) for engine in looks)
                if len(held) <= CRASH_MAX and held & archived_ids:
                    processes["daemon"].send_signal(signal.SIGKILL)
                    assert processes["daemon"].wait(10) == -signal.SIGKILL
                    kills += 1
                    gap_kill = True
                    check(f"daemon kill {kills}, {len(held & archived_ids)} rows in both")
                    start("daemon")
                    break
                if (len(held), len(archived_ids)) != seen:
                    still_since, seen = time.monotonic(), (len(held), len(archived_ids))
                if len(held) <= CRASH_KEEP or time.monotonic() - still_since > 10:
                    break  # the task is done, or none runs: no batch will be in both
                time.sleep(0.002)
        finally:
            for engine in looks:
                engine.dispose()
        # The end: the table within its policy (a task cut short by a daemon's death may
        # leave it anywhere from CRASH_KEEP to max_rows: within the policy, nothing to do),
        # no row in both, and nothing moving any more.
        deadline = time.monotonic() + 120
        last: tuple[int, int] | None = None
        while True:
            held, archived = _snapshot(primary, ORDERS), _snapshot(archive, ORDERS)
            now = (len(held), len(archived))
            settled = CRASH_KEEP <= len(held) <= CRASH_MAX and not held.keys() & archived.keys()
            if settled and now == last:
                break
            assert time.monotonic() < deadline, (
                f"seed {seed}: no convergence: {log.read_text()[-3000:]}"
            )
            last = now
            time.sleep(1.5)
        in_both = check("the end")
        assert not in_both, f"seed {seed}: in both at the end: {sorted(in_both)[:10]}"
        # What the daemons found left in both by a kill, and settled (the log says).
        settled = log.read_text().count("settled ")
        kept = len(_snapshot(primary, ORDERS))
        stayed = set(range(CRASH_ORDERS - kept + 1, CRASH_ORDERS + 1))
        assert set(_snapshot(primary, ORDERS)) == stayed
        assert set(_snapshot(primary, ITEMS)) == stayed
        assert set(_snapshot(archive, ITEMS)) == set(originals[ITEMS]) - stayed
        assert set(_snapshot(archive, NOTES)) == set(originals[NOTES]) - stayed
        assert kills >= 3, f"seed {seed}: only {kills} kills before the end"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        shutil.rmtree(socket_dir, ignore_errors=True)
    print(
        f"crash figures {source}_to_{dest} seed {seed}: kills {kills}, rows compared "
        f"{compared}, settles {settled}, kill in the gap {gap_kill}"
    )
    record_property(f"children_{source}_to_{dest}_kills", kills)
    record_property(f"children_{source}_to_{dest}_rows_compared", compared)
