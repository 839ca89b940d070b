"""Rows read from SQLite as stored, typed column by column for the Iceberg staging
(`stored_array`): the same Arrow values as typing each value with SQLAlchemy's processor
first (`arrow_columns`), on a real SQLite database written through SQLAlchemy."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlalchemy.types import NullType

from archivist.data.columns import ColumnSpec, Kind, column_type
from archivist.data.handles import create_engine
from archivist.data.iceberg.types import _sqlite_timestamps, arrow_columns, stored_array

UTC_TYPE = pa.timestamp("us", tz="UTC")


def _stored_and_processor(
    tmp_path: Path, spec: ColumnSpec, values: list[object], *, raw: list[str] | None = None
) -> tuple[list[object], Callable[[object], object] | None]:
    """``values`` written through SQLAlchemy (and ``raw`` text written as it is) into a real
    SQLite table of one column ``spec``; the column as stored, and its result processor."""
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata = sa.MetaData()
    table = sa.Table(
        "t",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column(spec.name, column_type(spec, "sqlite"), nullable=True),
    )
    metadata.create_all(engine)
    with engine.begin() as connection:
        rows = [{"id": i, spec.name: v} for i, v in enumerate(values)]
        if rows:
            connection.execute(table.insert(), rows)
        for i, text in enumerate(raw or [], start=len(values)):
            connection.exec_driver_sql(f"INSERT INTO t VALUES ({i}, ?)", (text,))
        column = table.c[spec.name]
        result = connection.execute(
            sa.select(sa.type_coerce(column, NullType())).order_by(table.c.id)
        )
        stored = [row[0] for row in result.cursor.fetchall()]
        dialect = connection.dialect
        process = column.type.dialect_impl(dialect).result_processor(dialect, None)
    engine.dispose()
    return stored, process


def _both(
    spec: ColumnSpec, type_: pa.DataType, stored: list[object], process: object
) -> tuple[pa.Array, pa.Array]:
    assert callable(process)
    fast = stored_array(spec, type_, stored, process, sqlite=True)
    typed = [None if v is None else process(v) for v in stored]
    schema = pa.schema([pa.field(spec.name, type_)])
    slow = arrow_columns(schema, [spec], [spec.name], [typed], len(typed)).column(0)
    return fast, slow.combine_chunks()


@pytest.mark.parametrize("timezone", [True, False])
def test_sqlite_timestamps_are_parsed_by_arrow_as_sqlalchemy_reads_them(
    tmp_path: Path, timezone: bool
) -> None:
    spec = ColumnSpec("at", Kind.DATETIME, timezone=timezone)
    moment = dt.datetime(2024, 2, 29, 23, 59, 58, 123456)
    values: list[object] = [
        moment.replace(tzinfo=dt.UTC) if timezone else moment,
        None,
        (
            moment.replace(microsecond=0, tzinfo=dt.UTC)
            if timezone
            else moment.replace(microsecond=0)
        ),
    ]
    stored, process = _stored_and_processor(tmp_path, spec, values)
    type_ = UTC_TYPE if timezone else pa.timestamp("us")
    assert _sqlite_timestamps(stored, type_) is not None  # Arrow parsed them, column at once
    fast, slow = _both(spec, type_, stored, process)
    assert fast.equals(slow)
    assert fast.to_pylist()[0] == values[0]


@pytest.mark.parametrize(
    "text",
    ["2024-02-29 23:59:58", "2024-02-29T23:59:58.000001", "2024-02-29 23:59:58.5", "2024-02-29"],
)
def test_a_timestamp_not_in_sqlalchemys_form_is_read_by_its_processor(
    tmp_path: Path, text: str
) -> None:
    spec = ColumnSpec("at", Kind.DATETIME, timezone=True)
    stored, process = _stored_and_processor(
        tmp_path, spec, [dt.datetime(2024, 1, 1, tzinfo=dt.UTC)], raw=[text]
    )
    assert _sqlite_timestamps(stored, UTC_TYPE) is None
    fast, slow = _both(spec, UTC_TYPE, stored, process)
    assert fast.equals(slow)


def test_sqlite_json_becomes_its_compact_text_with_the_same_value(tmp_path: Path) -> None:
    spec = ColumnSpec("doc", Kind.JSON)
    documents: list[object] = [
        {"client": "ios", "n": [1, 2.5, 1e16, -0.0, 12345678901234567890123], "é": "\u2028"},
        [],
        "text",
        None,
    ]
    stored, process = _stored_and_processor(
        tmp_path, spec, documents, raw=["null", '{"x": NaN}', '{ "spaced" : [ 1 , 2 ] }']
    )
    fast, slow = _both(spec, pa.string(), stored, process)
    texts = fast.to_pylist()
    assert texts[3] is None and texts[4] is None  # SQL NULL and JSON null: both null
    assert texts[5] == slow.to_pylist()[5] == '{"x":NaN}'  # json's own text, as before
    assert texts[6] == '{"spaced":[1,2]}'
    for ours, theirs in zip(texts, slow.to_pylist(), strict=True):
        if ours is not None and "NaN" not in ours:
            assert json.loads(ours) == json.loads(theirs)
            assert " " not in ours
