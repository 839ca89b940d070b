"""SQLite's delete of expected rows, raced by the application: whatever the application does
to listed rows before the delete (nothing, a no-op update, an edit, a case-only edit, a JSON
document re-spelled, a delete), only rows still equal to what was listed are deleted, every
other row stays, and the answer says which rows were left. With the daemon's memory of the
listing (the usual path) and without it (a daemon restarted between list and delete)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasupport import create_table, started

ACTIONS = ("none", "same", "edit", "case", "respell", "gone")
SQL = {
    "same": "UPDATE chat_messages SET body = body WHERE id = ?",
    "edit": "UPDATE chat_messages SET body = body || ' edited' WHERE id = ?",
    "case": "UPDATE chat_messages SET body = upper(body) WHERE id = ?",
    "respell": "UPDATE chat_messages SET meta = '{ \"n\" : ' || id || ' }' WHERE id = ?",
    "gone": "DELETE FROM chat_messages WHERE id = ?",
}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=12),
    restart=st.booleans(),
)
def test_only_rows_still_as_listed_are_deleted_whatever_the_application_did(
    tmp_path_factory: pytest.TempPathFactory, actions: list[str], restart: bool
) -> None:
    path = tmp_path_factory.mktemp("race") / "primary.db"
    url = f"sqlite:///{path}"
    create_table(url)
    ids = list(range(1, len(actions) + 1))
    with contextlib.closing(sqlite3.connect(path)) as app, app:
        app.executemany(
            "INSERT INTO chat_messages (id, room, created_at, body, score, meta) "
            "VALUES (?, 'r', ?, ?, 0.5, ?)",
            [(i, f"2024-01-01 00:00:{i:02d}.000000", f"message {i}", f'{{"n": {i}}}') for i in ids],
        )

    def act() -> None:
        """The application, between the listing and the delete."""
        with contextlib.closing(sqlite3.connect(path)) as app, app:
            for key, action in zip(ids, actions, strict=True):
                if action in SQL:
                    app.execute(SQL[action], (key,))

    async def scenario() -> tuple[dict[str, object], set[int]]:
        where = {"collection": "chat_messages", "dbHandle": "primary"}
        async with started(url) as daemon:
            listed = await daemon.execute("data/list", where)
            act()
            delete = {**where, "expected": listed["items"]}
            if restart:  # a daemon that never saw the listing
                async with started(url) as fresh:
                    result = await fresh.execute("data/delete", delete)
            else:
                result = await daemon.execute("data/delete", delete)
        with contextlib.closing(sqlite3.connect(path)) as app:
            remaining = {row[0] for row in app.execute("SELECT id FROM chat_messages")}
        return result, remaining

    result, remaining = asyncio.run(scenario())
    by_action = {
        action: {k for k, a in zip(ids, actions, strict=True) if a == action} for action in ACTIONS
    }
    skipped = set(result["skipped"])  # type: ignore[call-overload]
    deleted = set(ids) - remaining - by_action["gone"]
    assert result["deleted"] == len(deleted)
    assert by_action["none"] | by_action["same"] <= deleted, "an unchanged row was left"
    changed = by_action["edit"] | by_action["case"]
    assert changed <= remaining and changed <= skipped, "a changed row was deleted or unreported"
    assert by_action["gone"] <= skipped
    # A re-spelled JSON document holds the same value: deleting it or leaving it are both
    # safe; either way the answer is consistent with the table.
    assert by_action["respell"] <= deleted | (remaining & skipped)
    assert not (skipped & deleted)
