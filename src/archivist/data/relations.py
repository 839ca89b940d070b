"""Foreign keys and triggers around an archived table: reading them from the database, the
decisions they force on a policy (refuse, keep referenced rows, let the database cascade),
and the guard that keeps a delete from removing a row other rows still reference.

Deleting a row other rows reference makes the database act on those rows (``ON DELETE
CASCADE`` deletes them, ``SET NULL``/``SET DEFAULT`` changes them) or refuse (``RESTRICT``,
``NO ACTION``). archivist copies only the archived table's rows, so it never lets the first
kind happen unless the policy says so (``on_children = "cascade"``), and never asks for the
second: a delete keeps every row still referenced (`guard_clause`, `guard_sql`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

OnChildren = Literal["refuse", "keep", "cascade"]
ON_CHILDREN: Final[tuple[OnChildren, ...]] = ("refuse", "keep", "cascade")
"""What a policy does about rows of other tables (or its own) that reference its rows:
``refuse`` (the default) refuses to run while a reference would change or delete them,
``keep`` keeps every row still referenced, ``cascade`` lets the database apply its
``ON DELETE`` action to them (deleting or changing rows that are not archived)."""

CHANGING: Final = frozenset({"CASCADE", "SET NULL", "SET DEFAULT"})
"""``ON DELETE`` actions by which deleting a parent deletes or changes its child rows."""
NO_ACTION: Final = "NO ACTION"
REF_ALIAS: Final = "archivist_ref"
"""The alias of a referencing table inside a guard: never the guarded table's own name, so
a table that references itself is read as the other rows, not the row being deleted."""


class ForeignKey(msgspec.Struct, frozen=True):
    """One foreign key: ``child.columns`` reference ``parent.referred``."""

    name: str | None
    child: str
    columns: tuple[str, ...]
    parent: str
    referred: tuple[str, ...]
    on_delete: str = NO_ACTION

    @property
    def changes_children(self) -> bool:
        """Deleting a referenced parent deletes or changes the child rows."""
        return self.on_delete in CHANGING

    @property
    def label(self) -> str:
        return self.name or "unnamed"

    def describe(self) -> str:
        """``order_items.order_id -> orders.id (fk_items_order, ON DELETE CASCADE)``."""
        columns = ", ".join(self.columns)
        referred = ", ".join(self.referred)
        return (
            f"{self.child}.{columns} -> {self.parent}.{referred} "
            f"({self.label}, ON DELETE {self.on_delete})"
        )


class Trigger(msgspec.Struct, frozen=True):
    name: str
    timing: str
    """``BEFORE``, ``AFTER`` or ``INSTEAD OF``."""

    def describe(self) -> str:
        return f"{self.name} ({self.timing} DELETE)"


class Relations(msgspec.Struct, frozen=True):
    """What points at a table (``inbound``: its children, itself included when it
    references itself), what it points at (``outbound``), and its ``ON DELETE`` triggers."""

    table: str
    inbound: tuple[ForeignKey, ...] = ()
    outbound: tuple[ForeignKey, ...] = ()
    triggers: tuple[Trigger, ...] = ()

    def lines(self) -> list[str]:
        """The relations for people, one per line (``--dry-run``, ``status``)."""
        lines = [f"referenced by {fk.describe()}" for fk in self.inbound]
        lines += [f"references {fk.describe()}" for fk in self.outbound]
        lines += [
            f"ON DELETE trigger {trigger.describe()} runs for every archived row"
            for trigger in self.triggers
        ]
        return lines


# --- decisions ------------------------------------------------------------------------------


def refusal(
    collection: str, inbound: Iterable[ForeignKey], on_children: OnChildren, children: Sequence[str]
) -> str | None:
    """Why a policy must not run, or None: a reference whose ``ON DELETE`` would delete or
    change rows that are not archived, where the policy neither moves that child table with
    its rows (``children``) nor chose what to do (``on_children``)."""
    if on_children != "refuse":
        return None
    blocking = [fk for fk in inbound if fk.changes_children and fk.child not in children]
    if not blocking:
        return None
    first = blocking[0]
    named = "; ".join(fk.describe() for fk in blocking)
    effect = _effect(first.on_delete)
    whose = f"other {collection} rows" if first.child == collection else f"{first.child} rows"
    move = (
        ""
        if first.child == collection
        else f'children = ["{first.child}"] on the policy (its rows move to the archive '
        "with the rows they reference, before them), "
    )
    return (
        f"{collection}: refusing to archive: deleting an archived row would {effect} "
        f"rows of {first.child} that are not archived ({named}). Nothing was changed. "
        f"Either set {move}"
        f'on_children = "keep" (a row that {whose} still reference stays in place, and '
        'the task reports it), or on_children = "cascade" to let the database '
        f"{effect} those rows (this {effect}s rows that are not archived)"
    )


def _effect(action: str) -> str:
    return "delete" if action == "CASCADE" else "change"


def guarded(inbound: Iterable[ForeignKey], on_children: OnChildren) -> tuple[ForeignKey, ...]:
    """The references a delete must respect: a row any of them still holds is kept. None
    when the policy lets the database cascade."""
    if on_children == "cascade":
        return ()
    return tuple(inbound)


def kept_reason(refs: Sequence[ForeignKey]) -> str:
    """Why rows were kept, for the ``data/delete`` answer and the task's error."""
    shown = ", ".join(f"{fk.child} ({fk.label}, ON DELETE {fk.on_delete})" for fk in refs)
    return f"still referenced by {shown}"


