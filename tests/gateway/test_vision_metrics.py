"""/metrics/vision: the vision server's own metrics, relayed for Prometheus with the metrics key.

The vision backend here is a real HTTP server answering as llama-server --metrics does (its
text format), one that answers 404 as llama-cpp-python's server does, and one that answers
far too much.
"""

from __future__ import annotations

import http.server as httpserver
import threading
import time

import pytest
from prometheus_client import generate_latest

from .conftest import INFERENCE_KEY, METRICS_KEY, Gateway
from .test_gateway import http

LLAMA_SERVER_METRICS = (b"# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
                        b"# TYPE llamacpp:prompt_tokens_total counter\n"
                        b"llamacpp:prompt_tokens_total 1234\n")


class MetricsBackend(httpserver.ThreadingHTTPServer):
    """Answers GET /metrics with a fixed status and body, and other paths from `statuses`
    (what the test sets, as llama-server's /health answers 503 while its model loads)."""

    def __init__(self, status: int, body: bytes, statuses: dict[str, int] | None = None) -> None:
        self.status, self.body, self.statuses = status, body, statuses or {}
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(httpserver.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/metrics":
            status, body = self.server.status, self.server.body
        else:
            status = self.server.statuses.get(self.path, 404)
            body = b'{"status":"ok"}' if status == 200 else b'{"error":"Loading model"}'
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def relaying(standin, tmp_path):
    """A gateway in front of the stand-in, with a vision backend made by the test."""
    made = []

    def make(status: int, body: bytes) -> Gateway:
        backend = MetricsBackend(status, body)
        directory = tmp_path / str(len(made))
        directory.mkdir()
        gateway = Gateway(standin.url, directory, vision_backends=[
            {"model": "gemma3n:tiny", "url": backend.url}])
        made.append((backend, gateway))
        return gateway

    yield make
    for backend, gateway in made:
        gateway.stop()
        backend.shutdown()


def scrape(gateway: Gateway, key: str | None = METRICS_KEY) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    status, _headers, body = http(gateway, "GET", "/metrics/vision", headers=headers)
    return status, body


def test_the_vision_servers_metrics_reach_prometheus_with_the_metrics_key_only(relaying):
    gateway = relaying(200, LLAMA_SERVER_METRICS)
    assert scrape(gateway) == (200, LLAMA_SERVER_METRICS)
    assert scrape(gateway, None)[0] == 401
    assert scrape(gateway, INFERENCE_KEY)[0] == 403  # an inference key reads no metrics


def test_a_vision_server_without_metrics_is_a_502_that_says_so(relaying):
    status, body = scrape(relaying(404, b"File Not Found"))
    assert status == 502 and b"llama-server needs --metrics" in body


def test_an_oversized_answer_is_not_relayed(relaying):
    status, body = scrape(relaying(200, b"x" * (5 * 1024 * 1024)))
    assert status == 502 and b"larger than" in body


def test_a_gateway_without_a_vision_backend_has_no_vision_metrics(standin, tmp_path):
    plain = Gateway(standin.url, tmp_path)
    try:
        assert scrape(plain)[0] == 404
    finally:
        plain.stop()


def test_odd_backend_answers_neither_break_the_poller_nor_grow_the_series():
    from gemma_gateway.metrics import Metrics

    metrics = Metrics(fixed_models=("gemma3:270m",))
    metrics.record_backend({"models": None}, {"models": [1, "x", {"name": 5}, None]})
    metrics.record_backend({"models": [{"name": "gemma3:270m", "size": "huge"}, 7]},
                           {"models": {"not": "a list"}})
    text = generate_latest(metrics.registry).decode()
    assert 'gateway_model_memory_bytes{model="gemma3:270m"} 0.0' in text
    assert 'gateway_model_loaded{model="gemma3:270m"} 1.0' in text
    assert "gateway_models_available 0.0" in text


def vision_up(gateway: Gateway, expected: float, seconds: float = 10) -> float | None:
    """gateway_backend_up{backend="vision"} once it reads `expected`, else its last value."""
    deadline = time.monotonic() + seconds
    while True:
        status, _headers, body = http(gateway, "GET", "/metrics",
                                      headers={"Authorization": f"Bearer {METRICS_KEY}"})
        assert status == 200, body
        found = [float(line.rsplit(b" ", 1)[1]) for line in body.splitlines()
                 if line.startswith(b'gateway_backend_up{backend="vision"}')]
        value = found[0] if found else None
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_vision_backend_up_follows_llama_servers_health(standin, tmp_path):
    """Loading (503), ready (200), then gone: the series the VisionDown alert reads."""
    backend = MetricsBackend(200, LLAMA_SERVER_METRICS, {"/health": 503})
    gateway = Gateway(standin.url, tmp_path, poll_seconds=0.2, vision_backends=[
        {"model": "gemma3n:tiny", "url": backend.url}])
    try:
        assert vision_up(gateway, 0) == 0
        backend.statuses["/health"] = 200
        assert vision_up(gateway, 1) == 1
        backend.shutdown()
        backend.server_close()
        assert vision_up(gateway, 0) == 0
    finally:
        gateway.stop()
        backend.server_close()


def test_a_server_without_health_is_up_while_it_answers(standin, vision_server, tmp_path):
    """llama-cpp-python's server (the lab's vision service) has no /health: its 404 there
    says its HTTP loop runs (its /v1/models would wait behind a running generation)."""
    gateway = Gateway(standin.url, tmp_path, vision_backends=[
        {"model": "gemma3n:tiny", "url": vision_server.url}])
    try:
        assert vision_up(gateway, 1) == 1
    finally:
        gateway.stop()


def test_a_gateway_without_a_vision_backend_has_no_vision_up_series(standin, tmp_path):
    plain = Gateway(standin.url, tmp_path)
    try:
        assert vision_up(plain, 0, seconds=1) is None
    finally:
        plain.stop()
