"""archivist: keeps hot tables small by moving old rows to archive storage in the background."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
