"""Rows into MariaDB/MySQL with ``LOAD DATA LOCAL INFILE`` from a buffer in memory, safely:
every PyMySQL connection archivist opens answers the server's request for a local file
only with the buffer offered for the statement that names it (a random name, used once);
a request for any other name gets nothing, no file is ever opened, and the statement fails.

PyMySQL's own ``local_infile`` sends whatever file the server names, for any statement:
a server (or anyone between) could read the daemon's files. Here the request is answered
by `GuardedResult`, which knows only the offered buffer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import secrets
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from pymysql import err
from pymysql.connections import Connection as PyMySQLConnection
from pymysql.connections import MySQLResult
from pymysql.constants import CR
from pymysql.converters import escape_timedelta
from pymysql.protocol import LoadLocalPacketWrapper

if TYPE_CHECKING:
    _Base = PyMySQLConnection[Any]
else:
    _Base = PyMySQLConnection

log = logging.getLogger(__name__)

NAME: Final = "archivist-stream-name"
"""Where a statement's template names its buffer."""

CHUNK: Final = 64 * 1024
"""Bytes per packet of a buffer sent: well under any server's ``max_allowed_packet``."""

REFUSED_CODES: Final = frozenset({1148, 4166})
"""The server (``local_infile = OFF``) or the session does not allow ``LOCAL``:
ER_NOT_ALLOWED_COMMAND, MariaDB's ER_LOAD_INFILE_CAPABILITY_DISABLED."""


class RefusedFile(err.OperationalError):
    """The server asked for a local file archivist had not offered: nothing was sent."""


class GuardedConnection(_Base):
    """A PyMySQL connection that may send the server one buffer a statement, by name."""

    _offered: tuple[bytes, bytes] | None = None
    last_warnings: int = 0
    """The warnings of the last statement's answer (``LOAD DATA`` reports problems so)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The capability is asked for at the handshake; `GuardedResult` decides what is sent.
        kwargs["local_infile"] = True
        super().__init__(*args, **kwargs)

    @contextlib.contextmanager
    def offering(self, data: bytes) -> Iterator[str]:
        """A fresh name under which the server may ask for ``data``, once, until the block
        ends; the statement naming it runs inside the block."""
        name = f"archivist-stream-{secrets.token_hex(16)}"
        self._offered = (name.encode("ascii"), data)
        try:
            yield name
        finally:
            self._offered = None

    def take_offer(self, name: bytes) -> bytes | None:
        """The buffer offered under ``name``, which is then withdrawn; None for any other."""
        offered, self._offered = self._offered, None
        if offered is None or not secrets.compare_digest(offered[0], name):
            return None
        return offered[1]

    # PyMySQL's own body, with `GuardedResult` in place of `MySQLResult`.
    def _read_query_result(self, unbuffered: bool = False) -> int:
        self._result = None
        result = GuardedResult(self)
        if unbuffered:
            result.init_unbuffered_query()
        else:
            result.read()
        self._result = result
        if result.server_status is not None:
            self.server_status = result.server_status
        self.last_warnings = result.warning_count
        return result.affected_rows  # type: ignore[return-value]


class GuardedResult(MySQLResult):
    """A statement's answer; a request for a local file gets the offered buffer or nothing."""

    def _read_load_local_packet(self, first_packet: Any) -> None:
        conn = self.connection
        assert isinstance(conn, GuardedConnection)
        name: bytes = LoadLocalPacketWrapper(first_packet).filename
        data = conn.take_offer(name)
        try:
            if data is not None:
                view = memoryview(data)
                for start in range(0, len(view), CHUNK):
                    conn.write_packet(view[start : start + CHUNK])
        finally:
            conn.write_packet(b"")  # the end of the file (an empty one when refused)
            ok_packet = conn._read_packet()  # type: ignore[no-untyped-call]
        if not ok_packet.is_ok_packet():
            raise err.OperationalError(CR.CR_COMMANDS_OUT_OF_SYNC, "Commands Out of Sync")
        self._read_ok_packet(ok_packet)  # type: ignore[attr-defined]
        if data is None:
            shown = name.decode("utf-8", "replace")[:200]
            raise RefusedFile(
                CR.CR_UNKNOWN_ERROR,
                f"the server asked for the local file {shown!r}, which archivist did not "
                "offer: nothing was sent",
            )


