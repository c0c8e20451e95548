"""The gateway's configuration, parsed once into a typed object."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .auth import ADMIN, INFERENCE, ApiKey, Keyring
from .images import ImageLimits
from .limits import KeyLimits
from .vision import VisionBackend

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    backend_url: str = "http://ollama:11434"
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
        keys = []
        for index, entry in enumerate(raw.get("keys", [])):
            name = entry.get("name") or f"key-{index}"
            digest = str(entry.get("sha256", "")).lower()
            if not _SHA256.match(digest):
                raise ConfigError(f"key {name!r}: sha256 must be 64 hex digits (the hash, "
                                  "never the key itself)")
            scopes = frozenset(entry.get("scopes") or [INFERENCE])
            unknown = scopes - {INFERENCE, ADMIN}
            if unknown:
                raise ConfigError(f"key {name!r}: unknown scope(s) {sorted(unknown)}")
            keys.append(ApiKey(name=name, sha256=digest, scopes=scopes))
        vision = []
        for entry in raw.get("vision_backends", []):
            if not isinstance(entry, dict) or not entry.get("model") or \
                    not str(entry.get("url", "")).startswith("http://"):
                raise ConfigError(f"vision backend {entry!r}: needs 'model' (the Ollama model "
                                  "name) and 'url' (http://host:port of an OpenAI-compatible "
                                  "server)")
            vision.append(VisionBackend(model=str(entry["model"]),
                                        url=str(entry["url"]).rstrip("/"),
                                        upstream_model=str(entry.get("upstream_model")
                                                           or entry["model"])))
        tls = raw.get("tls") or {}
        if bool(tls.get("certfile")) != bool(tls.get("keyfile")):
            raise ConfigError("tls needs both 'certfile' and 'keyfile' (or neither)")
        if not str(raw.get("backend_url", cls.backend_url)).startswith("http://"):
            raise ConfigError("backend_url must be http://host:port (Ollama on the stack's "
                              "internal network)")
        return cls(
            backend_url=str(raw.get("backend_url", cls.backend_url)).rstrip("/"),
            keyring=Keyring(keys),
            cors_origins=tuple(raw.get("cors_origins", [])),
            max_body_bytes=int(raw.get("max_body_bytes", cls.max_body_bytes)),
            expected_model=str(raw.get("expected_model", "")),
            images=ImageLimits(**raw.get("images", {})),
            key_limits=KeyLimits(**raw.get("key_limits", {})),
            poll_seconds=float(raw.get("poll_seconds", 15.0)),
            vision_backends=tuple(vision),
            tls_certfile=str(tls.get("certfile") or ""),
            tls_keyfile=str(tls.get("keyfile") or ""),
        )
