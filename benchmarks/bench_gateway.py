#!/usr/bin/env python3
"""The gateway's own cost, side by side with direct access and nginx, in one run.

1. Against a backend that answers at once (nginx returning a fixed /api/version):
   latency p50/p99 at concurrency 1 and requests/s at 64, measured with wrk, for
   direct, through nginx as a reverse proxy, and through the gateway (with a key).
   Targets for the gateway: < 0.5 ms p50 added, >= 5,000 requests/s at 64.
2. Under LLM-paced load: a backend streaming 50 NDJSON chunks 20 ms apart, 64
   concurrent streams, direct vs through the gateway: time to first token added
   (target < 1 ms p50) and total throughput (target >= 95% of direct).
3. Memory: the gateway's resident size idle, then after the tenant-isolation load and the
   hostile suite's clients (in front of the Ollama stand-in): it must stay bounded.

The backends are measuring equipment for the gateway's overhead, not models.
Needs Debian's nginx and wrk (`apt-get install nginx-light wrk`).

    .venv/bin/python benchmarks/bench_gateway.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = "gk_benchmark-key"
CHUNKS, GAP = 50, 0.02
STREAMING_BACKEND = f'''
import asyncio, json
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

async def generate(request):
    async def chunks():
        for index in range({CHUNKS}):
            yield (json.dumps({{"model": "m", "response": "t", "done": False}}) + "\\n").encode()
            await asyncio.sleep({GAP})
        yield (json.dumps({{"model": "m", "response": "", "done": True, "eval_count": {CHUNKS},
                            "eval_duration": 1000000000}}) + "\\n").encode()
    return StreamingResponse(chunks(), media_type="application/x-ndjson")

app = Starlette(routes=[Route("/api/generate", generate, methods=["POST"])])
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(processes: list[subprocess.Popen]) -> None:
    """Every measuring process this run started, ended (each given 10 s)."""
    for process in processes:
        process.terminate()
        process.wait(10)


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def start_gateway(work: Path, backend: str,
                  keys: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int]:
    sys.path.insert(0, str(ROOT / "gateway"))
    from gemma_gateway.auth import hash_key

    port = free_port()
    config = work / f"gateway-{port}.json"
    config.write_text(json.dumps({"backend_url": backend, "poll_seconds": 3600, "keys": [
        {"name": f"bench-{number}", "sha256": hash_key(key), "scopes": ["inference"]}
        for number, key in enumerate((KEY, *keys))]}))
    process = subprocess.Popen(
        [sys.executable, "-m", "gemma_gateway.server", "--host", "127.0.0.1", "--port", str(port)],
        env=dict(os.environ, GATEWAY_CONFIG=str(config), PYTHONPATH=str(ROOT / "gateway")),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return process, port


def start_nginx(work: Path) -> tuple[subprocess.Popen, int, int]:
    backend, proxy = free_port(), free_port()
    conf = work / "nginx.conf"
    conf.write_text(f"""
daemon off; master_process off; worker_processes 1;
error_log {work}/error.log; pid {work}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{backend};
    location / {{ default_type application/json; return 200 '{{"version":"0.0.0"}}'; }} }}
  server {{ listen 127.0.0.1:{proxy};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_buffering off; }} }}
}}""")
    process = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(work)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(backend)
    wait_port(proxy)
    return process, backend, proxy


def wrk(url: str, connections: int, seconds: int, auth: bool) -> dict:
    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s",
               "--latency", url]
    if auth:
        command[1:1] = ["-H", f"Authorization: Bearer {KEY}"]
    out = subprocess.run(command, text=True, capture_output=True, check=True).stdout

    def millis(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50": millis("50%"), "p99": millis("99%"),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "errors": int(errors.group(1)) if errors else 0}


async def streams(url: str, auth: bool, concurrency: int = 64) -> tuple[list[float], float]:
    import httpx

    headers = {"Authorization": f"Bearer {KEY}"} if auth else {}

    async def one(client) -> float:
        started = time.perf_counter()
        first = None
        async with client.stream("POST", "/api/generate", json={"model": "m"}) as response:
            async for line in response.aiter_lines():
                if line and first is None:
                    first = time.perf_counter() - started
        return first

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(one(client) for _ in range(4)))  # warm the connections
        started = time.perf_counter()
        ttfts = await asyncio.gather(*(one(client) for _ in range(concurrency)))
        return list(ttfts), time.perf_counter() - started


def memory(pid: int) -> tuple[float, float]:
    """(resident MiB now, peak MiB) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    return rss, peak


