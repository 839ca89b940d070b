"""The decisions foreign keys force on a policy (`archivist.data.relations`), without a
database: which references refuse a policy and what the refusal says, which a delete
respects, and the guard's SQL."""

from __future__ import annotations

import pytest

from archivist.config import config_from_dict
from archivist.data.registry import make_entity
from archivist.data.relations import (
    ChildTable,
    ForeignKey,
    children_tree,
    guard_sql,
    guarded,
    kept_reason,
    refusal,
    review,
    with_kept,
)
from archivist.errors import ConfigError
from archivist.policy import parse_rules


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


ITEMS = ForeignKey("fk_items", "order_items", ("order_id",), "orders", ("id",), "CASCADE")
NOTES = ForeignKey("fk_notes", "notes", ("item_id",), "order_items", ("id",), "CASCADE")
PKS = {"orders": ("id",), "order_items": ("id",), "notes": ("id",), "customers": ("id",)}


def test_named_children_form_a_tree_resolved_by_their_foreign_keys() -> None:
    tree = children_tree("orders", ["notes", "order_items"], [NOTES, ITEMS], PKS)
    assert tree == (
        ChildTable("order_items", "order_id", "id", (ChildTable("notes", "item_id", "id"),)),
    )
    assert [node.table for node in tree[0].walk()] == ["order_items", "notes"]


@pytest.mark.parametrize(
    ("named", "keys", "pks", "error"),
    [
        (["customers"], [ITEMS], PKS, "customers has no foreign key to orders"),
        (["missing"], [ITEMS], PKS, "there is no table missing"),
        (
            ["order_items"],
            [ForeignKey("fk2", "order_items", ("a", "b"), "orders", ("id", "x"))],
            PKS,
            "only single-column foreign keys",
        ),
        (
            ["order_items"],
            [ForeignKey("fk3", "order_items", ("code",), "orders", ("code",))],
            PKS,
            "does not reference the primary key of orders",
        ),
        (["order_items"], [ITEMS], {**PKS, "order_items": ("a", "b")}, "single-column primary"),
        (
            ["order_items", "notes"],
            [
                ITEMS,
                NOTES,
                ForeignKey("fk4", "notes", ("order_id",), "orders", ("id",)),
            ],
            PKS,
            "notes references more than one",
        ),
        (
            ["order_items", "notes"],
            [
                ForeignKey("a", "order_items", ("note_id",), "notes", ("id",)),
                ForeignKey("b", "notes", ("item_id",), "order_items", ("id",)),
            ],
            PKS,
            "do not lead back to orders",
        ),
    ],
)
def test_named_children_that_cannot_move_are_refused_with_the_reason(
    named: list[str],
    keys: list[ForeignKey],
    pks: dict[str, tuple[str, ...]],
    error: str,
) -> None:
    with pytest.raises(ValueError, match=error):
        children_tree("orders", named, keys, pks)


def test_a_named_child_lifts_its_refusal_but_its_own_cascading_child_does_not() -> None:
    tree, problem = review("orders", ["order_items"], "refuse", [ITEMS, NOTES], PKS)
    assert [node.table for node in tree] == ["order_items"]
    assert problem is not None and problem.startswith("orders: its child order_items: refusing")
    assert "fk_notes" in problem
    _, problem = review("orders", ["order_items", "notes"], "refuse", [ITEMS, NOTES], PKS)
    assert problem is None


def test_a_purge_policy_cannot_name_children() -> None:
    """A purge archives nothing: children named with it would be deleted unarchived."""
    with pytest.raises(ConfigError, match=r'children: a policy with mode = "purge"'):
        make_entity(
            "orders",
            order_by="id",
            max_rows=2,
            rows_per_archive=1,
            rules=parse_rules(mode="purge", max_rows=2),
            children=["order_items"],
        )
    moved = make_entity(
        "orders",
        order_by="id",
        max_rows=2,
        rows_per_archive=1,
        rules=parse_rules(mode="copy", where={"status": "closed"}),
        children=["order_items"],
    )
    assert moved.children == ("order_items",)
