"""Per-key concurrency and rate limits (429 with Retry-After)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class KeyLimits:
    concurrency: int = 0          # requests in flight per key; 0 = unlimited
    requests_per_minute: int = 0  # 0 = unlimited


@dataclass
class _Bucket:
    tokens: float
    stamp: float = field(default_factory=time.monotonic)
    in_flight: int = 0


class Limiter:
    """A token bucket and an in-flight count per key name (one event loop: no locks)."""

    def __init__(self, limits: KeyLimits) -> None:
        self.limits = limits
        self.buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str) -> tuple[bool, str, int]:
        """(allowed, reason, retry_after_seconds)."""
        limits = self.limits
        bucket = self.buckets.setdefault(key, _Bucket(tokens=float(limits.requests_per_minute)))
        if limits.concurrency and bucket.in_flight >= limits.concurrency:
            return False, (f"key '{key}' already has {bucket.in_flight} request(s) in flight "
                           f"(limit {limits.concurrency})"), 1
        if limits.requests_per_minute:
            now = time.monotonic()
            rate = limits.requests_per_minute / 60.0
            bucket.tokens = min(float(limits.requests_per_minute),
                                bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.tokens < 1:
                wait = math.ceil((1 - bucket.tokens) / rate)
                return False, (f"key '{key}' is over its limit of "
                               f"{limits.requests_per_minute} requests per minute"), wait
            bucket.tokens -= 1
        bucket.in_flight += 1
        return True, "", 0

    def release(self, key: str) -> None:
        self.buckets[key].in_flight -= 1
