"""The rules of a policy beyond ``max_rows``: age (``older_than``), predicates (``where``),
modes (``purge``, ``copy``) and when it runs (``window``, ``max_runtime``).

Pure decisions, no I/O: durations and cutoffs, the time window, and what a check queues.
The clock is always passed in (an aware UTC ``datetime``), so tests never sleep.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

Mode = Literal["move", "copy", "purge"]
MODES: Final = ("move", "copy", "purge")
TimeUnit = Literal["s", "ms"]
TIME_UNITS: Final = ("s", "ms")

_SHORT: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdwy])\s*$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_ISO: Final = re.compile(
    r"^P(?!$)(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?!$)(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


class Duration(msgspec.Struct, frozen=True):
    """A length of time: calendar months (years are 12) plus a fixed number of seconds."""

    months: int = 0
    seconds: float = 0.0
    text: str = ""

    def before(self, now: dt.datetime) -> dt.datetime:
        """``now`` minus this duration: months by the calendar (the day clamped to the
        month's last: 31 March minus P1M is 28 or 29 February), then the seconds."""
        if self.months:
            index = now.year * 12 + (now.month - 1) - self.months
            year, month = divmod(index, 12)
            month += 1
            day = min(now.day, calendar.monthrange(year, month)[1])
            now = now.replace(year=year, month=month, day=day)
        return now - dt.timedelta(seconds=self.seconds)

    def __str__(self) -> str:
        return self.text


def parse_duration(text: str) -> Duration:
    """``"90d"`` (units s, m, h, d, w, and y: calendar years) or an ISO-8601 duration
    (``P3M``, ``PT12H``, ``P1Y2M10DT2H30M``); ValueError saying what is accepted."""
    if not isinstance(text, str):
        raise ValueError(f'expected a duration such as "90d" or "P3M", got {text!r}')
    short = _SHORT.match(text)
    if short is not None and short[2] == "y":
        # Years are calendar years (12 months), so "7y" ends on the same date 7 years on.
        if not short[1].isdigit() or int(short[1]) == 0:
            raise ValueError(f"duration {text!r}: years must be a whole number above zero")
        return Duration(months=int(short[1]) * 12, text=text.strip())
    if short is not None:
        seconds = float(short[1]) * _UNIT_SECONDS[short[2]]
        if seconds <= 0:
            raise ValueError(f"duration {text!r} must be longer than zero")
        return Duration(seconds=seconds, text=text.strip())
    iso = _ISO.match(text.strip().upper())
    if iso is None:
        raise ValueError(
            f"not a duration: {text!r}; write a number and a unit (s, m, h, d, w, y), "
            'e.g. "90d", or an ISO-8601 duration, e.g. "P3M" or "PT12H"'
        )
    parts = {name: float(value) for name, value in iso.groupdict().items() if value}
    months = int(parts.get("y", 0)) * 12 + int(parts.get("mo", 0))
    seconds = (
        parts.get("w", 0) * 7 * 86400
        + parts.get("d", 0) * 86400
        + parts.get("h", 0) * 3600
        + parts.get("mi", 0) * 60
        + parts.get("s", 0)
    )
    if months == 0 and seconds <= 0:
        raise ValueError(f"duration {text!r} must be longer than zero")
    return Duration(months=months, seconds=seconds, text=text.strip())


def cutoff(now: dt.datetime, older_than: Duration) -> dt.datetime:
    """The instant before which a row is old, in UTC: ``now`` (aware) minus ``older_than``."""
    if now.tzinfo is None:
        raise ValueError("the clock must give an aware datetime")
    return older_than.before(now.astimezone(dt.UTC))


def utc_now() -> dt.datetime:
    """The daemon's clock: the current instant, in UTC."""
    return dt.datetime.now(dt.UTC)


# --- windows ---------------------------------------------------------------------------------

_WINDOW: Final = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class Window(msgspec.Struct, frozen=True):
    """A daily time window ``HH:MM-HH:MM`` in a time zone; it may cross midnight
    (``22:00-04:00``). The start is inside, the end outside."""

    start: dt.time
    end: dt.time
    zone: dt.tzinfo = dt.UTC
    text: str = ""

    def contains(self, now: dt.datetime) -> bool:
        """Whether batches may start at ``now`` (an aware datetime)."""
        local = now.astimezone(self.zone).time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # crosses midnight

    def opened_at(self, now: dt.datetime) -> dt.datetime | None:
        """When the window that contains ``now`` opened (None outside it): which run of
        the window ``now`` belongs to."""
        if not self.contains(now):
            return None
        local = now.astimezone(self.zone)
        day = local.date()
        if local.time().replace(tzinfo=None) < self.start:
            day -= dt.timedelta(days=1)  # the window opened yesterday and crosses midnight
        return dt.datetime.combine(day, self.start, tzinfo=self.zone)

    def __str__(self) -> str:
        return self.text


def parse_window(text: str, timezone: str = "UTC") -> Window:
    """``"01:00-05:00"`` in ``timezone`` (an IANA name); ValueError saying what is wrong."""
    match = _WINDOW.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f'not a window: {text!r}; write "HH:MM-HH:MM", e.g. "01:00-05:00"')
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"not a window: {text!r}; hours go from 00 to 23, minutes to 59")
    start, end = dt.time(h1, m1), dt.time(h2, m2)
    if start == end:
        raise ValueError(f"window {text!r} is empty: its start and end are the same")
    try:
        zone: dt.tzinfo = dt.UTC if timezone == "UTC" else ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f'unknown time zone {timezone!r}; use an IANA name such as "Europe/Berlin"'
        ) from None
    return Window(start, end, zone, f"{start:%H:%M}-{end:%H:%M}")


