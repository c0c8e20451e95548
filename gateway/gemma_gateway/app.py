"""The ASGI app: auth, then Ollama's API proxied unchanged, streams passed through.

Streaming responses (Ollama's NDJSON, the OpenAI-compatible SSE of /v1) are
relayed chunk by chunk as the backend sends them; the gateway only watches the
lines go by to time the first token and read the final counts for its metrics.
Requests with images for a model that has a vision backend are translated to
that backend's /v1/chat/completions and answered in Ollama's format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .auth import required_scope
from .config import ConfigError, Settings
from .images import ImageError, check_images, images_of
from .limits import Limiter
from .metrics import Metrics
from .upstream import Upstream, UpstreamError
from .vision import OllamaShaper, TranslationError, sse_data, sse_events, to_openai

log = logging.getLogger("gemma_gateway.access")
# Hop-by-hop and transport headers are the proxy's own business.
DROPPED = {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
           "authorization", "accept-encoding", "te", "upgrade", "proxy-authorization"}
DROPPED_RAW = {name.encode() for name in DROPPED}  # ASGI header names are lower-case bytes
GENERATING = ("/api/generate", "/api/chat")
OPENAI_GENERATING = ("/v1/chat/completions", "/v1/completions")


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def endpoint_of(path: str) -> str:
    if path.startswith("/api/blobs/"):
        return "/api/blobs"
    if path.startswith("/v1/models/"):
        return "/v1/models"
    return path


class Watcher:
    """Follows an NDJSON or SSE stream without holding it back: first text, final counts."""

    def __init__(self, openai: bool = False, sse: bool = False) -> None:
        self.openai_shaped = openai
        self.sse = sse
        self.pending = b""
        self.first_text_at: float | None = None
        self.final: dict | None = None

    def feed(self, chunk: bytes) -> None:
        if b"\n" not in chunk:
            self.pending += chunk
            return
        *lines, rest = (self.pending + chunk).split(b"\n")
        self.pending = rest
        for line in lines:
            self.line(line)

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
            self.openai(obj)
            return
        if self.first_text_at is None and (obj.get("response") or
                                           (obj.get("message") or {}).get("content")):
            self.first_text_at = time.perf_counter()
        if obj.get("done"):
            self.final = obj

    def openai(self, obj: dict) -> None:
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
    """An ASGI response relaying `body`; `finish(status)` runs exactly once, whatever happens.

    A streamed answer also listens for the client going away: generation at the backend
    is then abandoned (its connection closed) instead of running on for nobody.
    """

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]],
                 body: AsyncIterator[bytes], finish: Callable[[], None],
                 streamed: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.finish = finish
        self.streamed = streamed

    async def __call__(self, scope, receive, send) -> None:
        try:
            if self.streamed:
                sending = asyncio.ensure_future(self._stream(send))
                listener = asyncio.ensure_future(self._disconnect(receive))
                await asyncio.wait((sending, listener), return_when=asyncio.FIRST_COMPLETED)
                if not sending.done():
                    sending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sending
                listener.cancel()
                sending.result()
            else:
                await self._stream(send)
        finally:
            with contextlib.suppress(Exception):
                await self.body.aclose()
            self.finish()

    async def _stream(self, send) -> None:
        await send({"type": "http.response.start", "status": self.status,
                    "headers": self.headers})
        async for chunk in self.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _disconnect(receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


def create_app(settings: Settings) -> Starlette:
    metrics = Metrics()
    limiter = Limiter(settings.key_limits)
    capabilities: dict[str, tuple[float, list]] = {}
    backend = Upstream(settings.backend_url)
    vision = {entry.model: (entry, Upstream(entry.url)) for entry in settings.vision_backends}

    async def get_json(path: str, timeout: float = 5) -> dict:
        answer = await backend.request("GET", path, timeout=timeout)
        return json.loads(await answer.read())

    async def poll() -> None:
        while True:
            with contextlib.suppress(UpstreamError, ValueError, TimeoutError):
                metrics.record_backend(await get_json("/api/ps"), await get_json("/api/tags"))
            await asyncio.sleep(settings.poll_seconds)

    @asynccontextmanager
    async def lifespan(app):
        poller = asyncio.create_task(poll())
        yield
        poller.cancel()
        await backend.close()
        for _, upstream in vision.values():
            await upstream.close()

    async def model_capabilities(model: str) -> list:
        """The model's capabilities from /api/show, cached for a minute."""
        cached = capabilities.get(model)
        if cached and time.monotonic() - cached[0] < 60:
            return cached[1]
        shown = await backend.request("POST", "/api/show", [("content-type", "application/json")],
                                      json.dumps({"model": model}).encode(), timeout=10)
        data = await shown.read()
        found = json.loads(data).get("capabilities", []) if shown.status == 200 else []
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
        try:
            tags = await get_json("/api/tags")
        except (TimeoutError, UpstreamError, ValueError) as exc:
            return error(503, f"backend {settings.backend_url} is not answering: "
                              f"{exc or type(exc).__name__}")
        names = [m.get("name") for m in tags.get("models", [])]
        if settings.expected_model and settings.expected_model not in names:
            return error(503, f"backend lacks the expected model {settings.expected_model}")
        return JSONResponse({"status": "ready", "models": names})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def proxy(request: Request):
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
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                limiter.release(key.name)

        try:
            answer = await forward(request, path, key.name, cors, release)
        except BaseException:
            release()
            raise
        if not isinstance(answer, Relay):
            release()
        return answer

    async def forward(request: Request, path: str, key_name: str, cors: dict, release):
        """Relay one request; a Relay calls `release` when its response is finished."""
        if path.startswith("/api/blobs/"):
            # Uploads pass through, never held in memory.
            return await relay_upstream(request, path, key_name, cors, release, backend,
                                        request.stream(), "")
        try:
            content = await request.body()
        except ClientDisconnect:
            return Response(status_code=499)
        if len(content) > settings.max_body_bytes:
            metrics.errors.labels("body_too_large").inc()
            return error(413, f"request body exceeds {settings.max_body_bytes} bytes", cors)
        body = None
        if content and (path in GENERATING or path.startswith("/v1/") or request.headers.get(
                "content-type", "").startswith("application/json")):
            with contextlib.suppress(ValueError):
                parsed = json.loads(content)
                body = parsed if isinstance(parsed, dict) else None
        # Malformed JSON goes on: the backend answers it in Ollama's own words.
        model = str(body.get("model") or body.get("name") or "") if body else ""
        if body and path in GENERATING:
            images = images_of(path, body)
            if images:
                try:
                    formats = check_images(images, settings.images)
                except ImageError as exc:
                    metrics.errors.labels("bad_image").inc()
                    return error(400, str(exc), cors)
                if model in vision:
                    return await answer_with_vision(path, body, formats, key_name, model, cors,
                                                    release)
                refusal = await refuse_text_only(model, cors)
                if refusal is not None:
                    return refusal
        if path == "/api/show" and model in vision:
            return await show_with_vision(request, key_name, content, model, cors)
        return await relay_upstream(request, path, key_name, cors, release, backend, content,
                                    model)

    async def show_with_vision(request: Request, key_name: str, content: bytes, model: str,
                               cors: dict) -> Response:
        """Ollama's /api/show for a model with a vision backend: through the gateway it
        takes images, so its capabilities say "vision" (clients and probes look there)."""
        started = time.perf_counter()
        try:
            answer = await backend.request("POST", "/api/show",
                                           [("content-type", "application/json")], content)
            data = await answer.read()
        except UpstreamError as exc:
            metrics.errors.labels("backend_unreachable").inc()
            return error(502, f"backend {backend.url} is not answering: {exc}", cors)
        status = answer.status
        if status == 200:
            with contextlib.suppress(ValueError, AttributeError):
                shown = json.loads(data)
                if "vision" not in shown.setdefault("capabilities", []):
                    shown["capabilities"].append("vision")
                data = json.dumps(shown).encode()
        metrics.duration.labels("/api/show", model, str(status)).observe(
            time.perf_counter() - started)
        access(key_name, "POST", "/api/show", model, status, started, None)
        return Response(data, status_code=status, media_type="application/json", headers=cors)

    async def refuse_text_only(model: str, cors: dict) -> Response | None:
        """A 400 for images to a model that Ollama serves without vision."""
        try:
            found = await model_capabilities(model)
        except (TimeoutError, UpstreamError, ValueError):
            return None  # the backend's own answer will say what is wrong
        if found and "vision" not in found:
            metrics.errors.labels("images_for_text_model").inc()
            return error(400, f"{model} takes text only here (Ollama serves it without vision): "
                              "send no images, or configure a vision backend for it in the "
                              "gateway (vision_backends)", cors)
        return None

    def finisher(key_name: str, method: str, endpoint: str, model: str, started: float,
                 state: dict, watcher: Watcher | None, release) -> Callable[[], None]:
        """What happens once a relayed request is over: metrics, access log, release."""

        def finish() -> None:
            metrics.in_flight.dec()
            release()
            status = state["status"]
            metrics.duration.labels(endpoint, model, str(status)).observe(
                time.perf_counter() - started)
            if status >= 400:
                metrics.errors.labels(state.get("reason") or f"backend_{status}").inc()
            final = None
            if watcher is not None:
                if watcher.first_text_at is not None:
                    metrics.ttft.labels(endpoint, model).observe(watcher.first_text_at - started)
                final = watcher.final
                if final is not None:
                    metrics.record_final(endpoint, model, final)
            access(key_name, method, endpoint, model, status, started, final)

        return finish

    async def relay_upstream(request: Request, path: str, key_name: str, cors: dict, release,
                             upstream: Upstream, content, model: str):
        started = time.perf_counter()
        endpoint = endpoint_of(path)
        headers = [(k.decode("latin-1"), v.decode("latin-1"))
                   for k, v in request.headers.raw if k not in DROPPED_RAW]
        target = path + ("?" + request.url.query if request.url.query else "")
        metrics.in_flight.inc()
        try:
            answer = await upstream.request(request.method, target, headers, content)
        except UpstreamError as exc:
            metrics.in_flight.dec()
            metrics.errors.labels("backend_unreachable").inc()
            access(key_name, request.method, endpoint, model, 502, started, None)
            return error(502, f"backend {upstream.url} is not answering: {exc}", cors)
        except BaseException:
            metrics.in_flight.dec()
            raise
        generating = path in GENERATING or path in OPENAI_GENERATING
        watcher = Watcher(openai=path in OPENAI_GENERATING,
                          sse="event-stream" in (answer.header("content-type") or "")) \
            if generating else None
        state = {"status": answer.status}

        async def body():
            try:
                async for chunk in answer.chunks():
                    if watcher is not None:
                        watcher.feed(chunk)
                    yield chunk
                if watcher is not None:
                    watcher.line(watcher.pending)
            except UpstreamError as exc:
                state.update(status=502, reason="backend_broke_stream")
                line = json.dumps({"error": f"backend stream broke: {exc}"})
                yield (f"data: {line}\n\n" if watcher and watcher.sse else line + "\n").encode()
            finally:
                answer.close()

        response_headers = [(k.encode("latin-1"), v.encode("latin-1"))
                            for k, v in answer.headers if k not in DROPPED]
        response_headers += [(k.lower().encode(), v.encode()) for k, v in cors.items()]
        content_length = answer.header("content-length")
        streamed = content_length is None
        if content_length is not None:
            response_headers.append((b"content-length", content_length.encode()))
        return Relay(answer.status, response_headers, body(),
                     finisher(key_name, request.method, endpoint, model, started, state,
                              watcher, release), streamed)

    async def answer_with_vision(path: str, body: dict, formats: list[str], key_name: str,
                                 model: str, cors: dict, release):
        """Images for a model with a vision backend: ask it, answer in Ollama's format."""
        entry, upstream = vision[model]
        started = time.perf_counter()
        endpoint = endpoint_of(path)
        try:
            request = to_openai(path, body, entry, formats)
        except TranslationError as exc:
            metrics.errors.labels("untranslatable").inc()
            return error(400, str(exc), cors)
        metrics.in_flight.inc()
        try:
            answer = await upstream.request(
                "POST", "/v1/chat/completions", [("content-type", "application/json")],
                json.dumps(request).encode())
        except UpstreamError as exc:
            metrics.in_flight.dec()
            metrics.errors.labels("vision_unavailable").inc()
            access(key_name, "POST", endpoint, model, 503, started, None)
            return error(503, f"the vision backend for {model} ({entry.url}) is not available "
                              f"({exc}); it restarts by itself: retry in a few seconds, or send "
                              "the request without images", {**cors, "Retry-After": "5"})
        except BaseException:
            metrics.in_flight.dec()
            raise
        if answer.status != 200:
            data = await answer.read()
            metrics.in_flight.dec()
            reason = data.decode("utf-8", "replace")[:500]
            with contextlib.suppress(ValueError, AttributeError):
                problem = json.loads(data).get("error")  # OpenAI: {"message"}; others: text
                reason = (problem.get("message") if isinstance(problem, dict) else problem) \
                    or reason
            status = 503 if answer.status == 503 else (
                400 if 400 <= answer.status < 500 else 502)
            metrics.errors.labels(f"vision_{answer.status}").inc()
            access(key_name, "POST", endpoint, model, status, started, None)
            return error(status, f"the vision backend for {model} answered {answer.status}: "
                                 f"{reason}", cors)
        shaper = OllamaShaper(path, model, started)
        watcher = Watcher()
        state = {"status": 200}
        streamed = request["stream"]

        async def body_stream():
            buffer = bytearray()
            try:
                if not streamed:
                    data = await answer.read()
                    final = shaper.final(shaper.note(json.loads(data)))
                    watcher.final = final
                    yield json.dumps(final).encode()
                    return
                async for chunk in answer.chunks():
                    for event in sse_events(buffer, chunk):
                        if event == b"[DONE]":
                            continue
                        text = shaper.note(json.loads(event))
                        if text:
                            piece = shaper.piece(text)
                            watcher.first_text_at = watcher.first_text_at or shaper.first_at
                            yield piece
                final = shaper.final()
                watcher.final = final
                yield (json.dumps(final) + "\n").encode()
            except (UpstreamError, ValueError) as exc:
                state.update(status=502, reason="vision_broke_stream")
                yield (json.dumps({"error": f"vision backend stream broke: {exc}"}) +
                       "\n").encode()
            finally:
                answer.close()

        media = b"application/x-ndjson" if streamed else b"application/json"
        headers = [(b"content-type", media)]
        headers += [(k.lower().encode(), v.encode()) for k, v in cors.items()]
        return Relay(200, headers, body_stream(),
                     finisher(key_name, "POST", endpoint, model, started, state, watcher,
                              release), True)

    def access(key_name, method, endpoint, model, status, started, final) -> None:
        """One JSON line per request: who, what, how long; never prompt or image content."""
        if not log.isEnabledFor(logging.INFO):
            return
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
    tls = {}
    if settings.tls_certfile:
        for path in (settings.tls_certfile, settings.tls_keyfile):
            if not os.access(path, os.R_OK):
                raise SystemExit(f"error: TLS file {path} is missing or unreadable")
        tls = {"ssl_certfile": settings.tls_certfile, "ssl_keyfile": settings.tls_keyfile}
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning",
                access_log=False, server_header=False, backlog=1024,
                timeout_graceful_shutdown=5, **tls)


if __name__ == "__main__":
    main()
