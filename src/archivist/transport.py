"""One connection, both directions: newline-delimited JSON framing over asyncio streams.

`Peer` reads frames, dispatches the peer's requests to a handler, correlates answers to
the requests this side sent (by ``requestId``, else in order), sends notifications, and
fails every pending request at once when the connection drops. Worker and daemon both use it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import msgspec

from archivist import protocol
from archivist.errors import (
    ArchivistError,
    ConnectionClosed,
    FrameLimitLost,
    FrameTooLarge,
    PeerError,
    ProtocolError,
    RequestTimeout,
)
from archivist.protocol import Answer, Incoming, JSONObject, Request

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT: Final = 60.0
CLOSE_TIMEOUT: Final = 2.0
"""Seconds buffered answers get to reach a closing peer before the stream is dropped."""
DEFAULT_WRITE_TIMEOUT: Final = 60.0
"""Seconds a write may wait for the peer to read before the connection is dropped."""
ABANDONED_KEPT: Final = 1024
"""Requests given up on (timed out, or their caller cancelled) remembered per connection,
so that their late answers are recognised, not taken for another request's."""


class Handler(Protocol):
    """Serves one request from the peer; returns the answer, or None for a notification."""

    def __call__(self, peer: Peer, message: Request) -> Awaitable[Answer | None]: ...


class _Pending:
    __slots__ = ("future", "request_id")

    def __init__(self, request_id: str, future: asyncio.Future[Incoming]) -> None:
        self.request_id = request_id
        self.future = future


