"""Database URLs as users write them (``postgres://``, ``mysql://``, ``mariadb://``) get the
drivers archivist supports; a driver that is not installed names the extra to install."""

from __future__ import annotations

import builtins
import sys
from typing import Any

import pytest

from archivist.data.handles import create_engine, normalize_url
from archivist.errors import ConfigError


@pytest.mark.parametrize(
    ("written", "drivername"),
    [
        ("postgres://u:pw@db.example/app", "postgresql+psycopg"),
        ("postgresql://u:pw@db.example/app", "postgresql+psycopg"),
        ("postgres+psycopg://u@db.example/app", "postgresql+psycopg"),
        ("postgresql+psycopg2://u@db.example/app", "postgresql+psycopg2"),
        ("mysql://root@db.example/app", "mysql+pymysql"),
        ("mariadb://root@db.example/app", "mariadb+pymysql"),
        ("sqlite:///app", "sqlite"),
    ],
)
def test_url_schemes_map_to_archivists_drivers(written: str, drivername: str) -> None:
    url = normalize_url(written)
    assert url.drivername == drivername
    # Nothing else of the URL changes.
    assert url.database.endswith("app")  # type: ignore[union-attr]


def test_postgres_alias_keeps_password_and_query() -> None:
    url = normalize_url("postgres://u:p%40ss@db.example:6432/app?sslmode=require")
    assert url.password == "p@ss"
    assert url.port == 6432
    assert url.query == {"sslmode": "require"}


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgres://u@127.0.0.1/app", "psycopg", "postgresql"),
        ("mysql://root@127.0.0.1/app", "pymysql", "mysql"),
    ],
)
def test_a_missing_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    real_import = builtins.__import__

    def refuse(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        # Only the absolute import of the driver fails (SQLAlchemy's own dialect modules,
        # imported relatively, are named alike).
        if level == 0 and (name == module or name.startswith(f"{module}.")):
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return real_import(name, globals, locals, fromlist, level)

    for loaded in [m for m in sys.modules if m == module or m.startswith(f"{module}.")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(ConfigError) as caught:
        create_engine(url)
    assert f"pip install 'archivist[{extra}]'" in str(caught.value)
    assert module in str(caught.value)