class ChildTable(msgspec.Struct, frozen=True):
    """A named child in the tree a policy moves: ``table.column`` references its parent's
    primary key ``references``; its own named children below it."""

    table: str
    column: str
    references: str
    children: tuple[ChildTable, ...] = ()

    def walk(self) -> list[ChildTable]:
        """This child and every one below it, parents first."""
        return [self, *(node for child in self.children for node in child.walk())]


def children_tree(
    collection: str,
    named: Sequence[str],
    keys: Sequence[ForeignKey],
    primary_keys: Mapping[str, Sequence[str]],
) -> tuple[ChildTable, ...]:
    """The tree of a policy's named children: each must reference, by one single-column
    foreign key to its primary key, the collection or exactly one other named child.
    Raises ValueError saying what is wrong (with the table and the key)."""
    tables = {collection, *named}
    edges: dict[str, ForeignKey] = {}
    for child in named:
        if child not in primary_keys:
            raise ValueError(f"children: there is no table {child}")
        if len(primary_keys[child]) != 1:
            raise ValueError(f"children: {child} needs a single-column primary key")
        found = [fk for fk in keys if fk.child == child and fk.parent in tables - {child}]
        if not found:
            raise ValueError(
                f"children: {child} has no foreign key to {collection}"
                + (" or another named child" if len(named) > 1 else "")
            )
        if len(found) > 1:
            shown = "; ".join(fk.describe() for fk in found)
            raise ValueError(
                f"children: {child} references more than one of the tables moved ({shown}); "
                "a child may reference one of them only"
            )
        fk = found[0]
        if len(fk.columns) != 1:
            raise ValueError(
                f"children: {fk.describe()} has several columns; only single-column "
                "foreign keys are supported among children"
            )
        if tuple(fk.referred) != tuple(primary_keys.get(fk.parent, ())):
            raise ValueError(
                f"children: {fk.describe()} does not reference the primary key of {fk.parent}"
            )
        edges[child] = fk

    def below(parent: str, seen: frozenset[str]) -> tuple[ChildTable, ...]:
        return tuple(
            ChildTable(child, fk.columns[0], fk.referred[0], below(child, seen | {child}))
            for child, fk in edges.items()
            if fk.parent == parent and child not in seen
        )

    tree = below(collection, frozenset({collection}))
    reached = {node.table for child in tree for node in child.walk()}
    missing = [child for child in named if child not in reached]
    if missing:
        raise ValueError(
            f"children: {', '.join(missing)} do not lead back to {collection} (a cycle)"
        )
    return tree


def review(
    collection: str,
    named: Sequence[str],
    on_children: OnChildren,
    keys: Sequence[ForeignKey],
    primary_keys: Mapping[str, Sequence[str]],
) -> tuple[tuple[ChildTable, ...], str | None]:
    """A policy against the foreign keys of its database: the tree of its named children,
    and why it must refuse to run (None if it need not), for the collection and every
    named child alike (a child's rows are deleted too). Raises ValueError for named
    children that cannot be moved (`children_tree`)."""
    tree = children_tree(collection, named, keys, primary_keys)
    for table in (collection, *named):
        inbound = [fk for fk in keys if fk.parent == table]
        problem = refusal(table, inbound, on_children, named)
        if problem is not None:
            if table != collection:
                problem = f"{collection}: its child {problem}"
            return tree, problem
    return tree, None


