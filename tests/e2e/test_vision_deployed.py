"""Images for Gemma 3n in the deployed lab: the vision service answers through the gateway.

The client is the official ollama client on the lab host, talking to the gateway the
target publishes (the host reaches the lab's internal network). The vision service
runs the tiny Gemma 3n with its mmproj (llama.cpp's gemma3n + gemma3nv code).
"""

from __future__ import annotations

import io
import json
import time

import ollama
import pytest
from PIL import Image

from .test_deploy_refusals import on_target

pytestmark = pytest.mark.e2e

MODEL = "gemma3n:tiny"
VISION = "gemma-airgap-vision-1"


def picture() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (120, 80), (240, 200, 20)).save(buffer, "JPEG")
    return buffer.getvalue()


def ask_with_image(client: ollama.Client):
    return client.chat(model=MODEL, options={"num_predict": 5, "temperature": 0},
                       messages=[{"role": "user", "content": "What colour is this?",
                                  "images": [picture()]}])


def state(container: str) -> dict:
    return json.loads(on_target("docker", "inspect", "-f", "{{json .State}}", container))


def wait_healthy(container: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = state(container)
        if current.get("Health", {}).get("Status") == "healthy":
            return current
        assert time.monotonic() < deadline, f"{container} not healthy: {current}"
        time.sleep(1)


def test_an_image_prompt_is_answered_by_the_vision_service_in_ollamas_format(client):
    assert "vision" in client.show(MODEL).capabilities
    answer = ask_with_image(client)
    assert answer.done and answer.message.role == "assistant"
    assert answer.eval_count >= 5
    # The image's 256 soft tokens were in the prompt the vision service evaluated.
    assert answer.prompt_eval_count > 256
    streamed = list(client.generate(model=MODEL, prompt="Describe it.", images=[picture()],
                                    stream=True, options={"num_predict": 5}))
    assert streamed[-1].done and not any(chunk.done for chunk in streamed[:-1])


def test_a_crashed_vision_service_restarts_alone_and_text_keeps_working(client):
    gateway_before = state("gemma-airgap-gateway-1")
    ollama_before = state("gemma-airgap-ollama-1")
    restarts = int(on_target("docker", "inspect", "-f", "{{.RestartCount}}", VISION))
    # What a failed C assert in llama.cpp does to the server: SIGABRT.
    on_target("docker", "exec", VISION, "pkill", "-ABRT", "-f", "llama_cpp.server")
    text = client.generate(model="gemma3:270m", prompt="The sky is", raw=True,
                           options={"num_predict": 3})
    assert text.done and text.eval_count == 3
    deadline = time.monotonic() + 60
    while int(on_target("docker", "inspect", "-f", "{{.RestartCount}}", VISION)) == restarts:
        assert time.monotonic() < deadline, "the vision service was not restarted"
        time.sleep(0.5)
    wait_healthy(VISION)
    assert ask_with_image(client).done
    # The gateway and Ollama were never touched.
    assert state("gemma-airgap-gateway-1")["StartedAt"] == gateway_before["StartedAt"]
    assert state("gemma-airgap-ollama-1")["StartedAt"] == ollama_before["StartedAt"]


def test_while_the_vision_service_is_away_images_get_503_and_text_still_works(client):
    on_target("docker", "stop", VISION)
    try:
        with pytest.raises(ollama.ResponseError) as refused:
            ask_with_image(client)
        assert refused.value.status_code == 503
        assert f"the vision backend for {MODEL}" in refused.value.error
        assert "retry in a few seconds" in refused.value.error
        assert client.generate(model="gemma3:270m", prompt="The sky is", raw=True,
                               options={"num_predict": 3}).done
    finally:
        on_target("docker", "start", VISION)
    wait_healthy(VISION)
    assert ask_with_image(client).done
