"""The pure parts of sd_notify: the socket address, the watchdog interval, STATUS lines."""

from __future__ import annotations

from archivist.daemon.systemd import (
    MAX_STATUS,
    Notifier,
    socket_address,
    status_line,
    watchdog_interval,
)


def test_an_abstract_address_starts_with_a_nul_and_a_path_stays_as_it_is() -> None:
    assert socket_address({"NOTIFY_SOCKET": "@/org/freedesktop/systemd1/notify"}) == (
        "\0/org/freedesktop/systemd1/notify"
    )
    assert socket_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert socket_address({}) is None
    assert socket_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


def test_the_watchdog_is_pinged_at_half_its_timeout_and_only_by_the_pid_it_watches() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid=42) is None
    assert watchdog_interval({}, pid=42) is None


def test_a_status_line_is_one_line_and_short() -> None:
    assert status_line("archiving\nby 2 policies") == "STATUS=archiving by 2 policies"
    long = status_line("x" * 1000)
    assert len(long) == len("STATUS=") + MAX_STATUS and long.endswith("...")


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and notifier.watchdog is None
    assert notifier.ready("ready") is False