# --- the rows' text -------------------------------------------------------------------------

Field = Callable[[Any], str]


class Unwritable(Exception):
    """A value this module has no text for: the batch goes by multi-row inserts instead."""


def _text(value: str) -> str:
    # LOAD DATA's default escapes (ESCAPED BY '\'): the separators and the escape itself.
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _float(value: float) -> str:
    if math.isinf(value) or math.isnan(value):
        raise Unwritable(f"{value!r}")
    return repr(value)


def _datetime(value: dt.datetime) -> str:
    # As PyMySQL writes it: the wall time, microseconds only when not zero.
    if value.tzinfo is None:
        return value.isoformat(" ")
    return value.replace(tzinfo=None).isoformat(" ")


def _time(value: dt.time) -> str:
    return value.replace(tzinfo=None).isoformat()


class _Hexed(str):
    """A binary column's value as hex, for ``UNHEX``."""

    __slots__ = ()

    def __new__(cls, value: object) -> _Hexed:
        if isinstance(value, str):
            return super().__new__(cls, value.encode("utf-8").hex())
        if isinstance(value, bytes | bytearray | memoryview):
            return super().__new__(cls, bytes(value).hex())
        raise Unwritable(type(value).__name__)


FIELDS: Final[dict[type, Field]] = {
    type(None): lambda value: "\\N",
    str: _text,
    int: int.__repr__,
    bool: lambda value: "1" if value else "0",
    float: _float,
    Decimal: lambda value: format(value, "f"),
    dt.datetime: _datetime,
    dt.date: dt.date.isoformat,
    dt.time: _time,
    dt.timedelta: lambda value: escape_timedelta(value)[1:-1],
    _Hexed: str.__str__,
}
"""A value's text in the file, by its Python type, as PyMySQL would write it in an INSERT
(without the quotes)."""


class LoadData:
    """``LOAD DATA LOCAL INFILE`` of rows into one table: the statement (binary columns
    through ``UNHEX``, so that any bytes travel as text) and the buffer of a batch."""

    def __init__(
        self,
        target: str,
        columns: Sequence[str],
        binary: Sequence[bool],
        quote: Callable[[str], str],
    ) -> None:
        names, sets = [], []
        for i, (name, is_binary) in enumerate(zip(columns, binary, strict=True)):
            if is_binary:
                names.append(f"@archivist_{i}")
                sets.append(f"{quote(name)} = UNHEX(@archivist_{i})")
            else:
                names.append(quote(name))
        # Every clause spelled out, in hex (a server's NO_BACKSLASH_ESCAPES would read '\\'
        # otherwise), so that no setting changes how the buffer is read.
        self.template = (
            f"LOAD DATA LOCAL INFILE '{NAME}' INTO TABLE "
            f"{target} CHARACTER SET utf8mb4 FIELDS TERMINATED BY X'09' ENCLOSED BY ''"
            f" ESCAPED BY X'5C' LINES STARTING BY '' TERMINATED BY X'0A' ({', '.join(names)})"
            + (f" SET {', '.join(sets)}" if sets else "")
        )
        self.binary = tuple(i for i, is_binary in enumerate(binary) if is_binary)

    def buffer(self, rows: Sequence[Sequence[object]]) -> bytes:
        """The rows as the statement reads them: fields by tabs, rows by newlines, NULL as
        ``\\N``; `Unwritable` for a value of a type without a text here."""
        fields, binary = FIELDS, self.binary
        lines: list[str] = []
        try:
            for given in rows:
                row = given
                if binary:
                    row = [
                        _Hexed(value) if i in binary and value is not None else value
                        for i, value in enumerate(given)
                    ]
                lines.append("\t".join([fields[type(value)](value) for value in row]) + "\n")
        except KeyError as exc:
            raise Unwritable(str(exc)) from None
        return "".join(lines).encode("utf-8")

    def load(self, connection: GuardedConnection, data: bytes) -> tuple[int, int]:
        """Run the statement over ``data``: (rows the server took, its warnings)."""
        with connection.offering(data) as name, connection.cursor() as cursor:
            taken = cursor.execute(self.template.replace(NAME, name, 1))
        return taken, connection.last_warnings
