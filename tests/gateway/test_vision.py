"""Images for Gemma 3n: routed to the vision backend, answered in Ollama's format.

The vision backend is llama-cpp-python's own OpenAI-compatible server with the tiny
Gemma 3n and its mmproj (real llama.cpp gemma3n + gemma3nv code). Each translated
answer is checked against what that server answers directly for the same request.
Text for the same model still goes to the Ollama stand-in, which serves it too.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.request

import ollama
import pytest
from PIL import Image

from tests.standin.conftest import import_lab_model

from .conftest import INFERENCE_KEY, ROOT, TINY_GEMMA3N, Gateway
from .test_gateway import http, metric, settled

QUESTION = "What is in the picture?"


def picture() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (20, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def routed(standin, vision_server, tmp_path_factory):
    import_lab_model(standin.client(), TINY_GEMMA3N,
                     ROOT / "lab" / "models" / "gemma3n-tiny.gguf")
    server = Gateway(standin.url, tmp_path_factory.mktemp("vision-gw"), vision_backends=[
        {"model": TINY_GEMMA3N, "url": vision_server.url}])
    yield server
    server.stop()


def direct(vision_server, system: str | None = None, stream: bool = False) -> dict:
    """The vision server's own answer to the request the gateway should send.

    Streamed, llama-cpp-python's server sends no usage: the answer is then summed up
    as {"text", "deltas"} (content deltas, which the gateway counts as tokens).
    """
    uri = "data:image/png;base64," + base64.b64encode(picture()).decode()
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": QUESTION}]})
    request = urllib.request.Request(
        vision_server.url + "/v1/chat/completions", method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"model": TINY_GEMMA3N, "messages": messages, "max_tokens": 6,
                         "temperature": 0, "stream": stream}).encode())
    with urllib.request.urlopen(request, timeout=120) as response:
        if not stream:
            return json.loads(response.read())
        text, deltas = "", 0
        for line in response:
            if line.startswith(b"data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if "content" in delta:
                    deltas += 1
                    text += delta["content"] or ""
        return {"text": text, "deltas": deltas}


def test_generate_with_an_image_is_answered_by_the_vision_backend(routed, vision_server):
    expected = direct(vision_server, system="Be brief.")
    before = metric(routed, "gateway_completion_tokens_total", model=TINY_GEMMA3N)
    answer = routed.client().generate(model=TINY_GEMMA3N, prompt=QUESTION, system="Be brief.",
                                      images=[picture()],
                                      options={"num_predict": 6, "temperature": 0})
    assert answer.done and answer.done_reason == "length"
    assert answer.response == expected["choices"][0]["message"]["content"]
    # Counts are the backend's own usage (256 image tokens + the text in the prompt).
    generated = expected["usage"]["completion_tokens"]
    assert answer.eval_count == generated >= 6
    assert answer.prompt_eval_count == expected["usage"]["prompt_tokens"] > 256
    # No timings from this backend and no stream: generation is charged the whole time,
    # so tokens/s is a floor (the image encoding alone takes ~0.4 s here).
    assert answer.total_duration >= answer.eval_duration > 0
    assert answer.eval_count / (answer.eval_duration / 1e9) < 1000
    assert settled(routed, "gateway_completion_tokens_total", before + generated,
                   model=TINY_GEMMA3N) == before + generated


def test_chat_with_an_image_streams_ollama_chunks_with_a_final_summary(routed, vision_server):
    expected = direct(vision_server, stream=True)
    chunks = list(routed.client().chat(
        model=TINY_GEMMA3N, stream=True, options={"num_predict": 6, "temperature": 0},
        messages=[{"role": "user", "content": QUESTION, "images": [picture()]}]))
    *pieces, final = chunks
    assert pieces and not any(piece.done for piece in pieces)
    assert all(piece.message.role == "assistant" for piece in chunks)
    assert "".join(piece.message.content for piece in pieces) == expected["text"]
    assert final.done and final.done_reason == "length"
    assert final.eval_count == expected["deltas"] > 0
    assert final.total_duration >= final.prompt_eval_duration > 0


def test_show_says_the_model_takes_images_through_the_gateway(routed, standin):
    assert "vision" not in standin.client().show(TINY_GEMMA3N).capabilities
    shown = routed.client().show(TINY_GEMMA3N)
    assert "vision" in shown.capabilities and "completion" in shown.capabilities
    assert "vision" not in routed.client().show("gemma3:270m").capabilities


def test_text_for_the_same_model_is_served_by_ollama(routed, standin):
    answer = routed.client().generate(model=TINY_GEMMA3N, prompt="the sea is", raw=True,
                                      options={"num_predict": 4})
    assert answer.done and answer.eval_count == 4
    # The stand-in (Ollama's place) loaded it: llama.cpp's gemma3n text path ran there.
    assert TINY_GEMMA3N in [m.model for m in standin.client().ps().models]


def test_raw_prompts_with_images_are_refused_with_the_reason(routed):
    with pytest.raises(ollama.ResponseError) as refused:
        routed.client().generate(model=TINY_GEMMA3N, prompt=QUESTION, raw=True,
                                 images=[picture()])
    assert refused.value.status_code == 400
    assert "'raw' and 'template' cannot be used with images" in refused.value.error


def test_a_vision_backend_that_is_down_gives_503_and_text_still_works(standin, tmp_path):
    import_lab_model(standin.client(), TINY_GEMMA3N,
                     ROOT / "lab" / "models" / "gemma3n-tiny.gguf")
    orphan = Gateway(standin.url, tmp_path, vision_backends=[
        {"model": TINY_GEMMA3N, "url": "http://127.0.0.1:9"}])
    try:
        status, headers, body = http(orphan, "POST", "/api/generate", {
            "model": TINY_GEMMA3N, "prompt": QUESTION,
            "images": [base64.b64encode(picture()).decode()]},
            headers={"Authorization": f"Bearer {INFERENCE_KEY}"})
        assert status == 503 and headers["retry-after"] == "5"
        message = json.loads(body)["error"]
        assert f"the vision backend for {TINY_GEMMA3N}" in message
        assert "retry in a few seconds" in message
        assert orphan.client().generate(model=TINY_GEMMA3N, prompt="the sea is", raw=True,
                                        options={"num_predict": 2}).done
    finally:
        orphan.stop()


def test_the_health_probe_checks_images_on_the_model_with_a_vision_backend(routed, tmp_path):
    from tests.conftest import run_module

    image = tmp_path / "probe.png"
    image.write_bytes(picture())
    result = run_module("ollama_probe", {
        "url": routed.url, "api_key": INFERENCE_KEY, "model": "gemma3:270m",
        "image_model": TINY_GEMMA3N, "image": str(image), "num_predict": 6})
    assert result.get("failed") is not True, result.get("msg")
    assert result["checks"]["text"]["passed"] and result["checks"]["image"]["passed"]
    assert result["checks"]["image"]["eval_count"] >= 6
    # The same probe on the text model alone skips the image check and says why.
    alone = run_module("ollama_probe", {"url": routed.url, "api_key": INFERENCE_KEY,
                                        "model": "gemma3:270m", "image": str(image),
                                        "checks": ["image"]})
    assert alone["checks"]["image"]["skipped"] is True
    assert "gemma3:270m has no vision capability" in alone["checks"]["image"]["reason"]


def test_a_stream_finishes_while_other_requests_reach_the_vision_backend(routed, vision_server):
    """llama-cpp-python's server cuts a running stream when another request arrives unless
    started with --interrupt_requests false (the lab found this through the healthcheck)."""
    chunks = routed.client().generate(model=TINY_GEMMA3N, prompt=QUESTION, images=[picture()],
                                      stream=True, options={"num_predict": 30, "stop": []})
    seen = []
    for chunk in chunks:
        seen.append(chunk)
        if len(seen) == 2:
            with urllib.request.urlopen(vision_server.url + "/v1/models", timeout=60) as r:
                assert r.status == 200
    assert seen[-1].done, "the stream was cut short"
    assert seen[-1].eval_count >= 20
