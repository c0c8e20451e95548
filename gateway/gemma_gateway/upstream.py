"""The gateway's HTTP/1.1 client for its backends: a keep-alive pool, framing by httptools.

Why not httpx: one request through httpx's AsyncClient costs ~0.7 ms of CPU here,
which alone breaks the gateway's budget (< 0.5 ms added). Why not by hand: a
hand-written response parser is where one client's answer ends up in another's
(an interim ``100 Continue`` taken for the answer). So responses are framed by
httptools (llhttp, the parser Node.js uses): strict about Content-Length and
chunk sizes, and an interim 1xx answer is skipped. A connection goes back to the
pool only when its response was read to the end with nothing after it; only GET
and HEAD are re-sent when a pooled connection turns out to be closed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

CHUNK = 64 * 1024
# Body bytes held for a slow reader before the backend is paused (TCP backpressure).
HIGH_WATER = 4 * CHUNK
IDEMPOTENT = frozenset({"GET", "HEAD"})
# A pooled connection idle longer than this is not reused for a non-idempotent request
# (the server may be about to close it, and such a request cannot be re-sent).
FRESH_SECONDS = 20.0


class UpstreamError(Exception):
    """The backend could not be reached or broke the HTTP exchange (a 502)."""


class UpstreamUnreachable(UpstreamError):
    """No connection to the backend could be made: it never saw the request (a 502)."""


class UpstreamStale(UpstreamError):
    """A kept-alive connection was closed by the backend before it answered (its idle
    timeout, most likely): the backend is well (a 502)."""


class UpstreamTimeout(UpstreamError):
    """The backend did not answer, or stopped sending, in time (a 504)."""


class _Exchange:
    """httptools' callbacks for one response on one connection."""

    __slots__ = (
        "_interim",
        "arrived",
        "body",
        "buffered",
        "complete",
        "extra",
        "headers",
        "headers_done",
        "keep_alive",
        "parser",
        "status",
    )

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.headers_done = False
        self.complete = False
        self.extra = False            # bytes after the response: the connection is not clean
        self.keep_alive = False       # read with the headers (llhttp forgets it after the end)
        self._interim = False
        self.arrived = asyncio.Event()
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:   # an interim answer (100 Continue): the real one follows
            self._interim = True
            self.headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self.arrived.set()

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.body.append(bytes(body))
            self.buffered += len(body)
            self.arrived.set()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self.complete:
            self.complete = True
            self.arrived.set()


class _Connection(asyncio.Protocol):
    """One connection to the backend; data goes straight into the current exchange."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.error: Exception | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self.writable = asyncio.Event()
        self.writable.set()
        self.paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for: never reuse this connection
            self.close()
            return
        try:
            exchange.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = UpstreamError(f"the backend broke HTTP framing: {exc}")
            self.close()
        if exchange.buffered > HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        exchange.arrived.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def resume(self) -> None:
        """The reader took what was buffered: let the backend send again."""
        if self.exchange is not None:
            self.exchange.buffered = 0
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable.set()
        if self.exchange is not None:
            self.exchange.arrived.set()

    def eof_received(self) -> bool:
        self.closed = True
        if self.exchange is not None:
            self.exchange.arrived.set()
        return False

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and \
            not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """Status and headers at once; the body through `chunks()` (read it, or `close()`)."""

    def __init__(self, pool: Upstream, connection: _Connection, exchange: _Exchange,
                 method: str, idle_timeout: float | None) -> None:
        self.status = exchange.status
        self.headers = exchange.headers
        self._pool = pool
        self._connection: _Connection | None = connection
        self._exchange = exchange
        self._idle_timeout = idle_timeout
        self._bodiless = method == "HEAD" or self.status in (204, 304)
        # Without Content-Length or chunked framing, the body ends when the connection does.
        self._close_delimited = not self._bodiless and self.header("content-length") is None \
            and "chunked" not in (self.header("transfer-encoding") or "").lower()
        if self._bodiless:
            # httptools cannot be told a HEAD answer has no body: never reuse the connection.
            exchange.complete = True
            self._finish(reusable=method != "HEAD")

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def chunks(self) -> AsyncIterator[bytes]:
        connection, exchange = self._connection, self._exchange
        if connection is None:
            return
        try:
            while True:
                while exchange.body:
                    yield exchange.body.popleft()
                if exchange.complete:
                    return
                if connection.error is not None:
                    raise connection.error
                if connection.closed:
                    if self._close_delimited:
                        return
                    raise UpstreamError("the backend closed the connection before the end "
                                        "of the answer")
                exchange.arrived.clear()
                connection.resume()
                try:
                    async with asyncio.timeout(self._idle_timeout):
                        await exchange.arrived.wait()
                except TimeoutError:
                    raise UpstreamTimeout(f"the backend sent nothing for "
                                          f"{self._idle_timeout:g} s") from None
        finally:
            self._finish(reusable=exchange.complete and not self._close_delimited)

    def _finish(self, reusable: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        clean = reusable and not self._exchange.extra and connection.error is None and \
            self._exchange.keep_alive
        connection.exchange = None
        if clean:
            connection.resume()
            self._pool._give_back(connection)
        else:
            connection.close()

    async def read(self, limit: int = 64 * 1024 * 1024) -> bytes:
        parts, size = [], 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                self.close()
                raise UpstreamError(f"the backend's answer is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Abandon the body: the connection is closed unless it was read to its end."""
        if self._connection is not None:
            self._finish(reusable=self._exchange.complete and not self._close_delimited)


