"""/metrics/vision: the vision server's own metrics, relayed for Prometheus with the metrics key.

The vision backend here is a real HTTP server answering as llama-server --metrics does (its
text format), one that answers 404 as llama-cpp-python's server does, and one that answers
far too much.
"""

from __future__ import annotations

import http.server as httpserver
import threading

import pytest
from prometheus_client import generate_latest

from .conftest import INFERENCE_KEY, METRICS_KEY, Gateway
from .test_gateway import http

LLAMA_SERVER_METRICS = (b"# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
                        b"# TYPE llamacpp:prompt_tokens_total counter\n"
                        b"llamacpp:prompt_tokens_total 1234\n")


class MetricsBackend(httpserver.ThreadingHTTPServer):
    """Answers GET /metrics with a fixed status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(httpserver.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(self.server.status if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

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
