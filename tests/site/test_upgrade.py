"""A rolling deploy of a new release under constant client load: deploy.yml takes one inference
host at a time out of every edge gateway's pool, waits for its requests in flight, restarts its
stack, probes it and puts it back. Streamed requests run through the site's virtual IP all
along (a stream cut by a restart cannot be retried: it would fail); none may fail, and at the end
both hosts run the new release with their Ollama restarted, and a second run changes nothing.

The new release is the lab bundle under a new version, sealed and signed again as prepare
would, deployed with another Ollama setting (OLLAMA_MAX_QUEUE) so that each host's Ollama is
recreated as a new Ollama image would recreate it; the gateways' configuration is unchanged,
so they keep running and the virtual IP stays where it is (an edge host whose gateway restarts
gives the address up first, and drops the connections it holds).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_module

from .conftest import (
    BUNDLE,
    HOSTS,
    MODEL,
    RELEASES,
    USER,
    backends,
    changed_tasks,
    deploy,
    docker,
    playbook,
    recap,
    wait_for,
)

pytestmark = pytest.mark.site

VERSION = "site-2"
SIGNING = Path("/var/cache/gemma-airgap/signing")
# The keys bundle_manifest writes itself; the rest of bundle.json is carried over.
SEALED_KEYS = ("format", "version", "files", "total_bytes", "created_at")
SETTING = ("-e", "ollama_stack_max_queue=300")


def new_release(directory: Path) -> Path:
    """The lab bundle as version site-2: hard links (the seal and the signature are written to
    new files and renamed, never in place), bundle.json sealed again, SHA256SUMS signed."""
    bundle = directory / VERSION
    subprocess.run(["cp", "-al", str(BUNDLE), str(bundle)], check=True)
    metadata = json.loads((BUNDLE / "bundle.json").read_text())
    for key in SEALED_KEYS:
        metadata.pop(key)
    sealed = run_module("bundle_manifest", {"path": str(bundle), "version": VERSION,
                                            "metadata": metadata})
    assert not sealed.get("failed"), sealed
    signed = run_module("bundle_signature", {
        "path": str(bundle), "fingerprint": (SIGNING / "fingerprint").read_text().strip(),
        "secret_key": (SIGNING / "secret.asc").read_text()})
    assert not signed.get("failed"), signed
    assert json.loads((BUNDLE / "bundle.json").read_text())["version"] == "lab-1"
    return bundle


class Load:
    """Clients streaming short generations, in turn through each of `gateways`, until stopped;
    every answer must be a 200 whose stream ends with done: true."""

    # Two clients keep a request in flight on each host (one slot each in the lab) and one
    # queued whenever a host is drained; more only add CPU the other stages of make test need.
    def __init__(self, gateways: list[str], clients: int = 2) -> None:
        self.gateways = gateways
        self.served: list[str] = []
        self.failed: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(n,), daemon=True)
                        for n in range(clients)]
        for thread in self.threads:
            thread.start()

    def client(self, number: int) -> None:
        turn = number
        while not self.stopping.is_set():
            gateway = self.gateways[turn % len(self.gateways)]
            turn += 1
            outcome = self.stream(gateway)
            (self.served if outcome == "ok" else self.failed).append(f"{gateway}: {outcome}")

    @staticmethod
    def stream(gateway: str) -> str:
        try:
            with httpx.stream("POST", f"{gateway}/api/generate", headers=USER, timeout=180,
                              json={"model": MODEL, "prompt": "Count to ten.",
                                    "options": {"num_predict": 12, "temperature": 0}}) as answer:
                if answer.status_code != 200:
                    return f"HTTP {answer.status_code}: {answer.read()[:300]!r}"
                lines = [json.loads(line) for line in answer.iter_lines() if line.strip()]
        except (httpx.HTTPError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        if not lines or lines[-1].get("done") is not True or any("error" in x for x in lines):
            return f"stream ended without done: {lines[-1:]!r}"
        return "ok"

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(240)


def what_moved(since: float) -> str:
    """For a failed load: what the virtual IP and each host's gateway did meanwhile (a cut
    connection is the address moving, or a gateway restarting under it)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since - 5))
    report = []
    for host in HOSTS:
        log = docker("exec", host, "journalctl", "-u", "keepalived", "--utc", "--no-pager",
                     "-o", "short-iso", "--since", stamp, check=False).stdout
        moves = [line for line in log.splitlines()
                 if any(word in line for word in ("Entering", "script", "Stopping", "Starting"))]
        # Not started_at(): a report must not fail where a container is gone.
        gateway = docker("exec", host, "docker", "inspect", "-f", "{{.State.StartedAt}}",
                         "gemma-airgap-gateway-1", check=False).stdout.strip() or "(none)"
        report.append(f"{host}: gateway started {gateway}; keepalived: " + " | ".join(moves[-12:]))
    return "\n".join(report)


