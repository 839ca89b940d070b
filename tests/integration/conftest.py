"""Fixtures that start real worker processes on real Unix sockets."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

import e2esupport
import support


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private directory for sockets (tmp_path can exceed the AF_UNIX limit)."""
    path = support.short_socket_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_worker(
    socket_dir: Path,
) -> Callable[..., AbstractContextManager[support.WorkerProcess]]:
    """``with start_worker("--concurrency", "3") as worker:`` runs a worker for the block."""

    def start(
        *args: str, socket_name: str = "worker.sock"
    ) -> AbstractContextManager[support.WorkerProcess]:
        return support.start_worker(socket_dir, *args, socket_name=socket_name)

    return start


@pytest.fixture
def worker(
    start_worker: Callable[..., AbstractContextManager[support.WorkerProcess]],
) -> Iterator[support.WorkerProcess]:
    """A worker with default options (concurrency 3)."""
    with start_worker() as running:
        yield running


@pytest.fixture
def run_process() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``run_process("run", "--config", f)`` starts an archivist process; every one still
    running when the test ends is killed (a supervised worker child first)."""
    with e2esupport.processes() as started:
        yield started.start
