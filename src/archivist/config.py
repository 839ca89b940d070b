"""The typed configuration of archivist, loaded once from a TOML file (or built in Python).

Every error names the file and the key (``archivist.toml: archive[0].order_by: ...``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Final, Literal
from urllib.parse import quote, unquote

import msgspec

from archivist.errors import ConfigError
from archivist.policy import Rules, parse_duration, parse_rules
from archivist.protocol import IDENTIFIER, MAX_BATCH_SIZE
from archivist.worker.settings import WorkerSettings

DATABASE_URL: Final = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)
"""SQLAlchemy's own pattern for a database URL (``sqlalchemy.engine.url._parse_url``).
Reading the config with it, not with SQLAlchemy, lets the command line start the worker
before it imports SQLAlchemy, which is slow to import: the import then overlaps the
worker's start."""

DEFAULT_BATCH_SIZE: Final = 1000
"""Rows per batch of a policy with neither ``batch_size`` nor ``rows_per_archive`` (an age
policy)."""

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
BatchSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_BATCH_SIZE)]
Identifier = Annotated[str, msgspec.Meta(pattern=IDENTIFIER, max_length=128)]
HandleName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class ArchiveConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One ``[[archive]]`` entry: the archive policy of one collection."""

    collection: Identifier
    order_by: Identifier
    max_rows: PositiveInt | None = None
    rows_per_archive: PositiveInt | None = None
    batch_size: BatchSize | None = None
    source_handle: HandleName = "primary"
    dest_handle: HandleName = "archive"
    min_rate: PositiveFloat | None = None
    """Rows/s archivist moves this table at least while yielding to the application."""
    reclaim: bool | Literal["full"] = False
    """After a task that moved rows, reclaim the table's space in ways that do not block the
    application (`archivist.data.reclaim`); "full" adds MariaDB's OPTIMIZE TABLE."""
    # The rules beyond max_rows (archivist.policy; docs/configuration.md).
    older_than: str | None = None
    age_field: Identifier | None = None
    time_unit: Literal["s", "ms"] | None = None
    where: dict[str, object] | None = None
    mode: Literal["move", "copy", "purge"] | None = None
    window: str | None = None
    timezone: str | None = None
    max_runtime: str | None = None
    retention: str | None = None
    """How long archived rows are kept: older ones are deleted from the archive
    (`archivist.cold.retention`)."""
    children: list[Identifier] = msgspec.field(default_factory=list)
    """Tables whose rows reference this collection's rows (directly or through another
    named child) and move to the archive with them."""
    on_children: Literal["refuse", "keep", "cascade"] = "refuse"
    """What to do about other references (`archivist.data.relations.ON_CHILDREN`)."""
    # The cold tier (an Iceberg dest_handle; docs/coldtier.md).
    partition: Literal["day", "month", "none"] | None = None
    """How the Iceberg table is partitioned by the order_by (or age) column; "month"."""
    rows_per_file: PositiveInt | None = None
    """Rows gathered into one Iceberg commit (its files); 250,000."""

    @property
    def effective_batch_size(self) -> int:
        """``batch_size``, defaulting to ``rows_per_archive`` (capped at the protocol maximum)."""
        return self.batch_size or min(self.rows_per_archive or DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE)


WorkerConfig = WorkerSettings
"""``[worker]``: the worker's settings, declared in `archivist.worker.settings`."""


class DaemonConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    check_interval: PositiveFloat = 60.0
    health_interval: PositiveFloat = 30.0
    health_timeout: PositiveFloat = 10.0
    """Seconds the worker has to answer a health ping before the daemon reconnects."""
    entities: list[str] = msgspec.field(default_factory=list)
    log_format: Literal["text", "json"] = "text"
    """How ``run`` and ``daemon`` log (``--log-format`` beats it); the worker they start
    logs the same way."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics: str | None = None
    """``HOST:PORT`` where ``run`` and ``daemon`` serve Prometheus metrics (`parse_address`;
    ``--metrics`` beats it); None: no metrics."""
    control_socket: str | None = None
    """The daemon's control socket (``archivist pause``, ``resume``, ``cancel``, ``status``);
    None: beside the worker's socket, ``<worker socket>.control``."""
    pause_state: str | None = None
    """The file where the daemon keeps its pauses across restarts; None: beside the control
    socket, ``<control socket>.pauses.json`` (a runtime directory, emptied at reboot)."""


