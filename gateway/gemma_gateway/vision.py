"""Ollama requests with images, answered by an OpenAI-compatible vision backend.

Ollama serves gemma3n without its vision tower (its converter drops it), so for a model
configured with a vision backend (llama.cpp's ``llama-server --mmproj``) the
gateway translates ``/api/chat`` and ``/api/generate`` into
``/v1/chat/completions`` with data-URI images, and translates the answer back:
NDJSON chunks (or one JSON object for ``"stream": false``) ending in a final
object with Ollama's fields and nanosecond durations.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

# Ollama option -> OpenAI / llama.cpp server field.
OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
           "stop": "stop", "repeat_penalty": "repeat_penalty", "min_p": "min_p",
           "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
        "BMP": "image/bmp"}


class TranslationError(ValueError):
    """A 400: the request cannot be expressed for the vision backend."""


class BackendFailed(Exception):
    """The vision backend reported a failure in its answer (a 502, or an error line)."""


@dataclass(frozen=True)
class VisionBackend:
    model: str            # the name clients use (Ollama's model name)
    url: str              # http://vision:8080
    upstream_model: str   # the name the backend knows


def _content(text: str, images: list[str], formats: list[str]) -> list | str:
    if not images:
        return text
    parts: list[dict] = [{"type": "image_url",
                          "image_url": {"url": f"data:{MIME.get(kind, 'image/png')};base64,{data}"}}
                         for data, kind in zip(images, formats, strict=True)]
    if text:
        parts.append({"type": "text", "text": text})
    return parts


def to_openai(path: str, body: dict, backend: VisionBackend, formats: list[str]) -> dict:
    """The /v1/chat/completions body for an Ollama generate/chat body with images.

    `formats` are the decoded formats of the request's images, in order (the gateway
    has checked every image before this).
    """
    remaining = list(formats)
    messages = []
    if path == "/api/generate":
        if body.get("raw") or body.get("template"):
            raise TranslationError("'raw' and 'template' cannot be used with images: the "
                                   "vision backend applies the model's own chat template")
        if body.get("system"):
            messages.append({"role": "system", "content": str(body["system"])})
        images = list(body.get("images") or [])
        messages.append({"role": "user", "content": _content(
            str(body.get("prompt") or ""), images, remaining[:len(images)])})
    else:
        for message in body.get("messages") or []:
            if not isinstance(message, dict):
                raise TranslationError("each message must be an object")
            images = list(message.get("images") or [])
            used, remaining = remaining[:len(images)], remaining[len(images):]
            messages.append({"role": str(message.get("role") or "user"),
                             "content": _content(str(message.get("content") or ""), images,
                                                 used)})
    request: dict = {"model": backend.upstream_model, "messages": messages,
                     "stream": body.get("stream", True) is not False}
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise TranslationError("'options' must be an object")
    for name, field in OPTIONS.items():
        if options.get(name) is not None:
            request[field] = options[name]
    if isinstance(options.get("num_predict"), int) and options["num_predict"] > 0:
        request["max_tokens"] = options["num_predict"]
    if body.get("format") == "json":
        request["response_format"] = {"type": "json_object"}
    elif isinstance(body.get("format"), dict):
        request["response_format"] = {"type": "json_object", "schema": body["format"]}
    if request["stream"]:
        request["stream_options"] = {"include_usage": True}
    return request


def _now() -> str:
    """Ollama's created_at: RFC 3339 in UTC with nanoseconds (one clock reading)."""
    now = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 10**9)) + \
        f".{now % 10**9:09d}Z"


class OllamaShaper:
    """Builds Ollama's objects for one request from the vision backend's answer."""

    def __init__(self, path: str, model: str, started: float) -> None:
        self.chat = path == "/api/chat"
        self.model = model
        self.started = started
        self.first_at: float | None = None
        self.pieces = 0   # content deltas seen: one per token where the backend streams tokens
        self.usage: dict = {}
        self.timings: dict = {}
        self.finish = "stop"

    def _text(self, text: str, done: bool) -> dict:
        obj: dict = {"model": self.model, "created_at": _now()}
        if self.chat:
            obj["message"] = {"role": "assistant", "content": text}
        else:
            obj["response"] = text
        obj["done"] = done
        return obj

    def piece(self, text: str) -> bytes:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        return (json.dumps(self._text(text, False)) + "\n").encode()

    def note(self, chunk: dict) -> str:
        """Take one OpenAI chunk; return its text. A chunk that reports an error (llama.cpp's
        server sends `{"error": ...}` when generation fails mid-stream) raises BackendFailed."""
        if not isinstance(chunk, dict):
            raise BackendFailed("the vision backend sent something that is not a JSON object")
        problem = chunk.get("error")
        if problem:
            message = problem.get("message") if isinstance(problem, dict) else problem
            raise BackendFailed(f"the vision backend failed: {message}")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if chunk.get("timings"):
            self.timings = chunk["timings"]
        text = ""
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or choice.get("message") or {}
            if delta.get("content") is not None:
                self.pieces += 1
            text += delta.get("content") or ""
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return text

    def final(self, text: str = "") -> dict:
        """The last object: Ollama's done fields, durations in nanoseconds."""
        now = time.perf_counter()
        prompt_n = self.usage.get("prompt_tokens") or self.timings.get("prompt_n") or 0
        eval_n = self.usage.get("completion_tokens") or self.timings.get("predicted_n") \
            or self.pieces
        if self.timings.get("prompt_ms") and self.timings.get("predicted_ms"):
            # llama-server says how long each phase took.
            prompt_ns = int(self.timings["prompt_ms"] * 1e6)
            eval_ns = int(self.timings["predicted_ms"] * 1e6)
        elif self.first_at is not None:
            # Streamed: the first text marks the end of the prompt phase.
            prompt_ns = int((self.first_at - self.started) * 1e9)
            eval_ns = int((now - self.first_at) * 1e9)
        else:
            # One answer and no timings: the split is unknown, so generation is charged
            # the whole time (tokens/s comes out low, never absurdly high).
            prompt_ns, eval_ns = 0, int((now - self.started) * 1e9)
        obj = self._text(text, True)
        obj.update(done_reason="length" if self.finish == "length" else "stop",
                   total_duration=int((now - self.started) * 1e9), load_duration=0,
                   prompt_eval_count=prompt_n, prompt_eval_duration=prompt_ns,
                   eval_count=eval_n, eval_duration=max(eval_ns, 1))
        return obj
