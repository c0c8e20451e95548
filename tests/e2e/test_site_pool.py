"""Two inference hosts behind every gateway, deployed as a site deploys them.

Runs on the lab the air-gap scenario deployed: a second target joins, both go into an
`inference` group (a second inventory source beside the lab's), deploy.yml runs, and then:
each gateway lists both hosts; Ollama's site port answers the other edge host and nobody
else; one host's Ollama killed under load costs no request and the host comes back into the
pool. Afterwards the second target leaves and the first is deployed standalone again (its
Ollama unpublished, its firewall unit gone), so the other suites find the lab as it was.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .test_deploy_refusals import ROOT

pytestmark = pytest.mark.e2e

PREFIX = os.environ.get("LAB_PREFIX", "gemma-airgap-lab")
TARGET = f"{PREFIX}-target-1"
SECOND = f"{PREFIX}-target-2"
HOSTS = [TARGET, SECOND]
ADMIN = {"Authorization": "Bearer gk_lab-admin-key-not-a-secret"}
USER = {"Authorization": "Bearer gk_lab-user-key-not-a-secret"}
MODEL = "gemma3:270m"
FIREWALL_UNIT = "gemma-airgap-ollama-firewall.service"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["docker", *args], text=True, capture_output=True, check=False)
    assert out.returncode == 0 or not check, out.stderr + out.stdout
    return out


def address(container: str) -> str:
    return docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                  container).stdout.strip()


def deploy(*extra: str, inventory: Path | None = None) -> subprocess.CompletedProcess:
    sources = ["-i", str(ROOT / "inventories" / "lab")]
    if inventory is not None:
        sources += ["-i", str(inventory)]
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), *sources,
                          str(ROOT / "playbooks" / "deploy.yml"), *extra],
                         cwd=ROOT, env=env, text=True, capture_output=True, check=False)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if docker("inspect", TARGET, check=False).returncode != 0:
        pytest.fail(f"{TARGET} is not running: the air-gap scenario (make e2e) starts it")
    env = dict(os.environ, LAB_TARGETS="2")
    up = subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), "control"], env=env,
                        text=True, capture_output=True, check=False)
    assert up.returncode == 0, up.stderr + up.stdout
    inventory = tmp_path_factory.mktemp("site") / "inference.yml"
    inventory.write_text(json.dumps({"all": {"children": {"inference": {
        "hosts": {host: {} for host in HOSTS}}}}}))
    # The monitoring server and the healer stay as the air-gap scenario left them.
    started = time.monotonic()
    deploy("--skip-tags=monitoring,healer", inventory=inventory)
    print(f"deploy of the two-host site: {time.monotonic() - started:.0f} s")
    again = deploy("--tags=stack,gateway", inventory=inventory)
    recap = [line for line in again.stdout.splitlines() if "changed=" in line]
    assert len(recap) == 2 and all("changed=0" in line for line in recap), recap
    yield {host: f"http://{address(host)}:8080" for host in HOSTS}
    docker("rm", "-f", "-v", SECOND)
    docker("volume", "rm", "-f", f"{SECOND}-docker", check=False)
    subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), "control"],
                   env=dict(os.environ, LAB_TARGETS="1"), check=False)
    deploy("--tags=stack,gateway,health")
    # Standalone again: Ollama published nowhere, no rule, no unit.
    ports = docker("exec", TARGET, "docker", "ps", "--format", "{{.Names}} {{.Ports}}").stdout
    assert "11434" not in ports, ports
    assert "GEMMA-AIRGAP" not in docker("exec", TARGET, "iptables", "-S").stdout
    assert docker("exec", TARGET, "test", "-e", f"/etc/systemd/system/{FIREWALL_UNIT}",
                  check=False).returncode != 0


def backends(gateway: str) -> dict[str, dict]:
    answer = httpx.get(f"{gateway}/gateway/backends", headers=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    return {entry["name"]: entry for entry in answer.json()["backends"]}


def wait_for(condition, seconds: float, every: float = 0.5):
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def generate(gateway: str) -> httpx.Response:
    return httpx.post(f"{gateway}/api/generate", headers=USER, timeout=180,
                      json={"model": MODEL, "prompt": "Say hi.", "stream": False,
                            "options": {"num_predict": 4, "temperature": 0}})


def test_every_gateway_fronts_both_hosts_and_both_serve(site):
    for host, gateway in site.items():
        pool = wait_for(lambda gateway=gateway: (lambda found: found if all(
            entry["answering"] for entry in found.values()) else None)(backends(gateway)), 60)
        assert sorted(pool) == sorted(HOSTS)
        own = pool[host]
        assert own["url"] == "http://ollama:11434"
        other = pool[next(name for name in HOSTS if name != host)]
        assert other["url"].endswith(":11434") and "ollama" not in other["url"]
    with concurrent.futures.ThreadPoolExecutor(4) as workers:
        answers = list(workers.map(lambda _: generate(site[TARGET]), range(8)))
    assert [answer.status_code for answer in answers] == [200] * 8
    served = backends(site[TARGET])
    assert all(entry["in_flight"] == 0 for entry in served.values())


def reaches(source: str | None, host: str, port: int = 11434) -> bool:
    """Whether a TCP connection from `source` (a lab container; None: this machine) to the
    host's Ollama port on its site address opens within 3 s."""
    script = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])),"
              " timeout=3).close()\nexcept OSError:\n sys.exit(1)")
    if source is None:
        try:
            socket.create_connection((address(host), port), timeout=3).close()
        except OSError:
            return False
        return True
    return docker("exec", source, "python3", "-c", script, address(host), str(port),
                  check=False).returncode == 0


