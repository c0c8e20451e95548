"""/v1 (OpenAI-compatible) relayed as SSE; clients going away free their slot; TLS.

The /v1 backend is llama-cpp-python's own OpenAI-compatible server with the lab
model: Ollama's /v1 speaks the same protocol, and the stand-in has no /v1.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import INFERENCE_KEY, Gateway
from .test_gateway import http, idle, metric, settled

MODEL = "gemma3:270m"
AUTH = {"Authorization": f"Bearer {INFERENCE_KEY}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def openai_gateway(openai_server, tmp_path_factory):
    # This backend has no /api/tags to learn model names from: the expected model is the
    # one name the gateway knows, so its metrics carry it (others are "other").
    server = Gateway(openai_server.url, tmp_path_factory.mktemp("v1"), expected_model=MODEL)
    yield server
    server.stop()


def chat(url: str, stream: bool, headers: dict) -> urllib.request.Request:
    body = {"model": MODEL, "stream": stream, "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a sentence about the sea."}]}
    return urllib.request.Request(url + "/v1/chat/completions", method="POST",
                                  data=json.dumps(body).encode(), headers=headers)


def test_v1_chat_streams_sse_through_unbuffered_and_equal_to_direct(openai_gateway,
                                                                    openai_server):
    def events(url: str, headers: dict) -> tuple[list[float], str]:
        arrivals, text = [], ""
        started = time.perf_counter()
        with urllib.request.urlopen(chat(url, True, headers), timeout=120) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for raw in response:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                arrivals.append(time.perf_counter() - started)
                for choice in json.loads(line[5:])["choices"]:
                    text += choice["delta"].get("content") or ""
        return arrivals, text

    idle(openai_gateway)
    before = metric(openai_gateway, "gateway_time_to_first_token_seconds_count",
                    endpoint="/v1/chat/completions", model=MODEL)
    _, direct = events(openai_server.url, {"Content-Type": "application/json"})
    arrivals, relayed = events(openai_gateway.url, AUTH)
    assert relayed == direct and len(relayed) > 10
    assert len(arrivals) >= 20
    # The first event reaches the client long before the last is generated.
    assert arrivals[0] < arrivals[-1] / 3
    assert settled(openai_gateway, "gateway_time_to_first_token_seconds_count", before + 1,
                   endpoint="/v1/chat/completions", model=MODEL) == before + 1


def test_v1_non_streamed_answer_counts_tokens_from_usage(openai_gateway):
    idle(openai_gateway)
    before = metric(openai_gateway, "gateway_completion_tokens_total", model=MODEL)
    with urllib.request.urlopen(chat(openai_gateway.url, False, AUTH), timeout=120) as response:
        answer = json.loads(response.read())
    assert answer["usage"]["completion_tokens"] == 24
    assert settled(openai_gateway, "gateway_completion_tokens_total", before + 24,
                   model=MODEL) == before + 24


def test_v1_needs_a_key_and_lists_models_with_one(openai_gateway):
    assert http(openai_gateway, "GET", "/v1/models")[0] == 401
    status, _, body = http(openai_gateway, "GET", "/v1/models", headers=AUTH)
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == [MODEL]


def raw_generate(gateway: Gateway, num_predict: int, stream: bool = True) -> socket.socket:
    body = json.dumps({"model": MODEL, "prompt": "Once upon a time", "raw": True,
                       "stream": stream,
                       "options": {"num_predict": num_predict, "stop": []}}).encode()
    port = int(gateway.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + INFERENCE_KEY.encode() +
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return sock


@pytest.mark.parametrize("when", ["before the answer", "mid-stream"])
def test_a_client_that_goes_away_frees_its_slot_and_the_backend(tmp_path, standin, when):
    """Before the answer: stream false, whose answer comes only after the last token."""
    limited = Gateway(standin.url, tmp_path, key_limits={"concurrency": 1})
    try:
        # ~50 s of tokens if nobody stopped it
        sock = raw_generate(limited, 2000, stream=when == "mid-stream")
        deadline = time.monotonic() + 10
        while metric(limited, "gateway_requests_in_flight") != 1:
            assert time.monotonic() < deadline, "the request never reached the backend"
            time.sleep(0.02)
        if when == "mid-stream":
            received = b""
            while received.count(b"\n") < 12:  # headers and a few tokens
                received += sock.recv(4096)
            assert b"200 OK" in received
        sock.close()
        deadline = time.monotonic() + 5
        while metric(limited, "gateway_requests_in_flight") != 0:
            assert time.monotonic() < deadline, "the abandoned request is still in flight"
            time.sleep(0.05)
        # The key's one concurrent slot is free again, and so is the backend's one slot:
        # a short generation is answered now, not after the abandoned 2,000 tokens.
        started = time.monotonic()
        done = limited.client().generate(model=MODEL, prompt="The sky is", raw=True,
                                         options={"num_predict": 3})
        assert done.done and done.eval_count == 3
        assert time.monotonic() - started < 20
    finally:
        limited.stop()


def test_tls_serves_https_with_the_configured_certificate(tmp_path, standin):
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    secure = Gateway(standin.url, tmp_path,
                     tls={"certfile": str(cert), "keyfile": str(key)})
    try:
        assert secure.url.startswith("https://")
        client = secure.client(verify=ssl.create_default_context(cafile=str(cert)))
        assert MODEL in [m.model for m in client.list().models]
        # Without trusting the certificate the client refuses; plain HTTP gets nothing.
        with pytest.raises(ConnectionError, match="Failed to connect"):
            secure.client().list()
        with pytest.raises((ConnectionError, OSError)):
            urllib.request.urlopen(secure.url.replace("https", "http") + "/healthz",
                                   timeout=5).read()
        context = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(secure.url + "/healthz", context=context) as response:
            assert response.status == 200
    finally:
        secure.stop()


def test_tls_with_an_unreadable_certificate_refuses_to_start(tmp_path):
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"tls": {"certfile": str(tmp_path / "missing.crt"),
                                          "keyfile": str(tmp_path / "missing.key")}}))
    from tests.standin.conftest import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "gemma_gateway.server", "--port", "1"], capture_output=True,
        text=True,
        env={"GATEWAY_CONFIG": str(config), "PYTHONPATH": str(ROOT / "gateway"),
             "PATH": "/usr/bin:/bin"}, timeout=30)
    assert result.returncode != 0
    assert f"TLS file {tmp_path / 'missing.crt'} is missing or unreadable" in result.stderr
