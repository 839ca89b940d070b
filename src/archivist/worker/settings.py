"""Every setting of the worker, declared once: its name, type, default, range and help.

`WorkerSettings` is the table. The ``[worker]`` section of the config file is this struct
(msgspec checks types and ranges and names the key), the options of ``archivist worker``
are made from its fields (`cli_options`), the command line the daemon gives the worker it
starts is made from its values (`command_line`), and the worker's own structures take their
defaults from `DEFAULTS`. A new setting is one field here.

No I/O, and nothing imported from archivist but errors and the protocol's frame limit, so
the config, the CLI and the worker can all import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, get_args, get_origin, get_type_hints

import msgspec

from archivist.errors import ConfigError
from archivist.protocol import DEFAULT_FRAME_LIMIT


def _help(
    text: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    **extra: str,
) -> msgspec.Meta:
    """A setting's help and range (``ge``/``gt``/``le``); ``extra`` holds its CLI ``metavar``
    or its ``cli`` spelling, where the name's own (``--max-queue``) does not do."""
    bounds: dict[str, Any] = {"ge": ge, "gt": gt, "le": le}
    return msgspec.Meta(
        description=text,
        extra=extra or None,
        **{name: bound for name, bound in bounds.items() if bound is not None},
    )


class WorkerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[worker]``: where the worker listens and how gently it moves rows. Each key is
    also an ``archivist worker`` option (``max_queue`` is ``--max-queue``)."""

    socket: Annotated[
        str | None,
        _help(
            "Unix socket to listen on. Default: $XDG_RUNTIME_DIR/archivist/worker.sock, "
            "else /tmp/archivist-<uid>/worker.sock.",
            metavar="PATH",
        ),
    ] = None
    concurrency: Annotated[
        int,
        _help("Tasks run at once (never two on the same source collection).", ge=1, le=64),
    ] = 3
    frame_limit: Annotated[
        int,
        _help("Longest accepted line, in bytes; a longer one closes the connection.", ge=1024),
    ] = DEFAULT_FRAME_LIMIT
    idle_timeout: Annotated[
        float,
        _help(
            "Seconds a connection may go without sending a complete frame before it is "
            "closed (a silent client, or one that trickles bytes).",
            gt=0,
        ),
    ] = 600.0
    write_timeout: Annotated[
        float,
        _help("Seconds a client may leave the worker's answers unread before it is dropped.", gt=0),
    ] = 60.0
    request_timeout: Annotated[
        float,
        _help("Seconds the worker waits for the daemon's answer to one data command.", gt=0),
    ] = 120.0
    max_queue: Annotated[
        int,
        _help("Queued tasks held at most; more are refused with code queue_full.", ge=1),
    ] = 10_000
    shutdown_timeout: Annotated[
        float,
        _help("Seconds running tasks get to reach a safe point on SIGTERM.", ge=0),
    ] = 30.0
    allow_uid: Annotated[
        tuple[Annotated[int, msgspec.Meta(ge=0)], ...],
        _help(
            "Also serve processes of this user (repeatable). The worker's own user is always "
            "served and every other one refused (checked with SO_PEERCRED). Without this "
            "option the socket is 0600 in a 0700 directory; with it the socket is 0666 in a "
            "0711 directory, so other users can reach it, and the credential check refuses "
            "all but the allowed ones. Directories above the socket's must let them pass too.",
            metavar="UID",
        ),
    ] = ()
    retry_for: Annotated[
        float,
        _help(
            "Seconds a batch failing with a database error is retried (with backoff) before "
            "its task fails.",
            ge=0,
        ),
    ] = 60.0
    batch_time: Annotated[
        float,
        _help(
            "Seconds each batch should take: batch sizes adapt to it, never above the "
            "task's batchSize (0: always the task's batchSize).",
            ge=0,
        ),
    ] = 0.5
    min_batch: Annotated[int, _help("Smallest batch the adaptive sizing goes down to.", ge=1)] = 100
    prefetch: Annotated[
        bool,
        _help(
            "List a task's next batch while the current one is written; where the daemon "
            "moves batches from PostgreSQL, it moves the next pages meanwhile, held until "
            "asked for."
        ),
    ] = True
    in_database: Annotated[
        bool,
        _help(
            "Let the daemon copy rows itself where it can: inside the database (two SQLite "
            "files, two databases of one server), or streamed between two servers or engines. "
            "--rows-through-worker always moves rows through this worker (list, create, "
            "verify, delete): slower; for comparing, or for a daemon whose data/copy should "
            "not be used.",
            cli="--in-database/--rows-through-worker",
        ),
    ] = True
    pause: Annotated[float, _help("Seconds each task rests between its batches.", ge=0)] = 0.0
    nice_ratio: Annotated[
        float,
        _help(
            "After each batch, rest this many times as long as the batch took, like gh-ost's "
            "--nice-ratio: 1 about halves the load on the database, at half the speed.",
            ge=0,
        ),
    ] = 0.0
    yield_ratio: Annotated[
        float,
        _help(
            "While other sessions are using the source database (the application), rest at "
            "least this many times as long as each batch took: the application's slowest "
            "requests stay close to their idle latency, and rows move at about 1/(1+ratio) "
            "of full speed until it is quiet for 2 s. 0: never yield (fastest; the "
            "application's p99 latency may then rise several times while archivist runs).",
            ge=0,
        ),
    ] = 200.0
    # 200: the application meets a batch well under 1 time in 100, which kept its p99
    # close to idle on SQLite and PostgreSQL in the benchmark (docs/performance.md).
    pause_file: Annotated[
        str | None,
        _help(
            "While this file exists no batch starts (touch it to pause, remove it to resume).",
            metavar="PATH",
        ),
    ] = None
    max_latency_ms: Annotated[
        float,
        _help("Pause batches while a probe query on the source takes longer than this.", ge=0),
    ] = 100.0
    max_active: Annotated[
        int,
        _help(
            "Pause batches while the source reports more busy connections than this "
            "(PostgreSQL active backends, MariaDB Threads_running).",
            ge=0,
        ),
    ] = 32
    load_interval: Annotated[
        float,
        _help("Seconds a reading of a database's load is reused, by every task on it.", gt=0),
    ] = 1.0
    per_database: Annotated[
        int,
        _help("Batches that may write at once on one source database, across all tasks.", ge=1),
    ] = 1

    def command_line(self) -> list[str]:
        """The options that give an ``archivist worker`` these settings (socket aside: the
        daemon chooses it). Only values that differ from the defaults are written: the
        child reads its defaults from this same table."""
        args: list[str] = []
        for spec in SETTINGS:
            value = getattr(self, spec.name)
            if spec.name == "socket" or value == spec.default:
                continue
            if spec.kind is bool:
                on, _, off = spec.flag.partition("/")
                args.append(on if value else off)
            elif spec.multiple:
                for item in value:
                    args += [spec.flag, str(item)]
            else:
                args += [spec.flag, str(value)]
        return args


class Setting(msgspec.Struct, frozen=True):
    """One row of the table, as the CLI needs it."""

    name: str
    kind: type
    """int, float, bool or str (of each item, for a ``multiple`` setting)."""
    default: object
    help: str
    flag: str
    """``--max-queue``; ``--on/--off`` for a boolean."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    multiple: bool = False
    metavar: str | None = None


