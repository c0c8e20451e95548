"""The clients sites use, through the gateway: OpenAI's SDK (text, and a data-URI image that
the vision model answers) and curl with a 2 MB image (which makes curl send
`Expect: 100-continue`). The official ollama client is used throughout the other tests.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess

import openai
from PIL import Image

from .conftest import INFERENCE_KEY, TINY_GEMMA3N
from .test_relay import MODEL, openai_gateway  # noqa: F401  (a gateway in front of /v1)
from .test_vision import routed  # noqa: F401  (a gateway with the vision backend)


def data_uri(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def small_picture() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (250, 180, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_openai_sdk_chats_and_streams_through_v1(openai_gateway):  # noqa: F811
    client = openai.OpenAI(base_url=openai_gateway.url + "/v1", api_key=INFERENCE_KEY)
    whole = client.chat.completions.create(
        model=MODEL, max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "Name a colour."}])
    assert whole.choices[0].message.content and whole.usage.completion_tokens == 8
    pieces = [chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model=MODEL, max_tokens=8, temperature=0, stream=True,
        messages=[{"role": "user", "content": "Name a colour."}]) if chunk.choices]
    assert "".join(pieces) == whole.choices[0].message.content
    refused = openai.OpenAI(base_url=openai_gateway.url + "/v1", api_key="gk_wrong")
    try:
        refused.models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as error:
        assert error.status_code == 401


def test_the_openai_sdk_sends_an_image_that_the_vision_model_answers(routed, vision_server):  # noqa: F811
    uri = data_uri(small_picture())
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What colour is this?"},
        {"type": "image_url", "image_url": {"url": uri}}]}]
    through = openai.OpenAI(base_url=routed.url + "/v1", api_key=INFERENCE_KEY)
    answer = through.chat.completions.create(model=TINY_GEMMA3N, messages=messages,
                                             max_tokens=6, temperature=0)
    direct = openai.OpenAI(base_url=vision_server.url + "/v1", api_key="unused")
    expected = direct.chat.completions.create(model=TINY_GEMMA3N, messages=messages,
                                              max_tokens=6, temperature=0)
    assert answer.choices[0].message.content == expected.choices[0].message.content
    assert answer.usage.prompt_tokens == expected.usage.prompt_tokens > 256  # the image's


def test_curl_sends_a_2_mb_image_with_expect_100_continue(routed, tmp_path):  # noqa: F811
    noise = Image.frombytes("RGB", (820, 820), os.urandom(820 * 820 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    assert len(buffer.getvalue()) > 1_500_000
    body = tmp_path / "request.json"
    body.write_text(json.dumps({
        "model": TINY_GEMMA3N, "prompt": "Describe it.", "stream": False,
        "images": [base64.b64encode(buffer.getvalue()).decode()],
        "options": {"num_predict": 4}}))
    result = subprocess.run(
        ["curl", "-sS", "-v", "--max-time", "120", "-H", f"Authorization: Bearer {INFERENCE_KEY}",
         "-H", "Content-Type: application/json", "--data-binary", f"@{body}",
         routed.url + "/api/generate"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Expect: 100-continue" in result.stderr and "HTTP/1.1 100 Continue" in result.stderr
    answer = json.loads(result.stdout)
    assert answer["done"] and answer["model"] == TINY_GEMMA3N
    assert answer["prompt_eval_count"] > 256  # the vision model took the image
