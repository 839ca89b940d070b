"""Rows into a MariaDB archive on another server by ``LOAD DATA LOCAL INFILE`` from a buffer
(`transfer.mysql_load`): every value arrives exactly, older copies are replaced, a server
that refuses ``LOCAL`` gets multi-row inserts, and a server that asks archivist's
connections for any other file than the one offered gets nothing: no file is opened.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import pytest
from test_streamed import KINDS, call, daemon_for, item, listed

from archivist.data.handles import create_engine
from archivist.data.transfer import mysql_load, streamed
from datasupport import create_table, run, sql

OPENED: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and args and isinstance(args[0], str | bytes):
        OPENED.append(str(args[0]))


sys.addaudithook(_audit)  # records every file this process opens, from here on


def status(url: str, name: str) -> int:
    """A global status counter of ``url``'s server (``Com_load``, ``Com_insert``)."""
    return int(str(sql(url, f"SHOW GLOBAL STATUS LIKE '{name}'")[0][1]))


NASTY = ["tab\there", "\\N", "a\\", "\r\n", "nul\x00byte", "", "\\t\\n", "é\t😀\n\\"]


def nasty_item(i: int) -> dict[str, object]:
    """Row ``i`` with text that LOAD DATA's escapes must carry: tabs, newlines, backslashes,
    the text ``\\N`` (not NULL), NUL characters; and bytes that are tabs and newlines."""
    text = NASTY[i % len(NASTY)]
    return {
        **item(i),
        "name": text[:40],
        "body": text * 3,
        "blob": ["CQo=", "XE4=", "AA==", ""][i % 4],  # \t\n, \N, NUL, empty
    }


@pytest.mark.timeout(180)
def test_rows_load_into_another_mariadb_exactly_by_load_data_and_replace_older_copies(
    fresh_db: Callable[[str], str], second_db: Callable[[str], str]
) -> None:
    """Every kind, with text and bytes full of LOAD DATA's separators and escapes, copied
    from MariaDB to a second MariaDB server reads back identical, by ``LOAD DATA`` alone (no
    INSERT on the archive's server); copied again over older, different copies (a rerun
    after a crash), the archive holds the source's values."""
    primary, archive = fresh_db("mysql"), second_db("mysql")
    create_table(primary, "kinds", KINDS)
    items = [nasty_item(i) for i in range(1, 41)]

    async def go() -> tuple[Any, ...]:
        daemon = daemon_for(primary, archive)
        await daemon.start()
        try:
            await call(daemon, "data/create", items=items)
            before = await listed(daemon, "primary")
            loads, inserts = status(archive, "Com_load"), status(archive, "Com_insert")
            await call(daemon, "data/copy", destHandle="archive", limit=100)
            used = status(archive, "Com_load") - loads, status(archive, "Com_insert") - inserts
            copies = await listed(daemon, "archive")
            sql(archive, "UPDATE kinds SET body = 'older', name = NULL WHERE id <= 20")
            await call(daemon, "data/copy", destHandle="archive", limit=100)
            return before, used, copies, await listed(daemon, "archive")
        finally:
            await daemon.close()

    before, used, copies, again = run(go())
    assert used == (1, 0)
    assert copies == before
    assert again == before


@pytest.mark.timeout(180)
@pytest.mark.parametrize("source", ["postgresql", "mysql"])
def test_a_server_that_refuses_local_infile_gets_multi_row_inserts(
    fresh_db: Callable[[str], str],
    second_db: Callable[[str], str],
    source: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``local_infile = OFF`` on the archive's server: the first batch is refused, a log line
    says so, and the rows go by multi-row inserts, exactly; moves still delete them."""
    primary, archive = fresh_db(source), second_db("mysql")
    create_table(primary, "kinds", KINDS)
    items = [item(i) for i in range(1, 21)]
    sql(archive, "SET GLOBAL local_infile = 0")
    try:

        async def go() -> tuple[Any, ...]:
            daemon = daemon_for(primary, archive)
            await daemon.start()
            try:
                await call(daemon, "data/create", items=items)
                before = await listed(daemon, "primary")
                inserts = status(archive, "Com_insert")
                with caplog.at_level(logging.INFO, logger=streamed.__name__):
                    first = await call(daemon, "data/copy", destHandle="archive", limit=10)
                    moved = await call(
                        daemon,
                        "data/copy",
                        destHandle="archive",
                        limit=10,
                        move=True,
                        cursor=first["cursor"],
                    )
                inserted = status(archive, "Com_insert") - inserts
                return before, moved, inserted, await listed(daemon, "archive")
            finally:
                await daemon.close()

        before, moved, inserted, copies = run(go())
    finally:
        sql(archive, "SET GLOBAL local_infile = 1")
    assert "refuses LOAD DATA LOCAL INFILE" in caplog.text
    assert inserted >= 2
    assert moved["deleted"] == 10
    assert copies == before


@pytest.mark.timeout(60)
def test_a_server_asking_for_any_other_file_gets_nothing_and_no_file_is_opened(
    fresh_db: Callable[[str], str], tmp_path: Any
) -> None:
    """``LOAD DATA LOCAL INFILE '/etc/passwd'`` (the server names the file it wants: a
    hostile server can ask so after any statement) through archivist's connection fails
    without opening the file; so does a request for a file that exists and is readable,
    for a name offered to another statement, and for an offered name once it was sent.
    The connection stays usable."""
    url = fresh_db("mysql")
    secret = tmp_path / "secret.txt"
    secret.write_text("1\tsecret\n")
    sql(url, "CREATE TABLE t (id INT PRIMARY KEY, line TEXT)")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            raw = connection.connection.driver_connection
            assert isinstance(raw, mysql_load.GuardedConnection)
            refused = []
            OPENED.clear()
            with raw.cursor() as cursor:
                for name in ("/etc/passwd", str(secret)):
                    with pytest.raises(mysql_load.RefusedFile):
                        cursor.execute(f"LOAD DATA LOCAL INFILE '{name}' INTO TABLE t")
                    refused.append(name)
                with raw.offering(b"2\tmine\n") as offered:  # offered, another name asked
                    with pytest.raises(mysql_load.RefusedFile):
                        cursor.execute(f"LOAD DATA LOCAL INFILE '{secret}' INTO TABLE t")
                    with pytest.raises(mysql_load.RefusedFile):  # the offer went with it
                        cursor.execute(f"LOAD DATA LOCAL INFILE '{offered}' INTO TABLE t")
                with raw.offering(b"3\tmine\n") as offered:
                    taken = cursor.execute(f"LOAD DATA LOCAL INFILE '{offered}' INTO TABLE t")
                    with pytest.raises(mysql_load.RefusedFile):  # sent once, not twice
                        cursor.execute(f"LOAD DATA LOCAL INFILE '{offered}' INTO TABLE t")
                cursor.execute("SELECT id, line FROM t ORDER BY id")
                rows = cursor.fetchall()
            opened = [path for path in OPENED if path in ("/etc/passwd", str(secret))]
            connection.rollback()
    finally:
        engine.dispose()
    assert refused == ["/etc/passwd", str(secret)]
    assert opened == []
    assert taken == 1
    assert rows == ((3, "mine"),)