def _table() -> tuple[Setting, ...]:
    hints = get_type_hints(WorkerSettings, include_extras=True)
    defaults = WorkerSettings()
    rows = []
    for name in WorkerSettings.__struct_fields__:
        kind, meta = _unpack(hints[name])
        bounds = meta
        multiple = get_origin(kind) is tuple
        if multiple:  # the range is each item's
            kind, bounds = _unpack(get_args(kind)[0])
        optional = [a for a in get_args(kind) if a is not type(None)]
        if optional:  # X | None
            (kind,) = optional
        extra = meta.extra or {}
        flag = "--" + name.replace("_", "-")
        rows.append(
            Setting(
                name=name,
                kind=kind,
                default=getattr(defaults, name),
                help=meta.description or "",
                flag=extra.get("cli", f"{flag}/--no-{flag[2:]}" if kind is bool else flag),
                ge=bounds.ge,
                gt=bounds.gt,
                le=bounds.le,
                multiple=multiple,
                metavar=extra.get("metavar"),
            )
        )
    return tuple(rows)


def _unpack(hint: object) -> tuple[type, msgspec.Meta]:
    """``Annotated[T, Meta]`` as ``(T, Meta)``; a bare T with an empty Meta."""
    if get_origin(hint) is Annotated:
        kind, *metas = get_args(hint)
        meta = next((m for m in metas if isinstance(m, msgspec.Meta)), msgspec.Meta())
        return kind, meta
    assert isinstance(hint, type)
    return hint, msgspec.Meta()


DEFAULTS: Final = WorkerSettings()
"""Every default, for the structures the worker builds from the settings."""
SETTINGS: Final = _table()
"""The table, one `Setting` per field of `WorkerSettings`, in declaration order."""


def from_options(given: Mapping[str, object]) -> WorkerSettings:
    """The settings of options given by name (``None`` or an empty tuple: not given, so the
    table's default holds), checked against the table's types and ranges."""
    chosen = {name: value for name, value in given.items() if value is not None and value != ()}
    try:
        return msgspec.convert(chosen, WorkerSettings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"worker settings: {exc}") from None