METRICS_PORT: Final = 9464
"""The port Prometheus' list of exporters' default ports gives archivist."""
_ADDRESS: Final = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^\s:\[\]]*)):(?P<port>\d{1,5})\Z"
)


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6; ``:9464`` for every interface) as the host
    and port to listen on; a ConfigError saying what is expected otherwise."""
    match = _ADDRESS.match(text.strip())
    port = int(match["port"]) if match else -1
    if match is None or not 0 < port < 65536:
        raise ConfigError(
            f"{text!r} is not an address to listen on: expected HOST:PORT, such as "
            f"127.0.0.1:{METRICS_PORT}, [::1]:{METRICS_PORT}, or :{METRICS_PORT} for every "
            "interface"
        )
    host = match["v6"] if match["v6"] is not None else match["host"] or "0.0.0.0"
    return host, port


DEFAULT_MAX_REPLICA_LAG: Final = 5.0
"""Seconds a source handle's replicas may lag before its batches wait (``max_replica_lag``)."""


class ReplicaCheck(msgspec.Struct, frozen=True, kw_only=True):
    """A source handle's ``replicas`` (handle names) and ``max_replica_lag`` (seconds): no
    batch starts on that handle while one of them lags more (`archivist.data.replicas`)."""

    replicas: tuple[str, ...]
    max_lag: float = DEFAULT_MAX_REPLICA_LAG


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The whole configuration. ``source`` names where it came from, for error messages."""

    handles: dict[str, str]
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    archive: list[ArchiveConfig] = msgspec.field(default_factory=list)
    source: str = "<config>"
    replica_checks: dict[str, ReplicaCheck] = msgspec.field(default_factory=dict)
    """By source handle name, from the ``replicas`` and ``max_replica_lag`` of its handle
    table (not a table of the file)."""

    def where(self, key: str) -> str:
        """``"<source>: <key>"``, the prefix of every message about ``key``."""
        return f"{self.source}: {key}"


CONFIG_VARIABLE: Final = "ARCHIVIST_CONFIG"
CONFIG_NAME: Final = "archivist.toml"
CONFIG_SEARCH_HELP: Final = (
    "Default: $ARCHIVIST_CONFIG, else the first of ./archivist.toml, "
    "$XDG_CONFIG_HOME/archivist/archivist.toml (~/.config by default), "
    "/etc/archivist/archivist.toml."
)


def config_search_paths(environ: Mapping[str, str], cwd: Path) -> list[Path]:
    """Where a config file is looked for when none is named, in order (after
    ``$ARCHIVIST_CONFIG``, which is taken as is)."""
    xdg = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    return [
        cwd / CONFIG_NAME,
        Path(xdg).expanduser() / "archivist" / CONFIG_NAME,
        Path("/etc/archivist") / CONFIG_NAME,
    ]


def find_config(
    explicit: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    required: bool = True,
) -> Path | None:
    """The config file to read: ``explicit`` (``--config``), else ``$ARCHIVIST_CONFIG``, else
    the first of `config_search_paths` that exists. None found: a ConfigError listing the
    places looked (or None if not ``required``)."""
    if explicit is not None:
        return explicit
    environ = os.environ if environ is None else environ
    if environ.get(CONFIG_VARIABLE):
        return Path(environ[CONFIG_VARIABLE])
    candidates = config_search_paths(environ, cwd or Path.cwd())
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if not required:
        return None
    looked = ", ".join(str(path) for path in candidates)
    raise ConfigError(
        f"no configuration file: give --config FILE or set {CONFIG_VARIABLE}; looked in {looked}"
    )


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and return the configuration in the TOML file at ``path``, with the
    ``ARCHIVIST_<TABLE>_<KEY>`` variables of ``environ`` (the process's environment by
    default) over the file's values (see `environment_overrides`)."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    check_keys(data, source=str(path))
    for table, values in environment_overrides(environ).items():
        current = data.get(table)
        current = current if isinstance(current, dict) else {}
        # A handle written as a table keeps its other keys (replicas, password_file): the
        # variable sets its URL.
        data[table] = {
            **current,
            **{
                name: {**current[name], "url": value}
                if table == "handles" and isinstance(current.get(name), dict)
                else value
                for name, value in values.items()
            },
        }
    return config_from_dict(data, source=str(path), base_dir=path.parent, environ=environ)


ENV_PREFIX: Final = "ARCHIVIST_"
ENV_TABLES: Final = ("handles", "worker", "daemon")
"""The tables whose keys environment variables set: ``ARCHIVIST_WORKER_CONCURRENCY=5`` is
``[worker] concurrency = 5``, ``ARCHIVIST_HANDLES_PRIMARY=postgres://...`` is
``[handles] primary``. Other ``ARCHIVIST_*`` variables (``ARCHIVIST_CONFIG``) are not
options."""


def _table_struct(table: str) -> type[msgspec.Struct] | None:
    structs: dict[str, type[msgspec.Struct]] = {"worker": WorkerConfig, "daemon": DaemonConfig}
    return structs.get(table)


def environment_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, object]]:
    """The options set by ``ARCHIVIST_<TABLE>_<KEY>`` variables, by table, each typed by the
    table's own declaration (lists are comma-separated). A bad value or an unknown key is a
    ConfigError naming the variable."""
    overrides: dict[str, dict[str, object]] = {}
    for variable, raw in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX) or variable == CONFIG_VARIABLE:
            continue
        table, _, key = variable[len(ENV_PREFIX) :].lower().partition("_")
        if table not in ENV_TABLES:
            from difflib import get_close_matches  # only for a mistake's message

            close = get_close_matches(table, ENV_TABLES, n=1, cutoff=0.75)
            if close and key:
                raise ConfigError(
                    f"{variable}: no table {table!r}; did you mean "
                    f"{ENV_PREFIX}{close[0].upper()}_{key.upper()}?"
                )
            continue  # Not an option (ARCHIVIST_CONFIG, a test's own variables).
        if not key:
            raise ConfigError(f"{variable}: names no key (e.g. {ENV_PREFIX}{table.upper()}_...)")
        struct = _table_struct(table)
        if struct is None:  # [handles]: any name, a URL.
            overrides.setdefault(table, {})[key] = raw
            continue
        fields = {field.name: field for field in msgspec.structs.fields(struct)}
        if key not in fields:
            raise ConfigError(f"{variable}: unknown option{_did_you_mean(key, fields, table)}")
        field = fields[key]
        value: object = raw
        if isinstance(field.default, list) or field.default_factory is list:
            value = [item.strip() for item in raw.split(",") if item.strip()]
        try:
            overrides.setdefault(table, {})[key] = msgspec.convert(value, field.type, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{variable}={raw!r}: {exc}") from None
    return overrides


def _did_you_mean(key: str, valid: Iterable[str], table: str | None = None) -> str:
    from difflib import get_close_matches  # only for a mistake's message

    close = get_close_matches(key, list(valid), n=1)
    if not close:
        return ""
    name = f"{table}.{close[0]}" if table else close[0]
    return f"; did you mean {name}?"


DERIVED: Final = ("source", "replica_checks")
"""Fields of `Config` that are no table of the file."""


def check_keys(data: Mapping[str, object], *, source: str) -> None:
    """Unknown keys in a config file's tables, each with the nearest valid key: msgspec
    alone would only say that the key is unknown."""
    top = [field.name for field in msgspec.structs.fields(Config) if field.name not in DERIVED]
    for key, value in data.items():
        if key not in top:
            raise ConfigError(
                f"{source}: {key}: not a configuration table{_did_you_mean(key, top)}"
            )
        struct = _table_struct(key)
        entries: list[tuple[str, object]] = [(key, value)]
        if key == "archive" and isinstance(value, list):
            struct = ArchiveConfig
            entries = [(f"archive[{index}]", entry) for index, entry in enumerate(value)]
        if struct is None:
            continue
        valid = [field.name for field in msgspec.structs.fields(struct)]
        for where, entry in entries:
            if not isinstance(entry, dict):
                continue
            for name in entry:
                if name not in valid:
                    raise ConfigError(
                        f"{source}: {where}.{name}: unknown key{_did_you_mean(name, valid)}"
                    )


def config_from_dict(
    data: dict[str, object],
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate a configuration given as a dict (the parsed TOML); ``source`` names it.

    Relative SQLite paths and ``password_file`` paths resolve against ``base_dir`` (a config
    file's directory); ``${NAME}`` in a handle URL is read from ``environ`` (the process's
    environment by default).
    """
    for derived in DERIVED:
        if derived in data:
            raise ConfigError(f"{source}: {derived}: not a configuration key")
    handles = data.get("handles")
    checks: dict[str, ReplicaCheck] = {}
    if isinstance(handles, dict):
        checks = {
            name: check
            for name, value in handles.items()
            if (check := replica_check(value, key=f"{source}: handles.{name}")) is not None
        }
        data = {
            **data,
            "handles": {
                name: handle_url(
                    value,
                    key=f"{source}: handles.{name}",
                    base_dir=base_dir or Path.cwd(),
                    environ=os.environ if environ is None else environ,
                )
                for name, value in handles.items()
            },
        }
    try:
        config = msgspec.convert({**data, "source": source}, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_key_of(str(exc))}") from None
    config.replica_checks = checks
    if base_dir is not None:
        config.handles = {
            name: resolve_sqlite_path(url, base_dir) for name, url in config.handles.items()
        }
    validate(config)
    return config


