"""Answers relayed to the client as the backend sends them, and what is learnt on the way.

A `Relay` is an ASGI response over an async iterator of body chunks. While it
sends, it listens for the client going away; then the body (and with it the
backend's connection) is closed at once, so the backend stops generating for
nobody. Its `finish` runs exactly once, whatever happens: that is where the
request's key slot is freed and its metrics recorded.

A `Watcher` reads a passing NDJSON or SSE stream without holding it back: when
the first text went by, the final counts, and an error the backend reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable


def sse_data(line: bytes) -> bytes | None:
    """The payload of one SSE line if it is a `data:` line, else None."""
    line = line.strip()
    return line[5:].strip() if line.startswith(b"data:") else None


def sse_events(buffer: bytearray, chunk: bytes):
    """Complete `data:` payloads from an SSE byte stream (buffer keeps the rest)."""
    buffer += chunk
    while True:
        cut = buffer.find(b"\n")
        if cut < 0:
            return
        payload = sse_data(bytes(buffer[:cut]))
        del buffer[:cut + 1]
        if payload is not None:
            yield payload


class Watcher:
    """Follows an NDJSON or SSE stream without holding it back: first text, final counts."""

    # A line longer than this is not an answer's line: the watcher stops reading.
    LONGEST = 1024 * 1024

    def __init__(self, openai: bool = False, sse: bool = False) -> None:
        self.openai_shaped = openai
        self.sse = sse
        self.pending = b""
        self.first_text_at: float | None = None
        self.final: dict | None = None
        self.blind = False

    def feed(self, chunk: bytes) -> None:
        if self.blind:
            return
        if b"\n" not in chunk:
            self.pending += chunk
            if len(self.pending) > self.LONGEST:
                self.blind, self.pending = True, b""
            return
        *lines, rest = (self.pending + chunk).split(b"\n")
        self.pending = rest
        for line in lines:
            self.line(line)

    def close(self) -> None:
        self.line(self.pending)
        self.pending = b""

    def line(self, line: bytes) -> None:
        if self.sse:
            line = sse_data(line)
            if line is None:
                return
        if not line.strip() or line.strip() == b"[DONE]":
            return
        try:
            obj = json.loads(line)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        if self.openai_shaped:
            self._openai(obj)
            return
        if self.first_text_at is None and (obj.get("response") or
                                           (obj.get("message") or {}).get("content")):
            self.first_text_at = time.perf_counter()
        if obj.get("done"):
            self.final = obj

    def _openai(self, obj: dict) -> None:
        """An OpenAI chunk or answer: text in choices, counts in usage (Ollama's names)."""
        if self.first_text_at is None:
            for choice in obj.get("choices") or []:
                delta = choice.get("delta") or choice.get("message") or {}
                if delta.get("content") or choice.get("text"):
                    self.first_text_at = time.perf_counter()
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.final = {"prompt_eval_count": usage.get("prompt_tokens"),
                          "eval_count": usage.get("completion_tokens")}


class Relay:
    """An ASGI response relaying `body`; `finish()` runs exactly once, whatever happens.

    A client that stops reading for `send_timeout` seconds is given up on like one that
    left: the backend's connection is closed, and so is the client's. `watch` listens for a
    departure while sending (an answer that takes long); a quick one needs no listener."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]],
                 body: AsyncIterator[bytes], finish: Callable[[], None],
                 send_timeout: float = 120.0, watch: bool = True) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.finish = finish
        self.send_timeout = send_timeout
        self.watch = watch

    async def __call__(self, scope, receive, send) -> None:
        if not self.watch:
            try:
                await self._stream(send)
            finally:
                with contextlib.suppress(Exception):
                    await self.body.aclose()
                self.finish()
            return
        try:
            sending = asyncio.ensure_future(self._stream(send))
            listener = asyncio.ensure_future(client_gone(receive))
            await asyncio.wait((sending, listener), return_when=asyncio.FIRST_COMPLETED)
            if not sending.done():
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending
            listener.cancel()
            if not sending.cancelled():
                sending.result()
        finally:
            with contextlib.suppress(Exception):
                await self.body.aclose()
            self.finish()

    async def _stream(self, send) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.send_timeout) as deadline:
                await send({"type": "http.response.start", "status": self.status,
                            "headers": self.headers})
                async for chunk in self.body:
                    deadline.reschedule(loop.time() + self.send_timeout)
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            return  # the response is left incomplete: the server closes the connection


async def client_gone(receive) -> None:
    """Returns when the client has gone away (its request body already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
