"""``archivist check``: every handle and policy of a config checked against the databases,
with every problem listed (not only the first), as text that fits 80 columns or as JSON.

Checking reads only: it counts, reflects and reads two values of each order column; it
creates no table and takes no lock.
"""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from archivist.config import Config
from archivist.data.handles import Handle
from archivist.data.indexes import missing_index_warning, order_index
from archivist.data.registry import Entity
from archivist.data.relations import reflect_relations, refusal
from archivist.data.replicas import describe, lag_hold, seconds_text
from archivist.data.schema import TableInfo, plan_archive_table, require_single_pk
from archivist.data.service import DataDaemon
from archivist.data.values import encode_value
from archivist.errors import ArchivistError
from archivist.sizing import Size

WIDTH = 80
"""The terminal width the text report fits."""


@dataclass
class HandleCheck:
    name: str
    dialect: str
    reachable: bool
    error: str | None = None
    missing_file: str | None = None
    """A SQLite handle's file that does not exist yet: check does not connect (that would
    create it); archiving creates an archive handle's file on first use."""
    replicas: list[str] | None = None
    """A source handle's replicas as they are now (``"replica1 0.4 s behind"``)."""
    max_replica_lag: float | None = None
    held: str | None = None
    """Why its batches would wait now (a replica lags more than max_replica_lag)."""


@dataclass
class PolicyCheck:
    """What ``check`` found for one policy; None where it could not be found out."""

    collection: str
    source_handle: str
    dest_handle: str
    order_by: str
    max_rows: int | None
    """None: no size limit (an age policy)."""
    rows_per_archive: int | None
    rows: int | None = None
    rows_exact: bool = True
    """False: ``rows`` is the engine's estimate (a table well within max_rows, or one
    whose policy has none: `archivist.data.size`); shown with "~"."""
    eligible: int | None = None
    oldest: object = None
    newest: object = None
    index: str | None = None
    archive_table: str | None = None
    foreign_keys: list[str] | None = None
    """The foreign keys into and out of the table; None: the table could not be read."""
    triggers: list[str] | None = None
    """Its ON DELETE triggers (they run for every archived row)."""
    window: str | None = None
    would: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    source: str
    handles: list[HandleCheck]
    policies: list[PolicyCheck]

    @property
    def problems(self) -> list[str]:
        """Every problem found: unreachable handles first, then each policy's."""
        found = [f"handle '{h.name}': {h.error}" for h in self.handles if not h.reachable]
        for policy in self.policies:
            found += [f"{policy.collection}: {problem}" for problem in policy.problems]
        return found

    def as_json(self) -> dict[str, object]:
        return {
            "config": self.source,
            "ok": not self.problems,
            "problems": self.problems,
            "handles": [dataclasses.asdict(h) for h in self.handles],
            "policies": [dataclasses.asdict(p) for p in self.policies],
        }


async def check_config(config: Config) -> CheckReport:
    """Connect to every handle of ``config`` and check each policy; never raises for what
    it finds (each finding is in the report)."""
    data = DataDaemon(config)
    try:
        handles: list[HandleCheck] = []
        for name, handle in data.handles.items():
            missing = _missing_sqlite_file(handle)
            if missing is not None:
                handles.append(HandleCheck(name, handle.dialect_name, True, missing_file=missing))
                continue
            try:
                await handle.identity()
            except ArchivistError as exc:
                handles.append(HandleCheck(name, handle.dialect_name, False, exc.message))
            else:
                handles.append(HandleCheck(name, handle.dialect_name, True))
        for handle_check in handles:
            watched = config.replica_checks.get(handle_check.name)
            if watched is not None:
                lags = [await data.replicas.lag(name) for name in watched.replicas]
                handle_check.replicas = [describe(lag) for lag in lags]
                handle_check.max_replica_lag = watched.max_lag
                handle_check.held = lag_hold(lags, watched.max_lag)
        for name in sorted(data.lakes.names):
            try:
                await data.lakes.reach(name)
            except ArchivistError as exc:
                handles.append(HandleCheck(name, "iceberg", False, exc.message))
            else:
                handles.append(HandleCheck(name, "iceberg", True))
        reachable = {h.name for h in handles if h.reachable and h.missing_file is None}
        missing_files = {h.name: h.missing_file for h in handles if h.missing_file is not None}
        policies = [
            await _check_policy(data, entity, reachable, missing_files)
            for entity in data.policies()
        ]
    finally:
        await data.close()
    return CheckReport(config.source, handles, policies)


