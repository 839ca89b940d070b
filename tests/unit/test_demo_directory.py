"""The demo deletes only what a previous demo made: the decision on a directory's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from archivist.demo import MARKER, files_to_remove
from archivist.errors import ArchivistError


def test_a_missing_or_empty_directory_has_nothing_to_remove(tmp_path: Path) -> None:
    assert files_to_remove(tmp_path / "new") == []
    assert files_to_remove(tmp_path) == []


def test_a_directory_with_a_users_file_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ArchivistError) as refused:
        files_to_remove(tmp_path)
    assert str(tmp_path) in refused.value.message
    assert MARKER in refused.value.message and "--dir" in refused.value.message


def test_a_previous_demos_directory_gives_only_the_demos_own_files(tmp_path: Path) -> None:
    for name in ("primary.db", "archive.db", "archive.db-journal", "notes.txt"):
        (tmp_path / name).write_text("x")
    # A marker edited to list a user's file still removes only files the demo makes.
    (tmp_path / MARKER).write_text("primary.db\narchive.db\narchive.db-journal\nnotes.txt\n")

    removed = files_to_remove(tmp_path)

    assert sorted(path.name for path in removed) == [
        "archive.db",
        "archive.db-journal",
        "primary.db",
    ]


def test_a_file_given_as_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArchivistError, match="not a directory"):
        files_to_remove(tmp_path / "file")


def test_the_mover_lock_file_the_demo_leaves_is_removed_on_a_rerun(tmp_path: Path) -> None:
    lock = "primary.db.archivist-chat_messages.lock"
    for name in ("primary.db", lock):
        (tmp_path / name).write_text("x")
    (tmp_path / MARKER).write_text(f"primary.db\n{lock}\n")

    assert sorted(path.name for path in files_to_remove(tmp_path)) == sorted(["primary.db", lock])
