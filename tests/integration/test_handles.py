"""Handles' engines (`archivist.data.handles.create_engine`): archivist's session settings,
and MariaDB connections that share one TLS context in PyMySQL's preferred mode."""

from __future__ import annotations

import contextlib

import pytest

from archivist.data.handles import create_engine


def test_mariadb_connections_share_one_preferred_tls_context(mysql_url: str) -> None:
    """PyMySQL, given no TLS option, tries TLS if the server offers it and checks no
    certificate; it made that context (loading the system's CA certificates, ~20 ms) for
    every connection. Now one is made per process, and the connections still work."""
    engine = create_engine(mysql_url)
    try:
        with contextlib.ExitStack() as stack:
            connections = [stack.enter_context(engine.connect()) for _ in range(3)]
            contexts = {id(c.connection.dbapi_connection.ctx) for c in connections}  # type: ignore[union-attr]
            zones = [c.exec_driver_sql("SELECT @@session.time_zone").scalar() for c in connections]
        assert len(contexts) == 1
        assert zones == ["+00:00"] * 3
    finally:
        engine.dispose()


def test_tls_options_in_a_mariadb_url_still_reach_pymysql(mysql_url: str) -> None:
    """A URL that names a CA file gets PyMySQL's own context for it: a missing file is an
    error, not silently the shared context of the preferred mode."""
    engine = create_engine(f"{mysql_url}?ssl_ca=/nonexistent/archivist-ca.pem")
    try:
        with pytest.raises(FileNotFoundError), engine.connect():
            pass
    finally:
        engine.dispose()
