"""The pure parts of the mover locks: names, keys, and how a holder is written and read."""

from __future__ import annotations

import datetime

from archivist.data.locks import (
    MYSQL_NAME_LIMIT,
    PG_NAME_LIMIT,
    Holder,
    advisory_ids,
    advisory_key,
    lock_file,
    lock_name,
    mysql_lock_name,
    parse_tag,
)

SINCE = datetime.datetime(2026, 12, 6, 23, 55, 12, tzinfo=datetime.UTC).timestamp()


def test_a_holder_reads_as_host_pid_since_when() -> None:
    holder = Holder("app-2.example.com", 4242, SINCE)
    assert holder.describe() == "app-2.example.com:4242 since 2026-12-06 23:55:12 UTC"


def test_a_holder_known_only_by_its_session_says_so() -> None:
    holder = Holder("10.0.0.5:53422", None, None, detail="MariaDB connection 17")
    assert holder.describe() == "10.0.0.5:53422 (MariaDB connection 17)"


def test_a_holder_tag_reads_back_as_the_same_holder() -> None:
    holder = Holder("app-2.example.com", 4242, SINCE)
    assert parse_tag(holder.tag()) == holder


def test_a_long_host_name_is_cut_so_the_tag_fits_postgresqls_application_name() -> None:
    holder = Holder("h" * 200, 4_194_304, SINCE)
    tag = holder.tag()
    assert len(tag.encode()) <= PG_NAME_LIMIT
    parsed = parse_tag(tag)
    assert parsed is not None and parsed.pid == 4_194_304 and parsed.since == int(SINCE)
    assert holder.host.startswith(parsed.host)


def test_text_that_is_not_a_tag_names_no_holder() -> None:
    for text in (
        None,
        "",
        "psql",
        "archivist mover",
        "archivist mover x 1 h",
        "archivist mover 1 2 ",
    ):
        assert parse_tag(text) is None


def test_lock_names_differ_by_database_and_collection() -> None:
    names = {lock_name(db, c) for db in ("shop", "blog") for c in ("orders", "posts")}
    assert len(names) == 4


def test_a_long_mysql_lock_name_is_hashed_to_64_characters_and_stays_distinct() -> None:
    short = mysql_lock_name("shop", "orders")
    assert short == "archivist:shop:orders"
    one = mysql_lock_name("d" * 64, "chat_messages")
    two = mysql_lock_name("d" * 64, "chat_messages_2")
    assert len(one) <= MYSQL_NAME_LIMIT and len(two) <= MYSQL_NAME_LIMIT
    assert one != two
    assert one == mysql_lock_name("d" * 64, "chat_messages")  # stable


def test_the_advisory_key_is_a_stable_signed_64_bit_number() -> None:
    key = advisory_key("archivist:shop:orders")
    assert key == advisory_key("archivist:shop:orders")
    assert -(2**63) <= key < 2**63
    assert key != advisory_key("archivist:shop:order")
    # Pinned: another process (or version) must derive the same key for the same name.
    assert key == -4385557575253751737  # the first 8 bytes of the name's SHA-256


def test_pg_locks_shows_a_negative_key_as_its_unsigned_halves() -> None:
    assert advisory_ids(-1) == (0xFFFF_FFFF, 0xFFFF_FFFF)
    assert advisory_ids(0x1234_5678_9ABC_DEF0) == (0x1234_5678, 0x9ABC_DEF0)


def test_the_sqlite_lock_file_sits_beside_the_database_and_hashes_odd_names() -> None:
    assert lock_file("/data/app.db", "orders") == "/data/app.db.archivist-orders.lock"
    odd = lock_file("/data/app.db", "../etc/passwd")
    assert odd.startswith("/data/app.db.archivist-") and "/" not in odd[len("/data/") :]
