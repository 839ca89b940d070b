"""What one policy check costs on a large table (issue 27): the ``count(*)`` every check ran
before, against ``data/size`` (the key range and the engine's statistics, an exact count
where they leave it open), the index walk from the newest end that the issue proposed (not
used: it reads as many rows, slower), and an age policy's count of its aged rows.

    .venv/bin/python bench/check_bench.py                       # 10M and 50M rows, both engines
    .venv/bin/python bench/check_bench.py --engines mysql --sizes 10000000,20000000

Builds ``events`` (id, created_at indexed, a short payload) in a database of its own on the
local servers (PostgreSQL 127.0.0.1:5432, MariaDB 127.0.0.1:3306), grows it from one size to
the next, and drops the database at the end. Each figure is the median of ``--runs`` runs
(min and max beside it) of one statement on a connection of its own; rows read are the
engine's own counters: ``pg_stat_user_tables``/``pg_stat_user_indexes`` (sequential and
index tuples read) on PostgreSQL, the session's ``Handler_read_*`` on MariaDB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

sys.path.insert(0, str(Path(__file__).parent))

from report import machine

from archivist.data.filters import compile_filter
from archivist.data.handles import create_engine
from archivist.data.schema import TableInfo, reflect_table
from archivist.data.size import measure

DATABASE = "archivist_checkbench"
SERVERS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306",
}
CHUNK = 1_000_000
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
"""Row i was created at START + i seconds."""
AGED = 10_000
"""The age policy's cutoff leaves this many rows older than it."""


def admin(engine: str) -> Engine:
    return sa.create_engine(SERVERS[engine], isolation_level="AUTOCOMMIT")


def recreate_database(engine: str) -> str:
    with admin(engine).connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {DATABASE}")
        c.exec_driver_sql(f"CREATE DATABASE {DATABASE}")
    return f"{SERVERS[engine]}/{DATABASE}"


def drop_database(engine: str) -> None:
    with admin(engine).connect() as c:
        if engine == "postgresql":
            c.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{DATABASE}' AND pid <> pg_backend_pid()"
            )
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {DATABASE}")


def grow(url: str, engine: str, have: int, want: int, say: Callable[[str], None]) -> None:
    """Add rows have+1..want (in chunks of a million), then the index on created_at and,
    on PostgreSQL, VACUUM ANALYZE (what autovacuum leaves a table like)."""
    db = create_engine(url)
    started = time.monotonic()
    try:
        with db.begin() as c:
            if have == 0 and engine == "postgresql":
                c.exec_driver_sql(
                    "CREATE TABLE events (id BIGINT PRIMARY KEY, "
                    "created_at TIMESTAMPTZ NOT NULL, payload VARCHAR(16) NOT NULL)"
                )
            elif have == 0:
                c.exec_driver_sql(
                    "CREATE TABLE events (id BIGINT PRIMARY KEY, "
                    "created_at DATETIME(6) NOT NULL, payload VARCHAR(16) NOT NULL) "
                    "ENGINE=InnoDB"
                )
        # The index is built after the load, the way a bulk load is done.
        if have and engine == "postgresql":
            with db.begin() as c:
                c.exec_driver_sql("DROP INDEX IF EXISTS ix_events_created_at")
        elif have:
            with db.begin() as c:
                c.exec_driver_sql("ALTER TABLE events DROP INDEX ix_events_created_at")
        start = START.strftime("%Y-%m-%d %H:%M:%S")
        for low in range(have + 1, want + 1, CHUNK):
            high = min(want, low + CHUNK - 1)
            with db.begin() as c:
                if engine == "postgresql":
                    c.exec_driver_sql(
                        "INSERT INTO events SELECT g, "
                        f"TIMESTAMPTZ '{start}+00' + g * INTERVAL '1 second', "
                        "'payload ' || (g %% 1000) "
                        f"FROM generate_series({low}, {high}) AS g"
                    )
                else:
                    c.exec_driver_sql(
                        "INSERT INTO events SELECT seq, "
                        f"TIMESTAMP '{start}' + INTERVAL seq SECOND, "
                        "CONCAT('payload ', seq MOD 1000) "
                        f"FROM seq_{low}_to_{high}"
                    )
            say(f"  {high:,} rows ({time.monotonic() - started:,.0f} s)")
        with db.begin() as c:
            c.exec_driver_sql("CREATE INDEX ix_events_created_at ON events (created_at)")
        if engine == "postgresql":
            with db.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.exec_driver_sql("VACUUM ANALYZE events")
        say(f"  index and statistics ({time.monotonic() - started:,.0f} s)")
    finally:
        db.dispose()