class Upstream:
    """One backend (``http://host:port``) and its idle keep-alive connections."""

    def __init__(self, url: str, max_idle: int = 64, connect_timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"backend URL {url!r}: only http://host[:port] is supported "
                             "(backends sit on the stack's internal network)")
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.host_header = parts.netloc
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _transport, connection = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port), self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise UpstreamUnreachable(f"cannot connect: {exc or type(exc).__name__}") from None
        return connection

    def _give_back(self, connection: _Connection) -> None:
        if len(self._idle) < self.max_idle and connection.usable():
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()

    def _pooled(self, method: str) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            fresh = time.monotonic() - connection.idle_since < FRESH_SECONDS
            if connection.usable() and (fresh or method in IDEMPOTENT):
                return connection
            connection.close()
        return None

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def request(self, method: str, target: str,
                      headers: list[tuple[str, str]] | None = None,
                      body: bytes | AsyncIterator[bytes] = b"",
                      timeout: float | None = None,
                      idle_timeout: float | None = None) -> Response:
        """Send a request; return once the status line and headers are in.

        `timeout` bounds the wait for the headers, `idle_timeout` each wait for more
        of the body. A streamed body (an async iterator) goes out chunked, never held
        in memory. Only GET and HEAD are re-sent when a pooled connection was closed.
        """
        streamed = not isinstance(body, bytes | bytearray | memoryview)
        head = [f"{method} {target} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        for name, value in headers or ():
            head.append(f"{name}: {value}\r\n")
        if streamed:
            head.append("Transfer-Encoding: chunked\r\n\r\n")
        elif body or method in ("POST", "PUT", "PATCH", "DELETE"):
            head.append(f"Content-Length: {len(body)}\r\n\r\n")
        else:
            head.append("\r\n")
        encoded = "".join(head).encode("latin-1")
        connection = self._pooled(method)
        if connection is not None:
            try:
                return await self._exchange(connection, method, encoded, body, streamed,
                                            timeout, idle_timeout)
            except _Stale:
                if method not in IDEMPOTENT:
                    raise UpstreamStale("the backend closed a kept-alive connection before "
                                        "answering (its idle timeout?)") from None
        connection = await self._connect()
        try:
            return await self._exchange(connection, method, encoded, body, streamed, timeout,
                                        idle_timeout)
        except _Stale:
            raise UpstreamError("the backend closed the connection without answering") \
                from None

    async def _exchange(self, connection: _Connection, method: str, head: bytes, body,
                        streamed: bool, timeout: float | None,
                        idle_timeout: float | None) -> Response:
        exchange = _Exchange()
        connection.exchange = exchange
        transport = connection.transport
        try:
            if streamed:
                transport.write(head)
                async for piece in body:
                    if connection.closed:
                        break
                    if piece:
                        transport.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                        await connection.writable.wait()
                transport.write(b"0\r\n\r\n")
            else:
                transport.write(head + bytes(body) if body else head)
            async with asyncio.timeout(timeout):
                await self._headers(connection, exchange)
        except TimeoutError:
            connection.close()
            raise UpstreamTimeout(f"the backend did not answer within {timeout:g} s") from None
        except _Stale:
            connection.close()
            raise
        except BaseException:
            connection.close()
            raise
        return Response(self, connection, exchange, method, idle_timeout)

    @staticmethod
    async def _headers(connection: _Connection, exchange: _Exchange) -> None:
        while not exchange.headers_done:
            if connection.error is not None:
                raise connection.error
            if connection.closed:
                if not exchange.status and not exchange.body:
                    raise _Stale()
                raise UpstreamError("the backend closed the connection mid-answer")
            exchange.arrived.clear()
            await exchange.arrived.wait()


class _Stale(Exception):
    """A pooled connection turned out closed before any answer."""
