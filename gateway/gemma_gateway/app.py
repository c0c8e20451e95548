"""The ASGI app: auth, then Ollama's API proxied unchanged, streams passed through.

Streaming responses are relayed chunk by chunk as the backend sends them; the
gateway only watches the NDJSON lines go by to time the first token and read
the final object's counts for its metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from contextlib import asynccontextmanager

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .auth import required_scope
from .config import ConfigError, Settings
from .images import ImageError, check_images, images_of
from .limits import Limiter
from .metrics import Metrics

log = logging.getLogger("gemma_gateway.access")
# Hop-by-hop and transport headers are the proxy's own business.
DROPPED = {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
           "authorization", "accept-encoding"}
GENERATING = ("/api/generate", "/api/chat")


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def endpoint_of(path: str) -> str:
    return "/api/blobs" if path.startswith("/api/blobs/") else path


class Watcher:
    """Follows an NDJSON stream without holding it back: first text, final object."""

    def __init__(self) -> None:
        self.pending = b""
        self.first_text_at: float | None = None
        self.final: dict | None = None

    def feed(self, chunk: bytes) -> None:
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.line(line)

    def line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            obj = json.loads(line)
        except ValueError:
            return
        if self.first_text_at is None and (obj.get("response") or
                                           (obj.get("message") or {}).get("content")):
            self.first_text_at = time.perf_counter()
        if obj.get("done"):
            self.final = obj


def create_app(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    metrics = Metrics()
    limiter = Limiter(settings.key_limits)
    capabilities: dict[str, tuple[float, list]] = {}

    async def poll(client: httpx.AsyncClient) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                ps = (await client.get("/api/ps", timeout=5)).json()
                tags = (await client.get("/api/tags", timeout=5)).json()
                metrics.record_backend(ps, tags)
            await asyncio.sleep(settings.poll_seconds)

    @asynccontextmanager
    async def lifespan(app):
        async with httpx.AsyncClient(base_url=settings.backend_url, timeout=httpx.Timeout(
                connect=5, read=None, write=60, pool=None), transport=transport,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64)) as client:
            app.state.client = client
            poller = asyncio.create_task(poll(client))
            yield
            poller.cancel()

    async def model_capabilities(client: httpx.AsyncClient, model: str) -> list:
        """The model's capabilities from /api/show, cached for a minute."""
        cached = capabilities.get(model)
        if cached and time.monotonic() - cached[0] < 60:
            return cached[1]
        shown = await client.post("/api/show", json={"model": model})
        found = shown.json().get("capabilities", []) if shown.status_code == 200 else []
        capabilities[model] = (time.monotonic(), found)
        return found

    def cors_headers(request: Request) -> dict:
        origin = request.headers.get("origin")
        if origin and origin in settings.cors_origins:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        try:
            tags = (await client.get("/api/tags", timeout=5)).json()
        except (httpx.HTTPError, ValueError) as exc:
            return error(503, f"backend {settings.backend_url} is not answering: {exc}")
        names = [m.get("name") for m in tags.get("models", [])]
        if settings.expected_model and settings.expected_model not in names:
            return error(503, f"backend lacks the expected model {settings.expected_model}")
        return JSONResponse({"status": "ready", "models": names})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def proxy(request: Request) -> Response:
        path = request.url.path
        cors = cors_headers(request)
        if request.method == "OPTIONS":
            if not cors:
                return error(403, "origin not allowed")
            return Response(status_code=204, headers={
                **cors, "Access-Control-Allow-Methods": "GET, POST, DELETE, HEAD, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600"})
        presented = request.headers.get("authorization", "")
        if not presented.lower().startswith("bearer "):
            metrics.auth_failures.labels("missing").inc()
            return error(401, "missing API key: send 'Authorization: Bearer <key>'", cors)
        key = settings.keyring.find(presented[7:].strip())
        if key is None:
            metrics.auth_failures.labels("invalid").inc()
            return error(401, "invalid API key", cors)
        scope = required_scope(path)
        if scope not in key.scopes:
            metrics.auth_failures.labels("scope").inc()
            return error(403, f"key '{key.name}' lacks the {scope} scope that {path} needs", cors)
        length = int(request.headers.get("content-length") or 0)
        if length > settings.max_body_bytes:
            metrics.errors.labels("body_too_large").inc()
            return error(413, f"request body of {length} bytes exceeds the limit of "
                              f"{settings.max_body_bytes} bytes", cors)
        allowed, reason, retry_after = limiter.acquire(key.name)
        if not allowed:
            metrics.errors.labels("rate_limited").inc()
            return error(429, reason, {**cors, "Retry-After": str(retry_after)})
        try:
            return await forward(request, path, key.name, cors,
                                 release=lambda: limiter.release(key.name))
        except BaseException:
            limiter.release(key.name)
            raise

    async def forward(request: Request, path: str, key_name: str, cors: dict,
                      release) -> Response:
        """Relay one request; `release` is called once, when the response is finished."""
        client: httpx.AsyncClient = request.app.state.client
        if path.startswith("/api/blobs/"):
            # Uploads pass through, never held in memory.
            return await relay_upstream(request, path, key_name, cors, release, client,
                                        request.stream(), "")
        content = await request.body()
        if len(content) > settings.max_body_bytes:
            release()
            metrics.errors.labels("body_too_large").inc()
            return error(413, f"request body exceeds {settings.max_body_bytes} bytes", cors)
        body = None
        if content and (path in GENERATING or request.headers.get(
                "content-type", "").startswith("application/json")):
            with contextlib.suppress(ValueError):
                parsed = json.loads(content)
                body = parsed if isinstance(parsed, dict) else None
        # Malformed JSON goes on: the backend answers it in Ollama's own words.
        model = str(body.get("model") or body.get("name") or "") if body else ""
        if body and path in GENERATING:
            refusal = await check_images_for(body, path, model, client, cors)
            if refusal is not None:
                release()
                return refusal
        return await relay_upstream(request, path, key_name, cors, release, client, content,
                                    model)

    async def check_images_for(body: dict, path: str, model: str, client,
                               cors: dict) -> Response | None:
        """Refuse images no backend should see: unreadable, too many, or for a text-only model."""
        images = images_of(path, body)
        if not images:
            return None
        try:
            check_images(images, settings.images)
        except ImageError as exc:
            metrics.errors.labels("bad_image").inc()
            return error(400, str(exc), cors)
        try:
            found = await model_capabilities(client, model)
        except httpx.HTTPError:
            return None  # the backend's own answer will say what is wrong
        if found and "vision" not in found:
            metrics.errors.labels("images_for_text_model").inc()
            return error(400, f"{model} takes text only here (Ollama serves it without vision): "
                              "send no images, or configure a vision backend for it in the "
                              "gateway (vision_backends)", cors)
        return None

    async def relay_upstream(request: Request, path: str, key_name: str, cors: dict, release,
                             client: httpx.AsyncClient, content, model: str) -> Response:
        started = time.perf_counter()
        endpoint = endpoint_of(path)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED}
        upstream_request = client.build_request(request.method, path,
                                                params=request.query_params, content=content,
                                                headers=headers)
        metrics.in_flight.inc()
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            metrics.in_flight.dec()
            release()
            metrics.errors.labels("backend_unreachable").inc()
            access(key_name, request.method, endpoint, model, 502, started, None)
            return error(502, f"backend {settings.backend_url} is not answering: {exc}", cors)
        watcher = Watcher()
        response_headers = {k: v for k, v in upstream.headers.items()
                            if k.lower() not in DROPPED}

        async def relay():
            status = upstream.status_code
            try:
                async for chunk in upstream.aiter_raw():
                    watcher.feed(chunk)
                    yield chunk
                watcher.line(watcher.pending)
            except httpx.HTTPError as exc:
                metrics.errors.labels("backend_broke_stream").inc()
                status = 502
                yield (json.dumps({"error": f"backend stream broke: {exc}"}) + "\n").encode()
            finally:
                await upstream.aclose()
                metrics.in_flight.dec()
                release()
                elapsed = time.perf_counter() - started
                metrics.duration.labels(endpoint, model, str(status)).observe(elapsed)
                if status >= 400:
                    metrics.errors.labels(f"backend_{status}").inc()
                if watcher.first_text_at is not None:
                    metrics.ttft.labels(endpoint, model).observe(watcher.first_text_at - started)
                if watcher.final is not None and path in GENERATING:
                    metrics.record_final(endpoint, model, watcher.final)
                access(key_name, request.method, endpoint, model, status, started,
                       watcher.final)

        return StreamingResponse(relay(), status_code=upstream.status_code,
                                 headers={**response_headers, **cors})

    def access(key_name, method, endpoint, model, status, started, final) -> None:
        """One JSON line per request: who, what, how long; never prompt or image content."""
        entry = {"key": key_name, "method": method, "endpoint": endpoint, "model": model,
                 "status": status, "duration_s": round(time.perf_counter() - started, 4)}
        if final:
            entry.update(prompt_tokens=final.get("prompt_eval_count"),
                         completion_tokens=final.get("eval_count"))
        log.info(json.dumps(entry))

    methods = ["GET", "POST", "HEAD", "DELETE", "OPTIONS"]
    return Starlette(lifespan=lifespan, routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/{path:path}", proxy, methods=methods),
    ])


def main() -> None:
    import argparse
    import os

    import uvicorn

    parser = argparse.ArgumentParser(description="gemma-airgap API gateway")
    parser.add_argument("--host", default=os.environ.get("GATEWAY_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8080")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = Settings.load()
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    uvicorn.run(create_app(settings), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
