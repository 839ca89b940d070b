"""Errors on the wire: every class becomes an answer and comes back as itself."""

from __future__ import annotations

import pytest

from archivist import errors, protocol
from archivist.errors import (
    ERRORS,
    ROWS_PATH_CODES,
    TRANSIENT_CODES,
    ArchivistError,
    DatabaseError,
    RemoteError,
)
from archivist.protocol import DAEMON_COMMANDS, Incoming


def _every_error_class() -> list[type[ArchivistError]]:
    found = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, ArchivistError)
    ]
    return [cls for cls in found if cls is not RemoteError]


def _answered(exc: ArchivistError) -> RemoteError:
    """``exc`` sent as an error answer and read back by the side that asked."""
    line = protocol.encode(protocol.error_answer(exc, "req-1")).rstrip(b"\n")
    incoming = protocol.decode_frame(line, DAEMON_COMMANDS)
    assert isinstance(incoming, Incoming)
    with pytest.raises(RemoteError) as caught:
        protocol.check_answer(incoming)
    return caught.value


@pytest.mark.parametrize("cls", _every_error_class(), ids=lambda cls: cls.__name__)
def test_every_error_class_comes_back_from_the_wire_as_itself(
    cls: type[ArchivistError],
) -> None:
    rebuilt = _answered(cls("it went wrong"))
    assert isinstance(rebuilt, cls)
    assert isinstance(rebuilt, RemoteError)
    assert rebuilt.code == cls.code
    assert rebuilt.message == "it went wrong"
    assert ERRORS[cls.code] is cls
    # Only the class itself and its bases (and RemoteError's): never a sibling's code.
    for other in ERRORS.values():
        if not issubclass(cls, other) and not issubclass(RemoteError, other):
            assert not isinstance(rebuilt, other), other


def test_a_database_error_answer_is_caught_as_a_database_error() -> None:
    with pytest.raises(DatabaseError) as caught:
        protocol.check_answer(
            Incoming(
                request_id=None,
                body={"status": "error", "error": "no such table", "code": "db_error"},
            )
        )
    assert caught.value.code == "db_error"
    assert caught.value.transient


def test_an_unknown_code_stays_a_plain_remote_error_with_its_code() -> None:
    rebuilt = RemoteError.rebuild("something new", "from_the_future")
    assert type(rebuilt) is RemoteError
    assert rebuilt.code == "from_the_future"
    assert not rebuilt.transient


def test_every_wire_code_names_one_class() -> None:
    classes = _every_error_class()
    assert len({cls.code for cls in classes}) == len(classes)
    assert set(ERRORS.values()) == set(classes)


def test_retried_and_rows_path_codes_come_from_the_classes() -> None:
    assert {"db_error", "timeout"} == TRANSIENT_CODES
    assert {"unsupported", "unknown_command", "forbidden"} == ROWS_PATH_CODES