def _missing_sqlite_file(handle: Handle) -> str | None:
    """A SQLite handle's file path when the file does not exist, else None."""
    database = handle.url.database
    if handle.dialect_name != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or Path(database).exists():
        return None
    return database


async def _check_policy(
    data: DataDaemon, entity: Entity, reachable: set[str], missing_files: dict[str, str]
) -> PolicyCheck:
    found = PolicyCheck(
        collection=entity.collection,
        source_handle=entity.source_handle,
        dest_handle=entity.dest_handle,
        order_by=entity.order_by,
        max_rows=entity.max_rows,
        rows_per_archive=entity.rows_per_archive,
        window=entity.rules.window.text if entity.rules.window is not None else None,
    )
    if entity.source_handle in missing_files:
        found.problems.append(
            f"table {entity.collection} does not exist: handle '{entity.source_handle}' has "
            f"no SQLite file {missing_files[entity.source_handle]}"
        )
    if entity.dest_handle in missing_files:
        found.archive_table = "will be created (with its SQLite file)"
    for role, name in (("source", entity.source_handle), ("archive", entity.dest_handle)):
        if role == "archive" and entity.rules.mode == "purge":
            continue  # a purge archives nothing
        if name not in reachable and name not in missing_files:
            found.problems.append(f"its {role} handle '{name}' cannot be reached")
    try:
        await _inspect(data, entity, found, reachable)
    except ArchivistError as exc:
        found.problems.append(exc.message)
    if found.problems:
        found.would = "refused: " + "; ".join(found.problems)
    elif found.eligible:
        found.would = f"would archive {found.eligible:,} rows"
    else:
        found.would = "within policy"
    return found


async def _inspect(
    data: DataDaemon, entity: Entity, found: PolicyCheck, reachable: set[str]
) -> None:
    if entity.source_handle not in reachable:
        return
    source_handle = data.handle(entity.source_handle)
    source = await data.catalog.reflect(source_handle, entity.collection, fresh=True)
    if source is None:
        found.problems.append(
            f"table {entity.collection} does not exist on handle '{entity.source_handle}'"
        )
        return
    if entity.order_by not in source.column_names:
        found.problems.append(
            f"column '{entity.order_by}' (order_by) does not exist in table {entity.collection}"
        )
        return
    problem = require_single_pk(source)
    if problem:
        found.problems.append(problem)
        return
    size = await data.size(entity.collection)
    if size.rows is None:
        size = Size(await data.count(entity.collection), True, "count")
    found.rows, found.rows_exact = size.rows, size.exact
    found.eligible = entity.rows_to_archive(size.rows or 0) if size.exact else 0
    found.oldest, found.newest = await source_handle.transaction(
        _order_range, source, entity.order_by
    )
    found.index = await source_handle.transaction(order_index, entity.collection, entity.order_by)
    missing = missing_index_warning(entity.collection, entity.order_by, found.index)
    if missing is not None:
        found.warnings.append(missing)
    age_column = entity.rules.age_column(entity.order_by)
    if age_column != entity.order_by:
        age_index = await source_handle.transaction(order_index, entity.collection, age_column)
        missing = missing_index_warning(entity.collection, age_column, age_index)
        if missing is not None:
            found.warnings.append(missing)
    relations = await source_handle.transaction(reflect_relations, entity.collection)
    found.foreign_keys = [line for line in relations.lines() if "trigger" not in line]
    found.triggers = [trigger.describe() for trigger in relations.triggers]
    if relations.triggers:
        found.warnings.append(
            f"{len(relations.triggers)} ON DELETE trigger(s) run for every archived row"
        )
    refused = refusal(entity.collection, relations.inbound, entity.on_children, entity.children)
    if refused is not None:
        found.problems.append(refused)
    if entity.dest_handle not in reachable:
        return
    if data.lakes.is_lake(entity.dest_handle):
        found.archive_table = await data.lakes.plan(entity)
        return
    if await source_handle.identity() == await data.handle(entity.dest_handle).identity():
        found.problems.append(
            f"handles '{entity.source_handle}' and '{entity.dest_handle}' reach the same "
            "database; archiving there would delete the rows it copies onto themselves"
        )
        return
    dest = await data.catalog.reflect(
        data.handle(entity.dest_handle), entity.collection, fresh=True
    )
    try:
        change = plan_archive_table(source, dest, entity.order_by)
    except ArchivistError as exc:
        found.problems.append(f"archive table cannot be updated: {exc.message}")
        return
    if change.create:
        found.archive_table = "will be created"
    elif change.add_columns:
        found.archive_table = "will gain columns " + ", ".join(c.name for c in change.add_columns)
    else:
        found.archive_table = "exists"


