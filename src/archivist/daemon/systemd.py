"""Telling systemd how ``archivist run`` is doing (``Type=notify``): sd_notify without libsystemd.

systemd passes ``NOTIFY_SOCKET`` (a path, or an abstract address written ``@name``) and,
with ``WatchdogSec=``, ``WATCHDOG_USEC``; the service sends it datagrams of
``KEY=value`` lines: ``READY=1``, ``STATUS=...``, ``STOPPING=1``, ``WATCHDOG=1``
(sd_notify(3)). Outside systemd there is no socket and every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Final

log = logging.getLogger(__name__)

MAX_STATUS: Final = 200
"""Characters of a STATUS= line kept: systemctl status shows one line."""


def socket_address(environ: Mapping[str, str]) -> str | None:
    """The datagram address in ``NOTIFY_SOCKET``, abstract ones (``@name``) as Linux spells
    them (a leading NUL); None when unset or of a kind we do not speak (``vsock:``)."""
    address = environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, as
    sd_watchdog_enabled(3) advises; None when no watchdog is asked of this process
    (``WATCHDOG_PID`` names another)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watched = environ.get("WATCHDOG_PID")
    if watched and watched != str(pid):
        return None
    return usec / 2 / 1_000_000


def status_line(text: str) -> str:
    """A ``STATUS=`` line: one line, not too long for ``systemctl status``."""
    flat = " ".join(text.split())
    return "STATUS=" + (flat if len(flat) <= MAX_STATUS else flat[: MAX_STATUS - 3] + "...")


class Notifier:
    """Sends to systemd's notify socket, if there is one; a failure is logged once and never
    stops archiving (systemd then times the start-up out, or the watchdog fires)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.address = socket_address(environ)
        self.watchdog = watchdog_interval(environ, os.getpid()) if self.address else None
        self._socket: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of ``lines``; whether it went."""
        if self.address is None or self._failed:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)  # a full socket must not stop the loop
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            self._failed = True
            log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", status_line(status))

    def status(self, status: str) -> bool:
        return self.send(status_line(status))

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", status_line(status))

    def ping(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
