"""Shared by the e2e suites: the official ollama client against the gateway the deployed lab
target publishes (the host reaches the lab's internal network), with the lab user's key."""

from __future__ import annotations

import subprocess

import ollama
import pytest

from .test_deploy_refusals import TARGET


@pytest.fixture(scope="module")
def client() -> ollama.Client:
    address = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
         TARGET], text=True, capture_output=True, check=True).stdout.strip()
    return ollama.Client(host=f"http://{address}:8080", timeout=120,
                         headers={"Authorization": "Bearer gk_lab-user-key-not-a-secret"})