# --- the guard ------------------------------------------------------------------------------


def guard_clause(
    table: sa.Table | sa.TableClause, refs: Sequence[ForeignKey]
) -> list[sa.ColumnElement[bool]]:
    """The conditions true for a row of ``table`` that no row references through ``refs``
    (none without references): one ``NOT EXISTS`` per reference, each reading the
    referencing table under its own alias."""
    conditions: list[sa.ColumnElement[bool]] = []
    for index, fk in enumerate(refs):
        child = sa.table(fk.child, *(sa.column(name) for name in fk.columns)).alias(
            f"{REF_ALIAS}{index}"
        )
        matches = [
            child.c[name] == table.c[referred]
            for name, referred in zip(fk.columns, fk.referred, strict=True)
        ]
        conditions.append(~sa.exists().where(*matches))
    return conditions


def guard_sql(quote: Callable[[str], str], refs: Sequence[ForeignKey], alias: str) -> str:
    """`guard_clause` as SQL text, on the guarded table's alias ``alias`` (SQLite's
    prepared deletes); empty without references."""
    parts = []
    for index, fk in enumerate(refs):
        ref = f"{REF_ALIAS}{index}"
        matches = " AND ".join(
            f"{ref}.{quote(name)} = {alias}.{quote(referred)}"
            for name, referred in zip(fk.columns, fk.referred, strict=True)
        )
        parts.append(f"NOT EXISTS (SELECT 1 FROM {quote(fk.child)} AS {ref} WHERE {matches})")
    return " AND ".join(parts)


def with_kept(
    answer: dict[str, object], kept: int, refs: Sequence[ForeignKey]
) -> dict[str, object]:
    """A ``data/delete`` answer with, when rows were kept for their references, how many
    (``kept``) and why (``keptReason``): extension fields (docs/protocol.md)."""
    if kept > 0:
        answer["kept"] = kept
        answer["keptReason"] = kept_reason(refs)
    return answer


