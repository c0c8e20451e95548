#!/usr/bin/env python3
"""The gateway's backend pool: 2 inference hosts against 1, in one run.

The hosts are paced stand-ins for Ollama's scheduler: each serves `PARALLEL` requests at
once (OLLAMA_NUM_PARALLEL) and queues the rest; a request streams 50 NDJSON chunks 20 ms
apart (an LLM-paced answer, 1 s), and /api/ps and /api/tags answer the pool's checks.

1. Aggregate throughput under LLM-paced load, the same clients through one gateway with 1
   host, then with 2 (target: >= 1.8x), and how the requests were shared.
2. The added latency of the routing decision: `BackendPool.choose` timed in-process (p50,
   2 and 16 hosts), beside the gateway's own cost measured in the same run (p50 of a quick
   request direct vs through the gateway).

The hosts are measuring equipment for the pool, not models.

    .venv/bin/python benchmarks/bench_pool.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import KEY, ROOT, free_port, stop, wait_port

PARALLEL, CHUNKS, GAP = 4, 50, 0.02
HOST = f'''
import asyncio, json
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

slots = asyncio.Semaphore({PARALLEL})
MODEL = {{"name": "m:latest", "model": "m:latest", "size": 1}}

async def generate(request):
    await slots.acquire()
    async def chunks():
        try:
            for index in range({CHUNKS}):
                line = {{"model": "m", "response": "t", "done": False}}
                yield (json.dumps(line) + "\\n").encode()
                await asyncio.sleep({GAP})
            yield (json.dumps({{"model": "m", "response": "", "done": True,
                                "eval_count": {CHUNKS}, "eval_duration": 1000000000}})
                   + "\\n").encode()
        finally:
            slots.release()
    return StreamingResponse(chunks(), media_type="application/x-ndjson")

async def listing(request):
    return JSONResponse({{"models": [MODEL]}})

async def version(request):
    return JSONResponse({{"version": "0.0.0"}})

app = Starlette(routes=[Route("/api/generate", generate, methods=["POST"]),
                        Route("/api/ps", listing), Route("/api/tags", listing),
                        Route("/api/version", version)])
'''


def start_host(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    (work / "paced_host.py").write_text(HOST)
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "paced_host:app", "--port", str(port), "--log-level",
         "warning"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return process, f"http://127.0.0.1:{port}"


def start_pooled_gateway(work: Path, hosts: list[str]) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(ROOT / "gateway"))
    from gemma_gateway.auth import hash_key

    port = free_port()
    config = work / f"gateway-{port}.json"
    config.write_text(json.dumps({
        "backends": [{"name": f"llm-{index}", "url": url, "parallel": PARALLEL}
                     for index, url in enumerate(hosts)],
        "poll_seconds": 2, "keys": [{"name": "bench", "sha256": hash_key(KEY),
                                     "scopes": ["inference", "metrics"]}]}))
    process = subprocess.Popen(
        [sys.executable, "-m", "gemma_gateway.server", "--host", "127.0.0.1", "--port",
         str(port)],
        env=dict(os.environ, GATEWAY_CONFIG=str(config), PYTHONPATH=str(ROOT / "gateway")),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return process, f"http://127.0.0.1:{port}"


async def paced_load(url: str, clients: int, seconds: float) -> tuple[int, int, float]:
    """(completed, failed, seconds) for `clients` clients each sending one stream after
    another for `seconds`."""
    import httpx

    done, failed = 0, 0
    deadline = time.perf_counter() + seconds

    async def client(http) -> None:
        nonlocal done, failed
        while time.perf_counter() < deadline:
            async with http.stream("POST", "/api/generate", json={"model": "m"}) as answer:
                lines = [line async for line in answer.aiter_lines() if line]
            if answer.status_code == 200 and json.loads(lines[-1]).get("done"):
                done += 1
            else:
                failed += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"},
                                 timeout=120,
                                 limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return done, failed, time.perf_counter() - started


def shared(url: str) -> dict[str, float]:
    """Requests each host got, from the gateway's metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return {sample.labels["backend"]: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == "gateway_pool_backend_requests_total"}


def quick_p50(url: str, count: int = 400) -> float:
    """p50 milliseconds of GET /api/version, one at a time on a kept-alive connection."""
    import httpx

    times = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        for index in range(count + 20):
            started = time.perf_counter()
            http.get("/api/version").raise_for_status()
            if index >= 20:
                times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def choose_p50_us(members: int, rounds: int = 20000) -> float:
    """p50 microseconds of one routing decision among `members` hosts (half of them warm,
    some busy), in-process."""
    sys.path.insert(0, str(ROOT / "gateway"))
    from gemma_gateway.metrics import Metrics
    from gemma_gateway.pool import BackendPool, BackendSpec, model_key

    pool = BackendPool(tuple(BackendSpec(f"h{i}", f"http://127.0.0.1:{1000 + i}", PARALLEL)
                             for i in range(members)), Metrics())
    for index, member in enumerate(pool.members):
        member.store = {model_key("gemma3n:e4b")}
        if index % 2:
            member.loaded = {model_key("gemma3n:e4b")}
        member.outstanding = index % (PARALLEL + 1)
    times = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        pool.choose("gemma3n:e4b")
        times.append((time.perf_counter_ns() - started) / 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=2 * 2 * PARALLEL)
    args = parser.parse_args()
    processes = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        try:
            first, first_url = start_host(work)
            second, second_url = start_host(work)
            one, one_url = start_pooled_gateway(work, [first_url])
            two, two_url = start_pooled_gateway(work, [first_url, second_url])
            processes = [first, second, one, two]
            time.sleep(2.5)  # the pools' first checks
            print(f"1. LLM-paced load: {args.clients} clients, {args.seconds:g} s, hosts of "
                  f"{PARALLEL} slots answering in {CHUNKS * GAP:g} s")
            rates = {}
            for label, url in (("1 host ", one_url), ("2 hosts", two_url)):
                done, failed, took = asyncio.run(paced_load(url, args.clients, args.seconds))
                rates[label] = done / took
                print(f"   {label}: {rates[label]:6.2f} answers/s ({done} answered, {failed} "
                      f"failed); shared: {shared(url)}")
            ratio = rates["2 hosts"] / rates["1 host "]
            print(f"   2 hosts / 1 host: {ratio:.2f}x (target >= 1.8x: "
                  f"{'met' if ratio >= 1.8 else 'NOT met'})")
            # Interleaved rounds, the median of each: one slow moment does not land on one side.
            rounds = [(quick_p50(first_url), quick_p50(one_url), quick_p50(two_url))
                      for _ in range(3)]
            direct, through_one, through_two = (statistics.median(column)
                                                for column in zip(*rounds, strict=True))
            print("2. Added latency (p50, GET /api/version one at a time, median of 3 rounds)")
            print(f"   direct {direct:.3f} ms; gateway, 1 host {through_one:.3f} ms "
                  f"(+{through_one - direct:.3f}); gateway, 2 hosts {through_two:.3f} ms "
                  f"(+{through_two - direct:.3f})")
            print(f"   routing decision alone: {choose_p50_us(2):.2f} us (2 hosts), "
                  f"{choose_p50_us(16):.2f} us (16 hosts)")
        finally:
            stop(processes)


if __name__ == "__main__":
    main()
