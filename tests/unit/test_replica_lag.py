"""Replica lag: the judgement of a PostgreSQL standby's and a MariaDB replica's own
figures, the hold it puts on a source's batches, and the handle keys that ask for it."""

from __future__ import annotations

import pytest

from archivist.config import ReplicaCheck, config_from_dict, load_config
from archivist.data.replicas import Lag, lag_hold, mariadb_lag, standby_lag
from archivist.errors import ConfigError


def test_a_replica_within_the_limit_holds_nothing() -> None:
    assert lag_hold([Lag("replica1", seconds=4.9)], max_lag=5.0) is None
    assert lag_hold([Lag("replica1", seconds=5.0)], max_lag=5.0) is None


def test_a_replica_over_the_limit_holds_with_its_lag_in_the_reason() -> None:
    assert lag_hold([Lag("replica1", seconds=12.3)], max_lag=5.0) == "replica1 lags 12 s"
    assert lag_hold([Lag("replica1", seconds=1.44)], max_lag=1.0) == "replica1 lags 1.4 s"


def test_every_lagging_replica_is_named_and_the_others_are_not() -> None:
    lags = [
        Lag("replica1", seconds=30.0),
        Lag("replica2", seconds=0.0),
        Lag("replica3", problem="cannot be reached: connection refused"),
    ]
    assert lag_hold(lags, max_lag=5.0) == (
        "replica1 lags 30 s; replica3 cannot be reached: connection refused"
    )


def test_a_lag_of_unknown_length_counts_as_lagging() -> None:
    assert lag_hold([Lag("replica1")], max_lag=5.0) == "replica1 lags (by an unknown time)"


def test_a_standby_with_nothing_to_replay_is_not_lagging_however_idle_the_primary() -> None:
    # The primary wrote nothing for an hour: the last replayed transaction is an hour old,
    # but everything received is replayed.
    lag = standby_lag("standby", in_recovery=True, unreplayed_bytes=0, since_replay=3600.0)
    assert lag == Lag("standby", seconds=0.0)
    # Received behind replayed (streaming restarted at a segment's start): caught up too.
    lag = standby_lag("standby", in_recovery=True, unreplayed_bytes=-8192, since_replay=3600.0)
    assert lag.seconds == 0.0


def test_wal_replayed_within_a_moment_is_no_lag() -> None:
    # An idle primary logs WAL that is no transaction every 15 s: received and not yet
    # replayed at the first look, the lag would read as the primary's idle time.
    lag = standby_lag(
        "standby", in_recovery=True, unreplayed_bytes=104, since_replay=900.0, replayed_soon=True
    )
    assert lag == Lag("standby", seconds=0.0)


def test_a_standby_with_wal_to_replay_lags_by_the_age_of_its_last_replayed_transaction() -> None:
    lag = standby_lag("standby", in_recovery=True, unreplayed_bytes=16384, since_replay=12.5)
    assert lag == Lag("standby", seconds=12.5)
    assert lag_hold([lag], 5.0) == "standby lags 12 s"


def test_a_paused_standby_says_so_when_it_lags() -> None:
    lag = standby_lag(
        "standby", in_recovery=True, unreplayed_bytes=16384, since_replay=7.0, paused=True
    )
    assert lag_hold([lag], 5.0) == "standby lags 7.0 s (its replay is paused)"
    assert lag_hold([lag], 10.0) is None


def test_a_standby_that_does_not_stream_lags_by_the_age_of_its_last_transaction() -> None:
    lag = standby_lag("standby", in_recovery=True, unreplayed_bytes=None, since_replay=8.0)
    assert lag.seconds == 8.0


def test_a_standby_with_wal_and_nothing_replayed_yet_counts_as_lagging() -> None:
    lag = standby_lag("standby", in_recovery=True, unreplayed_bytes=100, since_replay=None)
    assert lag.problem is not None
    assert lag_hold([lag], 5.0) == (
        "standby has WAL to replay and has replayed nothing since it started"
    )


def test_a_postgresql_replica_that_is_no_standby_counts_as_lagging() -> None:
    lag = standby_lag("replica1", in_recovery=False, unreplayed_bytes=None, since_replay=None)
    assert lag_hold([lag], 5.0) == "replica1 is not a standby (pg_is_in_recovery() is false)"


def test_mariadb_seconds_behind_master_is_the_lag() -> None:
    status = {"Seconds_Behind_Master": 12, "Slave_SQL_Running": "Yes", "Slave_IO_Running": "Yes"}
    assert mariadb_lag("replica1", status) == Lag("replica1", seconds=12.0)
    assert lag_hold([mariadb_lag("replica1", status)], 5.0) == "replica1 lags 12 s"


@pytest.mark.parametrize(
    ("sql", "io", "said"),
    [
        ("No", "Yes", "is not replicating (its SQL thread is stopped)"),
        ("Yes", "No", "is not replicating (its IO thread is stopped)"),
        ("No", "No", "is not replicating (its SQL and IO threads are stopped)"),
    ],
)
def test_mariadb_null_seconds_behind_master_counts_as_lagging(sql: str, io: str, said: str) -> None:
    status = {"Seconds_Behind_Master": None, "Slave_SQL_Running": sql, "Slave_IO_Running": io}
    assert lag_hold([mariadb_lag("replica1", status)], 5.0) == f"replica1 {said}"


