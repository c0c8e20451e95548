"""A small HTTP/1.1 client for the gateway's backends: keep-alive pool, streamed bodies.

Why not httpx: measured here, one request through httpx's AsyncClient costs
~0.7 ms of CPU, which alone breaks the gateway's budget (< 0.5 ms added, >= 5,000
requests/s on two cores). The backends are known HTTP/1.1 servers on an internal
network (Ollama, llama.cpp's server), so this client speaks exactly that: plain
HTTP, Content-Length or chunked bodies both ways, connections kept alive and
reused, a reused connection that the server closed meanwhile retried once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

CHUNK = 64 * 1024
NO_BODY_STATUS = (204, 304)


class UpstreamError(Exception):
    """The backend could not be reached or broke the HTTP exchange."""


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        self.writer.close()


class Response:
    """Status and headers at once; the body through `chunks()` (read it, or `close()`)."""

    def __init__(self, pool: Upstream, connection: _Connection, status: int,
                 headers: list[tuple[str, str]], framing: str, length: int,
                 keep: bool) -> None:
        self.status = status
        self.headers = headers
        self._pool = pool
        self._connection: _Connection | None = connection
        self._framing = framing  # "none", "length", "chunked" or "close"
        self._length = length
        self._keep = keep

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def chunks(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        reader = connection.reader
        try:
            if self._framing == "length":
                left = self._length
                while left:
                    data = await reader.read(min(left, CHUNK))
                    if not data:
                        raise UpstreamError(f"backend closed the connection with {left} "
                                            "bytes of the body unsent")
                    left -= len(data)
                    yield data
            elif self._framing == "chunked":
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    try:
                        size = int(size_line.split(b";", 1)[0], 16)
                    except ValueError:
                        raise UpstreamError(f"bad chunk size {size_line[:40]!r}") from None
                    if size == 0:
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":
                            pass  # trailers, ignored
                        break
                    data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif self._framing == "close":
                while data := await reader.read(CHUNK):
                    yield data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            self._keep = False
            raise UpstreamError(f"backend broke the response: {exc or type(exc).__name__}") \
                from None
        except BaseException:
            self._keep = False
            raise
        finally:
            self._finish()

    def _finish(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._keep:  # false for close-delimited bodies and for any body not read to its end
            self._pool._give_back(connection)
        else:
            connection.close()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        """Abandon the body: the connection cannot be reused unless it was all read."""
        if self._connection is not None:
            self._keep = False
            self._finish()


class Upstream:
    """One backend (``http://host:port``), a pool of idle keep-alive connections."""

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
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=CHUNK * 4),
                self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise UpstreamError(f"cannot connect to {self.url}: "
                                f"{exc or type(exc).__name__}") from None
        return _Connection(reader, writer)

    def _give_back(self, connection: _Connection) -> None:
        if len(self._idle) < self.max_idle and connection.usable():
            self._idle.append(connection)
        else:
            connection.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def request(self, method: str, target: str,
                      headers: list[tuple[str, str]] | None = None,
                      body: bytes | AsyncIterator[bytes] = b"",
                      timeout: float | None = None) -> Response:
        """Send a request, return once the status line and headers are in.

        A streamed body (an async iterator) goes out chunked, never held in memory;
        such a request is not retried.
        """
        streamed = not isinstance(body, bytes | bytearray | memoryview)
        head = [f"{method} {target} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        for name, value in headers or ():
            head.append(f"{name}: {value}\r\n")
        if streamed:
            head.append("Transfer-Encoding: chunked\r\n\r\n")
        elif body or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}\r\n\r\n")
        else:
            head.append("\r\n")
        encoded = "".join(head).encode("latin-1")
        while self._idle:
            connection = self._idle.pop()
            if not connection.usable():
                connection.close()
                continue
            try:
                return await self._exchange(connection, method, encoded, body, streamed,
                                            timeout)
            except _Stale:
                continue  # the server closed it while idle: try another, or a new one
        connection = await self._connect()
        try:
            return await self._exchange(connection, method, encoded, body, streamed, timeout)
        except _Stale:
            raise UpstreamError(f"{self.url} closed the connection without answering") \
                from None

    async def _exchange(self, connection: _Connection, method: str, head: bytes, body,
                        streamed: bool, timeout: float | None) -> Response:
        writer, reader = connection.writer, connection.reader
        try:
            if streamed:
                writer.write(head)
                async for piece in body:
                    if piece:
                        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                        await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(head + bytes(body) if body else head)
            await writer.drain()
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout) \
                if timeout else await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            connection.close()
            if not exc.partial and not streamed:
                raise _Stale() from None
            raise UpstreamError(f"{self.url} closed the connection mid-answer") from None
        except ConnectionError as exc:
            connection.close()
            if not streamed:
                raise _Stale() from None
            raise UpstreamError(f"{self.url}: {exc}") from None
        except (TimeoutError, OSError, asyncio.LimitOverrunError) as exc:
            connection.close()
            raise UpstreamError(f"{self.url}: {exc or type(exc).__name__}") from None
        except BaseException:
            connection.close()
            raise
        lines = raw.decode("latin-1").split("\r\n")
        try:
            version, code = lines[0].split(" ", 2)[:2]
            status = int(code)
        except ValueError:
            connection.close()
            raise UpstreamError(f"{self.url} answered {lines[0][:60]!r}, not HTTP") from None
        headers = []
        length = -1
        chunked = False
        keep = version == "HTTP/1.1"
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            headers.append((name, value))
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection":
                keep = "close" not in value.lower() and (keep or "keep-alive" in value.lower())
        if method == "HEAD" or status in NO_BODY_STATUS or 100 <= status < 200:
            framing = "none"
        elif chunked:
            framing = "chunked"
        elif length >= 0:
            framing = "length"
        else:
            framing, keep = "close", False
        response = Response(self, connection, status, headers, framing, max(length, 0), keep)
        if framing == "none" or (framing == "length" and length == 0):
            response._finish()
        return response


class _Stale(Exception):
    """A reused connection turned out closed before any answer: safe to retry."""