class Peer:
    """Serves one stream connection in both directions until it closes."""

    _ids = itertools.count(1)

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        accepted: dict[str, type[Request]],
        handler: Handler,
        name: str,
        frame_limit: int = protocol.DEFAULT_FRAME_LIMIT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        idle_timeout: float | None = None,
        concurrent: bool = False,
        request_prefix: str = "req",
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._accepted = accepted
        self._handler = handler
        self.name = name
        self.frame_limit = frame_limit
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self._concurrent = concurrent
        self._prefix = request_prefix
        self._write_lock = asyncio.Lock()
        self._pending: dict[str, _Pending] = {}
        self._order: collections.deque[_Pending] = collections.deque()
        self._abandoned: collections.OrderedDict[str, _Pending] = collections.OrderedDict()
        self._closed = asyncio.Event()
        self._close_callbacks: list[Callable[[Peer], None]] = []
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self.frames_in = 0
        self.lost_to: PeerError | None = None
        """Why the connection ended, where it was more than a plain close (the frame
        limit): what pending requests fail with."""

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def on_close(self, callback: Callable[[Peer], None]) -> None:
        """Call ``callback(peer)`` once when the connection is gone."""
        if self.closed:
            callback(self)
        else:
            self._close_callbacks.append(callback)

    async def run(self) -> None:
        """Read and dispatch frames until EOF, an oversized frame, or `close`."""
        try:
            async with asyncio.TaskGroup() as handlers:
                try:
                    await self._read_loop(handlers)
                finally:
                    # Requests still being served cannot be answered on a closed connection.
                    for task in list(self._handler_tasks):
                        task.cancel()
        except* (ConnectionError, OSError) as group:
            log.debug("%s: connection error: %s", self.name, group.exceptions[0])
        finally:
            self._mark_closed()
            await self._shut()

    async def close(self) -> None:
        """Close the connection; `run` then returns and pending requests fail."""
        await self._shut()
        self._mark_closed()

    async def _shut(self) -> None:
        """Close the stream, flushing what is buffered for a bounded time, then drop it."""
        self._writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._writer.wait_closed()
        except TimeoutError:  # a peer that does not read: drop what it would not take
            self._writer.transport.abort()
        except (ConnectionError, OSError):
            pass

    def _mark_closed(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        error = self.lost_to or ConnectionClosed(f"connection to {self.name} closed")
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self._pending.clear()
        self._order.clear()
        self._abandoned.clear()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            callback(self)

    # --- reading -----------------------------------------------------------------------

    async def _read_loop(self, handlers: asyncio.TaskGroup) -> None:
        while not self.closed:
            line = await self._read_frame()
            if line is None:
                return
            self.frames_in += 1
            try:
                message = protocol.decode_frame(line, self._accepted)
            except ProtocolError as exc:
                log.info("%s: bad frame answered with %s: %s", self.name, exc.code, exc.message)
                await self._try_send(protocol.error_answer(exc, protocol.request_id_of(line)))
                continue
            if isinstance(message, Incoming):
                self._resolve(message)
            elif self._concurrent:
                task = handlers.create_task(self._serve(message))
                self._handler_tasks.add(task)
                task.add_done_callback(self._handler_tasks.discard)
            else:
                await self._serve(message)

    async def _read_frame(self) -> bytes | None:
        """The next line without its newline, or None when the connection is done."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            await self._refuse_oversized()
            return None
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                # A last line without its newline: answer it, then the connection ends.
                await self._answer_bad_tail(exc.partial)
            return None
        except TimeoutError:
            log.info("%s: idle for %.0f s; closing", self.name, self.idle_timeout or 0)
            return None
        except (ConnectionError, OSError):
            return None
        if len(line) > self.frame_limit + 1:
            await self._refuse_oversized()
            return None
        return line[:-1]

    async def _refuse_oversized(self) -> None:
        """A frame over our limit cannot be read past: say so, and let the connection end
        with pending requests failing as lost to the frame limit."""
        log.warning("%s: frame over %d bytes; closing", self.name, self.frame_limit)
        self.lost_to = FrameLimitLost(
            f"connection to {self.name} closed: it sent a frame over the limit of "
            f"{self.frame_limit} bytes"
        )
        await self._try_send(protocol.frame_too_large(self.frame_limit))

    async def _answer_bad_tail(self, partial: bytes) -> None:
        try:
            protocol.parse_object(partial)
        except ProtocolError as exc:
            await self._try_send(protocol.error_answer(exc, protocol.request_id_of(partial)))
            return
        error = ProtocolError("frame not terminated by a newline before the connection ended")
        await self._try_send(protocol.error_answer(error, protocol.request_id_of(partial)))

    async def _serve(self, message: Request) -> None:
        request_id = getattr(message, "request_id", None)
        try:
            answer = await self._handler(self, message)
        except ArchivistError as exc:
            answer = protocol.error_answer(exc, request_id)
        except Exception as exc:
            log.exception("%s: handler failed on %s", self.name, type(message).__name__)
            answer = protocol.error_answer(ArchivistError(f"internal error: {exc}"), request_id)
        if answer is None:
            return
        try:
            await self.send(answer)
        except FrameTooLarge as exc:
            # Only this answer is lost, not the connection: the peer learns why.
            log.warning("%s: answer to %s not sent: %s", self.name, type(message).__name__, exc)
            await self._try_send(protocol.error_answer(exc, request_id))
        except ConnectionClosed:
            pass

    def _resolve(self, answer: Incoming) -> None:
        if answer.request_id is None and answer.body.get("code") == FrameTooLarge.code:
            # The peer could not read a frame of ours and closes: every pending request is
            # lost with the connection, not only the oldest (which this is not an answer to).
            self.lost_to = FrameLimitLost(
                f"connection to {self.name} closed: it refused a frame of ours over its "
                f"limit ({answer.body.get('error')})"
            )
            log.warning("%s: %s", self.name, self.lost_to.message)
            return
        pending: _Pending | None = None
        if answer.request_id is not None:
            pending = self._pending.pop(answer.request_id, None)
            if pending is None and self._drop_abandoned(answer.request_id):
                return
            if pending is not None:
                with contextlib.suppress(ValueError):
                    self._order.remove(pending)
        else:
            # A peer that does not echo requestId answers in order (PROTOCOL.md); the
            # answer to a request given up on is that request's, not the next one's.
            while self._order and pending is None:
                candidate = self._order.popleft()
                if self._pending.pop(candidate.request_id, None) is not None:
                    pending = candidate
                elif self._drop_abandoned(candidate.request_id):
                    return
        if pending is None:
            log.warning("%s: answer to no pending request: %.200s", self.name, answer.body)
            return
        if not pending.future.done():
            pending.future.set_result(answer)

    def _abandon(self, pending: _Pending) -> None:
        """A request given up on before its answer came: remember it (in its place in
        `_order`) so that the answer, when it comes, is dropped quietly."""
        self._abandoned[pending.request_id] = pending
        while len(self._abandoned) > ABANDONED_KEPT:
            _, oldest = self._abandoned.popitem(last=False)
            with contextlib.suppress(ValueError):
                self._order.remove(oldest)

    def _drop_abandoned(self, request_id: str) -> bool:
        """Whether ``request_id`` was given up on; its late answer is then dropped."""
        pending = self._abandoned.pop(request_id, None)
        if pending is None:
            return False
        with contextlib.suppress(ValueError):
            self._order.remove(pending)
        log.debug("%s: late answer to %s, given up on before; dropped", self.name, request_id)
        return True

    # --- writing -----------------------------------------------------------------------

    async def send(self, message: msgspec.Struct | JSONObject) -> None:
        """Write one frame; raises `ConnectionClosed` if the connection is gone, and
        `FrameTooLarge` (the connection stays open) for a frame over the frame limit, which
        the peer, if its limit is ours, could not read."""
        data = protocol.encode(message)
        if len(data) > self.frame_limit + 1:
            raise FrameTooLarge(
                f"a frame of {len(data) - 1} bytes is over the limit of {self.frame_limit} "
                f"bytes of the connection to {self.name}"
            )
        if self.closed:
            raise ConnectionClosed(f"connection to {self.name} closed")
        try:
            async with self._write_lock:
                self._writer.write(data)
                async with asyncio.timeout(self.write_timeout):
                    await self._writer.drain()
        except TimeoutError:  # before OSError, of which it is a subclass
            # A peer that stops reading must not hold whoever writes to it (a runner, say).
            log.warning("%s: not reading for %.0f s; closing", self.name, self.write_timeout)
            self._writer.transport.abort()
            self._mark_closed()
            raise ConnectionClosed(f"{self.name} stopped reading; connection closed") from None
        except (ConnectionError, OSError) as exc:
            self._mark_closed()
            raise ConnectionClosed(f"connection to {self.name} lost: {exc}") from None

    async def _try_send(self, message: msgspec.Struct | JSONObject) -> None:
        with contextlib.suppress(ConnectionClosed, FrameTooLarge):
            await self.send(message)

    async def notify(self, message: msgspec.Struct) -> None:
        """Send a one-way notification (``progress``, ``complete``)."""
        await self.send(message)

    def next_request_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    async def request(self, message: msgspec.Struct, *, timeout: float | None = None) -> JSONObject:
        """Send a request and wait for its answer's body.

        ``message`` must have a ``request_id`` field; one is assigned if it is None.
        An error answer raises `RemoteError`; no answer in time raises `RequestTimeout`;
        a dropped connection raises `ConnectionClosed`.
        """
        request_id = getattr(message, "request_id", None)
        if request_id is None:
            request_id = self.next_request_id()
            message = msgspec.structs.replace(message, request_id=request_id)
        future: asyncio.Future[Incoming] = asyncio.get_running_loop().create_future()
        pending = _Pending(request_id, future)
        self._pending[request_id] = pending
        self._order.append(pending)
        try:
            await self.send(message)
            async with asyncio.timeout(timeout if timeout is not None else self.request_timeout):
                answer = await future
        except TimeoutError:
            raise RequestTimeout(
                f"{self.name} did not answer {type(message).__name__.lower()} {request_id} in time"
            ) from None
        finally:
            if self._pending.pop(request_id, None) is not None and not self.closed:
                # Timed out, or the caller was cancelled (a listing made ahead and no longer
                # wanted): the answer may still come.
                self._abandon(pending)
        return protocol.check_answer(answer)


async def open_peer(
    path: str,
    *,
    accepted: dict[str, type[Request]],
    handler: Handler,
    name: str,
    frame_limit: int = protocol.DEFAULT_FRAME_LIMIT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    concurrent: bool = False,
    request_prefix: str = "req",
) -> Peer:
    """Connect to a Unix socket and wrap it in a `Peer` (call `run` to serve it)."""
    reader, writer = await asyncio.open_unix_connection(path, limit=frame_limit + 1)
    return Peer(
        reader,
        writer,
        accepted=accepted,
        handler=handler,
        name=name,
        frame_limit=frame_limit,
        request_timeout=request_timeout,
        concurrent=concurrent,
        request_prefix=request_prefix,
    )
