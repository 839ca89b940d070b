"""Helpers for end-to-end tests: sample tables, raw row checks, config files and the
`archivist` processes a test starts (and always stops).

Used by tests/integration/test_end_to_end.py, test_crash.py and test_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa

from archivist import sample
from archivist.config import ArchiveConfig, Config, DaemonConfig, WorkerConfig, make_config

# --- tables and rows -------------------------------------------------------------------------


def policy(collection: str = "chat_messages", **overrides: object) -> ArchiveConfig:
    """A policy for ``collection`` with small, test-sized defaults."""
    values: dict[str, object] = {
        "collection": collection,
        "order_by": "created_at",
        "max_rows": 1000,
        "rows_per_archive": 100,
        "batch_size": 100,
    }
    values.update(overrides)
    return ArchiveConfig(**values)  # type: ignore[arg-type]


def small_config(
    primary: str, archive: str, *, retry_for: float = 60.0, in_database: bool = True
) -> Config:
    """A policy that keeps 1,800 of 3,000 rows (2,000 max, 200 per archive), batches of 200,
    checked every 0.2 s."""
    entry = policy(max_rows=2000, rows_per_archive=200, batch_size=200)
    return make_config(
        {"primary": primary, "archive": archive},
        [entry],
        worker=WorkerConfig(retry_for=retry_for, in_database=in_database),
        daemon=DaemonConfig(check_interval=0.2, health_interval=1),
    )


def make_chat_table(url: str, rows: int, name: str = "chat_messages") -> None:
    """A ``sample.chat_messages_table`` with ``rows`` generated rows (ids 1..rows)."""
    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        table = sample.chat_messages_table(metadata, name)
        metadata.create_all(engine)
        sample.fill(engine, table, rows)
    finally:
        engine.dispose()


def count(url: str, table: str = "chat_messages") -> int:
    """Rows in ``table`` (0 when the table does not exist yet)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table(table):
                return 0
            return int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def ids(url: str, table: str = "chat_messages") -> set[int]:
    """The primary keys in ``table`` (empty when the table does not exist yet)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table(table):
                return set()
            return {int(r[0]) for r in connection.execute(sa.text(f"SELECT id FROM {table}"))}
    finally:
        engine.dispose()


# --- configuration ---------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


def write_config(
    path: Path,
    handles: Mapping[str, str | Mapping[str, object]],
    policies: list[dict[str, object]],
    socket: Path | None = None,
    *,
    worker: Mapping[str, object] | None = None,
    daemon: Mapping[str, object] | None = None,
) -> Path:
    """An archivist.toml; the daemon checks every 0.2 s and pings every 1 s unless told."""
    daemon_keys = {"check_interval": 0.2, "health_interval": 1, **(daemon or {})}
    worker_keys = dict(worker or {})
    if socket is not None:
        worker_keys["socket"] = str(socket)
    lines = ["[handles]"]
    lines += [f"{name} = {_toml_value(url)}" for name, url in handles.items()]
    lines += ["", "[daemon]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in daemon_keys.items()]
    lines.append("")
    if worker_keys:
        lines.append("[worker]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in worker_keys.items()]
        lines.append("")
    for entry in policies:
        lines.append("[[archive]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in entry.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


# --- processes -------------------------------------------------------------------------------


def archivist(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one ``archivist`` command to its end."""
    return subprocess.run(
        [sys.executable, "-m", "archivist", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    process: subprocess.Popen[str] | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` or if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(
                f"archivist exited ({process.returncode}) before {what}:\n{output}"
            )
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def children_of(pid: int) -> list[int]:
    """The pids of a process's children (from /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


class Processes:
    """``archivist`` processes started by one test; `kill_all` ends every one still alive,
    children (a supervised worker) first."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(
        self, *args: str, output: Path | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start ``archivist *args``; its output goes to a pipe, or to the file ``output``
        (for long runs whose output nobody reads until the end)."""
        sink: int | object = subprocess.PIPE
        if output is not None:
            sink = output.open("a")
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "archivist", *args],
                stdout=sink,  # type: ignore[arg-type]
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, **(env or {})},
            )
        finally:
            if output is not None:
                sink.close()  # type: ignore[attr-defined]
        self.started.append(process)
        return process

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is not None:
                continue
            with contextlib.suppress(OSError):
                for child in children_of(process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    """A `Processes` whose survivors are killed when the block ends, however it ends."""
    started = Processes()
    try:
        yield started
    finally:
        started.kill_all()


COPY_COMMANDS = {"rows": "data/create", "in_database": "data/copy"}
"""The command that copies a batch to the archive, by the path rows take: through the worker,
or inside the database (two SQLite files)."""
PATHS = pytest.mark.parametrize("path", list(COPY_COMMANDS))


def copies_to(params: Mapping[str, object], handle: str) -> bool:
    """Whether a ``data/create`` or ``data/copy`` call writes to ``handle``."""
    return params.get("destHandle", params.get("dbHandle")) == handle