def hostile_clients(port: int) -> None:
    """What test_hostile.py sends, in bulk: huge heads, half-sent heads, huge model names,
    a chunked body far over the limit."""
    opened = []
    for _ in range(200):  # half-sent requests, held open
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: g\r\nX-Slow: ")
        opened.append(sock)
    for _ in range(20):  # 1 MB of headers each, no key
        with socket.create_connection(("127.0.0.1", port)) as sock:
            try:
                sock.sendall(b"GET /api/tags HTTP/1.1\r\n" + b"X-F: " + b"a" * 1_000_000 +
                             b"\r\n\r\n")
                sock.recv(100)
            except OSError:
                pass
    head = (b"POST /api/show HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer " + KEY.encode() +
            b"\r\nContent-Type: application/json\r\n")
    for _ in range(20):  # 2 MB model names
        body = json.dumps({"model": "m" * 2_000_000}).encode()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            sock.recv(1000)
    with socket.create_connection(("127.0.0.1", port)) as sock:  # 300 MiB, chunked
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(4800):
                sock.sendall(b"10000\r\n" + b"x" * 65536 + b"\r\n")
        except OSError:
            pass
    for sock in opened:
        sock.close()


def rss_under_attack(work: Path) -> None:
    """3. The gateway's memory under the hostile suite's clients and the isolation load."""
    sys.path.insert(0, str(ROOT))
    import tests.conftest  # noqa: F401  (the stand-in's paths)
    from tests.gateway.test_isolation import KEYS, load
    from tests.standin.conftest import StandIn, import_lab_model

    backend = StandIn(work / "models")
    try:
        import_lab_model(backend.client())
        gateway, port = start_gateway(work, backend.url, tuple(KEYS))
        try:
            idle = memory(gateway.pid)
            tally = asyncio.run(load(port))
            hostile_clients(port)
            tally_again = asyncio.run(load(port))
            after = memory(gateway.pid)
            print("3. Gateway memory: idle, then 2 x 1,200 isolation requests (8 keys, chunked, "
                  "Expect, abandoned) and the hostile clients (200 half-sent heads, 1 MB heads, "
                  "2 MB model names, 300 MiB chunked body)")
            print(f"   idle RSS {idle[0]:6.1f} MiB; after RSS {after[0]:6.1f} MiB, "
                  f"peak {after[1]:6.1f} MiB; answers to another client: "
                  f"{len(tally['wrong']) + len(tally_again['wrong'])}")
        finally:
            gateway.terminate()
            gateway.wait(10)
    finally:
        backend.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    processes = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            nginx, backend, proxy = start_nginx(work)
            processes.append(nginx)
            gateway, gateway_port = start_gateway(work, f"http://127.0.0.1:{backend}")
            processes.append(gateway)
            paths = {"direct": (backend, False), "nginx": (proxy, False),
                     "gateway": (gateway_port, True)}
            print(f"1. Backend answering at once (GET /api/version), wrk {args.seconds} s each")
            print(f"   {'path':<8} {'p50 ms':>8} {'p99 ms':>8} {'req/s @64':>10} {'non-2xx':>8}")
            results = {}
            for name, (port, auth) in paths.items():
                url = f"http://127.0.0.1:{port}/api/version"
                one = wrk(url, 1, args.seconds, auth)
                many = wrk(url, 64, args.seconds, auth)
                results[name] = (one, many)
                print(f"   {name:<8} {one['p50']:8.3f} {one['p99']:8.3f} {many['rps']:10.0f} "
                      f"{one['errors'] + many['errors']:8d}")
            for name in ("nginx", "gateway"):
                added = results[name][0]["p50"] - results["direct"][0]["p50"]
                print(f"   {name} adds {added:.3f} ms p50 at concurrency 1")

            stream_port = free_port()
            app_file = work / "stream_backend.py"
            app_file.write_text(STREAMING_BACKEND)
            streamer = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(work), "stream_backend:app",
                 "--port", str(stream_port), "--log-level", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            processes.append(streamer)
            wait_port(stream_port)
            gateway2, gateway2_port = start_gateway(work, f"http://127.0.0.1:{stream_port}")
            processes.append(gateway2)
            print(f"2. LLM-paced backend ({CHUNKS} chunks {GAP * 1000:.0f} ms apart), "
                  "64 concurrent streams")
            direct_ttft, direct_wall = asyncio.run(streams(f"http://127.0.0.1:{stream_port}",
                                                           False))
            gw_ttft, gw_wall = asyncio.run(streams(f"http://127.0.0.1:{gateway2_port}", True))
            for name, ttft, wall in (("direct", direct_ttft, direct_wall),
                                     ("gateway", gw_ttft, gw_wall)):
                print(f"   {name:<8} TTFT p50 {statistics.median(ttft) * 1000:7.2f} ms, "
                      f"{64 * CHUNKS / wall:8.0f} chunks/s")
            added = (statistics.median(gw_ttft) - statistics.median(direct_ttft)) * 1000
            print(f"   gateway adds {added:.2f} ms TTFT p50; throughput "
                  f"{direct_wall / gw_wall:.3f} of direct (target >= 0.95)")
            rss_under_attack(work)
        finally:
            stop(processes)


if __name__ == "__main__":
    main()
