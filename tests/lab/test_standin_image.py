"""The stand-in image: what compose will run in place of ollama/ollama in the lab."""

import subprocess
import sys
import time
from pathlib import Path

import ollama
import pytest

from tests.standin.conftest import MODEL, free_port, import_lab_model

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
NAME = "gemma-airgap-labtest-standin"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], text=True, capture_output=True, check=check)


@pytest.fixture(scope="module")
def container():
    built = subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), "standin"],
                           text=True, capture_output=True, check=False)
    assert built.returncode == 0, built.stderr
    port = free_port()
    docker("rm", "-f", NAME, check=False)
    docker("run", "-d", "--name", NAME, "-p", f"127.0.0.1:{port}:11434",
           "-e", "OLLAMA_NUM_THREADS=2", "gemma-airgap-lab/ollama-standin:latest")
    deadline = time.monotonic() + 60
    while docker("exec", NAME, "ollama", "list", check=False).returncode != 0:
        assert time.monotonic() < deadline, docker("logs", NAME).stderr
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    docker("rm", "-f", NAME, check=False)


def test_ollama_cli_in_the_image_answers_like_the_real_one(container):
    version = docker("exec", NAME, "ollama", "--version")
    assert version.stdout.startswith("ollama version is ")
    client = ollama.Client(host=container)
    import_lab_model(client)
    listing = docker("exec", NAME, "ollama", "list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert listing[1].startswith(MODEL)
    shown = docker("exec", NAME, "ollama", "show", MODEL).stdout
    assert "gemma3" in shown and "completion" in shown


def test_image_serves_generation_from_its_store(container):
    client = ollama.Client(host=container)
    import_lab_model(client)
    response = client.generate(model=MODEL, prompt="The capital of France is", raw=True,
                               options={"num_predict": 6, "temperature": 0})
    assert response.done and response.eval_count >= 1
    running = docker("exec", NAME, "ollama", "ps").stdout
    assert MODEL in running
    blobs = docker("exec", NAME, "ls", "/root/.ollama/models/blobs").stdout.split()
    assert any(blob.startswith("sha256-") for blob in blobs)


def test_healthcheck_command_fails_when_the_server_is_down(container):
    stopped = docker("exec", "-e", "OLLAMA_HOST=127.0.0.1:1", NAME, "ollama", "list",
                     check=False)
    assert stopped.returncode != 0
    assert "could not connect to ollama server" in stopped.stderr
