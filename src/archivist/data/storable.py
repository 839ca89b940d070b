"""Values one engine's column holds that another engine's cannot store: found before a write
(so the row stays in the source, named with its key, column and value) and warned about by
``--dry-run`` from the two tables' columns alone.

Floats are the case met in practice: PostgreSQL's ``double precision`` and ``real`` hold
``NaN`` and ``±Infinity``; MariaDB's ``DOUBLE`` holds neither (its driver refuses them), and
SQLite stores ``NaN`` as NULL (which a verified copy would never match). A MariaDB/MySQL
``TIMESTAMP`` column (archivist makes ``DATETIME``, but an archive table may be the user's)
holds no instant before 1970-01-01 00:00:01 UTC.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Final

import msgspec

from archivist.data.columns import ColumnSpec, Kind

NAN: Final = "NaN"
INFINITY: Final = "Infinity"
NEGATIVE_INFINITY: Final = "-Infinity"

_ENGINES: Final = {
    "postgresql": "PostgreSQL",
    "sqlite": "SQLite",
    "mysql": "MariaDB/MySQL",
    "mariadb": "MariaDB",
}
_ALL_FLOATS: Final = frozenset({NAN, INFINITY, NEGATIVE_INFINITY})
_FLOAT_SPECIALS: Final[dict[str, frozenset[str]]] = {
    "postgresql": _ALL_FLOATS,
    "sqlite": frozenset({INFINITY, NEGATIVE_INFINITY}),
    "mysql": frozenset(),
    "mariadb": frozenset(),
}
"""The non-finite floats (in their JSON form, docs/values.md) each engine's float columns
store as they are."""
TIMESTAMP_FIRST: Final = dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
"""The first instant a MariaDB/MySQL TIMESTAMP holds. Its last depends on the server (2038 on
MySQL and MariaDB before 11.5, 2106 after): an instant past 2038 is left to the server to
refuse, rather than kept in the source where a newer server would store it."""
_MYSQL: Final = frozenset({"mysql", "mariadb"})


def engine_name(dialect_name: str) -> str:
    return _ENGINES.get(dialect_name, dialect_name)


def _specials(dialect_name: str) -> frozenset[str]:
    return _FLOAT_SPECIALS.get(dialect_name, _ALL_FLOATS)


def _float_word(value: object) -> str | None:
    """The JSON word of a non-finite float (given as its word or as a float), else None."""
    if isinstance(value, str):
        return value if value in _ALL_FLOATS else None
    if isinstance(value, float) and not math.isfinite(value):
        return NAN if math.isnan(value) else (INFINITY if value > 0 else NEGATIVE_INFINITY)
    return None


class Unstorable(msgspec.Struct, frozen=True):
    """One row's value that its destination cannot store."""

    key: object
    field: str
    value: str
    reason: str

    def describe(self, primary_key: str) -> str:
        return f"{primary_key}={self.key!r}: {self.field} = {self.value} ({self.reason})"

    def wire(self) -> dict[str, object]:
        return {"key": self.key, "field": self.field, "value": self.value, "error": self.reason}


def is_timestamp(dialect_name: str, spec: ColumnSpec) -> bool:
    """Whether ``spec`` is a MariaDB/MySQL ``TIMESTAMP`` column (instants from 1970 only)."""
    return _is_timestamp(dialect_name, spec)


def before_timestamps(value: dt.datetime) -> bool:
    """Whether ``value`` (naive: UTC, as archivist's sessions are) is an instant a MariaDB/MySQL
    ``TIMESTAMP`` cannot hold."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value < TIMESTAMP_FIRST


def _is_timestamp(dialect_name: str, spec: ColumnSpec) -> bool:
    return dialect_name in _MYSQL and spec.kind is Kind.DATETIME and spec.type_name == "TIMESTAMP"


def refusing_columns(dialect_name: str, columns: Iterable[ColumnSpec]) -> list[ColumnSpec]:
    """The columns of a ``dialect_name`` table that refuse some value another engine holds:
    the only ones a write needs to look at."""
    floats = _specials(dialect_name) != _ALL_FLOATS
    return [
        spec
        for spec in columns
        if (floats and spec.kind is Kind.FLOAT) or _is_timestamp(dialect_name, spec)
    ]


def _before_timestamps(value: object) -> bool:
    """Whether a datetime's JSON form is an instant before `TIMESTAMP_FIRST` (a naive one is
    UTC, as archivist's sessions are)."""
    if not isinstance(value, str):
        return False
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return False  # not for this check to judge: decoding names it
    return before_timestamps(parsed)


def unstorable(
    dialect_name: str, columns: Iterable[ColumnSpec], item: Mapping[str, object], key: object
) -> Unstorable | None:
    """The first value of ``item`` (JSON form) that ``columns`` of a ``dialect_name`` table
    cannot store, or None. ``columns`` are those `refusing_columns` gave."""
    stores = _specials(dialect_name)
    for spec in columns:
        if spec.kind is Kind.DATETIME:
            value = item.get(spec.name)
            if _before_timestamps(value):
                return Unstorable(
                    key,
                    spec.name,
                    str(value),
                    f"a {engine_name(dialect_name)} TIMESTAMP holds no instant before 1970-01-01 "
                    "00:00:01 UTC",
                )
            continue
        word = _float_word(item.get(spec.name))
        if word is not None and word not in stores:
            return Unstorable(
                key,
                spec.name,
                word,
                f"not storable in a {engine_name(dialect_name)} float column",
            )
    return None


def column_warnings(
    source_dialect: str,
    source: Iterable[ColumnSpec],
    dest_dialect: str,
    dest: Iterable[ColumnSpec] | None,
) -> list[str]:
    """What ``--dry-run`` warns of: source columns that can hold values their archive
    column cannot store (rows holding them would be kept in the source). ``dest`` is the
    archive table's columns, or None when archivist will create it (with like columns)."""
    dest_kinds = {spec.name: spec.kind for spec in dest} if dest is not None else None
    lost = sorted(_specials(source_dialect) - _specials(dest_dialect))
    warnings: list[str] = []
    source = list(source)
    earlier_allowed = {s.name for s in source if not _is_timestamp(source_dialect, s)}
    for spec in dest or ():
        if _is_timestamp(dest_dialect, spec) and spec.name in earlier_allowed:
            warnings.append(
                f"column {spec.name} is a TIMESTAMP in the archive on "
                f"{engine_name(dest_dialect)}, which holds no instant before 1970-01-01 "
                "00:00:01 UTC: older rows would be kept in the source and reported"
            )
    for spec in source:
        if spec.kind is not Kind.FLOAT or not lost:
            continue
        if dest_kinds is not None and dest_kinds.get(spec.name) not in (Kind.FLOAT, None):
            continue
        warnings.append(
            f"column {spec.name} ({engine_name(source_dialect)} {spec.type_name or 'float'}) "
            f"can hold {', '.join(lost)}, which the archive on {engine_name(dest_dialect)} "
            "cannot store: rows holding them would be kept in the source and reported"
        )
    return warnings
