"""The endpoints the gateway serves: an allow-list, matched on one canonical path.

A request is routed from this table or refused: nothing else reaches a backend.
The path is taken as the client sent it (ASGI ``raw_path``), decoded once, and
must then match a route exactly; the backend gets that decoded, canonical path,
which holds no ``%`` at all — so a backend that decodes paths again (Go's
net/http does) sees exactly what the gateway checked. ``%25`` (an encoded
``%``), an encoded ``/`` or ``\\``, control characters and anything that is not
printable ASCII after decoding are refused with a 400 before any lookup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

INFERENCE = "inference"
ADMIN = "admin"
METRICS = "metrics"
# The pool's own endpoints (/gateway/backends, drain, resume) and nothing else: the key a
# rolling deploy holds to take an inference host out and put it back.
POOL = "pool"
SCOPES = frozenset({INFERENCE, ADMIN, METRICS, POOL})

# What the gateway does with a route's body.
PLAIN = "plain"            # relayed as it is (no body, or one the gateway need not read)
JSON = "json"              # parsed as Go parses it for the model name (metrics, policy)
GENERATE = "generate"      # Ollama's generate/chat: checked, policed, re-encoded, maybe vision
OPENAI = "openai"          # OpenAI-compatible chat/completions: images checked, maybe vision
UPLOAD = "upload"          # a blob: streamed through, counted against the upload limit


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    scope: str
    kind: str
    label: str             # the metrics label: the route's path template
    slow: bool = False     # answers only after generating (a long wait for headers)


def _route(methods: str, scope: str, kind: str, label: str, slow: bool = False) -> Route:
    return Route(frozenset(methods.split()), scope, kind, label, slow)


STATIC: dict[str, Route] = {
    "/": _route("GET HEAD", INFERENCE, PLAIN, "/"),
    "/api/version": _route("GET HEAD", INFERENCE, PLAIN, "/api/version"),
    "/api/tags": _route("GET HEAD", INFERENCE, PLAIN, "/api/tags"),
    "/api/ps": _route("GET", INFERENCE, PLAIN, "/api/ps"),
    "/api/show": _route("POST", INFERENCE, JSON, "/api/show"),
    "/api/generate": _route("POST", INFERENCE, GENERATE, "/api/generate", slow=True),
    "/api/chat": _route("POST", INFERENCE, GENERATE, "/api/chat", slow=True),
    "/api/embed": _route("POST", INFERENCE, JSON, "/api/embed", slow=True),
    "/api/embeddings": _route("POST", INFERENCE, JSON, "/api/embeddings", slow=True),
    "/v1/chat/completions": _route("POST", INFERENCE, OPENAI, "/v1/chat/completions",
                                   slow=True),
    "/v1/completions": _route("POST", INFERENCE, OPENAI, "/v1/completions", slow=True),
    "/v1/embeddings": _route("POST", INFERENCE, JSON, "/v1/embeddings", slow=True),
    "/v1/models": _route("GET", INFERENCE, PLAIN, "/v1/models"),
    "/api/pull": _route("POST", ADMIN, JSON, "/api/pull", slow=True),
    "/api/push": _route("POST", ADMIN, JSON, "/api/push", slow=True),
    "/api/create": _route("POST", ADMIN, JSON, "/api/create", slow=True),
    "/api/copy": _route("POST", ADMIN, JSON, "/api/copy"),
    "/api/delete": _route("DELETE", ADMIN, JSON, "/api/delete"),
}
BLOB = _route("POST HEAD", ADMIN, UPLOAD, "/api/blobs/:digest", slow=True)
MODEL = _route("GET", INFERENCE, PLAIN, "/v1/models/:model")
_BLOB = re.compile(r"/api/blobs/(sha256[:-][0-9a-fA-F]{64})")
# An Ollama model name: [host/][namespace/]model[:tag], no empty or dot-only part.
_MODEL = re.compile(r"/v1/models/([A-Za-z0-9_][A-Za-z0-9_.-]*(?::[0-9]+)?"
                    r"(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*){0,2}(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?)")
# Printable ASCII without space, '%' or '\\' (after decoding, a path holds only these).
_PRINTABLE = re.compile(rb"[!-$&-\[\]-~]*")
_FORBIDDEN_ESCAPES = re.compile(rb"%(25|2f|5c|00)", re.IGNORECASE)


class PathRefused(ValueError):
    """400: the path cannot be made canonical. The message says why."""


class NotServed(LookupError):
    """404: no such endpoint here (or 405 when `allowed` names the methods it has)."""

    def __init__(self, message: str, allowed: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.allowed = allowed


def canonical_path(raw_path: bytes) -> str:
    """The path decoded once, refused if it could mean something else to a backend."""
    if not _PRINTABLE.fullmatch(raw_path.replace(b"%", b"$")):
        raise PathRefused("the path holds spaces, control or non-ASCII characters")
    if _FORBIDDEN_ESCAPES.search(raw_path):
        raise PathRefused("the path holds an encoded '%', '/', '\\' or NUL")
    decoded = unquote_to_bytes(raw_path)
    if not _PRINTABLE.fullmatch(decoded) or b"%" in decoded:
        raise PathRefused("the path decodes to characters no endpoint has")
    return decoded.decode("ascii")


def match(method: str, path: str) -> Route:
    """The route for a canonical path and method; NotServed otherwise."""
    route = STATIC.get(path)
    if route is None:
        if _BLOB.fullmatch(path):
            route = BLOB
        elif _MODEL.fullmatch(path) and ".." not in path:
            route = MODEL
    if route is None:
        raise NotServed(f"{path} is not an endpoint of this gateway")
    if method not in route.methods:
        raise NotServed(f"{path} does not take {method}", route.methods)
    return route
