"""API keys: stored only as sha256 hashes, compared in constant time, with scopes.

Keys are long random tokens (``gk_`` + 32 bytes, base64url), so a plain sha256
of the key is enough at rest: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

# The scopes a key may hold; which endpoint needs which is the route table's (routes.py).
from .routes import ADMIN, INFERENCE, METRICS, POOL, SCOPES  # noqa: F401


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "gk_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    scopes: frozenset[str]


class Keyring:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def find(self, presented: str) -> ApiKey | None:
        """The key whose hash matches; every entry is compared, in constant time."""
        digest = hash_key(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found
