"""What an inference key may ask of the shared model, so one tenant cannot hurt the rest.

Ollama lets any request set ``keep_alive`` (0 unloads the model the site preloaded)
and the runner's options — ``num_ctx``, ``num_batch``, ``num_gpu``, ``main_gpu``,
``use_mmap``, ``num_thread``, ``draft_num_predict`` — and ``shift``: a value other
than the loaded runner's reloads the model for everyone (server/sched.go
needsReload). For inference keys the gateway holds all of them to the site's;
admin keys may set anything.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

FOREVER = math.inf
# Go keeps a duration in int64 nanoseconds; a keep_alive of more seconds than this
# wraps around to a negative duration in Ollama, which unloads the model at once.
MAX_SECONDS = (2**63 - 1) / 1e9
# Options that make Ollama load the model again when they differ (api.Runner).
RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread",
                  "draft_num_predict")
_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
          "m": 60.0, "h": 3600.0}
_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]+)")


class PolicyError(ValueError):
    """400: the request asks for something this key may not. The message says what."""


def go_duration(text: str) -> float:
    """Seconds of a Go duration string (time.ParseDuration); ValueError in Go's words."""
    rest = text.lstrip("+-")
    negative = text.startswith("-")
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f'time: invalid duration "{text}"')
    total, position = 0.0, 0
    while position < len(rest):
        part = _PART.match(rest, position)
        if not part or part.group(1) in ("", "."):
            unit_missing = rest[position:].replace(".", "").isdigit()
            raise ValueError(f'time: {"missing unit in" if unit_missing else "invalid"} '
                             f'duration "{text}"')
        unit = _UNITS.get(part.group(2))
        if unit is None:
            raise ValueError(f'time: unknown unit "{part.group(2)}" in duration "{text}"')
        total += float(part.group(1)) * unit
        position = part.end()
    return -total if negative else total


def keep_alive_seconds(value) -> float:
    """keep_alive as Ollama reads it: JSON seconds or a Go duration; negative = forever."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PolicyError(f"keep_alive must be a number of seconds or a duration, not {value!r}")
    if isinstance(value, str):
        try:
            seconds = go_duration(value)
        except ValueError as exc:
            raise PolicyError(str(exc)) from None
    else:
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    if not math.isfinite(seconds) or abs(seconds) >= MAX_SECONDS:
        raise PolicyError(f"keep_alive {value!r} is out of range: Go cannot hold it as a "
                          "duration (Ollama would unload the model at once)")
    return FOREVER if seconds < 0 else seconds


def _shown(seconds: float) -> str:
    return "for good (-1)" if seconds == FOREVER else f"{seconds:g} s"


@dataclass(frozen=True)
class InferencePolicy:
    min_keep_alive: float = FOREVER  # seconds; FOREVER: the site keeps its models loaded
    num_ctx: int = 0                 # the site's context length; 0: not known, never set

    @classmethod
    def from_dict(cls, raw: dict) -> InferencePolicy:
        unknown = set(raw) - {"min_keep_alive", "num_ctx"}
        if unknown:
            raise ValueError(f"inference_policy: unknown setting(s) {sorted(unknown)}")
        keep = raw.get("min_keep_alive", -1)
        if isinstance(keep, str) and keep.lstrip("-").isdigit():
            keep = int(keep)  # the site's OLLAMA_KEEP_ALIVE may be a bare number
        return cls(min_keep_alive=keep_alive_seconds(keep), num_ctx=int(raw.get("num_ctx", 0)))

    def check(self, key_name: str, body: dict) -> None:
        """Refuse what an inference key may not set in a canonical request body."""
        if body.get("keep_alive") is not None:
            asked = keep_alive_seconds(body["keep_alive"])
            if asked < self.min_keep_alive:
                raise PolicyError(
                    f"key '{key_name}' may not set keep_alive below the site's "
                    f"{_shown(self.min_keep_alive)}: it would unload the model for everyone. "
                    "Send no keep_alive (an admin key may set it).")
        if body.get("shift") is not None:
            raise PolicyError(f"key '{key_name}' may not set shift: another value than the "
                              "loaded model's reloads it for everyone (an admin key may).")
        options = body.get("options") or {}
        for name in RUNNER_OPTIONS:
            value = options.get(name) if isinstance(options, dict) else None
            if value is None or (name == "num_ctx" and value == self.num_ctx):
                continue
            site = f" (the site's is {self.num_ctx})" if name == "num_ctx" and self.num_ctx else ""
            raise PolicyError(f"key '{key_name}' may not set {name}{site}: another value than "
                              "the loaded model's reloads it for everyone (an admin key may).")