def test_ollama_answers_the_other_edge_host_and_nobody_else(site):
    assert reaches(SECOND, TARGET) and reaches(TARGET, SECOND)
    # This machine and the control node are on the same network, and are not edge hosts.
    assert not reaches(None, TARGET) and not reaches(None, SECOND)
    control = f"{PREFIX}-control"
    if docker("inspect", control, check=False).returncode == 0:
        assert not reaches(control, TARGET)
    # The gateway's own port stays open to everyone (it asks for a key).
    assert reaches(None, TARGET, 8080)
    for host in HOSTS:
        state = docker("exec", host, "systemctl", "is-active", FIREWALL_UNIT, check=False)
        assert state.stdout.strip() == "active", state.stdout + state.stderr
    # A restart of the engine keeps the rule (the unit runs again after it).
    docker("exec", SECOND, "systemctl", "restart", "docker")
    wait_for(lambda: httpx.get(f"{site[SECOND]}/readyz", timeout=5).status_code == 200
             if reaches(None, SECOND, 8080) else False, 120, every=1)
    assert reaches(TARGET, SECOND) and not reaches(None, SECOND)


def test_a_host_whose_ollama_dies_under_load_costs_no_request_and_comes_back(site):
    gateway = site[SECOND]
    served, failed = [], []
    stop = False

    def client() -> None:
        while not stop:
            answer = generate(gateway)
            (served if answer.status_code == 200 else failed).append(answer)

    with concurrent.futures.ThreadPoolExecutor(3) as workers:
        running = [workers.submit(client) for _ in range(3)]
        try:
            wait_for(lambda: len(served) >= 6, 120)
            # A crash, not a stop: its process killed from the host (`docker kill` would count
            # as a stop, which the restart policy leaves stopped).
            docker("exec", TARGET, "sh", "-c",
                   "kill -9 $(docker inspect -f '{{.State.Pid}}' gemma-airgap-ollama-1)")
            killed_at = len(served)
            wait_for(lambda: len(served) >= killed_at + 9, 180)
        finally:
            stop = True
            for worker in running:
                worker.result()
    assert failed == [], [answer.text for answer in failed]
    # Docker restarts the crashed container; the pool takes the host back once it answers.
    wait_for(lambda: backends(gateway)[TARGET]["answering"] and
             backends(gateway)[TARGET]["ejected_seconds"] == 0, 120, every=1)
    with concurrent.futures.ThreadPoolExecutor(3) as workers:
        answers = list(workers.map(lambda _: generate(gateway), range(6)))
    assert [answer.status_code for answer in answers] == [200] * 6
