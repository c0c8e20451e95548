"""The gateway through the official ollama client: keys, scopes, streaming, metrics."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import ollama
import pytest

from .conftest import ADMIN_KEY, INFERENCE_KEY, METRICS_KEY

MODEL = "gemma3:270m"


def http(gateway, method, path, body=None, headers=None, data: bytes | None = None):
    """(status, headers, body) of one request: body as JSON, or data as raw bytes."""
    if body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(gateway.url + path, data=data, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def metric(gateway, name: str, **labels) -> float:
    status, _headers, body = http(gateway, "GET", "/metrics",
                                  headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert status == 200, body
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head = line.split(" ")[0]
            if head.split("{")[0] == name:
                total += float(line.rsplit(" ", 1)[1])
    return total


def scraped(gateway) -> str:
    """The /metrics text once the gateway's poller has read the backend (at start-up)."""
    deadline = time.monotonic() + 5
    while True:
        status, _headers, body = http(gateway, "GET", "/metrics",
                                      headers={"Authorization": f"Bearer {METRICS_KEY}"})
        assert status == 200, body
        if b"gateway_backend_up{" in body or time.monotonic() > deadline:
            return body.decode()
        time.sleep(0.1)


def settled(gateway, name: str, expected: float, **labels) -> float:
    """The metric once the gateway has recorded the last response (it does so right after
    the last byte is sent, so a fast client can ask before); waits at most 2 s."""
    deadline = time.monotonic() + 2
    value = metric(gateway, name, **labels)
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = metric(gateway, name, **labels)
    return value


def idle(gateway) -> None:
    """Wait (at most 2 s) until no request is being served: a baseline read while an
    earlier test's answer is still being finished would count that answer as this test's."""
    deadline = time.monotonic() + 2
    while metric(gateway, "gateway_requests_in_flight") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(gateway, "gateway_requests_in_flight") == 0


def test_clients_speak_ollamas_api_through_the_gateway(gateway):
    client = gateway.client()
    assert MODEL in [m.model for m in client.list().models]
    assert "completion" in client.show(MODEL).capabilities
    whole = client.generate(model=MODEL, prompt="The sky is", raw=True,
                            options={"num_predict": 6, "temperature": 0})
    streamed = "".join(c.response for c in client.generate(
        model=MODEL, prompt="The sky is", raw=True, stream=True,
        options={"num_predict": 6, "temperature": 0}))
    assert whole.done and streamed == whole.response
    chat = client.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                       options={"num_predict": 4})
    assert chat.message.role == "assistant"


@pytest.mark.parametrize(("key", "path", "method", "status"), [
    (None, "/api/tags", "GET", 401),
    ("gk_wrong", "/api/tags", "GET", 401),
    (INFERENCE_KEY, "/api/tags", "GET", 200),
    (INFERENCE_KEY, "/api/delete", "DELETE", 403),
    (INFERENCE_KEY, "/api/pull", "POST", 403),
    (INFERENCE_KEY, "/api/copy", "POST", 403),
    (INFERENCE_KEY, "/api/blobs/sha256:" + "0" * 64, "HEAD", 403),
    (ADMIN_KEY, "/api/copy", "POST", 404),  # allowed through; the backend has no such model
])
def test_scope_matrix(gateway, key, path, method, status):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"source": "nope", "destination": "x"} if path == "/api/copy" else None
    got, _headers, raw = http(gateway, method, path, body, headers)
    assert got == status
    if status in (401, 403) and method != "HEAD":
        assert "error" in json.loads(raw)


def test_refusals_name_the_reason(gateway):
    with pytest.raises(ollama.ResponseError) as missing:
        gateway.client(None).list()
    assert missing.value.status_code == 401 and "missing API key" in missing.value.error
    with pytest.raises(ollama.ResponseError) as scope:
        gateway.client(INFERENCE_KEY).delete(MODEL)
    assert scope.value.status_code == 403
    assert "key 'team-a' lacks the admin scope that /api/delete needs" in scope.value.error


