"""A site of two inference hosts, each an edge host: a lab of its own (prefix
gemma-airgap-site, two targets), deployed from this machine as a site deploys it, with an
`inference` group beside the lab's inventory. `make site` runs these suites side by side with
the other labs; the lab is removed at the end.

At the end, before the lab goes, the second target leaves the site and the first is deployed
standalone again: its Ollama is published nowhere and its firewall rule and unit are gone.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

# Before anything reads them: the lab's inventory plugin and labctl take these from the
# environment, and every ansible-playbook this starts inherits them.
PREFIX = os.environ.setdefault("LAB_PREFIX", "gemma-airgap-site")
os.environ.setdefault("LAB_TARGETS", "2")

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = Path("/var/lib/gemma-airgap/bundles")
BUNDLE = BUNDLES / "lab-1"
TARGET = f"{PREFIX}-target-1"
SECOND = f"{PREFIX}-target-2"
HOSTS = [TARGET, SECOND]
ADMIN = {"Authorization": "Bearer gk_lab-admin-key-not-a-secret"}
USER = {"Authorization": "Bearer gk_lab-user-key-not-a-secret"}
MODEL = "gemma3:270m"
FIREWALL_UNIT = "gemma-airgap-ollama-firewall.service"
RELEASES = "/opt/gemma-airgap/releases"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["docker", *args], text=True, capture_output=True, check=False)
    assert out.returncode == 0 or not check, out.stderr + out.stdout
    return out


def labctl(command: str, **env: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), command],
                         env=dict(os.environ, **env), text=True, capture_output=True,
                         check=False)
    assert out.returncode == 0, out.stderr + out.stdout


def address(container: str) -> str:
    return docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                  container).stdout.strip()


def playbook(name: str, *extra: str, inventory: Path | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    sources = ["-i", str(ROOT / "inventories" / "lab")]
    if inventory is not None:
        sources += ["-i", str(inventory)]
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    started = time.monotonic()
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), *sources,
                          str(ROOT / "playbooks" / name), *extra],
                         cwd=ROOT, env=env, text=True, capture_output=True, check=False)
    print(f"{name} {' '.join(extra)}: {time.monotonic() - started:.0f} s")
    assert out.returncode == 0 or not check, out.stdout[-6000:] + out.stderr[-3000:]
    return out


def deploy(*extra: str, inventory: Path | None = None, source: Path = BUNDLE,
           check: bool = True) -> subprocess.CompletedProcess:
    return playbook("deploy.yml", "-e", f"release_source={source}", *extra,
                    inventory=inventory, check=check)


def changed_tasks(out: subprocess.CompletedProcess) -> list[str]:
    """`host: task` for every task that reported a change (what a failed 0-changed shows)."""
    found, task = [], ""
    for line in out.stdout.splitlines():
        if line.startswith("TASK ["):
            task = line[6:line.rfind("]")]
        elif line.startswith("changed: ["):
            found.append(f"{line[10:line.index(']')]}: {task}")
    return found


def recap(out: subprocess.CompletedProcess) -> dict[str, int]:
    """changed= per host in the playbook's recap."""
    counts = {}
    for line in out.stdout.splitlines():
        if " changed=" in line and " : ok=" in line:
            host = line.split(" : ")[0].strip()
            counts[host] = int(line.split(" changed=")[1].split()[0])
    return counts


def wait_for(condition, seconds: float, every: float = 0.5):
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def backends(gateway: str) -> dict[str, dict]:
    answer = httpx.get(f"{gateway}/gateway/backends", headers=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    return {entry["name"]: entry for entry in answer.json()["backends"]}


def generate(gateway: str) -> httpx.Response:
    return httpx.post(f"{gateway}/api/generate", headers=USER, timeout=180,
                      json={"model": MODEL, "prompt": "Say hi.", "stream": False,
                            "options": {"num_predict": 4, "temperature": 0}})


def virtual_ip() -> str:
    """The site's virtual IP: an address of the lab network Docker hands out last (it counts
    up from .2, and this lab has a few containers)."""
    subnet = docker("network", "inspect", PREFIX, "-f",
                    "{{(index .IPAM.Config 0).Subnet}}").stdout.strip()
    return str(ipaddress.IPv4Network(subnet)[250])


@pytest.fixture(scope="session")
def lab():
    labctl("down")  # a cold start: whatever an earlier run left goes
    labctl("up")
    try:
        yield virtual_ip()
    finally:
        labctl("down")


@pytest.fixture(scope="session")
def inventory(lab, tmp_path_factory) -> Path:
    """The second inventory source: both targets in the inference group (so both are edge
    hosts too), and the site's virtual IP."""
    path = tmp_path_factory.mktemp("site") / "inference.yml"
    path.write_text(json.dumps({"all": {
        "vars": {"edge_vip_address": lab},
        "children": {"inference": {"hosts": {host: {} for host in HOSTS}}}}}))
    return path


@pytest.fixture(scope="session")
def site(lab, inventory):
    """Each host's gateway URL, once both are deployed (a second run changes nothing); at
    the end the site is taken apart (leave_the_site)."""
    # The monitoring server and the healer are the other suites' business.
    deploy("--skip-tags=monitoring,healer", inventory=inventory)
    again = deploy("--tags=stack,gateway", inventory=inventory)
    assert recap(again) == {TARGET: 0, SECOND: 0}, changed_tasks(again)
    yield {host: f"http://{address(host)}:8080" for host in HOSTS}
    leave_the_site()


def leave_the_site() -> None:
    """The second target goes; the first, deployed standalone, unpublishes Ollama, removes
    its firewall rule and unit, and stops keepalived (no virtual IP without edge hosts)."""
    docker("rm", "-f", "-v", SECOND)
    docker("volume", "rm", "-f", f"{SECOND}-docker", check=False)
    source = Path(docker("exec", TARGET, "readlink", f"{RELEASES}/current").stdout.strip()).name
    deploy("--tags=stack,gateway,health", source=BUNDLES / source
           if (BUNDLES / source).exists() else BUNDLE)
    ports = docker("exec", TARGET, "docker", "ps", "--format", "{{.Names}} {{.Ports}}").stdout
    assert "11434" not in ports, ports
    assert "GEMMA-AIRGAP" not in docker("exec", TARGET, "iptables", "-S").stdout
    assert docker("exec", TARGET, "test", "-e", f"/etc/systemd/system/{FIREWALL_UNIT}",
                  check=False).returncode != 0
    state = docker("exec", TARGET, "systemctl", "is-active", "keepalived", check=False)
    assert state.stdout.strip() == "inactive", state.stdout
    assert docker("exec", TARGET, "test", "-e", "/etc/keepalived/keepalived.conf",
                  check=False).returncode != 0
