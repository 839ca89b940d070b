"""archivist: keeps hot tables small by moving old rows to archive storage in the background.

The public API is what this module exports. Names are loaded on first use, so that the
worker process (``python -m archivist worker``) never imports the database side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from archivist.config import ArchiveConfig, Config, ReplicaCheck, load_config, make_config
    from archivist.data import DataDaemon, archive
    from archivist.embed import Daemon
    from archivist.errors import ArchivistError

_EXPORTS = {
    "ArchiveConfig": "archivist.config",
    "Config": "archivist.config",
    "load_config": "archivist.config",
    "make_config": "archivist.config",
    "ReplicaCheck": "archivist.config",
    "DataDaemon": "archivist.data",
    "Daemon": "archivist.embed",
    "archive": "archivist.data",
    "ArchivistError": "archivist.errors",
}

__all__ = [
    "ArchiveConfig",
    "ArchivistError",
    "Config",
    "Daemon",
    "DataDaemon",
    "ReplicaCheck",
    "__version__",
    "archive",
    "load_config",
    "make_config",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'archivist' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
