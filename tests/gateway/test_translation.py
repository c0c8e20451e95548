"""Ollama <-> OpenAI translation for the vision backend, on llama-server's own shapes.

llama.cpp's llama-server (production) ends a stream with `timings` and, asked with
stream_options.include_usage, a `usage` chunk; those counts must become Ollama's.
"""

from __future__ import annotations

import json

import pytest

from gemma_gateway.relay import sse_events
from gemma_gateway.vision import (
    OllamaShaper,
    TranslationError,
    VisionBackend,
    to_openai,
)

BACKEND = VisionBackend(model="gemma3n:e4b", url="http://vision:8080", upstream_model="g3n")


def test_options_and_format_map_to_openai_fields():
    body = {"model": "gemma3n:e4b", "format": "json", "keep_alive": "5m",
            "options": {"num_predict": 32, "temperature": 0.2, "top_k": 5, "seed": 1,
                        "stop": ["\n"], "num_ctx": 4096},
            "messages": [{"role": "system", "content": "s"},
                         {"role": "user", "content": "a", "images": ["AA", "BB"]},
                         {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c", "images": ["CC"]}]}
    request = to_openai("/api/chat", body, BACKEND, ["PNG", "JPEG", "WEBP"])
    assert request["model"] == "g3n" and request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert (request["max_tokens"], request["temperature"], request["top_k"], request["seed"],
            request["stop"]) == (32, 0.2, 5, 1, ["\n"])
    assert request["response_format"] == {"type": "json_object"}
    urls = [part["image_url"]["url"] for message in request["messages"]
            if isinstance(message["content"], list) for part in message["content"]
            if part["type"] == "image_url"]
    assert urls == ["data:image/png;base64,AA", "data:image/jpeg;base64,BB",
                    "data:image/webp;base64,CC"]
    assert request["messages"][2] == {"role": "assistant", "content": "b"}


def test_untranslatable_requests_say_why():
    with pytest.raises(TranslationError, match="'raw' and 'template'"):
        to_openai("/api/generate", {"prompt": "x", "raw": True, "images": ["AA"]}, BACKEND,
                  ["PNG"])
    with pytest.raises(TranslationError, match="'options' must be an object"):
        to_openai("/api/generate", {"prompt": "x", "options": [1], "images": ["AA"]}, BACKEND,
                  ["PNG"])


def test_a_llama_server_stream_becomes_ollama_chunks_with_its_counts():
    stream = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in [
        {"choices": [{"delta": {"role": "assistant", "content": None}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": "A red"}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": " square."}, "finish_reason": None}]},
        {"choices": [{"delta": {}, "finish_reason": "stop"}],
         "timings": {"prompt_n": 268, "prompt_ms": 512.5, "predicted_n": 4,
                     "predicted_ms": 80.0}},
        {"choices": [], "usage": {"prompt_tokens": 268, "completion_tokens": 4}},
    ]) + b"data: [DONE]\n\n"
    shaper = OllamaShaper("/api/generate", "gemma3n:e4b", started=0.0)
    buffer, out = bytearray(), []
    for cut in range(0, len(stream), 7):  # arbitrary network chunking
        for event in sse_events(buffer, stream[cut:cut + 7]):
            if event != b"[DONE]":
                text = shaper.note(json.loads(event))
                if text:
                    out.append(json.loads(shaper.piece(text)))
    final = shaper.final()
    assert [o["response"] for o in out] == ["A red", " square."]
    assert not any(o["done"] for o in out)
    assert final["done"] and final["done_reason"] == "stop" and final["response"] == ""
    assert (final["prompt_eval_count"], final["eval_count"]) == (268, 4)
    assert (final["prompt_eval_duration"], final["eval_duration"]) == (512_500_000, 80_000_000)
    assert final["model"] == "gemma3n:e4b" and final["created_at"].endswith("Z")
