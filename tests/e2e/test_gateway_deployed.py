"""The deployed stack publishes the gateway alone, and the gateway holds the keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_deploy_refusals import TARGET, on_target
from .test_monitoring import PROMETHEUS, get, wait_for

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
    assert call("http://127.0.0.1:8080/metrics")[0] == 401  # only Prometheus's key reads it
    assert call("http://127.0.0.1:8080/metrics", "gk_lab-user-key-not-a-secret")[0] == 403
    status, metrics = call("http://127.0.0.1:8080/metrics", "gk_lab-metrics-key-not-a-secret")
    assert status == 200 and "gateway_request_duration_seconds" in metrics


def test_an_inference_key_cannot_unload_the_preloaded_model():
    from .test_releases import call as gateway_call

    status, body = gateway_call("/api/generate", {"model": "gemma3:270m", "prompt": "",
                                                  "keep_alive": 0})
    assert status == 400 and "may not set keep_alive" in body
    status, body = gateway_call("/api/ps")
    assert status == 200 and "gemma3:270m" in body  # still loaded, for good


def test_tls_on_the_gateway_port_from_the_inventory(tmp_path):
    """deploy --tags gateway,monitoring with gateway_tls_certificate/_private_key (what a
    site runs to turn TLS on or renew it): https only, the key readable by the gateway's user
    alone, the health probes verify the chain, Prometheus scrapes over https; then back."""
    import os
    import ssl
    import subprocess
    import sys
    import urllib.request

    import ollama

    from .test_deploy_refusals import ROOT

    address = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
         TARGET], text=True, capture_output=True, check=True).stdout.strip()
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=gateway.lab", "-addext",
                    # Prometheus on the monitoring host checks it against the target's
                    # inventory name (gateway_tls_server_name where that differs).
                    f"subjectAltName=DNS:gateway.lab,DNS:{TARGET},IP:{address},IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    extra = tmp_path / "tls.json"
    extra.write_text(json.dumps({"gateway_tls_certificate": cert.read_text(),
                                 "gateway_tls_private_key": key.read_text()}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    playbook = [str(Path(sys.executable).parent / "ansible-playbook"),
                str(ROOT / "playbooks" / "deploy.yml"), "--tags", "gateway,monitoring"]
    secured = subprocess.run([*playbook, "-e", f"@{extra}"], cwd=ROOT, env=env, text=True,
                             capture_output=True, check=False)
    try:
        assert secured.returncode == 0, secured.stdout[-4000:]
        assert "probes through the gateway at https://127.0.0.1:8080" in secured.stdout
        assert key.read_text() not in secured.stdout  # no_log
        context = ssl.create_default_context(cafile=str(cert))
        client = ollama.Client(host=f"https://{address}:8080", verify=context,
                               headers={"Authorization": "Bearer gk_lab-user-key-not-a-secret"})
        assert "gemma3:270m" in [m.model for m in client.list().models]
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{address}:8080/healthz", timeout=5).read()
        mode = on_target("stat", "-c", "%a %u", "/opt/gemma-airgap/stack/tls/key.pem").split()
        assert mode == ["400", "10001"]
        assert json.loads(on_target("docker", "inspect", "-f", "{{json .State.Health.Status}}",
                                    "gemma-airgap-gateway-1")) == "healthy"
        wait_for("Prometheus scraping the gateway over https",
                 lambda: gateway_scrape().startswith("https://") and gateway_scrape(), timeout=60)
    finally:
        plain = subprocess.run(playbook, cwd=ROOT, env=env, text=True, capture_output=True,
                               check=False)
    assert plain.returncode == 0, plain.stdout[-4000:]
    assert call("http://127.0.0.1:8080/api/tags", "gk_lab-user-key-not-a-secret")[0] == 200
    wait_for("Prometheus scraping the gateway over http again",
             lambda: gateway_scrape().startswith("http://"), timeout=60)


def gateway_scrape() -> str:
    """The address Prometheus scrapes the lab target's gateway at, once that scrape is up."""
    targets = get(f"{PROMETHEUS}/api/v1/targets?state=active")["data"]["activeTargets"]
    return next((t["scrapeUrl"] for t in targets if t["labels"]["job"] == "gateway"
                 and t["labels"]["instance"] == TARGET and t["health"] == "up"), "")


def test_a_key_rotation_alone_with_tags_gateway(tmp_path):
    """--tags gateway: no bundle, no sync; the gateway gets the new keys and restarts alone.

    Run with an inventory that names no release_source, as a site's does (it passes the
    media with -e for a whole deploy only)."""
    import hashlib
    import shutil

    from .test_deploy_refusals import ROOT, run_deploy

    inventory = tmp_path / "inventory"
    shutil.copytree(ROOT / "inventories" / "lab", inventory)
    targets = inventory / "group_vars" / "targets.yml"
    lines = targets.read_text().splitlines()
    kept = [line for line in lines if not line.startswith("release_source:")]
    assert len(kept) == len(lines) - 1
    targets.write_text("\n".join(kept) + "\n")

    def started(container: str) -> str:
        return on_target("docker", "inspect", "-f", "{{.Id}} {{.State.StartedAt}}", container)

    ollama_before = started("gemma-airgap-ollama-1")
    gateway_before = started("gemma-airgap-gateway-1")
    rotated = "gk_rotated-key-not-a-secret"
    assert call("http://127.0.0.1:8080/api/tags", rotated)[0] == 401
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"gateway_keys": [
        {"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": ["inference"]}
        for name, key in (("lab-user", "gk_lab-user-key-not-a-secret"), ("rotated", rotated))]}))
    try:
        result = run_deploy("-i", str(inventory), "--tags", "gateway", "-e", f"@{keys}")
        assert result.returncode == 0, result.stdout[-4000:]
        assert "Verify the bundle on the control node" not in result.stdout  # no re-hashing
        assert "probes through the gateway" in result.stdout
        assert call("http://127.0.0.1:8080/api/tags", rotated)[0] == 200
        assert started("gemma-airgap-ollama-1") == ollama_before
        assert started("gemma-airgap-gateway-1") != gateway_before
    finally:
        restored = run_deploy("-i", str(inventory), "--tags", "gateway")
    assert restored.returncode == 0, restored.stdout[-4000:]
    assert call("http://127.0.0.1:8080/api/tags", rotated)[0] == 401
    assert call("http://127.0.0.1:8080/api/tags", "gk_lab-user-key-not-a-secret")[0] == 200
