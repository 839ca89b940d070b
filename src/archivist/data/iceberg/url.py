"""An Iceberg handle's URL: where its catalog is (a SQLAlchemy URL for pyiceberg's SQL catalog),
where its data files go (``warehouse``), and where a task stages rows before a commit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, quote, urlsplit

import msgspec

from archivist.errors import ConfigError

SCHEMES: Final = {
    "iceberg+sqlite": "sqlite",
    "iceberg+postgresql": "postgresql+psycopg",
    "iceberg+postgres": "postgresql+psycopg",
    "iceberg+postgresql+psycopg": "postgresql+psycopg",
}
"""Each lake scheme and the SQLAlchemy driver of its catalog (psycopg 3 for PostgreSQL,
which the ``postgresql`` extra installs)."""

OPTIONS: Final = ("warehouse", "namespace", "staging")
DEFAULT_NAMESPACE: Final = "archivist"


def is_lake_url(url: str) -> bool:
    """Whether ``url`` names an Iceberg catalog rather than a database."""
    return url.split("://", 1)[0].lower() in SCHEMES


class LakeURL(msgspec.Struct, frozen=True):
    """A parsed ``iceberg+...`` URL."""

    catalog_url: str
    """The SQLAlchemy URL of the catalog database."""
    warehouse: str
    """Where tables' files go: a local directory or a file system URI (``s3://bucket/x``)."""
    namespace: str
    staging: Path
    """A local directory for rows staged before their commit (never in the warehouse)."""
    shown: str
    """The URL as logs may show it (no password)."""

    @classmethod
    def parse(cls, url: str, *, base_dir: Path | None = None) -> LakeURL:
        """Parse ``url``; a missing or unknown part is a ConfigError saying what to write.
        Relative paths resolve against ``base_dir`` (a config file's directory)."""
        scheme, sep, rest = url.partition("://")
        driver = SCHEMES.get(scheme.lower())
        if driver is None or not sep:
            raise ConfigError(
                f"not an Iceberg URL: {scheme!r}; use iceberg+sqlite:///CATALOG.db?warehouse=DIR "
                "or iceberg+postgresql://USER@HOST/DB?warehouse=DIR"
            )
        base = base_dir or Path.cwd()
        parts = urlsplit("x://" + rest)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(query) - set(OPTIONS))
        if unknown:
            raise ConfigError(
                f"unknown Iceberg URL option {unknown[0]!r}; known: {', '.join(OPTIONS)}"
            )
        warehouse = query.get("warehouse", "")
        if not warehouse:
            raise ConfigError(
                "an Iceberg URL needs ?warehouse=DIR (a directory, or s3://bucket/path) "
                "where the tables' files go"
            )
        if "://" not in warehouse:
            warehouse = str((base / warehouse).resolve())
        location = rest.split("?", 1)[0]
        if driver == "sqlite":
            # As SQLAlchemy's sqlite URLs: three slashes and a relative path, four and an
            # absolute one.
            path = location[1:] if location.startswith("/") else location
            if not path:
                raise ConfigError(
                    "iceberg+sqlite:// needs the catalog file: iceberg+sqlite:///PATH"
                )
            if not os.path.isabs(path):
                path = str((base / path).resolve())
            catalog_url = "sqlite:///" + quote(path, safe="/ +")
            default_staging = Path(path).parent / (Path(path).stem + "-staging")
        else:
            catalog_url = f"{driver}://{location}"
            default_staging = (
                Path(warehouse if "://" not in warehouse else os.environ.get("TMPDIR", "/tmp"))
                / ".archivist-staging"
            )
        staging = Path(query["staging"]) if query.get("staging") else default_staging
        if not staging.is_absolute():
            staging = (base / staging).resolve()
        namespace = query.get("namespace") or DEFAULT_NAMESPACE
        shown = (
            scheme
            + "://"
            + (
                location
                if parts.password is None
                else location.replace(":" + parts.password, ":***")
            )
        )
        return cls(catalog_url, warehouse, namespace, staging, shown + f"?warehouse={warehouse}")

    @property
    def warehouse_uri(self) -> str:
        """The warehouse as pyiceberg takes it (a local directory as ``file://``)."""
        return self.warehouse if "://" in self.warehouse else "file://" + self.warehouse
