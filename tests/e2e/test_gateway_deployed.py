"""The deployed stack publishes the gateway alone, and the gateway holds the keys."""

from __future__ import annotations

import json

import pytest

from .test_deploy_refusals import on_target

pytestmark = pytest.mark.e2e

CALL = """
import json, sys, urllib.request, urllib.error
headers = {'Authorization': 'Bearer ' + sys.argv[2]} if sys.argv[2] else {}
request = urllib.request.Request(sys.argv[1], headers=headers)
try:
    with urllib.request.urlopen(request, timeout=30) as r:
        print(json.dumps([r.status, r.read().decode()]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
"""


def call(url: str, key: str = "") -> tuple[int, str]:
    status, body = json.loads(on_target("python3", "-c", CALL, url, key))
    return status, body


def test_only_the_gateway_is_published():
    published = on_target("docker", "ps", "--format", "{{.Names}} {{.Ports}}").splitlines()
    ports = {line.split(" ", 1)[0]: line.split(" ", 1)[1] if " " in line else ""
             for line in published}
    assert ports["gemma-airgap-gateway-1"].startswith("0.0.0.0:8080->8080")
    assert ports["gemma-airgap-ollama-1"] == ""


def test_the_gateway_wants_a_key_and_honours_scopes():
    assert call("http://127.0.0.1:8080/api/tags")[0] == 401
    assert call("http://127.0.0.1:8080/api/tags", "gk_wrong")[0] == 401
    status, body = call("http://127.0.0.1:8080/api/tags", "gk_lab-user-key-not-a-secret")
    assert status == 200 and "gemma3:270m" in body
    assert call("http://127.0.0.1:8080/readyz")[0] == 200
    metrics = call("http://127.0.0.1:8080/metrics")[1]
    assert "gateway_request_duration_seconds" in metrics
