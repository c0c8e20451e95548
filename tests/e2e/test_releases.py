"""Releases on a deployed lab target: a new version becomes current, rollback returns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .test_deploy_refusals import ROOT, deploy, on_target, stack_state

pytestmark = pytest.mark.e2e

RELEASES = "/opt/gemma-airgap/releases"


def playbook(name: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"),
                           str(ROOT / "playbooks" / name), *extra],
                          cwd=ROOT, env=env, text=True, capture_output=True, check=False)


def links() -> tuple[str, str]:
    current = on_target("readlink", f"{RELEASES}/current").strip()
    previous = on_target("sh", "-c", f"readlink {RELEASES}/previous || true").strip()
    return current, previous


@pytest.fixture
def second_bundle():
    path = Path("/var/lib/gemma-airgap/bundles/lab-2")
    yield path
    shutil.rmtree(path, ignore_errors=True)  # the target keeps its copy; the host needs none


def test_a_new_release_becomes_current_and_rollback_returns_to_the_old_one(second_bundle):
    before = stack_state()
    assert links()[0] == f"{RELEASES}/lab-1"
    prepared = playbook("prepare.yml", "-e", "bundle_version=lab-2")
    assert prepared.returncode == 0, prepared.stdout[-3000:]
    deployed = deploy(second_bundle)
    assert deployed.returncode == 0, deployed.stdout[-3000:]
    assert links() == (f"{RELEASES}/lab-2", f"{RELEASES}/lab-1")

    rolled = playbook("rollback.yml")
    assert rolled.returncode == 0, rolled.stdout[-3000:]
    assert links() == (f"{RELEASES}/lab-1", f"{RELEASES}/lab-2")
    assert stack_state()[1] == before[1]  # same model, same greedy answer

    again = playbook("rollback.yml")  # back and forth: the links swap again
    assert again.returncode == 0
    assert links() == (f"{RELEASES}/lab-2", f"{RELEASES}/lab-1")
    playbook("rollback.yml")
    assert links() == (f"{RELEASES}/lab-1", f"{RELEASES}/lab-2")