def set_read_committed(connection: Connection) -> None:
    """PostgreSQL: each statement of this transaction reads the rows committed before it
    began (the server's default may be stricter); must come first in the transaction."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")


def lock_for_delete(connection: Connection, table: sa.Table, pk: str, keys: Sequence[Any]) -> None:
    """Before a guarded delete on a server: lock the rows to delete, so the guard that follows
    sees every child row committed before them.

    A child row inserted concurrently holds only a share lock on its parent (PostgreSQL's
    ``KEY SHARE``, InnoDB's shared record lock): a delete whose guard read an older snapshot
    would wait for that insert, then delete the parent (and cascade to the new child).
    Locked first, the parents make a later insert wait until this transaction ends (then
    fail its check), and an earlier one commit before this lock is granted; the delete, a
    new statement, then sees it (PostgreSQL reads a new snapshot per statement in READ
    COMMITTED, set here; InnoDB's delete reads the referencing rows with locking reads)."""
    set_read_committed(connection)
    column = table.c[pk]
    for start in range(0, len(keys), 5_000):
        chunk = list(keys[start : start + 5_000])
        connection.execute(sa.select(column).where(column.in_(chunk)).with_for_update()).all()


# --- reflection -----------------------------------------------------------------------------


def reflect_relations(connection: Connection, table: str) -> Relations:
    """The foreign keys into and out of ``table`` and its ``ON DELETE`` triggers, as the
    database has them now."""
    every = foreign_keys(connection)
    return Relations(
        table=table,
        inbound=tuple(fk for fk in every if fk.parent == table),
        outbound=tuple(fk for fk in every if fk.child == table),
        triggers=delete_triggers(connection, table),
    )


def primary_keys(connection: Connection, tables: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The primary key columns of each of ``tables`` that exists."""
    inspector = sa.inspect(connection)
    found: dict[str, tuple[str, ...]] = {}
    for table in tables:
        if inspector.has_table(table):
            pk = inspector.get_pk_constraint(table).get("constrained_columns") or []
            found[table] = tuple(pk)
    return found


def referencing(connection: Connection, table: str) -> tuple[ForeignKey, ...]:
    """The foreign keys that reference ``table`` (its own included)."""
    return tuple(fk for fk in foreign_keys(connection) if fk.parent == table)


def foreign_keys(connection: Connection) -> list[ForeignKey]:
    """Every foreign key among the tables of the connection's default schema."""
    if connection.dialect.name == "sqlite":
        return _sqlite_foreign_keys(connection)
    found: list[ForeignKey] = []
    inspector = sa.inspect(connection)
    for (_, child), keys in inspector.get_multi_foreign_keys().items():
        for key in keys:
            if key.get("referred_schema") not in (None, connection.dialect.default_schema_name):
                continue
            options = key.get("options") or {}
            found.append(
                ForeignKey(
                    name=key.get("name"),
                    child=child,
                    columns=tuple(key["constrained_columns"]),
                    parent=key["referred_table"],
                    referred=tuple(key["referred_columns"]),
                    # Absent where it is the default: PostgreSQL omits NO ACTION, MariaDB
                    # RESTRICT (which acts the same on InnoDB).
                    on_delete=str(options.get("ondelete") or NO_ACTION).upper(),
                )
            )
    return found


def _sqlite_foreign_keys(connection: Connection) -> list[ForeignKey]:
    """SQLite's foreign keys from ``PRAGMA foreign_key_list``, which has the ``ON DELETE``
    action (SQLAlchemy's reflection does not); names, where the table's SQL gives one,
    from SQLAlchemy."""
    tables = [
        str(name)
        for (name,) in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    inspector = sa.inspect(connection)
    quote = connection.dialect.identifier_preparer.quote
    found: list[ForeignKey] = []
    for child in tables:
        rows = connection.exec_driver_sql(f"PRAGMA foreign_key_list({quote(child)})").all()
        by_id: dict[int, list[Any]] = {}
        for row in rows:
            by_id.setdefault(int(row[0]), []).append(row)
        names = {
            tuple(key["constrained_columns"]): key.get("name")
            for key in inspector.get_foreign_keys(child)
        }
        for parts in by_id.values():
            parts.sort(key=lambda row: int(row[1]))
            parent = str(parts[0][2])
            columns = tuple(str(row[3]) for row in parts)
            referred: tuple[str, ...] = tuple(str(row[4]) for row in parts if row[4] is not None)
            if len(referred) != len(columns):  # "REFERENCES parent": its primary key
                pk = inspector.get_pk_constraint(parent).get("constrained_columns") or []
                referred = tuple(pk)
            found.append(
                ForeignKey(
                    name=names.get(columns),
                    child=child,
                    columns=columns,
                    parent=parent,
                    referred=referred,
                    on_delete=str(parts[0][6]).upper(),
                )
            )
    return found


def delete_triggers(connection: Connection, table: str) -> tuple[Trigger, ...]:
    """The triggers that run when a row of ``table`` is deleted."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        rows = connection.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
            (table,),
        ).all()
        found = []
        for name, text in rows:
            head = " ".join(str(text).upper().split()).split(" ON ")[0]
            if " DELETE" in head:
                timing = (
                    "INSTEAD OF"
                    if "INSTEAD OF" in head
                    else ("AFTER" if " AFTER " in head else "BEFORE")
                )
                found.append(Trigger(str(name), timing))
        return tuple(found)
    if dialect == "postgresql":
        # tgtype's bits: 2 BEFORE, 8 DELETE, 64 INSTEAD OF (pg_trigger.h).
        rows = connection.exec_driver_sql(
            "SELECT t.tgname, t.tgtype FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE NOT t.tgisinternal AND c.relname = %s"
            " AND c.relnamespace = to_regnamespace(current_schema())::oid AND t.tgtype & 8 = 8",
            (table,),
        ).all()
        return tuple(
            Trigger(
                str(name),
                "INSTEAD OF" if int(kind) & 64 else "BEFORE" if int(kind) & 2 else "AFTER",
            )
            for name, kind in rows
        )
    rows = connection.exec_driver_sql(
        "SELECT TRIGGER_NAME, ACTION_TIMING FROM information_schema.TRIGGERS"
        " WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = %s"
        " AND EVENT_MANIPULATION = 'DELETE'",
        (table,),
    ).all()
    return tuple(Trigger(str(name), str(timing)) for name, timing in rows)
