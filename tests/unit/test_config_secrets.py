"""Handle passwords from the environment or a file, so that secrets need not sit in the TOML."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from archivist.config import config_from_dict, load_config
from archivist.errors import ConfigError

SECRET = "s3cr/et@:%#${x}"


def handles(value: object, environ: dict[str, str], base_dir: Path | None = None) -> str:
    config = config_from_dict(
        {"handles": {"primary": "sqlite:///p.db", "archive": value}},
        source="archivist.toml",
        base_dir=base_dir,
        environ=environ,
    )
    return config.handles["archive"]


def test_a_password_from_the_environment_reaches_the_url_whatever_its_characters() -> None:
    url = handles(
        "postgresql+psycopg://app:${ARCHIVE_DB_PASSWORD}@db:5432/archive",
        {"ARCHIVE_DB_PASSWORD": SECRET},
    )

    parsed = make_url(url)
    assert parsed.password == SECRET
    assert (parsed.username, parsed.host, parsed.port, parsed.database) == (
        "app",
        "db",
        5432,
        "archive",
    )
    assert SECRET not in parsed.render_as_string(hide_password=True)


def test_a_missing_variable_names_the_file_the_key_and_the_variable() -> None:
    with pytest.raises(ConfigError) as error:
        handles("postgresql+psycopg://app:${ARCHIVE_DB_PASSWORD}@db/archive", {})
    assert error.value.message == (
        "archivist.toml: handles.archive: environment variable ARCHIVE_DB_PASSWORD is not "
        "set (the URL uses ${ARCHIVE_DB_PASSWORD})"
    )


def test_a_password_file_beside_the_config_is_read_into_the_url(tmp_path: Path) -> None:
    (tmp_path / "db.secret").write_text(SECRET + "\n")
    config = tmp_path / "archivist.toml"
    config.write_text(
        '[handles]\nprimary = "sqlite:///p.db"\n'
        'archive = { url = "mysql+pymysql://app@db/archive", password_file = "db.secret" }\n'
    )

    url = load_config(config).handles["archive"]

    parsed = make_url(url)
    assert (parsed.username, parsed.password, parsed.host) == ("app", SECRET, "db")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"url": "postgresql+psycopg://db/archive", "password_file": "db.secret"},
            "handles.archive.url: with password_file, the URL must name its user",
        ),
        (
            {"url": "postgresql+psycopg://app:pw@db/archive", "password_file": "db.secret"},
            "handles.archive.url: has a password and a password_file; keep one",
        ),
        (
            {"url": "postgresql+psycopg://app@db/archive", "password_file": "missing"},
            "handles.archive.password_file: cannot read ",
        ),
        (
            {"url": "postgresql+psycopg://app@db/archive", "password": "pw"},
            "handles.archive.password: not a handle key",
        ),
        ({"password_file": "db.secret"}, "handles.archive.url: a handle table needs its url"),
        (
            {"url": "postgresql+psycopg://app@db/archive", "password_file": "empty"},
            "handles.archive.password_file: ",
        ),
    ],
)
def test_a_wrong_handle_table_is_named_by_its_key(
    tmp_path: Path, value: dict[str, str], message: str
) -> None:
    (tmp_path / "db.secret").write_text("pw\n")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError) as error:
        handles(value, {}, base_dir=tmp_path)
    assert error.value.message.startswith(f"archivist.toml: {message}")
    assert "pw" not in error.value.message.replace("password", "")


def test_a_url_without_placeholders_is_kept_as_written() -> None:
    url = "postgresql+psycopg://app:literal$pw@db/archive"
    assert handles(url, {}) == url