def make_config(
    handles: dict[str, str],
    archive: list[ArchiveConfig] | None = None,
    *,
    worker: WorkerConfig | None = None,
    daemon: DaemonConfig | None = None,
    source: str = "<python>",
    replica_checks: Mapping[str, ReplicaCheck] | None = None,
) -> Config:
    """Build and validate a configuration in Python, without a file (tests, the demo).
    ``replica_checks`` holds, by source handle, what a handle table's ``replicas`` and
    ``max_replica_lag`` say in a file."""
    config = Config(
        handles=dict(handles),
        worker=worker or WorkerConfig(),
        daemon=daemon or DaemonConfig(),
        archive=list(archive or []),
        source=source,
        replica_checks=dict(replica_checks or {}),
    )
    validate(config)
    return config


def validate(config: Config) -> None:
    """Check what types alone cannot: URLs parse, handles exist, collections are unique."""
    if not config.handles:
        raise ConfigError(config.where("handles: at least one handle is required"))
    for name, url in config.handles.items():
        if not name:
            raise ConfigError(config.where("handles: a handle name must not be empty"))
        problem = _url_problem(url)
        if problem is not None:
            raise ConfigError(config.where(f"handles.{name}: {problem}"))
    if config.daemon.metrics is not None:
        try:
            parse_address(config.daemon.metrics)
        except ConfigError as exc:
            raise ConfigError(config.where(f"daemon.metrics: {exc.message}")) from None
    for name, check in config.replica_checks.items():
        key = f"handles.{name}"
        if name not in config.handles:
            raise ConfigError(config.where(f"{key}: replicas of an unknown handle"))
        if not check.replicas:
            raise ConfigError(config.where(f"{key}.replicas: name at least one replica handle"))
        for replica in check.replicas:
            if replica == name:
                raise ConfigError(config.where(f"{key}.replicas: a handle is not its own replica"))
            if replica not in config.handles:
                hint = _did_you_mean(replica, config.handles)
                raise ConfigError(config.where(f"{key}.replicas: unknown handle '{replica}'{hint}"))
        if not check.max_lag > 0:
            raise ConfigError(config.where(f"{key}.max_replica_lag: must be longer than zero"))
    seen: dict[str, int] = {}
    for index, entry in enumerate(config.archive):
        key = f"archive[{index}]"
        for field in ("source_handle", "dest_handle"):
            if field == "dest_handle" and entry.mode == "purge":
                continue  # a purge archives nothing: it needs no archive handle
            handle = getattr(entry, field)
            if handle not in config.handles:
                raise ConfigError(config.where(f"{key}.{field}: unknown handle '{handle}'"))
        if entry.source_handle == entry.dest_handle:
            raise ConfigError(config.where(f"{key}.dest_handle: must differ from source_handle"))
        if (entry.max_rows is None) != (entry.rows_per_archive is None):
            raise ConfigError(
                config.where(f"{key}.rows_per_archive: max_rows and rows_per_archive go together")
            )
        try:
            rules_of(entry)
        except ValueError as exc:
            raise ConfigError(config.where(f"{key}.{exc}")) from None
        if entry.collection in seen:
            raise ConfigError(
                config.where(
                    f"{key}.collection: '{entry.collection}' is already configured "
                    f"in archive[{seen[entry.collection]}]"
                )
            )
        seen[entry.collection] = index


