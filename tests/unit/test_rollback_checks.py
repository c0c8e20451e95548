"""rollback.yml's first check on a target: what `previous` is, said before anything runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def rollback(tmp_path: Path) -> subprocess.CompletedProcess:
    inventory = {"all": {"children": {"targets": {"hosts": {"llm-01": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "gemma_airgap_release_root": str(tmp_path / "releases")}}}}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"),
         "-i", str(tmp_path / "inventory.json"), str(ROOT / "playbooks" / "rollback.yml")],
        cwd=ROOT, text=True, capture_output=True, check=False,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
             "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"})


@pytest.mark.parametrize("previous, says", [
    (None, "only one release was ever deployed there"),
    ("2026.11.01-1", "its previous link points at a release that is gone"),
])
def test_nothing_to_roll_back_to_is_named(tmp_path, previous, says):
    releases = tmp_path / "releases"
    (releases / "2026.11.25-1").mkdir(parents=True)
    (releases / "current").symlink_to("2026.11.25-1")
    if previous:
        (releases / "previous").symlink_to(previous)  # gone: never there, or pruned by hand
    out = rollback(tmp_path)
    assert out.returncode != 0
    assert "TASK [Stop when there is nothing to roll back to]" in out.stdout
    assert says in " ".join(out.stdout.split()), out.stdout[-2000:]


def test_a_previous_release_that_is_there_passes_the_check(tmp_path):
    releases = tmp_path / "releases"
    (releases / "2026.11.01-1").mkdir(parents=True)
    (releases / "previous").symlink_to("2026.11.01-1")
    out = rollback(tmp_path)
    # It stops later (the lab release has no manifest), not at this check.
    assert "has no previous release" not in out.stdout, out.stdout[-2000:]
    assert "TASK [Verify the previous release's files before using them]" in out.stdout
