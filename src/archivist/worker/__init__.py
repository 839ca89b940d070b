"""The archive worker: a Unix-socket server with a FIFO task queue and a bounded pool of runners.

It knows collections and handles by name only; rows move through the daemon's commands.
"""

from archivist.worker.server import WorkerOptions, serve

__all__ = ["WorkerOptions", "serve"]
