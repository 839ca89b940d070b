"""The decisions foreign keys force on a policy (`archivist.data.relations`), without a
database: which references refuse a policy and what the refusal says, which a delete
respects, and the guard's SQL."""

from __future__ import annotations

import pytest

from archivist.config import config_from_dict
from archivist.data.registry import make_entity
from archivist.data.relations import (
    ForeignKey,
    guard_sql,
    guarded,
    kept_reason,
    refusal,
    with_kept,
)
from archivist.errors import ConfigError


def fk(on_delete: str, child: str = "order_items", name: str | None = "fk_items") -> ForeignKey:
    return ForeignKey(name, child, ("order_id",), "orders", ("id",), on_delete)


@pytest.mark.parametrize("action", ["CASCADE", "SET NULL", "SET DEFAULT"])
def test_a_reference_that_would_delete_or_change_children_refuses_the_policy(action: str) -> None:
    message = refusal("orders", [fk(action)], "refuse", ())
    assert message is not None
    assert "order_items" in message and "fk_items" in message and f"ON DELETE {action}" in message
    assert 'on_children = "keep"' in message and 'on_children = "cascade"' in message
    assert "Nothing was changed" in message
    verb = "delete" if action == "CASCADE" else "change"
    assert f"would {verb} rows of order_items that are not archived" in message
    assert f"this {verb}s rows that are not archived" in message


@pytest.mark.parametrize("action", ["RESTRICT", "NO ACTION"])
def test_a_restricting_reference_never_refuses(action: str) -> None:
    assert refusal("orders", [fk(action)], "refuse", ()) is None


@pytest.mark.parametrize("choice", ["keep", "cascade"])
def test_an_explicit_choice_lifts_the_refusal(choice: str) -> None:
    assert refusal("orders", [fk("CASCADE")], choice, ()) is None  # type: ignore[arg-type]


def test_a_table_that_references_itself_is_its_own_child() -> None:
    self_ref = ForeignKey(
        "fk_reply", "chat_messages", ("reply_to",), "chat_messages", ("id",), "SET NULL"
    )
    message = refusal("chat_messages", [self_ref], "refuse", ())
    assert message is not None and "fk_reply" in message
    assert "other chat_messages rows still reference" in message


def test_every_refusing_reference_is_named() -> None:
    message = refusal("orders", [fk("CASCADE"), fk("SET NULL", "invoices", "fk_inv")], "refuse", ())
    assert message is not None and "fk_items" in message and "fk_inv" in message


def test_a_delete_respects_every_reference_unless_the_policy_cascades() -> None:
    refs = (fk("CASCADE"), fk("RESTRICT", "invoices"))
    assert guarded(refs, "refuse") == refs
    assert guarded(refs, "keep") == refs
    assert guarded(refs, "cascade") == ()


def test_kept_rows_are_answered_with_their_reason_only_when_there_are_some() -> None:
    refs = [fk("RESTRICT"), fk("NO ACTION", "invoices", None)]
    assert with_kept({"deleted": 3}, 0, refs) == {"deleted": 3}
    answer = with_kept({"deleted": 3}, 2, refs)
    assert answer["kept"] == 2
    assert (
        answer["keptReason"]
        == kept_reason(refs)
        == (
            "still referenced by order_items (fk_items, ON DELETE RESTRICT), "
            "invoices (unnamed, ON DELETE NO ACTION)"
        )
    )


def test_the_guard_reads_each_referencing_table_under_its_own_alias() -> None:
    """A table that references itself must be read as the other rows: never under the
    deleted row's alias."""
    self_ref = ForeignKey(None, "m", ("reply_to",), "m", ("id",), "SET NULL")
    sql = guard_sql(lambda name: f'"{name}"', [fk("RESTRICT"), self_ref], "t")
    assert sql == (
        'NOT EXISTS (SELECT 1 FROM "order_items" AS archivist_ref0'
        ' WHERE archivist_ref0."order_id" = t."id")'
        ' AND NOT EXISTS (SELECT 1 FROM "m" AS archivist_ref1'
        ' WHERE archivist_ref1."reply_to" = t."id")'
    )
    assert guard_sql(str, [], "t") == ""


def test_on_children_must_be_one_of_its_values() -> None:
    with pytest.raises(ConfigError, match="on_children must be one of 'refuse', 'keep', 'cascade'"):
        make_entity("orders", order_by="id", max_rows=2, rows_per_archive=1, on_children="drop")
    with pytest.raises(ConfigError, match=r"archive\[0\]\.on_children"):
        config_from_dict(
            {
                "handles": {"primary": "sqlite://", "archive": "sqlite://"},
                "archive": [
                    {
                        "collection": "orders",
                        "order_by": "id",
                        "max_rows": 2,
                        "rows_per_archive": 1,
                        "on_children": "delete",
                    }
                ],
            }
        )
