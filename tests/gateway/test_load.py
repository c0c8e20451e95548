"""200 concurrent streaming clients through the gateway: no unexpected errors, memory flat.

Bounded: two rounds of 200 short streams (a few tokens each) against a stand-in with
two parallel slots; everything stops by itself.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.standin.conftest import StandIn, import_lab_model

from .conftest import INFERENCE_KEY, Gateway

CLIENTS = 200
MODEL = "gemma3:270m"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def one_stream(client: httpx.AsyncClient, index: int) -> str:
    body = {"model": MODEL, "prompt": f"Item {index}:", "raw": True,
            "options": {"num_predict": 3, "stop": []}}
    async with client.stream("POST", "/api/generate", json=body) as response:
        if response.status_code != 200:
            return f"status {response.status_code}"
        last = None
        async for line in response.aiter_lines():
            if line:
                last = json.loads(line)
        return "ok" if last and last.get("done") else f"ended with {last}"


async def round_of(url: str) -> list[str]:
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits,
                                 headers={"Authorization": f"Bearer {INFERENCE_KEY}"}) as client:
        return await asyncio.gather(*(one_stream(client, i) for i in range(CLIENTS)))


def test_two_hundred_concurrent_streams(tmp_path):
    backend = StandIn(tmp_path / "models", OLLAMA_NUM_PARALLEL="2", OLLAMA_MAX_QUEUE="512")
    front = None
    try:
        import_lab_model(backend.client())
        backend.client().generate(model=MODEL, prompt="", keep_alive="10m")
        front = Gateway(backend.url, tmp_path)
        warm = asyncio.run(round_of(front.url))
        assert warm.count("ok") == CLIENTS, sorted(set(warm))
        after_warmup = rss_kib(front.process.pid)
        second = asyncio.run(round_of(front.url))
        assert second.count("ok") == CLIENTS, sorted(set(second))
        growth = rss_kib(front.process.pid) - after_warmup
        print(f"gateway RSS after warm-up {after_warmup} KiB, growth over 200 more streams "
              f"{growth} KiB")
        assert growth < 16 * 1024  # flat: no per-request leak
    finally:
        if front:
            front.stop()
        backend.stop()
