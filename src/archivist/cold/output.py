"""How ``archivist query`` prints an answer: CSV (a header line), JSON (an array of
objects, one per line) or a rich table; values in the forms of docs/values.md (instants in
UTC with ``+00:00``, decimals exact, bytes in base64)."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any, Final, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

TABLE_ROWS: Final = 1000
"""Rows a terminal table shows at most (the rest are counted): CSV and JSON show all."""


def plain(value: object) -> object:
    """A value as JSON holds it."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def write_csv(reader: Any, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    names = list(reader.schema.names)
    writer.writerow(names)
    for batch in reader:
        for row in batch.to_pylist():
            writer.writerow(["" if v is None else _text(plain(v)) for v in row.values()])


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def write_json(reader: Any, out: TextIO) -> None:
    out.write("[")
    first = True
    for batch in reader:
        for row in batch.to_pylist():
            out.write("\n" if first else ",\n")
            out.write(json.dumps({k: plain(v) for k, v in row.items()}, ensure_ascii=False))
            first = False
    out.write("\n]\n" if not first else "]\n")


def write_table(reader: Any, out: TextIO) -> None:
    console = Console(file=out)
    table = Table(*reader.schema.names, header_style="bold")
    shown = total = 0
    for batch in reader:
        for row in batch.to_pylist():
            total += 1
            if shown < TABLE_ROWS:
                # Text, not markup: a value's brackets are printed as they are.
                table.add_row(
                    *(
                        Text("NULL", style="dim") if v is None else Text(_text(plain(v)))
                        for v in row.values()
                    )
                )
                shown += 1
    console.print(table)
    more = f" (the first {shown:,} shown; --format csv prints all)" if total > shown else ""
    console.print(f"{total:,} row(s){more}")