ENVIRONMENT_VARIABLE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
HANDLE_TABLE_KEYS: Final = ("url", "password_file", "replicas", "max_replica_lag")


def replica_check(value: object, *, key: str) -> ReplicaCheck | None:
    """The ``replicas`` and ``max_replica_lag`` of a handle written as a table (``key``
    prefixes errors), or None when it names no replicas."""
    if not isinstance(value, dict):
        return None
    replicas = value.get("replicas")
    lag = value.get("max_replica_lag")
    if replicas is None:
        if lag is not None:
            raise ConfigError(f"{key}.max_replica_lag: set replicas too (the handles to watch)")
        return None
    if not isinstance(replicas, list) or not all(isinstance(name, str) for name in replicas):
        raise ConfigError(f'{key}.replicas: expected a list of handle names, e.g. ["replica1"]')
    if lag is None:
        return ReplicaCheck(replicas=tuple(replicas))
    try:
        duration = parse_duration(lag) if not isinstance(lag, int | float) else None
    except ValueError as exc:
        raise ConfigError(f"{key}.max_replica_lag: {exc}") from None
    if duration is not None and duration.months:
        raise ConfigError(f'{key}.max_replica_lag: a lag in seconds or minutes, e.g. "5s"')
    seconds = duration.seconds if duration is not None else float(lag)
    if isinstance(lag, bool) or seconds <= 0:
        raise ConfigError(f'{key}.max_replica_lag: expected a duration such as "5s"')
    return ReplicaCheck(replicas=tuple(replicas), max_lag=seconds)


