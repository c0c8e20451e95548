"""Serving the gateway: uvicorn on uvloop + httptools, with limits a public port needs.

uvicorn's httptools protocol has no limit on request headers and no deadline for
them, so a client without a key could send hundreds of megabytes of headers or
hold connections open by sending a byte now and then. `GuardedProtocol` counts
the request line and headers as httptools parses them (431 beyond
`max_header_bytes` or `max_headers`) and gives a client `header_timeout` seconds
to finish them (408, then the connection is closed). Connections beyond
`max_connections` are answered 503 by uvicorn's own `limit_concurrency`.
"""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .app import Gateway
from .config import ConfigError, ServerLimits, Settings

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _HeadRefused(Exception):
    """Stops httptools mid-head; uvicorn then calls send_400_response, which answers
    with the refusal noted on the protocol instead."""


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size limit and a deadline on request heads."""

    limits = ServerLimits()  # set by `protocol_for`

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_bytes = 0
        self._head_lines = 0
        self._in_head = True
        self._head_timer = None
        self._refusal: tuple[int, str] | None = None
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_late)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, f"the request headers took more than "
                              f"{self.limits.header_timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        body = message.encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (status, REASONS[status], len(body), body))
        self.transport.close()


    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._refuse(*self._refusal)
        else:
            super().send_400_response(msg)

    def _stop(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _HeadRefused(message)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._head_lines = 0
        self._arm_head_timer()  # the first byte of a request: its deadline starts now

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_lines += 1
        if self._head_lines > self.limits.max_headers:
            self._stop(431, f"more than {self.limits.max_headers} request headers")
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.limits.max_header_bytes:
            self._stop(431, f"the request line and headers exceed "
                            f"{self.limits.max_header_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()



def protocol_for(limits: ServerLimits) -> type[GuardedProtocol]:
    return type("Guarded", (GuardedProtocol,), {"limits": limits})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="gemma-airgap API gateway")
    parser.add_argument("--host", default=os.environ.get("GATEWAY_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8080")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = Settings.load()
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    tls = {}
    if settings.tls_certfile:
        for path in (settings.tls_certfile, settings.tls_keyfile):
            if not os.access(path, os.R_OK):
                raise SystemExit(f"error: TLS file {path} is missing or unreadable")
        tls = {"ssl_certfile": settings.tls_certfile, "ssl_keyfile": settings.tls_keyfile}
    limits = settings.limits
    uvicorn.run(Gateway(settings).asgi(), host=args.host, port=args.port, log_level="warning",
                access_log=False, server_header=False, date_header=False, backlog=1024,
                # The gateway is the edge: no proxy in front whose X-Forwarded-* it could trust.
                proxy_headers=False,
                loop="uvloop", http=protocol_for(limits),
                # uvicorn counts the asking connection itself: +1 serves max_connections.
                limit_concurrency=limits.max_connections + 1, timeout_keep_alive=5,
                timeout_graceful_shutdown=5, **tls)


if __name__ == "__main__":
    main()
