"""examples/embed.py, run end to end as a user runs it: `archivist.Daemon` inside an
asyncio application, on SQLite files, with its worker as a child process and in process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from e2esupport import count, ids

pytestmark = pytest.mark.timeout(240)

EXAMPLE = Path(__file__).parents[2] / "examples" / "embed.py"


@pytest.mark.parametrize("worker", ["process", "inline"])
def test_the_embedding_example_keeps_the_table_small_pauses_and_stops(
    socket_dir: Path, worker: str
) -> None:
    args = [sys.executable, str(EXAMPLE), "--dir", str(socket_dir)]
    done = subprocess.run(
        args + (["--inline"] if worker == "inline" else []),
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("chat_messages: paused (paused by nightly-maintenance since ")
    assert lines[-1] == "daemon stopped"
    wrote = lines[1].split()
    written, held = int(wrote[3]), int(wrote[-1])
    primary, archive = (
        f"sqlite:///{socket_dir / 'app.db'}",
        f"sqlite:///{socket_dir / 'archive.db'}",
    )
    assert held <= 200 and count(primary) == held
    assert ids(primary) | ids(archive) == set(range(1, 1000 + written + 1))
    assert not ids(primary) & ids(archive)
    assert "Traceback" not in done.stderr