# --- the rules of one policy -----------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """What a policy says beyond ``max_rows``; the defaults say nothing more."""

    older_than: Duration | None = None
    age_field: str | None = None
    """The column ``older_than`` reads; None: the policy's ``order_by``."""
    time_unit: TimeUnit | None = None
    """For an integer age column: epoch seconds or milliseconds."""
    where: Mapping[str, object] | None = field(default=None, hash=False)
    """A ``data/list`` filter: only matching rows are ever moved."""
    mode: Mode = "move"
    window: Window | None = None
    max_runtime: float | None = None
    """Seconds one run may take; its task stops after the batch that passes it."""
    retention: Duration | None = None
    """How long archived rows are kept (by the age column); None: for ever."""

    def age_column(self, order_by: str) -> str:
        return self.age_field or order_by


def parse_rules(
    *,
    older_than: str | None = None,
    age_field: str | None = None,
    time_unit: str | None = None,
    where: Mapping[str, object] | None = None,
    mode: str | None = None,
    window: str | None = None,
    timezone: str | None = None,
    max_runtime: str | None = None,
    retention: str | None = None,
    max_rows: int | None = None,
    order_by: str | None = None,
) -> Rules:
    """Check and build the rules; ValueError ``"<key>: <problem>"`` (the caller adds where)."""
    age = None
    if older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError as exc:
            raise ValueError(f"older_than: {exc}") from None
    elif age_field is not None:
        raise ValueError("age_field: needs older_than (the age it reads)")
    if time_unit is not None and time_unit not in TIME_UNITS:
        raise ValueError(f'time_unit: expected "s" or "ms", got {time_unit!r}')
    if where is not None and not isinstance(where, Mapping):
        raise ValueError('where: expected a table of conditions, e.g. { status = "closed" }')
    age_column = age_field or order_by
    if age is not None and where is not None and age_column is not None and age_column in where:
        condition = where[age_column]
        if isinstance(condition, Mapping) and "$lt" in condition:
            raise ValueError(f"where.{age_column}: $lt on the age column conflicts with older_than")
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "copy" and max_rows is not None:
        raise ValueError(
            "max_rows: a copy policy never deletes, so the table never gets below max_rows; "
            "use older_than or where to say which rows to copy"
        )
    if mode != "copy" and max_rows is None and age is None:
        raise ValueError("max_rows: give max_rows, older_than, or both")
    parsed_window = None
    if window is not None:
        try:
            parsed_window = parse_window(window, timezone or "UTC")
        except ValueError as exc:
            raise ValueError(f"window: {exc}") from None
    elif timezone is not None:
        raise ValueError("timezone: needs a window")
    runtime = None
    if max_runtime is not None:
        try:
            limit = parse_duration(max_runtime)
        except ValueError as exc:
            raise ValueError(f"max_runtime: {exc}") from None
        if limit.months:
            raise ValueError("max_runtime: months and years have no fixed length; use days")
        runtime = limit.seconds
    kept = _retention(retention, mode, age)
    return Rules(
        older_than=age,
        age_field=age_field,
        time_unit=time_unit,  # type: ignore[arg-type]  # checked above
        where=dict(where) if where is not None else None,
        mode=mode or "move",  # type: ignore[arg-type]  # checked above
        window=parsed_window,
        max_runtime=runtime,
        retention=kept,
    )


_REFERENCE: Final = dt.datetime(2001, 3, 1, tzinfo=dt.UTC)
"""A fixed instant at which two durations are compared (months have no fixed length)."""


