"""The public API: small, in ``archivist``, and cheap to import for the worker."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa

import archivist


def test_the_public_names_resolve_to_the_library() -> None:
    from archivist.config import load_config
    from archivist.data import DataDaemon, archive

    assert archivist.archive is archive
    assert archivist.DataDaemon is DataDaemon
    assert archivist.load_config is load_config
    assert set(archivist.__all__) >= {"archive", "load_config", "make_config", "DataDaemon"}


def test_archive_decorates_a_function_returning_a_table() -> None:
    metadata = sa.MetaData()

    @archivist.archive(max_rows=10, rows_per_archive=2, order_by="created_at")
    def events() -> sa.Table:
        return sa.Table(
            "events",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("created_at", sa.DateTime),
        )

    assert events().name == "events"


def test_importing_archivist_or_starting_the_worker_cli_does_not_load_the_database_side() -> None:
    code = (
        "import sys, archivist, archivist.cli, archivist.worker.server;"
        "print('sqlalchemy' in sys.modules, 'archivist.data' in sys.modules)"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert shown == ["False", "False"]
