"""The gateway: the one published port, in front of Ollama and the vision service.

Every request is routed from an allow-list on one canonical path (routes.py),
authenticated by API key and scope, held to the key's limits, and its body read
the way Ollama's Go server will read it (gojson.py). Ollama's generate and chat
are then checked (images decoded, the inference policy), re-encoded as checked,
and relayed; answers stream back as the backend sends them (relay.py). Images
for a model with a vision backend go to that backend instead, answered in
Ollama's format (vision.py). A backend that fails is a 502, one that is too slow
a 504; a client that leaves frees its slot and stops the backend's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from . import gojson
from .accesslog import AccessLog
from .config import Settings
from .images import ImageError, check_data_urls, check_images
from .limits import Limiter
from .metrics import Metrics, entries
from .policy import PolicyError, keep_alive_seconds
from .pool import BackendPool, Member, NoMember
from .relay import Relay, Watcher, client_gone, sse_events
from .routes import (
    ADMIN,
    GENERATE,
    INFERENCE,
    JSON,
    METRICS,
    OPENAI,
    PLAIN,
    POOL,
    UPLOAD,
    NotServed,
    PathRefused,
    Route,
    canonical_path,
    match,
)
from .upstream import (
    Upstream,
    UpstreamError,
    UpstreamStale,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from .vision import BackendFailed, OllamaShaper, TranslationError, to_openai

# The only request headers a backend sees (Origin, Referer, Expect, Connection and
# whatever a Connection header names never cross); the only answer headers relayed.
FORWARDED = (b"content-type", b"accept", b"user-agent")
RELAYED = ("content-type",)
# The headers browser SDKs send (ollama-js, OpenAI's JS SDK), for CORS.
BROWSER_HEADERS = ["Authorization", "Content-Type", "User-Agent", "Accept",
                   "X-Requested-With", "OpenAI-Beta", "x-stainless-arch", "x-stainless-async",
                   "x-stainless-custom-poll-interval", "x-stainless-helper-method",
                   "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
                   "x-stainless-poll-helper", "x-stainless-retry-count", "x-stainless-runtime",
                   "x-stainless-runtime-version", "x-stainless-timeout"]


# The admin API of the inference hosts (drain for a rolling upgrade): path -> method.
POOL_API = {b"/gateway/backends": "GET", b"/gateway/drain": "POST", b"/gateway/resume": "POST"}


def _unloads(body: dict | None) -> bool:
    """The request asks Ollama to unload its model once it has answered (keep_alive 0)."""
    if not body or body.get("keep_alive") is None:
        return False
    try:
        return keep_alive_seconds(body["keep_alive"]) == 0
    except PolicyError:
        return False


def _unique_keys(pairs: list) -> dict:
    """json.loads' object hook: a key given twice is refused (which one would count?)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key is given twice")
    return found


