"""ollama_info's on_gpu: on a GPU target the model must be (at least partly) in GPU memory.

A small server answers as Ollama does, with /api/ps's size_vram as each case needs: the lab
has no GPU, and the stand-in always reports 0.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import run_module

SIZE = 9_000_000_000


def serve(loaded):
    class Ollama(BaseHTTPRequestHandler):
        def log_message(self, *_args) -> None:
            pass

        def answer(self, body) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self.answer({"/api/version": {"version": "0.12.6"},
                         "/api/tags": {"models": [{"name": "gemma3n:e4b", "digest": "ab",
                                                   "size": 7_547_579_000}]},
                         "/api/ps": {"models": loaded}}[self.path])

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.answer({"capabilities": ["completion"], "model_info": {}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ollama)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def ollama(request):
    server = serve(request.param)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def loaded(vram):
    return [{"name": "gemma3n:e4b", "size": SIZE, "size_vram": vram,
             "expires_at": "2318-01-01T00:00:00Z", "context_length": 8192}]


@pytest.mark.parametrize("ollama", [loaded(SIZE)], indirect=True)
def test_a_model_wholly_on_the_gpu_passes_and_says_so(ollama):
    result = run_module("ollama_info", {"url": ollama, "on_gpu": ["gemma3n:e4b"]})
    assert result.get("failed") is not True, result.get("msg")
    assert result["gpu"] == [{"name": "gemma3n:e4b", "size": SIZE, "size_vram": SIZE,
                              "percent": 100, "summary": "gemma3n:e4b: 100% in GPU memory "
                              "(9000000000 of 9000000000 bytes)"}]
    assert result["loaded"][0]["size_vram"] == SIZE


@pytest.mark.parametrize("ollama", [loaded(SIZE // 4)], indirect=True)
def test_a_model_split_between_gpu_and_cpu_passes_with_its_share(ollama):
    result = run_module("ollama_info", {"url": ollama, "on_gpu": ["gemma3n:e4b"]})
    assert result.get("failed") is not True, result.get("msg")
    assert result["gpu"][0]["percent"] == 25


@pytest.mark.parametrize("ollama", [loaded(0)], indirect=True)
def test_a_model_on_the_cpu_fails_saying_so(ollama):
    result = run_module("ollama_info", {"url": ollama, "on_gpu": ["gemma3n:e4b"],
                                        "hint": "Next: docker logs ollama"})
    assert result["failed"] is True
    assert ("the model runs on the CPU: gemma3n:e4b is loaded with 0 of its 9000000000 bytes in "
            "GPU memory (/api/ps size_vram 0)") in result["msg"]
    assert "nvidia_toolkit" in result["msg"] and result["msg"].endswith("Next: docker logs ollama")


@pytest.mark.parametrize("ollama", [[]], indirect=True)
def test_a_model_that_is_not_loaded_cannot_be_checked_and_fails_saying_why(ollama):
    result = run_module("ollama_info", {"url": ollama, "on_gpu": ["gemma3n:e4b"]})
    assert result["failed"] is True
    assert "model gemma3n:e4b is not loaded (/api/ps lists: none)" in result["msg"]
    # without on_gpu, the same server passes: the check is only asked for on GPU targets
    assert run_module("ollama_info", {"url": ollama}).get("failed") is not True