def handle_url(value: object, *, key: str, base_dir: Path, environ: Mapping[str, str]) -> object:
    """A handle as written in the config file, as the URL the engine gets: ``${NAME}`` in
    the URL replaced by that environment variable, and a table's ``password_file`` read
    into it, so that secrets need not sit in the file. Values are inserted percent-encoded
    (any character may appear in a password). ``key`` prefixes errors; they never show a
    secret. Anything else is returned as it is, for the type check to name."""
    url_key = key
    password_file: str | None = None
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in ("replicas", "max_replica_lag")}
        unknown = sorted(set(value) - set(HANDLE_TABLE_KEYS))
        if unknown:
            raise ConfigError(
                f"{key}.{unknown[0]}: not a handle key (a handle table takes "
                f"{', '.join(HANDLE_TABLE_KEYS[:-1])} and {HANDLE_TABLE_KEYS[-1]})"
            )
        url_key = f"{key}.url"
        if not isinstance(value.get("url"), str):
            raise ConfigError(f"{url_key}: a handle table needs its url, a string")
        password_file = value.get("password_file")
        if password_file is not None and not isinstance(password_file, str):
            raise ConfigError(f"{key}.password_file: expected a file path (a string)")
        value = value["url"]
    if not isinstance(value, str):
        return value

    def expand(match: re.Match[str]) -> str:
        name = match[1]
        if name not in environ:
            raise ConfigError(
                f"{url_key}: environment variable {name} is not set (the URL uses ${{{name}}})"
            )
        return quote(environ[name], safe="")

    url = ENVIRONMENT_VARIABLE.sub(expand, value)
    if password_file is None:
        return url
    match = DATABASE_URL.match(url)
    if match is None or not match["username"]:
        raise ConfigError(f"{url_key}: with password_file, the URL must name its user (user@host)")
    if match["password"] is not None:
        raise ConfigError(f"{url_key}: has a password and a password_file; keep one")
    password = _read_password(Path(password_file), f"{key}.password_file", base_dir)
    end = match.end("username")
    return f"{url[:end]}:{quote(password, safe='')}{url[end:]}"


