"""The archive worker: a Unix-socket server with a FIFO task queue and a bounded pool of runners.

It knows collections and handles by name only; rows move through the daemon's commands.
Names are loaded on first use, so that the config and the CLI can read the worker's
settings (`archivist.worker.settings`) without starting up the whole server module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archivist.worker.server import WorkerOptions, serve

__all__ = ["WorkerOptions", "serve"]


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module 'archivist.worker' has no attribute {name!r}")
    return getattr(importlib.import_module("archivist.worker.server"), name)
