"""Tenant isolation under load: no client ever receives an answer meant for another.

Many keys and many concurrent clients share the gateway's keep-alive connections to the
backend (the stand-in's Go server). Each request carries a nonce the backend echoes
(Ollama names the model it could not find: `model '<nonce>' not found`; /api/show echoes
its `system`), and comes as a plain body, a chunked one, with `Expect: 100-continue`, or
from a client that gives up half-way. Every answer that arrives must carry its own nonce.
"""

from __future__ import annotations

import asyncio
import json
import os
import random

import pytest

from gemma_gateway.auth import hash_key, new_key

from .conftest import METRICS_KEY, Gateway
from .test_gateway import metric

KEYS = [new_key() for _ in range(8)]
REQUESTS, CONCURRENCY = 1200, 48
VARIANTS = ("plain", "chunked", "expect", "abort-head", "abort-body")


@pytest.fixture(scope="module")
def shared(standin, tmp_path_factory):
    keys = [{"name": f"tenant-{number}", "sha256": hash_key(key), "scopes": ["inference"]}
            for number, key in enumerate(KEYS)]
    keys.append({"name": "prometheus", "sha256": hash_key(METRICS_KEY), "scopes": ["metrics"]})
    server = Gateway(standin.url, tmp_path_factory.mktemp("isolation"), keys=keys)
    yield server
    server.stop()


def request_bytes(number: int, variant: str) -> tuple[bytes, bytes, str]:
    """(head, body, nonce) of one request."""
    nonce = f"nonce-{number}-{os.urandom(6).hex()}"
    if number % 7 == 0:
        path, body = b"/api/show", {"model": "gemma3:270m", "system": nonce}
    elif number % 2:
        path, body = b"/api/show", {"model": nonce}
    else:
        path, body = b"/api/generate", {"model": nonce, "prompt": "hi"}
    data = json.dumps(body).encode()
    key = KEYS[number % len(KEYS)].encode()
    head = [b"POST " + path + b" HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer " + key,
            b"Content-Type: application/json"]
    if variant == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
    else:
        head.append(b"Content-Length: " + str(len(data)).encode())
    if variant == "expect":
        head.append(b"Expect: 100-continue")
    return b"\r\n".join(head) + b"\r\n\r\n", data, nonce


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One whole answer (Content-Length or chunked), after any interim 100."""
    head = await reader.readuntil(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):
        head = await reader.readuntil(b"\r\n\r\n")
    lines = [line.lower() for line in head.split(b"\r\n")]
    for line in lines:
        if line.startswith(b"content-length:"):
            return head + await reader.readexactly(int(line.split(b":")[1]))
    assert b"transfer-encoding: chunked" in lines, head
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readuntil(b"\r\n")
    return head + body


async def one_client(port: int, numbers: list[int], tally: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for number in numbers:
            variant = random.Random(number).choice(VARIANTS)
            head, body, nonce = request_bytes(number, variant)
            if variant == "abort-head":
                writer.write(head[: len(head) // 2])
                await writer.drain()
                tally["aborted"] += 1
                return
            writer.write(head)
            if variant == "expect":
                interim = await reader.readuntil(b"\r\n\r\n")
                assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
            if variant == "abort-body":
                writer.write(body[: len(body) // 2])
                await writer.drain()
                tally["aborted"] += 1
                return
            writer.write(body)
            await writer.drain()
            try:
                answer = await read_answer(reader)
            except (AssertionError, ValueError, asyncio.IncompleteReadError) as exc:
                tally["wrong"].append((nonce, f"unreadable answer: {exc}"[:200]))
                return
            seen = set(answer.split(b"nonce-")[1:])
            if nonce.encode() in answer and len(seen) == 1:
                tally["own"] += 1
            else:
                tally["wrong"].append((nonce, answer[-200:]))
    finally:
        writer.close()


async def load(port: int) -> dict:
    tally = {"own": 0, "aborted": 0, "wrong": []}
    numbers = list(range(REQUESTS))
    # Clients of one to three requests each, on their own kept-alive connections.
    batches, rng = [], random.Random(7)
    while numbers:
        size = rng.randint(1, 3)
        batches.append(numbers[:size])
        numbers = numbers[size:]
    slots = asyncio.Semaphore(CONCURRENCY)

    async def run(batch):
        async with slots:
            await one_client(port, batch, tally)

    await asyncio.gather(*(run(batch) for batch in batches))
    return tally


def test_no_answer_ever_reaches_another_client(shared):
    tally = asyncio.run(load(shared.port))
    assert tally["wrong"] == []
    # Two variants in five give up, and with them the rest of their client's requests.
    assert tally["own"] > REQUESTS / 3 and tally["aborted"] > REQUESTS / 10
    # Every abandoned request let go of its slot, and the gateway still answers.
    assert metric(shared, "gateway_requests_in_flight") == 0
    assert sum(metric(shared, "gateway_request_duration_seconds_count", endpoint=endpoint)
               for endpoint in ("/api/show", "/api/generate")) >= tally["own"]