def test_cors_preflight_allows_only_the_listed_origin(gateway):
    ok, headers, _ = http(gateway, "OPTIONS", "/api/chat", headers={
        "Origin": "https://chat.example.internal", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})
    assert ok == 200  # Starlette's CORSMiddleware
    assert headers["access-control-allow-origin"] == "https://chat.example.internal"
    assert "x-stainless-os" in headers["access-control-allow-headers"].lower()
    refused, headers, _ = http(gateway, "OPTIONS", "/api/chat", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert refused == 400 and "access-control-allow-origin" not in headers


def test_streaming_is_passed_through_not_buffered(gateway):
    arrivals = []
    started = time.perf_counter()
    for chunk in gateway.client().generate(model=MODEL, prompt="Once upon a time", raw=True,
                                           stream=True, options={"num_predict": 40, "stop": []}):
        arrivals.append(time.perf_counter() - started)
        if chunk.done:
            break
    assert len(arrivals) >= 20
    # Tokens arrive ~25 ms apart from the backend: the first must reach the client long
    # before the last is generated, as it would if the gateway held the stream back.
    assert arrivals[0] < arrivals[-1] / 3


def test_metrics_count_what_was_sent(gateway):
    idle(gateway)
    before_requests = metric(gateway, "gateway_request_duration_seconds_count",
                             endpoint="/api/generate", model=MODEL, status="200")
    before_tokens = metric(gateway, "gateway_completion_tokens_total", model=MODEL)
    before_auth = metric(gateway, "gateway_auth_failures_total", reason="invalid")
    client = gateway.client()
    counts = []
    for _ in range(3):
        counts.append(client.generate(model=MODEL, prompt="Count:", raw=True,
                                      options={"num_predict": 5}).eval_count)
    with pytest.raises(ollama.ResponseError):
        gateway.client("gk_bad").list()
    assert settled(gateway, "gateway_request_duration_seconds_count", before_requests + 3,
                   endpoint="/api/generate", model=MODEL, status="200") == before_requests + 3
    assert settled(gateway, "gateway_completion_tokens_total", before_tokens + sum(counts),
                   model=MODEL) == before_tokens + sum(counts)
    assert metric(gateway, "gateway_auth_failures_total", reason="invalid") == before_auth + 1
    assert metric(gateway, "gateway_time_to_first_token_seconds_count",
                  endpoint="/api/generate", model=MODEL) >= 3
    assert 'gateway_backend_up{backend="ollama"} 1.0' in scraped(gateway)


def test_health_and_readiness(gateway):
    assert http(gateway, "GET", "/healthz")[0] == 200
    status, _headers, body = http(gateway, "GET", "/readyz")
    # Anonymous: ready or not, never the backend's address or its models.
    assert (status, json.loads(body)) == (200, {"status": "ready"})


def test_backend_down_is_a_502_with_a_reason_and_the_gateway_stays_up(tmp_path):
    from .conftest import Gateway

    lonely = Gateway("http://127.0.0.1:9", tmp_path)
    try:
        status, _h, body = http(lonely, "GET", "/api/tags",
                                headers={"Authorization": f"Bearer {INFERENCE_KEY}"})
        message = json.loads(body)["error"]
        assert status == 502 and "is not answering" in message and "127.0.0.1:9" not in message
        status, _h, body = http(lonely, "GET", "/readyz")
        assert status == 503 and b"127.0.0.1" not in body
        assert http(lonely, "GET", "/healthz")[0] == 200
        # What the backend-down alert reads: present, and 0 (an absent series alerts nobody).
        assert 'gateway_backend_up{backend="ollama"} 0.0' in scraped(lonely)
    finally:
        lonely.stop()


def test_oversized_body_is_refused_with_413(tmp_path, standin):
    from .conftest import Gateway

    small = Gateway(standin.url, tmp_path, max_body_bytes=1000)
    try:
        status, _h, body = http(small, "POST", "/api/generate",
                                {"model": MODEL, "prompt": "x" * 5000},
                                {"Authorization": f"Bearer {INFERENCE_KEY}"})
        assert status == 413 and "exceeds the limit of 1000 bytes" in json.loads(body)["error"]
    finally:
        small.stop()


PNG = (Path(__file__).resolve().parents[2] / "files" / "probe.png").read_bytes()


@pytest.mark.parametrize(("images", "fragment"), [
    (["not base64!"], "image 1 is not valid base64"),
    ([base64.b64encode(b"plain text, not a picture").decode()], "image 1 is not a readable image"),
    ([base64.b64encode(PNG).decode()] * 5, "5 images in one request; the limit is 4"),
])
def test_bad_images_are_refused_before_any_backend(gateway, images, fragment):
    status, _h, body = http(gateway, "POST", "/api/generate",
                            {"model": MODEL, "prompt": "What is this?", "images": images},
                            {"Authorization": f"Bearer {INFERENCE_KEY}"})
    assert status == 400
    assert fragment in json.loads(body)["error"]


def test_images_for_a_text_only_model_get_a_400_naming_the_model_and_the_fix(gateway):
    with pytest.raises(ollama.ResponseError) as refused:
        gateway.client().chat(model=MODEL, messages=[
            {"role": "user", "content": "What is this?", "images": [PNG]}])
    assert refused.value.status_code == 400
    assert f"{MODEL} takes text only here" in refused.value.error
    assert "configure a vision backend" in refused.value.error


def test_rate_and_concurrency_limits_answer_429_with_retry_after(tmp_path, standin):
    from .conftest import Gateway

    limited = Gateway(standin.url, tmp_path,
                      key_limits={"requests_per_minute": 3, "concurrency": 1})
    try:
        auth = {"Authorization": f"Bearer {INFERENCE_KEY}"}
        statuses = [http(limited, "GET", "/api/version", headers=auth)[0] for _ in range(3)]
        assert statuses == [200, 200, 200]
        status, headers, body = http(limited, "GET", "/api/version", headers=auth)
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert "over its limit of 3 requests per minute" in json.loads(body)["error"]
        # Another key has its own bucket.
        assert http(limited, "GET", "/api/version",
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"})[0] == 200
    finally:
        limited.stop()


def test_the_poller_exports_loaded_models(tmp_path, standin, client):
    from .conftest import Gateway

    client.generate(model=MODEL, prompt="", keep_alive="5m")
    polled = Gateway(standin.url, tmp_path, poll_seconds=0.2)
    try:
        deadline = time.monotonic() + 10
        while metric(polled, "gateway_model_loaded", model=MODEL) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert metric(polled, "gateway_model_memory_bytes", model=MODEL) > 200_000_000
        assert metric(polled, "gateway_models_available") >= 1
    finally:
        polled.stop()


def test_backend_dying_mid_stream_ends_with_an_error_line_and_the_gateway_stays_up(tmp_path):
    from tests.standin.conftest import StandIn, import_lab_model

    from .conftest import Gateway

    backend = StandIn(tmp_path / "models")
    front = None
    try:
        import_lab_model(backend.client())
        front = Gateway(backend.url, tmp_path)
        request = urllib.request.Request(
            front.url + "/api/generate", method="POST",
            data=json.dumps({"model": MODEL, "prompt": "Once upon a time", "raw": True,
                             "options": {"num_predict": 2000, "stop": []}}).encode(),
            headers={"Authorization": f"Bearer {INFERENCE_KEY}"})
        lines = []
        with urllib.request.urlopen(request, timeout=120) as response:
            for line in response:
                lines.append(json.loads(line))
                if len(lines) == 5:
                    backend.process.kill()  # the backend dies while tokens are flowing
        assert len(lines) > 5
        assert "error" in lines[-1] and "the backend broke the answer" in lines[-1]["error"]
        assert not any(line.get("done") for line in lines)
        assert http(front, "GET", "/healthz")[0] == 200
    finally:
        if front:
            front.stop()
        backend.stop()


def test_blobs_are_uploaded_through_with_an_admin_key_and_held_to_the_upload_limit(
        tmp_path, standin):
    import hashlib

    from .conftest import Gateway

    capped = Gateway(standin.url, tmp_path, limits={"max_upload_bytes": 100_000})
    try:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        data = b"a small layer" * 1000
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        request = urllib.request.Request(capped.url + f"/api/blobs/{digest}", data=data,
                                         method="POST", headers=admin)
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 201
        assert http(capped, "HEAD", f"/api/blobs/{digest}", headers=admin)[0] == 200
        big = b"b" * 200_000
        status, _h, body = http(capped, "POST", "/api/blobs/sha256:" +
                                hashlib.sha256(big).hexdigest(), None,
                                {**admin, "Content-Length": str(len(big))})
        assert status == 413 and "exceeds the limit of 100000 bytes" in json.loads(body)["error"]
    finally:
        capped.stop()


def test_the_access_log_says_who_and_what_but_never_the_prompt(tmp_path, standin):
    from .conftest import Gateway

    logged = Gateway(standin.url, tmp_path)
    try:
        secret = "the-prompt-text-" + base64.b16encode(b"never logged").decode()
        answer = logged.client().generate(model=MODEL, prompt=secret, raw=True,
                                          options={"num_predict": 2})
        assert answer.done
        http(logged, "GET", "/api/tags", headers={"Authorization": "Bearer gk_nope"})
        time.sleep(0.5)  # lines are written in batches, at most 0.2 s apart
    finally:
        logged.stop()
    text = Path(logged.log.name).read_text()
    assert secret not in text and answer.response not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    generated = [line for line in lines if line["endpoint"] == "/api/generate"]
    assert generated[0]["key"] == "team-a" and generated[0]["status"] == 200
    assert generated[0]["model"] == MODEL and generated[0]["completion_tokens"] == 2
    assert any(line["status"] == 401 and line["key"] == "-" for line in lines)
