"""ollama_info and ollama_probe, run through Ansible against the live stand-in."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import run_module

from .conftest import MODEL


def test_info_reports_version_models_digests_and_capabilities(standin, client):
    digest = {m.model: m.digest for m in client.list().models}[MODEL]
    result = run_module("ollama_info", {"url": standin.url, "min_version": "0.9.3",
                                        "expected_models": [{"name": MODEL, "digest": digest}]})
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is False
    assert result["version"].startswith("0.")
    model = next(m for m in result["models"] if m["name"] == MODEL)
    assert model["digest"] == digest
    assert model["capabilities"] == ["completion"]
    assert model["context_length"] == 32768
    assert result["missing"] == [] and result["mismatched"] == []


def test_info_fails_naming_missing_and_mismatched_models(standin):
    result = run_module("ollama_info", {
        "url": standin.url, "hint": "See: docker logs ollama",
        "expected_models": ["gemma3n:e4b", {"name": MODEL, "digest": "0" * 64}]})
    assert result["failed"] is True
    assert "models missing: gemma3n:e4b" in result["msg"]
    assert f"model {MODEL} has digest" in result["msg"] and "the bundle says 000" in result["msg"]
    assert result["msg"].endswith("See: docker logs ollama")


def test_info_fails_clearly_when_nothing_answers():
    result = run_module("ollama_info", {"url": "http://127.0.0.1:9", "wait": 1})
    assert result["failed"] is True
    assert result["msg"].startswith("Ollama is not answering: http://127.0.0.1:9/api/version")


def test_info_refuses_an_old_server(standin):
    result = run_module("ollama_info", {"url": standin.url, "min_version": "99.0"})
    assert result["failed"] and "older than the required 99.0" in result["msg"]


def test_probe_text_and_stream_pass_with_figures_and_image_is_skipped_with_reason(standin):
    result = run_module("ollama_probe", {"url": standin.url, "model": MODEL, "num_predict": 8})
    assert result.get("failed") is not True, result.get("msg")
    checks = result["checks"]
    assert checks["text"]["passed"] and checks["text"]["eval_count"] >= 1
    assert checks["text"]["tokens_per_s"] > 0
    assert checks["stream"]["passed"] and checks["stream"]["chunks"] >= 1
    assert 0 < checks["stream"]["ttft_s"] < 60
    assert checks["image"]["skipped"] is True
    assert "has no vision capability" in checks["image"]["reason"]
    assert result["summary"][-1].startswith("image: skipped")
    # The second default prompt is Korean: asked and streamed too, whole characters only.
    assert checks["text 2"]["prompt"] == "하늘의 색깔 하나를 말해 주세요."
    assert checks["text 2"]["passed"] and checks["stream 2"]["passed"]
    assert any(line.startswith("stream 2 (하늘의") for line in result["summary"])


class BrokenText(BaseHTTPRequestHandler):
    """A server whose stream carries a broken character (what a bad UTF-8 split makes)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *_args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/api/show":
            body = json.dumps({"capabilities": ["completion"]}).encode()
        else:
            body = b"".join(json.dumps(line).encode() + b"\n" for line in (
                {"response": "\ud558\ub298", "done": False},
                {"response": "\ufffd\ufffd", "done": False},
                {"response": "", "done": True, "eval_count": 2, "eval_duration": 1000}))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_probe_fails_on_a_streamed_piece_with_a_broken_character():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BrokenText)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run_module("ollama_probe", {
            "url": f"http://127.0.0.1:{server.server_address[1]}", "model": "m",
            "checks": ["stream"], "prompts": ["하늘"]})
    finally:
        server.shutdown()
    assert result["failed"] is True
    assert "piece 2 carries a broken character (U+FFFD)" in result["msg"]


def test_probe_fails_with_the_servers_reason(standin):
    result = run_module("ollama_probe", {"url": standin.url, "model": "gemma3n:e4b",
                                         "hint": "Next: ollama list"})
    assert result["failed"] is True
    assert "HTTP 404: model 'gemma3n:e4b' not found" in result["msg"]
    assert result["msg"].endswith("Next: ollama list")


def test_probe_checks_the_answer_against_an_expectation(standin):
    result = run_module("ollama_probe", {"url": standin.url, "model": MODEL,
                                         "checks": ["text"], "expect": "^ZZZ-never$"})
    assert result["failed"] is True
    assert "does not match" in result["msg"]
    assert result["checks"]["text"]["passed"] is False
