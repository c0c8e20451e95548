"""The lab against a real Docker engine: up is idempotent, down removes only its own.

Uses its own LAB_PREFIX, so it never touches a lab you have running.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "gemma-airgap-labtest"


def labctl(*args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    environment = dict(os.environ, LAB_PREFIX=PREFIX, **env)
    return subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), *args],
                          env=environment, text=True, capture_output=True, check=False)


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], text=True, capture_output=True, check=check)


@pytest.fixture
def bystanders():
    """A container and a network that the lab did not make."""
    docker("network", "create", f"{PREFIX}-bystander-net")
    docker("run", "-d", "--name", f"{PREFIX}-bystander", "--network", f"{PREFIX}-bystander-net",
           "gemma-airgap-lab/base:bookworm", "sleep", "600")
    yield
    docker("rm", "-f", f"{PREFIX}-bystander", check=False)
    docker("network", "rm", f"{PREFIX}-bystander-net", check=False)


def test_up_twice_keeps_targets_and_down_removes_only_lab_objects(bystanders):
    first = labctl("up", LAB_TARGETS="2")
    assert first.returncode == 0, first.stderr
    ids = [docker("inspect", "-f", "{{.Id}}", f"{PREFIX}-target-{i}").stdout for i in (1, 2)]

    network = json.loads(docker("network", "inspect", PREFIX).stdout)[0]
    assert network["Internal"] is True
    # Ready for SSH (tests/lab/test_lab_ssh.py logs in): the lab's key and the host keys.
    state = Path(os.environ.get("LAB_CACHE", "/var/cache/gemma-airgap")) / "labs" / PREFIX
    known = (state / "known_hosts").read_text()
    assert all(f",{PREFIX}-target-{i} ssh-ed25519 " in known for i in (1, 2))

    second = labctl("up", LAB_TARGETS="2")
    assert second.returncode == 0, second.stderr
    assert "starting target" not in second.stdout
    assert [docker("inspect", "-f", "{{.Id}}", f"{PREFIX}-target-{i}").stdout
            for i in (1, 2)] == ids

    down = labctl("down")
    assert down.returncode == 0, down.stderr
    assert "removed 2 container(s), 2 volume(s), 1 network(s)" in down.stdout
    for name in (f"{PREFIX}-target-1", f"{PREFIX}-target-2"):
        assert docker("inspect", name, check=False).returncode != 0
    assert docker("network", "inspect", PREFIX, check=False).returncode != 0
    assert not state.exists()
    assert docker("inspect", f"{PREFIX}-bystander", check=False).returncode == 0
    assert docker("network", "inspect", f"{PREFIX}-bystander-net", check=False).returncode == 0


def test_a_non_internal_network_of_the_same_name_is_refused():
    docker("network", "create", PREFIX)
    try:
        result = labctl("up")
        assert result.returncode == 1
        assert "is not --internal" in result.stderr
        assert docker("inspect", f"{PREFIX}-target-1", check=False).returncode != 0
    finally:
        docker("network", "rm", PREFIX, check=False)