def _order_range(connection: Connection, info: TableInfo, order_by: str) -> tuple[object, object]:
    """The oldest and newest ``order_by`` values (JSON form), None for an empty table."""
    column = info.table.c[order_by]
    low, high = connection.execute(sa.select(sa.func.min(column), sa.func.max(column))).one()
    spec = info.spec(order_by)
    return encode_value(spec, low), encode_value(spec, high)


def render(report: CheckReport, width: int = WIDTH) -> list[str]:
    """The report as lines of at most ``width`` characters (long values wrap, indented)."""
    lines: list[str] = []

    def say(text: str, indent: int = 0) -> None:
        lines.extend(
            textwrap.wrap(
                text,
                width,
                initial_indent=" " * indent,
                subsequent_indent=" " * (indent + 4),
                break_long_words=True,
                break_on_hyphens=False,
            )
            or [""]
        )

    say(f"config: {report.source}")
    say("handles:")
    for handle in report.handles:
        state = "reachable" if handle.reachable else f"UNREACHABLE: {handle.error}"
        if handle.missing_file is not None:
            state = f"no file yet at {handle.missing_file} (check creates none)"
        say(f"{handle.name} ({handle.dialect}): {state}", 2)
        if handle.replicas is not None and handle.max_replica_lag is not None:
            limit = seconds_text(handle.max_replica_lag)
            say(f"replicas (max_replica_lag {limit}): {', '.join(handle.replicas)}", 4)
            if handle.held is not None:
                say(f"batches would wait now: {handle.held}", 4)
    for policy in report.policies:
        say("")
        say(f"{policy.collection} ({policy.source_handle} -> {policy.dest_handle}):")
        rows = "unknown" if policy.rows is None else f"{policy.rows:,}"
        limit = (
            f"max_rows {policy.max_rows:,}, rows_per_archive {policy.rows_per_archive or 0:,}"
            if policy.max_rows is not None
            else "no max_rows"
        )
        if policy.rows is not None and not policy.rows_exact:
            rows, limit = f"~{rows}", f"estimated; {limit}"
        say(f"rows: {rows} ({limit})", 2)
        if policy.eligible is not None:
            say(f"eligible now: {policy.eligible:,}", 2)
        if policy.rows is not None:
            say(f"{policy.order_by}: oldest {policy.oldest}, newest {policy.newest}", 2)
            say(f"index: {policy.index or 'none (every batch scans the table)'}", 2)
        if policy.archive_table is not None:
            say(f"archive table on {policy.dest_handle}: {policy.archive_table}", 2)
        fks = (
            "not inspected"
            if policy.foreign_keys is None
            else ", ".join(policy.foreign_keys) or "none"
        )
        triggers = (
            "not inspected" if policy.triggers is None else ", ".join(policy.triggers) or "none"
        )
        say(f"foreign keys: {fks}; triggers: {triggers}", 2)
        say(f"window: {policy.window or 'any time'}", 2)
        for warning in policy.warnings:
            say(f"warning: {warning}", 2)
        say(f"run now: {policy.would}", 2)
    say("")
    problems = report.problems
    if problems:
        say(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}:")
        for problem in problems:
            say(f"- {problem}", 2)
    else:
        say("no problems found")
    return lines