def started_at(host: str, container: str) -> str:
    return docker("exec", host, "docker", "inspect", "-f", "{{.State.StartedAt}}",
                  container).stdout.strip()


def test_a_rolling_deploy_under_load_fails_no_request_and_leaves_every_host_upgraded(
        lab, site, inventory, tmp_path, capsys):
    release = new_release(tmp_path)
    ollama_before = {host: started_at(host, "gemma-airgap-ollama-1") for host in HOSTS}
    gateway_before = {host: started_at(host, "gemma-airgap-gateway-1") for host in HOSTS}
    began = time.time()
    load = Load([f"http://{lab}:8080"])
    try:
        # The load runs before the deploy starts (the first answers may wait for a model load).
        wait_for(lambda: len(load.served) >= 3 or load.failed, 120)
        assert not load.failed, load.failed
        rolled = deploy("--skip-tags=monitoring,healer", *SETTING, inventory=inventory,
                        source=release)
        served_during = len(load.served)
        time.sleep(5)
    finally:
        load.stop()
    assert load.failed == [], f"{load.failed[:10]}\n{what_moved(began)}"
    assert served_during > 20, served_during
    # One host at a time: each batch drained its host on both edge gateways (before Docker,
    # and again before the stack) and resumed it.
    out = rolled.stdout
    assert out.count("TASK [gateway : Take this host out of every edge gateway's pool") == 4
    assert out.count("TASK [gateway : Put this host back into every edge gateway's pool") == 2
    for host in HOSTS:
        current = docker("exec", host, "readlink", f"{RELEASES}/current").stdout.strip()
        assert current == f"{RELEASES}/{VERSION}"
        assert started_at(host, "gemma-airgap-ollama-1") != ollama_before[host]
        assert started_at(host, "gemma-airgap-gateway-1") == gateway_before[host]
        env = docker("exec", host, "docker", "inspect", "-f", "{{json .Config.Env}}",
                     "gemma-airgap-ollama-1").stdout
        assert "OLLAMA_MAX_QUEUE=300" in env
    for gateway in site.values():
        assert not any(entry["draining"] for entry in backends(gateway).values())
    again = deploy("--tags=stack,gateway", *SETTING, inventory=inventory, source=release)
    assert recap(again) == {host: 0 for host in HOSTS}, changed_tasks(again)
    with capsys.disabled():  # the figures, in make test's output
        print(f"\nrolling deploy of {VERSION} under load: {served_during} streams served "
              f"through the virtual IP until it ended, {len(load.failed)} failed")


def test_a_rollback_under_load_goes_back_one_host_at_a_time_and_fails_no_request(
        lab, site, inventory, capsys):
    """After the rolling deploy above: rollback.yml takes both hosts back to lab-1 (its
    Ollama settings are the inventory's again, so each Ollama restarts), drained in turn."""
    assert docker("exec", HOSTS[0], "readlink", f"{RELEASES}/current").stdout.strip() == \
        f"{RELEASES}/{VERSION}", "runs after the rolling deploy"
    ollama_before = {host: started_at(host, "gemma-airgap-ollama-1") for host in HOSTS}
    began = time.time()
    load = Load([f"http://{lab}:8080"])
    try:
        wait_for(lambda: len(load.served) >= 3 or load.failed, 120)
        rolled = playbook("rollback.yml", inventory=inventory)
        served_during = len(load.served)
    finally:
        load.stop()
    assert load.failed == [], f"{load.failed[:10]}\n{what_moved(began)}"
    assert rolled.stdout.count("TASK [gateway : Take this host out of every edge gateway") == 2
    for host in HOSTS:
        current = docker("exec", host, "readlink", f"{RELEASES}/current").stdout.strip()
        previous = docker("exec", host, "readlink", f"{RELEASES}/previous").stdout.strip()
        assert (current, previous) == (f"{RELEASES}/lab-1", f"{RELEASES}/{VERSION}")
        assert started_at(host, "gemma-airgap-ollama-1") != ollama_before[host]
    for gateway in site.values():
        assert not any(entry["draining"] for entry in backends(gateway).values())
    with capsys.disabled():
        print(f"\nrollback under load: {served_during} streams served through the virtual IP, "
              f"{len(load.failed)} failed")
