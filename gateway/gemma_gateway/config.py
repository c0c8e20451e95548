"""The gateway's configuration, parsed once into a typed object; anything malformed refused."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from .auth import ApiKey, Keyring
from .images import ImageLimits
from .limits import KeyLimits
from .policy import InferencePolicy
from .pool import MAX_MEMBERS, NAME, BackendSpec
from .routes import INFERENCE, SCOPES
from .vision import VisionBackend

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ServerLimits:
    """What one client may cost the gateway before it is refused or cut off."""

    max_header_bytes: int = 32 * 1024      # request line and headers together (431 beyond)
    max_headers: int = 100                 # header lines (431 beyond)
    header_timeout: float = 10.0           # seconds to send the request line and headers
    body_idle_timeout: float = 30.0        # a request body that stalls this long: 408
    body_timeout: float = 300.0            # a request body (not a blob upload) in all: 408
    max_connections: int = 1024            # beyond: 503
    backend_timeout: float = 30.0          # backend's headers, metadata endpoints (504)
    generation_timeout: float = 600.0      # backend's headers when it generates first (504)
    stream_idle_timeout: float = 120.0     # a backend silent, or a client not reading, this long
    max_upload_bytes: int = 64 * 1024 ** 3  # one /api/blobs upload (a model file)


KNOWN = {"backend_url", "backends", "keys", "cors_origins", "max_body_bytes", "expected_model",
         "images", "key_limits", "poll_seconds", "vision_backends", "tls", "inference_policy",
         "limits"}


@dataclass(frozen=True)
class Settings:
    # The inference hosts' Ollama, one or more (`backends`), or one by `backend_url`.
    backends: tuple[BackendSpec, ...] = (BackendSpec("ollama", "http://ollama:11434"),)
    keyring: Keyring = field(default_factory=lambda: Keyring([]))
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 1024 * 1024
    expected_model: str = ""
    images: ImageLimits = field(default_factory=ImageLimits)
    key_limits: KeyLimits = field(default_factory=KeyLimits)
    poll_seconds: float = 15.0
    vision_backends: tuple[VisionBackend, ...] = ()
    tls_certfile: str = ""
    tls_keyfile: str = ""
    policy: InferencePolicy = field(default_factory=InferencePolicy)
    limits: ServerLimits = field(default_factory=ServerLimits)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> Settings:
        """Read GATEWAY_CONFIG (JSON) or the given file; refuse anything malformed."""
        path = path or os.environ.get("GATEWAY_CONFIG")
        try:
            raw = json.loads(Path(path).read_text()) if path else {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"gateway configuration {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"gateway configuration {path} must be a JSON object")
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict) -> Settings:
        unknown = set(raw) - KNOWN
        if unknown:
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(KNOWN)}")
        tls = raw.get("tls") or {}
        if bool(tls.get("certfile")) != bool(tls.get("keyfile")):
            raise ConfigError("tls needs both 'certfile' and 'keyfile' (or neither)")
        try:
            return cls(
                backends=_backends(raw),
                keyring=Keyring([_key(index, entry)
                                 for index, entry in enumerate(raw.get("keys", []))]),
                cors_origins=tuple(_origin(origin) for origin in raw.get("cors_origins", [])),
                max_body_bytes=int(raw.get("max_body_bytes", cls.max_body_bytes)),
                expected_model=str(raw.get("expected_model", "")),
                images=ImageLimits(**raw.get("images", {})),
                key_limits=KeyLimits(**raw.get("key_limits", {})),
                poll_seconds=float(raw.get("poll_seconds", 15.0)),
                vision_backends=tuple(_vision(entry) for entry in raw.get("vision_backends", [])),
                tls_certfile=str(tls.get("certfile") or ""),
                tls_keyfile=str(tls.get("keyfile") or ""),
                policy=InferencePolicy.from_dict(raw.get("inference_policy", {})),
                limits=_limits(raw.get("limits", {})),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"gateway configuration: {exc}") from None


def _backends(raw: dict) -> tuple[BackendSpec, ...]:
    """`backends` (a list of {name, url, parallel}), or the one `backend_url`."""
    if "backends" in raw and "backend_url" in raw:
        raise ConfigError("give 'backends' or 'backend_url', not both")
    if "backends" not in raw:
        url = str(raw.get("backend_url", Settings.backends[0].url))
        return (_backend({"name": "ollama", "url": url}),)
    entries = raw["backends"]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_MEMBERS:
        raise ConfigError(f"backends must list 1 to {MAX_MEMBERS} inference hosts")
    specs = tuple(_backend(entry) for entry in entries)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"backends: every name must be different, got {names}")
    return specs


def _backend(entry: dict) -> BackendSpec:
    if not isinstance(entry, dict) or set(entry) - {"name", "url", "parallel"}:
        raise ConfigError(f"backend {entry!r}: give 'name', 'url' and optionally 'parallel'")
    name, url = str(entry.get("name", "")), str(entry.get("url", ""))
    if not NAME.fullmatch(name):
        raise ConfigError(f"backend name {name!r}: 1 to 63 letters, digits, '.', '_' or '-'")
    if not _plain_http(url):
        raise ConfigError(f"backend {name!r}: url must be http://host:port (Ollama on the "
                          f"stack's network or the site network), got {url!r}")
    parallel = entry.get("parallel", 1)
    if not isinstance(parallel, int) or isinstance(parallel, bool) or not 1 <= parallel <= 1024:
        raise ConfigError(f"backend {name!r}: parallel must be a whole number from 1 to 1024")
    return BackendSpec(name=name, url=url.rstrip("/"), parallel=parallel)


def _plain_http(url: str) -> bool:
    """http://host[:port][/]: a name (letters, digits, '.', '_', '-'), an IPv4 address or a
    bracketed IPv6 one, a port from 1 to 65535; nothing else (no user, path or query)."""
    try:
        parts = urlsplit(url)
        port, host = parts.port, parts.hostname
    except ValueError:
        return False
    if parts.scheme != "http" or not host or parts.username is not None or \
            parts.path not in ("", "/") or parts.query or parts.fragment or port == 0:
        return False
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", host) is not None


def _key(index: int, entry: dict) -> ApiKey:
    name = entry.get("name") or f"key-{index}"
    digest = str(entry.get("sha256", "")).lower()
    if not _SHA256.match(digest):
        raise ConfigError(f"key {name!r}: sha256 must be 64 hex digits (the hash, never the key "
                          "itself)")
    scopes = entry.get("scopes", [INFERENCE])
    if not isinstance(scopes, list) or not scopes:
        raise ConfigError(f"key {name!r}: scopes must list at least one of {sorted(SCOPES)}")
    unknown = set(scopes) - SCOPES
    if unknown:
        raise ConfigError(f"key {name!r}: unknown scope(s) {sorted(unknown)}")
    return ApiKey(name=name, sha256=digest, scopes=frozenset(scopes))


def _origin(origin: str) -> str:
    if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", str(origin)):
        raise ConfigError(f"cors origin {origin!r}: give scheme://host[:port], never '*'")
    return str(origin)


def _vision(entry: dict) -> VisionBackend:
    if not isinstance(entry, dict) or not entry.get("model") or \
            not str(entry.get("url", "")).startswith("http://"):
        raise ConfigError(f"vision backend {entry!r}: needs 'model' (the Ollama model name) and "
                          "'url' (http://host:port of an OpenAI-compatible server)")
    return VisionBackend(model=str(entry["model"]), url=str(entry["url"]).rstrip("/"),
                         upstream_model=str(entry.get("upstream_model") or entry["model"]))


def _limits(raw: dict) -> ServerLimits:
    names = {item.name for item in fields(ServerLimits)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"unknown limit(s) {sorted(unknown)}; known: {sorted(names)}")
    limits = ServerLimits(**raw)
    if any(getattr(limits, name) <= 0 for name in names):
        raise ConfigError("every limit must be greater than 0")
    return limits
