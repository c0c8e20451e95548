"""The gateway (from .venv) in front of the live Ollama stand-in, with two API keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ollama
import pytest

from gemma_gateway.auth import hash_key, new_key

# The stand-in fixture, shared with this package's tests.
from tests.standin.conftest import (
    ROOT,
    client,  # noqa: F401
    free_port,
    standin,  # noqa: F401
    wait_listening,
)

INFERENCE_KEY = new_key()
ADMIN_KEY = new_key()
METRICS_KEY = new_key()  # what Prometheus scrapes /metrics with
POOL_KEY = new_key()  # what a rolling deploy drains and resumes inference hosts with

# Test ids name a key by its role, never its value: the keys are new in every process, and
# pytest-xdist's workers must collect the same ids (and a key in a test id would be logged).
KEY_NAMES = {INFERENCE_KEY: "inference-key", ADMIN_KEY: "admin-key", METRICS_KEY: "metrics-key",
             POOL_KEY: "pool-key"}


def pytest_make_parametrize_id(config, val, argname):
    if isinstance(val, str) and val.startswith("gk_") and len(val) > 20:
        return KEY_NAMES.get(val, "another-new-key")
    return None


class Gateway:
    def __init__(self, backend_url: str, tmp_path, **overrides) -> None:
        self.port = free_port()
        scheme = "https" if overrides.get("tls") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        target = {} if "backends" in overrides else {"backend_url": backend_url}
        config = {**target, "cors_origins": ["https://chat.example.internal"],
                  "expected_model": "gemma3:270m",
                  "keys": [{"name": "team-a", "sha256": hash_key(INFERENCE_KEY),
                            "scopes": ["inference"]},
                           {"name": "ops", "sha256": hash_key(ADMIN_KEY),
                            "scopes": ["inference", "admin"]},
                           {"name": "prometheus", "sha256": hash_key(METRICS_KEY),
                            "scopes": ["metrics"]},
                           {"name": "deploy", "sha256": hash_key(POOL_KEY),
                            "scopes": ["pool"]}], **overrides}
        path = tmp_path / f"gateway-{self.port}.json"
        path.write_text(json.dumps(config))
        env = dict(os.environ, GATEWAY_CONFIG=str(path), PYTHONPATH=str(ROOT / "gateway"))
        self.log = open(tmp_path / f"gateway-{self.port}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gemma_gateway.server", "--host", "127.0.0.1", "--port",
             str(self.port)], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        # Generous: a loaded CI machine starts Python slowly; a gateway that works is quick.
        if not wait_listening(self.port, self.process, 60):
            self.stop()
            raise RuntimeError(f"gateway did not start; log: {self.log.name}")

    def client(self, key: str | None = INFERENCE_KEY, **options) -> ollama.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return ollama.Client(host=self.url, headers=headers, **options)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def gateway(standin, tmp_path_factory):  # noqa: F811
    server = Gateway(standin.url, tmp_path_factory.mktemp("gateway"))
    yield server
    server.stop()


class OpenAIServer:
    """llama-cpp-python's own OpenAI-compatible server (real llama.cpp) on a free port."""

    def __init__(self, model_path, alias: str, log_dir, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / f"openai-{self.port}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
             "--model_alias", alias, "--n_ctx", "2048", "--n_threads", "2", "--seed", "7",
             "--interrupt_requests", "false",
             "--host", "127.0.0.1", "--port", str(self.port), *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_listening(self.port, self.process, 60):
            self.stop()
            raise RuntimeError(f"llama_cpp.server did not start; log: {self.log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self.log.close()


@pytest.fixture(scope="session")
def openai_server(tmp_path_factory):
    from tests.standin.conftest import lab_model_path

    server = OpenAIServer(lab_model_path(), "gemma3:270m", tmp_path_factory.mktemp("openai"),
                          "--chat_format", "gemma")
    yield server
    server.stop()


TINY_GEMMA3N = "gemma3n:tiny"


@pytest.fixture(scope="session")
def vision_server(tmp_path_factory):
    """The tiny Gemma 3n with its mmproj behind llama-cpp-python's server (MTMD handler)."""
    models = ROOT / "lab" / "models"
    server = OpenAIServer(models / "gemma3n-tiny.gguf", TINY_GEMMA3N,
                          tmp_path_factory.mktemp("vision"), "--chat_format", "mtmd",
                          "--clip_model_path", str(models / "gemma3n-tiny-mmproj.gguf"))
    yield server
    server.stop()
