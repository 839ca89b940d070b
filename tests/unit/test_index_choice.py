"""Which index serves a policy's ORDER BY, decided from reflected indexes (no database)."""

from __future__ import annotations

from archivist.data.indexes import PRIMARY_KEY, Index, index_for, missing_index_warning


def test_an_index_whose_first_column_is_order_by_is_used() -> None:
    indexes = [
        Index("ix_room_created", ("room", "created_at")),
        Index("ix_created", ("created_at",)),
    ]
    assert index_for("created_at", indexes, Index("pk", ("id",))) == "ix_created"


def test_an_index_where_order_by_comes_second_does_not_count() -> None:
    indexes = [Index("ix_room_created", ("room", "created_at"))]
    assert index_for("created_at", indexes, Index("pk", ("id",))) is None


def test_the_primary_key_counts_and_wins() -> None:
    indexes = [Index("ix_id_room", ("id", "room"))]
    assert index_for("id", indexes, Index("chat_pkey", ("id",))) == "chat_pkey"
    assert index_for("id", [], Index(None, ("id",))) == PRIMARY_KEY


def test_a_composite_primary_key_counts_by_its_first_column_only() -> None:
    primary = Index("pk", ("tenant", "id"))
    assert index_for("tenant", [], primary) == "pk"
    assert index_for("id", [], primary) is None


def test_the_narrowest_of_several_indexes_is_named() -> None:
    indexes = [Index("wide", ("created_at", "room", "id")), Index("narrow", ("created_at", "id"))]
    assert index_for("created_at", indexes, None) == "narrow"


def test_an_expression_index_does_not_count() -> None:
    assert index_for("created_at", [Index("ix_expr", (None,))], None) is None


def test_an_unnamed_index_is_shown_by_its_columns() -> None:
    assert index_for("created_at", [Index(None, ("created_at", "id"))], None) == "(created_at, id)"


def test_the_warning_says_every_batch_scans_and_how_to_fix_it() -> None:
    assert missing_index_warning("chat", "created_at", "ix") is None
    warning = missing_index_warning("chat", "created_at", None)
    assert warning is not None
    assert "every batch scans" in warning
    assert "CREATE INDEX" in warning and "chat (created_at)" in warning