def _retention(text: str | None, mode: str | None, age: Duration | None) -> Duration | None:
    """``retention`` checked: a duration, on a policy that archives, longer than the age at
    which rows move (else they would be deleted as soon as archived: use a purge)."""
    if text is None:
        return None
    try:
        kept = parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"retention: {exc}") from None
    if mode == "purge":
        raise ValueError('retention: a policy with mode = "purge" archives nothing to expire')
    if age is not None and kept.before(_REFERENCE) >= age.before(_REFERENCE):
        raise ValueError(
            f"retention: {kept} is not longer than older_than {age}: rows would be deleted "
            'as soon as they are archived (for that, use mode = "purge")'
        )
    return kept


def task_filter(
    where: Mapping[str, object] | None, age_column: str | None, before: object
) -> dict[str, object] | None:
    """The ``data/list`` filter of a task: ``where`` and, with an ``age_column``, its value
    below ``before`` (the cutoff in the column's JSON form)."""
    if age_column is None:
        return dict(where) if where else None
    # parse_rules refuses a where with its own $lt on the age column.
    return with_condition(where, age_column, "$lt", before)


def with_condition(
    filter_: Mapping[str, object] | None, column: str, op: str, value: object
) -> dict[str, object]:
    """``filter_`` and ``column``'s ``op`` ``value`` too. Where ``filter_`` has that operator
    on the column already, it is kept (a copy policy's bound: copying from further back is
    only slower, never wrong)."""
    merged: dict[str, object] = dict(filter_ or {})
    condition = merged.get(column)
    if (
        isinstance(condition, Mapping)
        and condition
        and all(isinstance(key, str) and key.startswith("$") for key in condition)
    ):
        operators = dict(condition)
    elif column in merged:
        operators = {"$eq": condition}
    else:
        operators = {}
    operators.setdefault(op, value)
    merged[column] = operators
    return merged


Basis = Literal["age", "count", "copy", "none"]


class Decision(msgspec.Struct, frozen=True):
    """What one check of a policy queues: ``rows`` rows, chosen by ``basis``: "age" (every
    row older than the cutoff), "count" (the oldest rows over ``max_rows``), "copy" (the
    rows a copy policy has not copied yet), or none."""

    rows: int
    basis: Basis
    source: int | None = None
    """How many rows the task's filter selects now, when the check counted them exactly (a
    task started from this decision need not count them again)."""


def decide(*, excess: int, aged: int | None) -> Decision:
    """The rule of a policy with ``max_rows`` and/or ``older_than``.

    ``excess`` is what ``max_rows`` asks to move (the oldest rows over it, down to
    ``max_rows - rows_per_archive``; 0 within it or without it), ``aged`` how many of the
    policy's rows are older than the cutoff (None without ``older_than``). A row moves if
    it is older than the cutoff, or if the table is over ``max_rows``. One task does the
    larger of the two: moving the aged rows when they are at least the excess brings the
    table under ``max_rows`` too.
    """
    aged = aged or 0
    if aged and aged >= excess:
        return Decision(aged, "age")
    if excess:
        return Decision(excess, "count")
    return Decision(0, "none")


WindowState = Literal["open", "waiting", "spent"]


def window_state(
    rules: Rules, now: dt.datetime, spent_in: dt.datetime | None = None
) -> WindowState:
    """Whether a batch of the policy may start at ``now``: "open", "waiting" (outside its
    window) or "spent" (its run in this window used up ``max_runtime``; ``spent_in`` is
    the opening of the window in which that happened)."""
    if rules.window is None:
        return "open"
    opened = rules.window.opened_at(now)
    if opened is None:
        return "waiting"
    if spent_in is not None and spent_in == opened:
        return "spent"
    return "open"


def hold_reason(
    rules: Rules,
    now: dt.datetime,
    *,
    started: dt.datetime | None = None,
    spent_in: dt.datetime | None = None,
) -> str | None:
    """Why no batch of the policy may start at ``now``, or None: outside its window, or its
    run (queued at ``started``) has used up ``max_runtime``, or did so in this window
    already (``spent_in``: the opening of the window in which it did)."""
    state = window_state(rules, now, spent_in)
    if state == "waiting":
        return f"waiting for window {rules.window}"
    if state == "spent":
        return f"max_runtime used up in this window; waiting for window {rules.window}"
    runtime = rules.max_runtime
    if runtime is not None and started is not None and (now - started).total_seconds() >= runtime:
        return f"max_runtime {_seconds(runtime)} reached"
    return None


def _seconds(value: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}s"
