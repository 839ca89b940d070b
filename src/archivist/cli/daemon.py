"""``archivist run`` (a worker started as a child, or ``--socket``'s) and ``archivist
daemon`` (the daemon alone, against a worker that runs already)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from archivist.cli.common import (
    CONTEXT,
    config_option,
    fail,
    load,
    log,
    log_options,
    report_records,
    run_async,
    setup_logs,
    socket_option,
)

if TYPE_CHECKING:
    from archivist.config import Config
    from archivist.daemon.prometheus import MetricsServer, PrometheusObserver
    from archivist.daemon.service import ArchiveDaemon
    from archivist.daemon.systemd import Notifier
    from archivist.daemon.tracker import TaskRecord


metrics_option = click.option(
    "--metrics",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (127.0.0.1:9464; :9464 for "
    "every interface). Default: [daemon] metrics, else none. Series: docs/operations.md.",
)


@click.command(context_settings=CONTEXT)
@config_option
@socket_option
@click.option(
    "--once",
    is_flag=True,
    help="Check every policy once, run the tasks they need, wait for them, and exit: for "
    "cron and systemd timers. Policies outside their window do nothing. Exits 1 if a "
    "task failed.",
)
@metrics_option
@click.option("-v", "--verbose", count=True, help="Log debug details.")
@log_options(quiet=True)
def run(
    config_path: Path | None,
    socket_path: Path | None,
    once: bool,
    metrics: str | None,
    verbose: int,
    quiet: bool,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Archive by policy until stopped: the main job.

    Starts a worker as a child process (restarting it if it dies), or uses the one at
    --socket; then every `check_interval` seconds checks each policy: rows older than its
    `older_than` move to the archive handle, and a table holding more than `max_rows`
    moves its oldest rows until it is back at `max_rows - rows_per_archive` (only rows
    matching its `where`; `mode = "purge"` deletes them instead). SIGTERM or SIGINT stop
    it cleanly.

    Examples:

        archivist run --config archivist.toml
        archivist run --log-format json -q
        archivist run --metrics 127.0.0.1:9464          # Prometheus scrapes /metrics
        archivist run --config archivist.toml --once    # from cron or a systemd timer
    """
    config = load(config_path)
    setup_logs(config, log_format, log_level, verbose=verbose, quiet=quiet)
    if once:
        if metrics is not None:
            fail("--metrics serves a daemon that keeps running; --once exits when done")
        run_async(_run_once(config, socket_path))
        return
    run_async(_run(config, socket_path, watch=True, metrics=metrics))


async def _run_once(config: Config, socket_path: Path | None) -> None:
    from archivist.daemon.runtime import Launch, interrupt_on_signals, running, until_done

    launch = Launch(socket=socket_path, private_socket=socket_path is None, watch=False)
    async with running(config, launch) as daemon:
        interrupt = interrupt_on_signals()
        records = await daemon.check_once()
        await asyncio.gather(*(until_done(daemon, record, interrupt) for record in records))
        await daemon.expiry.wait()  # retention, which the check started
        holding = dict(daemon.holds.holding)
    report_records(records, holding)


@click.command(context_settings=CONTEXT)
@config_option
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The socket of a worker that runs already (see `archivist worker`).",
)
@metrics_option
@click.option("-v", "--verbose", count=True, help="Log debug details.")
@log_options(quiet=True)
def daemon(
    config_path: Path | None,
    socket_path: Path,
    metrics: str | None,
    verbose: int,
    quiet: bool,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Run the daemon alone, against a worker that runs already.

    Like `archivist run`, but never starts a worker: it connects to --socket and
    reconnects (with backoff) whenever the connection drops.

    Example:

        archivist worker --socket /tmp/arch/worker.sock &
        archivist daemon --config archivist.toml --socket /tmp/arch/worker.sock
    """
    config = load(config_path)
    setup_logs(config, log_format, log_level, verbose=verbose, quiet=quiet)
    run_async(_run(config, socket_path, watch=True, metrics=metrics))


async def _run(
    config: Config, socket_path: Path | None, *, watch: bool, metrics: str | None
) -> None:
    from archivist.daemon.runtime import Launch, running
    from archivist.daemon.systemd import Notifier

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    systemd = Notifier()
    observer, server = _serve_metrics(metrics or config.daemon.metrics)
    try:
        async with running(
            config,
            Launch(socket=socket_path, watch=watch, control=True),
            on_update=_status_to(systemd),
            observer=observer,
        ) as daemon:
            if observer is not None:
                observer.watch(daemon)
            # Ready for systemd (Type=notify) once the policies are loaded (`running` did)
            # and the worker answers on its socket.
            await _until_connected(daemon, stop)
            if not stop.is_set():
                policies = len(daemon.policies)
                systemd.ready(f"archiving by {policies} polic{'y' if policies == 1 else 'ies'}")
            watchdog = (
                asyncio.create_task(_watchdog(systemd, systemd.watchdog))
                if systemd.watchdog is not None
                else None
            )
            try:
                await stop.wait()
            finally:
                if watchdog is not None:
                    watchdog.cancel()
            log.info("stopping on signal")
            systemd.stopping("stopping: letting running tasks reach a safe point")
    finally:
        systemd.close()
        if server is not None:
            server.close()


def _serve_metrics(
    address: str | None,
) -> tuple[PrometheusObserver | None, MetricsServer | None]:
    """The metrics' observer and their HTTP server on ``address`` (None: no metrics, and
    prometheus-client is not even imported)."""
    if address is None:
        return None, None
    from archivist.daemon.prometheus import MetricsServer, PrometheusObserver

    observer = PrometheusObserver()
    return observer, MetricsServer(observer, address)


async def _until_connected(daemon: ArchiveDaemon, stop: asyncio.Event) -> None:
    """Wait until the daemon reaches its worker, or until it is asked to stop."""
    waits = [asyncio.ensure_future(daemon.connection()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _status_to(systemd: Notifier) -> Callable[[TaskRecord], None] | None:
    """A ``STATUS=`` line for systemd about each task that ends (None outside systemd)."""
    if not systemd.enabled:
        return None

    def update(record: TaskRecord) -> None:
        if record.finished:
            systemd.status(
                f"last task: {record.collection} {record.state}, {record.archived:,} rows"
            )

    return update


async def _watchdog(systemd: Notifier, interval: float) -> None:
    """``WATCHDOG=1`` while the event loop runs: a loop stuck for WatchdogSec gets the
    service restarted by systemd."""
    while True:
        systemd.ping()
        await asyncio.sleep(interval)