def _read_password(path: Path, key: str, base_dir: Path) -> str:
    path = path if path.is_absolute() else base_dir / path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    # One trailing line end is the file's, not the password's (`echo secret > file`).
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise ConfigError(f"{key}: {path} is empty")
    return password


def rules_of(entry: ArchiveConfig) -> Rules:
    """The entry's rules beyond ``max_rows``, checked; ValueError ``"<key>: <problem>"``."""
    return parse_rules(
        older_than=entry.older_than,
        age_field=entry.age_field,
        time_unit=entry.time_unit,
        where=entry.where,
        mode=entry.mode,
        window=entry.window,
        timezone=entry.timezone,
        max_runtime=entry.max_runtime,
        retention=entry.retention,
        max_rows=entry.max_rows,
        order_by=entry.order_by,
    )


def _url_problem(url: str) -> str | None:
    """Why ``url`` is no database URL SQLAlchemy would take, or None."""
    match = DATABASE_URL.match(url)
    if match is None:
        return "not a database URL"
    port = match["port"]
    if port and not port.isdigit():
        return f"not a database URL (its port {port!r} is not a number)"
    return None


def resolve_sqlite_path(url: str, base_dir: Path) -> str:
    """Make a relative SQLite file path in ``url`` relative to ``base_dir`` (and an Iceberg
    handle's relative catalog file, warehouse and staging folders)."""
    if url.lower().startswith("iceberg+"):
        return _resolve_lake_paths(url, base_dir)
    match = DATABASE_URL.match(url)
    if match is None or not match["name"].startswith("sqlite") or not match["database"]:
        return url
    database = unquote(match["database"])
    if database == ":memory:" or database.startswith("file:") or Path(database).is_absolute():
        return url
    resolved = quote(str((base_dir / database).resolve()), safe=" +/")
    return url[: match.start("database")] + resolved + url[match.end("database") :]


def _resolve_lake_paths(url: str, base_dir: Path) -> str:
    scheme, _, rest = url.partition("://")
    location, question, query = rest.partition("?")
    if scheme.lower() == "iceberg+sqlite" and location.startswith("/") and location[1:2] != "/":
        # Three slashes and a relative path, as in SQLAlchemy's sqlite URLs.
        location = "/" + quote(str((base_dir / unquote(location[1:])).resolve()), safe=" +/")
    parts = []
    for part in query.split("&") if query else []:
        key, equals, value = part.partition("=")
        path = unquote(value)
        if (
            key in ("warehouse", "staging")
            and path
            and "://" not in path
            and not Path(path).is_absolute()
        ):
            value = quote(str((base_dir / path).resolve()), safe=" +/")
        parts.append(key + equals + value)
    return f"{scheme}://{location}{question}{'&'.join(parts)}"


_PATH_RE: Final = re.compile(r"^(?P<msg>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.DOTALL)


def _key_of(message: str) -> str:
    """msgspec's "Expected `int` - at `$.worker.concurrency`" as "worker.concurrency: ..."."""
    match = _PATH_RE.match(message)
    if match is None or not match.group("path"):
        return message
    return f"{match.group('path')}: {match.group('msg')}"