def test_a_mariadb_server_that_is_no_replica_counts_as_lagging() -> None:
    assert lag_hold([mariadb_lag("replica1", None)], 5.0) == (
        "replica1 is not a replica (SHOW REPLICA STATUS is empty)"
    )


HANDLES = {"archive": "sqlite:///archive.db", "replica1": "postgresql://app@standby/app"}


def handles_with(primary: object) -> dict[str, object]:
    return {"handles": {"primary": primary, **HANDLES}}


def test_a_source_handle_table_names_its_replicas_and_their_limit() -> None:
    config = config_from_dict(
        handles_with(
            {"url": "postgresql://app@db/app", "replicas": ["replica1"], "max_replica_lag": "2m"}
        )
    )
    assert config.handles["primary"] == "postgresql://app@db/app"
    assert config.replica_checks == {"primary": ReplicaCheck(replicas=("replica1",), max_lag=120)}


def test_max_replica_lag_defaults_to_five_seconds() -> None:
    config = config_from_dict(handles_with({"url": "sqlite:///p.db", "replicas": ["replica1"]}))
    assert config.replica_checks["primary"].max_lag == 5.0


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"url": "sqlite:///p.db", "replicas": ["replca1"]},
            "handles.primary.replicas: unknown handle 'replca1'; did you mean replica1?",
        ),
        (
            {"url": "sqlite:///p.db", "replicas": ["primary"]},
            "handles.primary.replicas: a handle is not its own replica",
        ),
        (
            {"url": "sqlite:///p.db", "replicas": "replica1"},
            'handles.primary.replicas: expected a list of handle names, e.g. ["replica1"]',
        ),
        (
            {"url": "sqlite:///p.db", "replicas": []},
            "handles.primary.replicas: name at least one replica handle",
        ),
        (
            {"url": "sqlite:///p.db", "max_replica_lag": "5s"},
            "handles.primary.max_replica_lag: set replicas too",
        ),
        (
            {"url": "sqlite:///p.db", "replicas": ["replica1"], "max_replica_lag": "soon"},
            "handles.primary.max_replica_lag: not a duration: 'soon'",
        ),
        (
            {"url": "sqlite:///p.db", "replicas": ["replica1"], "max_replica_lag": "P1M"},
            "handles.primary.max_replica_lag: a lag in seconds or minutes",
        ),
    ],
)
def test_a_bad_replica_key_is_an_error_naming_the_handle(table: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(handles_with(table), source="archivist.toml")
    assert caught.value.message.startswith(f"archivist.toml: {message}")


def test_a_url_from_the_environment_keeps_the_handles_replicas(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    path = tmp_path / "archivist.toml"
    path.write_text(
        "[handles]\n"
        'archive = "sqlite:///archive.db"\n'
        'replica1 = "postgresql://app@standby/app"\n'
        "[handles.primary]\n"
        'url = "postgresql://app@old/app"\n'
        'replicas = ["replica1"]\n'
        'max_replica_lag = "3s"\n'
    )
    config = load_config(path, environ={"ARCHIVIST_HANDLES_PRIMARY": "postgresql://app@new/app"})
    assert config.handles["primary"] == "postgresql://app@new/app"
    assert config.replica_checks["primary"] == ReplicaCheck(replicas=("replica1",), max_lag=3.0)


def test_the_daemon_logs_a_hold_once_while_only_its_figures_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import logging

    from archivist.data.replicas import ReplicaWatch

    class Readings(ReplicaWatch):
        """Replica readings from a list instead of a database."""

        def __init__(self, *seconds: float) -> None:
            super().__init__({"primary": (("replica1",), 1.0)}, {})
            self.seconds = list(seconds)

        async def lag(self, name: str) -> Lag:
            return Lag(name, seconds=self.seconds.pop(0))

    watch = Readings(3.2, 3.4, 4.9, 0.0, 0.0)

    async def holds() -> list[str | None]:
        return [await watch.hold("primary") for _ in range(5)]

    with caplog.at_level(logging.INFO, logger="archivist.data.replicas"):
        reasons = asyncio.run(holds())
    assert reasons == [
        "replica1 lags 3.2 s",
        "replica1 lags 3.4 s",
        "replica1 lags 4.9 s",
        None,
        None,
    ]
    assert [record.getMessage() for record in caplog.records] == [
        "holding batches on 'primary': replica1 lags 3.2 s",
        "replicas of 'primary' are within 1.0 s again",
    ]
    assert asyncio.run(Readings().hold("replica1")) is None  # a handle without replicas


def test_replicas_are_configured_in_python_with_the_public_api() -> None:
    import archivist

    config = archivist.make_config(
        {"primary": "sqlite:///p.db", "replica1": "postgresql://app@standby/app"},
        replica_checks={"primary": archivist.ReplicaCheck(replicas=("replica1",), max_lag=2)},
    )
    assert config.replica_checks["primary"].max_lag == 2
    with pytest.raises(ConfigError, match=r"handles\.primary\.replicas: unknown handle 'nope'"):
        archivist.make_config(
            {"primary": "sqlite:///p.db"},
            replica_checks={"primary": archivist.ReplicaCheck(replicas=("nope",))},
        )