class Reads:
    """Rows the engine read for one statement on a connection of its own."""

    def __init__(self, url: str, engine: str) -> None:
        self.url, self.engine = url, engine
        self.db = create_engine(url)
        # A session per use, closed after it: the observer's own sessions never linger.
        self.observer = sa.create_engine(create_engine(url).url, poolclass=sa.NullPool)
        self.baseline: dict[str, int] = {}
        if engine == "mysql":
            self.baseline = self.run(lambda c: None)["handler"]

    def close(self) -> None:
        self.db.dispose()
        self.observer.dispose()

    def _pg_counters(self) -> tuple[int, int, int]:
        with self.observer.connect() as c:
            c.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            seq_scan, seq_read = c.exec_driver_sql(
                "SELECT seq_scan, seq_tup_read FROM pg_stat_user_tables WHERE relname = 'events'"
            ).one()
            index_read = c.exec_driver_sql(
                "SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes "
                "WHERE relname = 'events'"
            ).scalar_one()
            return int(seq_scan), int(seq_read), int(index_read)

    def _pg_wait_idle(self) -> None:
        with self.observer.connect() as c:
            deadline = time.monotonic() + 60
            while c.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).scalar_one():
                if time.monotonic() > deadline:
                    left = c.exec_driver_sql(
                        "SELECT pid, application_name, state, query FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    ).all()
                    raise RuntimeError(f"sessions on the bench database did not end: {left}")
                time.sleep(0.05)

    def run(self, statement: Callable[[Connection], object]) -> dict[str, Any]:
        """Time ``statement`` on a new connection; the rows it read; what it answered."""
        self.db.dispose()  # a new session: its counters are this statement's alone
        if self.engine == "postgresql":
            self._pg_wait_idle()
            scans0, seq0, idx0 = self._pg_counters()
        with self.db.connect() as c:
            if self.engine == "mysql":
                c.exec_driver_sql("FLUSH STATUS")  # the session's counters from zero
                c.commit()
            started = time.perf_counter()
            with c.begin():
                answer = statement(c)
            seconds = time.perf_counter() - started
            if self.engine == "mysql":
                found = c.exec_driver_sql("SHOW SESSION STATUS LIKE 'Handler_read%%'").all()
                reads = {str(k): int(v) for k, v in found}
        self.db.dispose()  # the session ends: PostgreSQL reports its reads
        if self.engine == "postgresql":
            self._pg_wait_idle()
            scans1, seq1, idx1 = self._pg_counters()
            return {
                "seconds": seconds,
                "rows_read": (seq1 - seq0) + (idx1 - idx0),
                "seq_scans": scans1 - scans0,
                "seq_rows": seq1 - seq0,
                "index_rows": idx1 - idx0,
                "answer": answer,
            }
        # What the status query reads of itself (Handler_read_rnd_next), measured alone.
        reads = {k: v - self.baseline.get(k, 0) for k, v in reads.items()}
        return {
            "seconds": seconds,
            "rows_read": sum(reads.values()),
            "handler": {k: v for k, v in reads.items() if v},
            "answer": answer,
        }


def count_all(c: Connection) -> object:
    return c.exec_driver_sql("SELECT count(*) FROM events").scalar_one()


def size_check(info: TableInfo, max_rows: int) -> Callable[[Connection], object]:
    """The daemon's ``data/size`` for a policy of ``max_rows`` (the function it runs, on
    the table as the daemon reflected it once)."""

    def run(c: Connection) -> object:
        size = measure(c, info, "created_at", compile_filter(info, None), max_rows)
        return size.wire()

    return run


def walk_check(info: TableInfo, max_rows: int) -> Callable[[Connection], object]:
    """The index walk from the newest end that issue 27 proposed, measured against
    ``count(*)``: the ``created_at`` values at positions ``max_rows - 1`` and ``max_rows``
    (``ORDER BY created_at DESC LIMIT 2 OFFSET max_rows - 1``), then a count of the rows at
    or below the second. ``data/size`` does not use it (docs/performance.md)."""

    def run(c: Connection) -> object:
        column = info.table.c["created_at"]
        newest = list(
            c.execute(
                sa.select(column).order_by(column.desc()).limit(2).offset(max_rows - 1)
            ).scalars()
        )
        if len(newest) < 2:
            return {"over": False}
        query = sa.select(sa.func.count()).select_from(info.table).where(column <= newest[1])
        below = int(c.execute(query).scalar_one())
        above = max_rows  # the values differ in this table: exactly max_rows rows above
        return {"over": True, "rows": above + below}

    return run


def age_check(cutoff: dt.datetime) -> Callable[[Connection], object]:
    """An age policy's count: the rows older than its cutoff (``data/count``'s query)."""

    def run(c: Connection) -> object:
        value: object = cutoff
        if c.dialect.name != "postgresql":
            value = cutoff.replace(tzinfo=None)
        query = sa.text("SELECT count(*) FROM events WHERE created_at < :cutoff")
        return c.execute(query, {"cutoff": value}).scalar_one()

    return run


def scenarios(info: TableInfo, rows: int) -> list[tuple[str, str, Callable[[Connection], object]]]:
    return [
        ("count", "before: SELECT count(*) (every check, and every task start)", count_all),
        (
            "within",
            f"data/size, max_rows {3 * rows:,} (well within)",
            size_check(info, 3 * rows),
        ),
        ("at_limit", f"data/size, max_rows {rows:,} (at its limit)", size_check(info, rows)),
        (
            "over_10k",
            f"data/size, max_rows {rows - 10_000:,} (10,000 over)",
            size_check(info, rows - 10_000),
        ),
        (
            "over_10k_walk",
            f"index walk from the newest end, max_rows {rows - 10_000:,} (not used)",
            walk_check(info, rows - 10_000),
        ),
        (
            "keep_1m",
            "data/size, max_rows 1,000,000 (first check)",
            size_check(info, 1_000_000),
        ),
        (
            "age_10k",
            f"age policy: count of the {AGED:,} rows older than the cutoff",
            age_check(START + dt.timedelta(seconds=AGED + 0.5)),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="postgresql,mysql")
    parser.add_argument("--sizes", default="10000000,50000000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = [e for e in args.engines.split(",") if e]

    def say(text: str) -> None:
        print(text, flush=True)

    load = Path("/proc/loadavg").read_text().split()[:3]
    results: dict[str, Any] = {
        "machine": machine({}),
        "load_at_start": load,
        "settings": {"sizes": sizes, "runs": args.runs, "engines": engines, "aged": AGED},
        "figures": {},
    }
    for engine in engines:
        url = recreate_database(engine)
        have = 0
        try:
            for rows in sizes:
                say(f"{engine}: building {rows:,} rows")
                built = time.monotonic()
                grow(url, engine, have, rows, say)
                have = rows
                results["figures"].setdefault(engine, {})[str(rows)] = figures = {
                    "build_seconds": round(time.monotonic() - built, 1)
                }
                reads = Reads(url, engine)
                with reads.db.connect() as c:
                    info = reflect_table(c, "events")
                assert info is not None
                try:
                    for key, label, statement in scenarios(info, rows):
                        runs = [reads.run(statement) for _ in range(args.runs)]
                        seconds = [r["seconds"] for r in runs]
                        last = runs[-1]
                        figures[key] = {
                            "label": label,
                            "median_s": statistics.median(seconds),
                            "min_s": min(seconds),
                            "max_s": max(seconds),
                            "rows_read": last["rows_read"],
                            "runs": runs,
                        }
                        say(
                            f"  {label}: {statistics.median(seconds) * 1000:,.1f} ms "
                            f"(min {min(seconds) * 1000:,.1f}, max {max(seconds) * 1000:,.1f}); "
                            f"rows read {last['rows_read']:,}; answer {last['answer']}"
                        )
                finally:
                    reads.close()
        finally:
            if not args.keep:
                drop_database(engine)
    results["load_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    out = args.out or Path(__file__).parent / "results" / (
        f"{dt.date.today().isoformat()}-checks.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    say(f"written {out}")


if __name__ == "__main__":
    main()
