"""A handle's password taken from the environment reaches the database and is never shown:
not by `--dry-run`, the one-shot command's output and logs, `archivist run`'s log and
`status`, nor a connection error."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from archivist.config import load_config
from archivist.data import DataDaemon
from datasupport import run
from e2esupport import count, make_chat_table, processes, wait_for, write_config

# Characters that need percent-encoding in a URL, so that a password's way into the URL
# (and the hiding of it) is tested with more than letters.
SECRET = f"Pw-{secrets.token_hex(8)}@:/%"
VARIABLE = "ARCHIVIST_TEST_ARCHIVE_PASSWORD"


def archivist(*args: str, secret: str = SECRET) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archivist", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, VARIABLE: secret},
    )


def shown(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def test_a_postgresql_password_from_the_environment_is_used_and_never_printed(
    tmp_path: Path, pg_url: str
) -> None:
    server = make_url(pg_url)
    role = f"archivist_secret_{secrets.token_hex(4)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        quoted = SECRET.replace("'", "''").replace("%", "%%")
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{quoted}'")
        connection.exec_driver_sql(f'ALTER DATABASE "{server.database}" OWNER TO {role}')
    try:
        primary = f"sqlite:///{tmp_path / 'primary.db'}"
        make_chat_table(primary, 300)
        archive = (
            f"postgresql+psycopg://{role}:${{{VARIABLE}}}@{server.host}:{server.port}"
            f"/{server.database}"
        )
        config = write_config(
            tmp_path / "archivist.toml",
            {"primary": primary, "archive": archive},
            [
                {
                    "collection": "chat_messages",
                    "order_by": "created_at",
                    "max_rows": 100,
                    "rows_per_archive": 20,
                    "batch_size": 50,
                }
            ],
            socket=tmp_path / "worker.sock",
        )

        # The password reaches the engine's URL, which shows it hidden.
        os.environ[VARIABLE] = SECRET
        try:
            data = DataDaemon(load_config(config))
        finally:
            del os.environ[VARIABLE]
        try:
            handle = data.handles["archive"]
            assert (handle.url.username, handle.url.password) == (role, SECRET)
            assert SECRET not in repr(handle)
        finally:
            run(data.close())

        dry = archivist("archive", "chat_messages", "--config", str(config), "--dry-run", "-vv")
        assert dry.returncode == 0, shown(dry)
        assert "would archive 220 rows" in dry.stdout
        assert SECRET not in shown(dry)

        with processes() as started:
            daemon = started.start("run", "--config", str(config), "-vv", env={VARIABLE: SECRET})
            wait_for(lambda: count(primary) == 80, 60, "the policy's rows to move", daemon)
            status = archivist("status", "--config", str(config))
            status_json = archivist("status", "--config", str(config), "--json")
            daemon.terminate()
            output, _ = daemon.communicate(timeout=60)
        assert "chat_messages" in status.stdout and "chat_messages" in status_json.stdout
        assert SECRET not in shown(status) + shown(status_json)
        assert "archive" in output and SECRET not in output

        done = archivist(
            "archive", "chat_messages", "--config", str(config), "--max-rows", "30", "-vv"
        )
        assert done.returncode == 0, shown(done)
        assert SECRET not in shown(done)
        assert count(primary) == 50
        with admin.connect() as connection:
            owner = connection.exec_driver_sql(
                "SELECT tableowner FROM pg_tables WHERE tablename = 'chat_messages'"
            ).scalar_one()
            archived = connection.exec_driver_sql("SELECT count(*) FROM chat_messages")
            assert archived.scalar_one() == 250
        # The archive table was made by the role whose password came from the environment.
        assert owner == role
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{server.database}" OWNER TO postgres')
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def test_a_mariadb_password_from_the_environment_is_checked_and_never_printed(
    tmp_path: Path, mysql_url: str
) -> None:
    """MariaDB checks passwords here (PostgreSQL's test server trusts): the right one from
    the environment moves rows, a wrong one is refused with an error that does not show it."""
    server = make_url(mysql_url)
    user = f"archivist_secret_{secrets.token_hex(4)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(
            sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY :secret"), {"secret": SECRET}
        )
        connection.exec_driver_sql(f"GRANT ALL ON `{server.database}`.* TO '{user}'@'%%'")
    try:
        primary = f"sqlite:///{tmp_path / 'primary.db'}"
        make_chat_table(primary, 50)
        archive = (
            f"mysql+pymysql://{user}:${{{VARIABLE}}}@{server.host}:{server.port}/{server.database}"
        )
        policy = {
            "collection": "chat_messages",
            "order_by": "created_at",
            "max_rows": 10,
            "rows_per_archive": 5,
        }
        config = write_config(
            tmp_path / "archivist.toml", {"primary": primary, "archive": archive}, [policy]
        )
        wrong = f"not-{SECRET}"
        for args in (("--dry-run",), ()):
            refused = archivist(
                "archive", "chat_messages", "--config", str(config), "-vv", *args, secret=wrong
            )
            assert refused.returncode == 1
            assert "Access denied" in refused.stderr
            assert wrong not in shown(refused) and SECRET not in shown(refused)
        assert count(primary) == 50

        done = archivist("archive", "chat_messages", "--config", str(config), "-vv")
        assert done.returncode == 0, shown(done)
        assert SECRET not in shown(done)
        assert count(primary) == 5
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP USER '{user}'@'%%'")
        admin.dispose()