class Refusal(Exception):
    """An answer other than the backend's: a status, a reason, maybe headers."""

    def __init__(self, status: int, message: str, reason: str,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason
        self.headers = headers or {}

    def response(self) -> Response:
        return JSONResponse({"error": self.message}, status_code=self.status,
                            headers=self.headers)

    @classmethod
    def of(cls, exc: UpstreamError, backend_name: str = "backend") -> Refusal:
        """What a backend's failure tells the client: no host left to try (503, retry),
        too slow (504) or not answering (502)."""
        if isinstance(exc, NoMember):
            return cls(503, f"{exc}; retry in a few seconds", f"{backend_name}_unavailable",
                       {"Retry-After": "5"})
        if isinstance(exc, UpstreamTimeout):
            return cls(504, f"the {backend_name} is too slow: {exc}",
                       f"{backend_name}_timeout")
        return cls(502, f"the {backend_name} is not answering: {exc}",
                   f"{backend_name}_unreachable")


class ClientGone(Exception):
    """The client went away before its answer began."""


# Bodies larger than this are read, checked and re-encoded on a worker thread, at most
# two at a time, so a large one does not hold up every other client's answer.
INLINE_BYTES = 256 * 1024
# The most of the vision server's /metrics relayed (llama-server's is a few KiB).
VISION_METRICS_LIMIT = 4 * 1024 * 1024


@dataclass
class Plan:
    """What the inspection of a body found: the model, what to forward, the images."""

    model: str
    request: gojson.GoObject
    body: dict | None     # the canonical body of an inference route Ollama reads as a struct
    forward: bytes        # what the backend gets
    formats: list[str]    # the checked images' formats, in order


class Gateway:
    """The gateway's state (settings, metrics, limits, backends) and its ASGI entry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        vision_models = tuple(entry.model for entry in settings.vision_backends)
        self.metrics = Metrics(fixed_models=(settings.expected_model, *vision_models))
        self.limiter = Limiter(settings.key_limits)
        self.pool = BackendPool(settings.backends, self.metrics)
        self.vision = {entry.model: (entry, Upstream(entry.url))
                       for entry in settings.vision_backends}
        self.capabilities: dict[str, tuple[float, list]] = {}
        self._poller: asyncio.Task | None = None
        self.heavy = asyncio.Semaphore(2)
        self.access_log = AccessLog()
        self._readiness: tuple[float, int, dict] = (0.0, 503, {})
        self._readiness_check: asyncio.Future | None = None

    def asgi(self):
        """The app as served: CORS for the configured origins around the gateway."""
        if not self.settings.cors_origins:
            return self  # no browser origin is allowed: nothing for a middleware to do
        return CORSMiddleware(self, allow_origins=list(self.settings.cors_origins),
                              allow_methods=["GET", "POST", "DELETE", "HEAD"],
                              allow_headers=BROWSER_HEADERS, expose_headers=["Retry-After"],
                              max_age=600)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            response = await Call(self, scope, receive).answer()
            await response(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._poller = asyncio.create_task(self._poll())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._poller:
                    self._poller.cancel()
                await self.pool.close()
                for _, upstream in self.vision.values():
                    await upstream.close()
                self.access_log.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def readiness(self) -> tuple[int, dict]:
        """The readiness check in progress, or a new one."""
        if self._readiness_check is None or self._readiness_check.done():
            self._readiness_check = asyncio.ensure_future(self._check_readiness())
        status, body = await asyncio.shield(self._readiness_check)
        self._readiness = (time.monotonic(), status, body)
        return status, body

    async def _check_readiness(self) -> tuple[int, dict]:
        """Ready as soon as one inference host that is not drained answers /api/tags with
        the expected model. All are asked at once and the first good answer decides: a host
        that is down or slow must not make the answer late (keepalived gives the site's
        address up when /readyz takes longer than its check allows)."""
        asks = [asyncio.ensure_future(self.pool.read_json(member, "/api/tags"))
                for member in self.pool.members if not member.draining]
        answered = False
        try:
            for next_answer in asyncio.as_completed(asks):
                try:
                    answer = await next_answer
                except Exception:  # a host that fails is simply not the ready one
                    continue
                if not isinstance(answer, dict):
                    continue
                answered = True
                if self._holds_expected(answer):
                    return 200, {"status": "ready"}
        finally:
            for ask in asks:
                ask.cancel()
        if not answered:
            return 503, {"status": "not ready", "error": "the backend is not answering"}
        return 503, {"status": "not ready", "error": "the backend lacks the expected model"}

    def _holds_expected(self, tags: dict) -> bool:
        expected = self.settings.expected_model
        return not expected or any(expected == model.get("name") for model in entries(tags))

    async def _poll(self) -> None:
        """The inference hosts' checks: what each holds and has loaded (for the choice), the
        models for the metrics and their labels; and whether the vision backends are ready."""
        while True:
            try:
                answering = await self.pool.check_all()
                if answering:
                    self.metrics.record_models(
                        [str(model.get("name", "")) for member in answering
                         for model in entries(member.answers["tags"])],
                        {"models": [model for member in answering
                                    for model in entries(member.answers["ps"])]})
            except asyncio.CancelledError:
                raise
            except Exception:
                # The poller must outlive anything, or backend_up would stay at its last value.
                answering = []
            self.metrics.backend_up.labels("ollama").set(int(bool(answering)))
            if self.vision:
                self.metrics.backend_up.labels("vision").set(int(await self._vision_ready()))
            await asyncio.sleep(self.settings.poll_seconds)

    async def _vision_ready(self) -> bool:
        """Every vision backend is ready for a request.

        llama-server's /health is 200 once its model is loaded (503 while loading). A server
        without that endpoint answers 404 (llama-cpp-python's, the lab's): its HTTP loop runs,
        which is as much as it can say; its other endpoints wait behind a running generation."""
        for _, upstream in self.vision.values():
            if await self._status(upstream, "/health") not in (200, 404):
                return False
        return True

    @staticmethod
    async def _status(upstream: Upstream, path: str) -> int:
        """The status of a GET, 0 when the backend cannot be reached or is too slow."""
        try:
            answer = await upstream.request("GET", path, timeout=5, idle_timeout=5)
            await answer.read(limit=1024 * 1024)
        except asyncio.CancelledError:
            raise
        except Exception:
            return 0
        return answer.status

    async def model_capabilities(self, model: str) -> list:
        """A known model's capabilities from /api/show, cached for a minute."""
        cached = self.capabilities.get(model)
        if cached and time.monotonic() - cached[0] < 60:
            return cached[1]
        answer = await self.pool.choose(model).upstream.request(
            "POST", "/api/show", [("content-type", "application/json")],
            gojson.encode({"model": model}), timeout=10, idle_timeout=10)
        data = await answer.read(limit=64 * 1024 * 1024)
        found = json.loads(data).get("capabilities", []) if answer.status == 200 else []
        self.capabilities[model] = (time.monotonic(), found)
        return found

    def access(self, key: str, method: str, endpoint: str, model: str, status: int,
               started: float, final: dict | None) -> None:
        """One JSON line per request: who, what, how long; never prompt or image content."""
        entry = {"key": key, "method": method, "endpoint": endpoint,
                 "model": self.metrics.model(model), "status": status,
                 "duration_s": round(time.perf_counter() - started, 4)}
        if final:
            entry.update(prompt_tokens=final.get("prompt_eval_count"),
                         completion_tokens=final.get("eval_count"))
        self.access_log.write(entry)


class Call:
    """One request from its first byte to its last: route, key, body, answer."""

    def __init__(self, gateway: Gateway, scope, receive) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.metrics = gateway.metrics
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.started = time.perf_counter()
        self.key = None
        self.route: Route | None = None
        self.label = "unrouted"
        self.model = ""
        self.released = True
        self.replays = 0
        self.generated = False   # an inference that leaves its model loaded where it ran

    # --- the way in ----------------------------------------------------------------------

    async def answer(self):
        try:
            return await self._answer()
        except Refusal as refusal:
            self.release()
            self.metrics.errors.labels(refusal.reason).inc()
            self.gateway.access(self.key.name if self.key else "-", self.method, self.label,
                                self.model, refusal.status, self.started, None)
            return refusal.response()
        except ClientGone:
            self.release()
            return Response(status_code=499)
        except BaseException:
            self.release()
            raise

    async def _answer(self):
        raw_path = self.scope.get("raw_path") or self.scope["path"].encode()
        own = {b"/healthz": self.healthz, b"/readyz": self.readyz, b"/metrics": self.scrape,
               b"/metrics/vision": self.scrape_vision}
        if raw_path in own and self.method == "GET":
            return await own[raw_path]()
        if raw_path in POOL_API:
            return await self.pool_api(raw_path)
        try:
            path = canonical_path(raw_path)
            route = match(self.method, path)
        except PathRefused as exc:
            raise Refusal(400, f"path refused: {exc}", "bad_path") from None
        except NotServed as exc:
            if exc.allowed:
                raise Refusal(405, str(exc), "method_not_allowed",
                              {"Allow": ", ".join(sorted(exc.allowed))}) from None
            raise Refusal(404, str(exc), "not_found") from None
        self.route, self.label = route, route.label
        self.authenticate(route.scope)
        declared = self.header(b"content-length")
        limit = self.settings.limits.max_upload_bytes if route.kind == UPLOAD \
            else self.settings.max_body_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise Refusal(413, f"request body of {declared} bytes exceeds the limit of "
                               f"{limit} bytes", "body_too_large", {"Connection": "close"})
        allowed, reason, retry_after = self.gateway.limiter.acquire(self.key.name)
        if not allowed:
            raise Refusal(429, reason, "rate_limited", {"Retry-After": str(retry_after)})
        self.released = False
        response = await self.dispatch(route, path)
        if not isinstance(response, Relay):
            self.release()
        return response

    def header(self, name: bytes) -> str | None:
        for key, value in self.scope["headers"]:
            if key == name:
                return value.decode("latin-1")
        return None

    def authenticate(self, scope: str, *alternatives: str) -> None:
        """The key presented, if it holds `scope` (or one of `alternatives`)."""
        presented = self.header(b"authorization") or ""
        if not presented.lower().startswith("bearer "):
            self.metrics.auth_failures.labels("missing").inc()
            raise Refusal(401, "missing API key: send 'Authorization: Bearer <key>'", "auth")
        self.key = self.settings.keyring.find(presented[7:].strip())
        if self.key is None:
            self.metrics.auth_failures.labels("invalid").inc()
            raise Refusal(401, "invalid API key", "auth")
        if self.key.scopes.isdisjoint((scope, *alternatives)):
            self.metrics.auth_failures.labels("scope").inc()
            raise Refusal(403, f"key '{self.key.name}' lacks the {scope} scope that "
                               f"{self.label} needs", "auth")

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.gateway.limiter.release(self.key.name)

    async def body(self) -> bytes:
        """The whole request body, refused as soon as it outgrows the limit (chunked too)."""
        return b"".join([chunk async for chunk in self.arriving(self.settings.max_body_bytes)])

    async def arriving(self, limit: int, total: bool = True):
        """The request body as it arrives, counted: a 413 the moment it passes `limit`, a
        408 when it stalls longer than `body_idle_timeout` or (`total`) takes longer than
        `body_timeout` in all (a blob upload, a model file, has no total)."""
        limits = self.settings.limits
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.body_timeout if total else None
        size = 0
        while True:
            wait = limits.body_idle_timeout
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
            try:
                async with asyncio.timeout(max(wait, 0.001)):
                    message = await self.receive()
            except TimeoutError:
                raise Refusal(408, "the request body arrives too slowly", "body_too_slow",
                              {"Connection": "close"}) from None
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Refusal(413, f"request body exceeds the limit of {limit} bytes",
                              "body_too_large", {"Connection": "close"})
            yield chunk
            if not message.get("more_body"):
                return

    # --- what each kind of route does -------------------------------------------------------

    async def dispatch(self, route: Route, path: str):
        if route.kind == UPLOAD:  # a model file: passed on as it arrives, never held
            return await self.relay(path, self.arriving(self.settings.limits.max_upload_bytes,
                                                        total=False), watch=False)
        content = await self.body()
        if route.kind == PLAIN:
            return await self.relay(path, content)
        if len(content) > INLINE_BYTES:
            async with self.gateway.heavy:
                plan = await asyncio.to_thread(self.inspect, route, path, content)
        else:
            plan = self.inspect(route, path, content)
        self.model = plan.model
        self.generated = route.slow and route.scope == INFERENCE and not _unloads(plan.body)
        vision = self.model in self.gateway.vision
        if route.kind == GENERATE and plan.formats:
            if vision:
                return await self.ollama_with_vision(path, plan.body, plan.formats)
            await self.refuse_text_only()
        elif route.kind == OPENAI and plan.formats:
            if vision:
                return await self.openai_with_vision(plan.request)
            await self.refuse_text_only()
        elif route.kind == JSON and path == "/api/show" and vision:
            return await self.show_with_vision(plan.forward)
        return await self.relay(path, plan.forward)

    def inspect(self, route: Route, path: str, content: bytes) -> Plan:
        """Read the body as Ollama's Go server will, check it, and decide what to forward:
        for an inference route Ollama reads as a struct, the canonical body as checked."""
        try:
            request = gojson.parse_object(content)
            model = request.scalar("model") or request.scalar("name") or ""
            if not isinstance(model, str):
                raise gojson.BodyError("model must be a string")
            body = gojson.canonical(path, request) if route.scope == INFERENCE else None
            if body is not None and ADMIN not in self.key.scopes:
                self.settings.policy.check(self.key.name, body)
            formats = []
            if route.kind == GENERATE:
                images = gojson.images_of(path, body)
                formats = check_images(images, self.settings.images) if images else []
            elif route.kind == OPENAI:
                urls = gojson.openai_images(request)
                formats = check_data_urls(urls, self.settings.images) if urls else []
        except (gojson.BodyError, PolicyError, ImageError) as exc:
            raise Refusal(400, str(exc), type(exc).__name__.lower()) from None
        forward = gojson.encode(body) if body is not None else content
        return Plan(model, request, body, forward, formats)

    async def openai_with_vision(self, request: gojson.GoObject):
        """OpenAI-style chat with images, for a model with a vision backend: passed to it."""
        entry, upstream = self.gateway.vision[self.model]
        forwarded = {key: value for key, value in request.pairs if gojson.go_fold(key) != "MODEL"}
        forwarded["model"] = entry.upstream_model
        return await self.relay("/v1/chat/completions", gojson.encode(forwarded),
                                backend_name="vision", upstream=upstream)

    async def refuse_text_only(self) -> None:
        """A 400 for images to a model that Ollama serves without vision."""
        if self.model not in self.metrics.known_models:
            return  # the backend will say it has no such model
        try:
            found = await self.gateway.model_capabilities(self.model)
        except (UpstreamError, ValueError):
            return  # the backend's own answer will say what is wrong
        if found and "vision" not in found:
            raise Refusal(400, f"{self.model} takes text only here (Ollama serves it without "
                               "vision): send no images, or configure a vision backend for it "
                               "in the gateway (vision_backends)", "images_for_text_model")

    # --- talking to a backend ---------------------------------------------------------------

    def forwarded_headers(self) -> list[tuple[str, str]]:
        return [(name.decode("latin-1"), value.decode("latin-1"))
                for name, value in self.scope["headers"] if name in FORWARDED]

    def timeouts(self) -> tuple[float, float]:
        limits = self.settings.limits
        if self.route is not None and self.route.slow:
            return limits.generation_timeout, limits.stream_idle_timeout
        return limits.backend_timeout, limits.backend_timeout

    async def ask(self, upstream: Upstream, method: str, target: str, headers, body,
                  watch: bool = True):
        """The backend's answer head, or ClientGone when the client leaves first (the
        backend's connection is then closed: it stops working for nobody)."""
        timeout, idle = self.timeouts()
        asking = upstream.request(method, target, headers, body, timeout=timeout,
                                  idle_timeout=idle)
        if not watch or not self.route.slow:
            # An upload reads the client as it goes (it notices a departure itself); a quick
            # answer is bounded by backend_timeout, and watching for departures costs two
            # tasks a request.
            return await asking
        asking = asyncio.ensure_future(asking)
        leaving = asyncio.ensure_future(client_gone(self.receive))
        try:
            await asyncio.wait((asking, leaving), return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
        if not asking.done():
            asking.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                await asking
            raise ClientGone()
        return asking.result()

    async def relay(self, target: str, content, watch: bool = True,
                    backend_name: str = "backend", upstream: Upstream | None = None):
        """Send the request on (to `upstream`, else to an inference host of the pool) and
        relay the answer as it comes."""
        self.metrics.in_flight.inc()
        try:
            if upstream is not None:
                answer, member = await self.attempt(upstream, target, content, watch,
                                                    backend_name), None
            else:
                answer, member = await self.pooled(target, content, watch)
        except BaseException:
            self.metrics.in_flight.dec()
            raise
        sse = "event-stream" in (answer.header("content-type") or "")
        watcher = Watcher(openai=target.startswith("/v1/"), sse=sse) \
            if self.route.slow and self.route.kind in (GENERATE, OPENAI) else None
        state = {"status": answer.status}

        async def body():
            try:
                async for chunk in answer.chunks():
                    if watcher is not None:
                        watcher.feed(chunk)
                    yield chunk
                if watcher is not None:
                    watcher.close()
            except UpstreamError as exc:
                state.update(status=504 if isinstance(exc, UpstreamTimeout) else 502,
                             reason=f"{backend_name}_broke_stream")
                line = json.dumps({"error": f"the {backend_name} broke the answer: {exc}"})
                yield (f"data: {line}\n\n" if sse else line + "\n").encode()
            finally:
                answer.close()

        headers = [(name.encode(), value.encode("latin-1")) for name, value in answer.headers
                   if name in RELAYED]
        length = answer.header("content-length")
        if length is not None and length.isdigit():
            headers.append((b"content-length", length.encode()))
        return Relay(answer.status, headers, body(), self.finisher(state, watcher, member),
                     self.settings.limits.stream_idle_timeout, watch=self.route.slow)

    async def attempt(self, upstream: Upstream, target: str, content, watch: bool,
                      backend_name: str):
        """The answer head of one backend; a 504 or 502 refusal when it fails."""
        try:
            return await self.ask(upstream, self.method, target, self.forwarded_headers(),
                                  content, watch)
        except UpstreamError as exc:
            raise Refusal.of(exc, backend_name) from None

    async def pooled(self, target: str, content, watch: bool) -> tuple:
        """The answer head of an inference host, by the pool's choice and retry rule
        (pool.py): another host when this one could not be reached, closed the connection
        before answering, or answered 503, as long as the client has had nothing."""
        pool = self.gateway.pool
        if self.route.scope == ADMIN and not pool.single:
            raise Refusal(409, f"{self.label} changes one Ollama's store, and this gateway "
                               f"fronts {len(pool.members)} inference hosts: load models with "
                               "deploy.yml (from the bundle), which reaches every host",
                          "admin_on_pool")
        retry = self.route.scope != ADMIN and isinstance(content, bytes | bytearray)
        tried: set[str] = set()
        while True:
            try:
                member = pool.choose(self.model, frozenset(tried))
            except NoMember as exc:
                raise Refusal.of(exc) from None
            tried.add(member.name)
            answer = await self.attempt_member(
                member, target, content, watch,
                retry and pool.has_other(self.model, frozenset(tried)))
            if answer is not None:
                return answer, member

    async def attempt_member(self, member: Member, target: str, content, watch: bool,
                             may_retry: bool):
        """One inference host's answer head; None when the request should go to another."""
        pool = self.gateway.pool
        pool.acquire(member)
        try:
            answer = await self.ask(member.upstream, self.method, target,
                                    self.forwarded_headers(), content, watch)
        except UpstreamTimeout as exc:
            pool.release(member)
            pool.failed(member, "timeout")
            raise Refusal.of(exc) from None
        except UpstreamError as exc:
            pool.release(member)
            # A kept-alive connection the host closed says nothing about the host.
            reason = "stale" if isinstance(exc, UpstreamStale) else "unreachable"
            # A host that was never reached never saw the request: try the next, whatever
            # their number. One that took it and then failed may have failed because of it
            # (a prompt that exhausts its memory): it is sent again once, not to every host.
            replay = not isinstance(exc, UpstreamUnreachable)
            may_retry = may_retry and not (replay and self.replays)
            self.replays += replay and may_retry
            pool.failed(member, reason, retried=may_retry)
            if may_retry:
                return None
            raise Refusal.of(exc) from None
        except BaseException:
            pool.release(member)
            raise
        if answer.status == 503 and may_retry:  # Ollama's queue is full: try another host
            answer.close()
            pool.release(member)
            pool.failed(member, "busy", retried=True)
            return None
        return answer

    def finisher(self, state: dict, watcher: Watcher | None, member: Member | None = None):
        """What happens once a relayed answer is over: metrics, access log, the key's slot,
        the inference host's count (and, when it answered well, the model it now holds)."""

        def finish() -> None:
            self.metrics.in_flight.dec()
            self.release()
            status, model = state["status"], self.metrics.model(self.model)
            if member is not None:
                self.gateway.pool.release(member)
                if status == 200 and self.generated:
                    self.gateway.pool.served(member, self.model)
                elif state.get("reason"):
                    self.gateway.pool.failed(member, "broke_stream")
            self.metrics.duration.labels(self.label, model, str(status)).observe(
                time.perf_counter() - self.started)
            if status >= 400:
                self.metrics.errors.labels(state.get("reason") or f"backend_{status}").inc()
            final = None
            if watcher is not None:
                if watcher.first_text_at is not None:
                    self.metrics.ttft.labels(self.label, model).observe(
                        watcher.first_text_at - self.started)
                final = watcher.final
                if final is not None:
                    self.metrics.record_final(model, final)
            self.gateway.access(self.key.name, self.method, self.label, self.model, status,
                                self.started, final)

        return finish

    # --- the vision backend ----------------------------------------------------------------

    async def ollama_with_vision(self, path: str, body: dict, formats: list[str]):
        """Images for a model with a vision backend: ask it, answer in Ollama's format."""
        entry, upstream = self.gateway.vision[self.model]
        try:
            request = to_openai(path, body, entry, formats)
        except TranslationError as exc:
            raise Refusal(400, str(exc), "untranslatable") from None
        self.metrics.in_flight.inc()
        try:
            answer = await self.ask(upstream, "POST", "/v1/chat/completions",
                                    [("content-type", "application/json")],
                                    gojson.encode(request))
        except UpstreamError as exc:
            self.metrics.in_flight.dec()
            status = 504 if isinstance(exc, UpstreamTimeout) else 503
            raise Refusal(status, f"the vision backend for {self.model} is not available "
                                  f"({exc}); it restarts by itself: retry in a few seconds, or "
                                  "send the request without images", "vision_unavailable",
                          {"Retry-After": "5"}) from None
        except BaseException:
            self.metrics.in_flight.dec()
            raise
        if answer.status != 200:
            self.metrics.in_flight.dec()
            raise await self.vision_refusal(answer)
        shaper = OllamaShaper(path, self.model, self.started)
        watcher = Watcher()
        state = {"status": 200}
        streamed = request["stream"]

        async def stream():
            try:
                if not streamed:
                    final = shaper.final(shaper.note(json.loads(await answer.read())))
                    watcher.final = final
                    yield gojson.encode(final)
                    return
                buffer = bytearray()
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
                yield gojson.encode(final) + b"\n"
            except (UpstreamError, ValueError, BackendFailed) as exc:
                state.update(status=502, reason="vision_broke_stream")
                yield gojson.encode({"error": f"the vision backend broke the answer: {exc}"}) \
                    + b"\n"
            finally:
                answer.close()

        media = b"application/x-ndjson" if streamed else b"application/json"
        return Relay(200, [(b"content-type", media)], stream(), self.finisher(state, watcher),
                     self.settings.limits.stream_idle_timeout)

    async def vision_refusal(self, answer) -> Refusal:
        data = await answer.read(limit=1024 * 1024)
        reason = data.decode("utf-8", "replace")[:500]
        with contextlib.suppress(ValueError, AttributeError):
            problem = json.loads(data).get("error")  # OpenAI: {"message"}; others: text
            reason = (problem.get("message") if isinstance(problem, dict) else problem) or reason
        status = 503 if answer.status == 503 else (400 if 400 <= answer.status < 500 else 502)
        return Refusal(status, f"the vision backend for {self.model} answered {answer.status}: "
                               f"{reason}", f"vision_{answer.status}")

    async def show_with_vision(self, content: bytes):
        """Ollama's /api/show for a model with a vision backend: through the gateway it
        takes images, so its capabilities say "vision" (clients and probes look there)."""
        timeout, idle = self.timeouts()
        try:
            answer = await self.gateway.pool.choose(self.model).upstream.request(
                "POST", "/api/show", [("content-type", "application/json")], content,
                timeout=timeout, idle_timeout=idle)
            data = await answer.read()
        except NoMember as exc:
            raise Refusal.of(exc) from None
        except UpstreamError as exc:
            # A timeout here was always a 502 ("not answering"), unlike a relayed answer's.
            raise Refusal(502, f"the backend is not answering: {exc}",
                          "backend_unreachable") from None
        if answer.status == 200:
            with contextlib.suppress(ValueError, AttributeError):
                shown = json.loads(data)
                if "vision" not in shown.setdefault("capabilities", []):
                    shown["capabilities"].append("vision")
                data = gojson.encode(shown)
        self.metrics.duration.labels(self.label, self.metrics.model(self.model),
                                     str(answer.status)).observe(
            time.perf_counter() - self.started)
        self.gateway.access(self.key.name, "POST", self.label, self.model, answer.status,
                            self.started, None)
        return Response(data, status_code=answer.status, media_type="application/json")

    # --- the gateway's own endpoints ---------------------------------------------------------

    async def healthz(self) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self) -> Response:
        """Anonymous: ready or not, never where the backend is or what it holds. The answer
        is kept for a second, and one check serves every request that waits for it, so
        anonymous clients cannot make the backends work for them."""
        stamp, status, body = self.gateway._readiness
        if time.monotonic() - stamp > 1.0:
            status, body = await self.gateway.readiness()
        return JSONResponse(body, status_code=status)

    async def pool_api(self, raw_path: bytes) -> Response:
        """Pool or admin keys only: the inference hosts' state (GET /gateway/backends), or
        one of them drained or resumed (POST /gateway/drain or /gateway/resume,
        {"backend": NAME}). A drained host gets no new request; its requests in flight
        finish."""
        self.label = raw_path.decode("ascii")
        if self.method != POOL_API[raw_path]:
            raise Refusal(405, f"{self.label} takes {POOL_API[raw_path]}", "method_not_allowed",
                          {"Allow": POOL_API[raw_path]})
        self.authenticate(POOL, ADMIN)
        pool = self.gateway.pool
        if self.method == "GET":
            return JSONResponse({"backends": pool.states()})
        try:
            request = json.loads(await self.body(), object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError):
            raise Refusal(400, "the body must be JSON: {\"backend\": NAME}, each key once",
                          "bad_body") from None
        if not isinstance(request, dict) or set(request) != {"backend"} or \
                not isinstance(request["backend"], str):
            raise Refusal(400, "the body must be {\"backend\": NAME}, nothing else", "bad_body")
        if request["backend"] not in pool.by_name:
            raise Refusal(404, f"no backend named {request['backend']!r}; this gateway has "
                               f"{sorted(pool.by_name)}", "not_found")
        member = pool.drain(request["backend"], draining=raw_path == b"/gateway/drain")
        self.gateway.access(self.key.name, self.method, self.label, "", 200, self.started, None)
        return JSONResponse({"backend": member.state()})

    async def scrape(self) -> Response:
        self.label = "/metrics"
        self.authenticate(METRICS)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def scrape_vision(self) -> Response:
        """The vision server's own metrics (llama-server's llamacpp:*), relayed: the vision
        server publishes no port, and Prometheus reads every target through the gateway."""
        self.label = "/metrics/vision"
        self.authenticate(METRICS)
        if not self.gateway.vision:
            raise Refusal(404, "this gateway has no vision backend", "not_found")
        _entry, upstream = next(iter(self.gateway.vision.values()))
        try:
            # One deadline for the whole answer: a server that drips bytes holds no scrape.
            async with asyncio.timeout(8):
                answer = await upstream.request("GET", "/metrics", timeout=5, idle_timeout=5)
                data = await answer.read(limit=VISION_METRICS_LIMIT)
        except TimeoutError:
            raise Refusal(504, "the vision backend's metrics took longer than 8 s",
                          "vision_metrics") from None
        except UpstreamError as exc:
            raise Refusal(502, f"the vision backend's metrics are not answering: {exc}",
                          "vision_metrics") from None
        if answer.status != 200:
            raise Refusal(502, f"the vision backend answered {answer.status} for its metrics "
                               "(llama-server needs --metrics)", "vision_metrics")
        return Response(data, media_type=CONTENT_TYPE_LATEST)
