"""`Pauses`: what is paused, by whom, and the state file a restarted daemon reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archivist.daemon.pauses import Pauses, who
from archivist.errors import StillPaused


def test_a_paused_collection_holds_alone_and_names_its_author() -> None:
    pauses = Pauses()

    assert pauses.pause("chat_messages", "al@db1/1", 0.0)
    assert pauses.reason("chat_messages") == "paused by al@db1/1 since 1970-01-01 00:00:00 UTC"
    assert pauses.reason("events") is None


def test_a_second_pause_keeps_the_first_author() -> None:
    pauses = Pauses()
    pauses.pause("chat_messages", "al@db1/1", 0.0)

    assert not pauses.pause("chat_messages", "bo@db2/2", 60.0)
    assert "al@db1/1" in str(pauses.reason("chat_messages"))


def test_pausing_everything_holds_every_collection_until_resumed_as_a_whole() -> None:
    pauses = Pauses()
    pauses.pause(None, "al@db1/1", 0.0)
    pauses.pause("events", "al@db1/1", 0.0)

    assert str(pauses.reason("chat_messages")).endswith("(every policy)")
    with pytest.raises(StillPaused, match="events stays paused"):
        pauses.resume("events")
    assert pauses.resume(None) == ["*", "events"]
    assert pauses.reason("events") is None and pauses.reason("chat_messages") is None


def test_resuming_what_is_not_paused_resumes_nothing() -> None:
    assert Pauses().resume("chat_messages") == []
    assert Pauses().resume(None) == []


def test_the_state_file_brings_pauses_back_and_drops_unknown_collections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "control.pauses.json"
    first = Pauses(path)
    first.pause("chat_messages", "al@db1/1", 10.0)
    first.pause("gone", "al@db1/1", 10.0)
    first.pause(None, "bo@db2/2", 20.0)

    again = Pauses(path)
    again.load({"chat_messages", "events"})

    assert again.as_json() == {
        "all": {"by": "bo@db2/2", "since": 20.0},
        "collections": {"chat_messages": {"by": "al@db1/1", "since": 10.0}},
    }
    assert "dropping the pause of gone" in caplog.text
    again.resume(None)
    assert not path.exists()


def test_an_unreadable_state_file_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "control.pauses.json"
    path.write_text("{not json")
    pauses = Pauses(path)
    pauses.load({"chat_messages"})

    assert pauses.as_json() == {"all": None, "collections": {}}
    assert "ignoring unreadable pause state" in caplog.text


def test_the_state_file_is_json_a_person_can_read(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    Pauses(path).pause("chat_messages", "al@db1/1", 5.0)

    assert json.loads(path.read_text())["collections"]["chat_messages"]["by"] == "al@db1/1"


def test_the_author_is_user_at_host_slash_pid() -> None:
    user_host, pid = who().rsplit("/", 1)
    assert "@" in user_host and pid.isdigit()
