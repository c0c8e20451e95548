"""The release role (and prepare's preflight) run by ansible-playbook on this machine.

Targets are localhost with a local connection; gemma_airgap_release_root is a temporary
directory with a release already there (current -> v0), a canary file, and a
victim directory beside it. A refused bundle must leave all of it as it was.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_bundle import (
    RESERVED_VERSIONS,
    VERSION_PATTERN,
)

from tests.conftest import ROOT
from tests.unit.bundle_parts import build_bundle, forge_manifest, forge_sums, tree

DEPLOY = """
- name: Deploy a release as deploy.yml does (the release role, then its activation)
  hosts: all
  gather_facts: false
  roles:
    - role: release
  post_tasks:
    - name: Activate
      ansible.builtin.include_role:
        name: release
        tasks_from: activate
"""

PREFLIGHT = """
- name: Run prepare's preflight alone
  hosts: all
  gather_facts: false
  tasks:
    - name: Preflight
      ansible.builtin.include_role:
        name: bundle
        tasks_from: preflight
"""


def playbook(tmp_path: Path, text: str, extra: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "playbook.yml"
    path.write_text(text)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    extra = dict(extra, ansible_python_interpreter=sys.executable)
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), str(path),
                           "-i", "localhost,", "-c", "local", "-e", json.dumps(extra)],
                          cwd=ROOT, env=env, text=True, capture_output=True, check=False)


def recap(result: subprocess.CompletedProcess) -> dict:
    found = re.search(r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+"
                      r"failed=(\d+)", result.stdout)
    assert found, result.stdout[-3000:]
    return {"ok": int(found[1]), "changed": int(found[2]), "failed": int(found[3])}


@pytest.fixture
def site(tmp_path):
    """opt/releases with v0 current and a canary, opt/victim beside it, and a bundle v1."""
    releases = tmp_path / "opt" / "releases"
    (releases / "v0").mkdir(parents=True)
    (releases / "v0" / "bundle.json").write_text('{"version": "v0"}\n')
    (releases / "canary").write_text("must survive\n")
    (releases / "current").symlink_to(releases / "v0")
    (tmp_path / "opt" / "victim").mkdir()
    (tmp_path / "opt" / "victim" / "keep").write_text("not the bundle's\n")
    bundle = build_bundle(tmp_path / "media")
    return {"root": tmp_path, "releases": releases, "bundle": bundle}


def deploy(site) -> subprocess.CompletedProcess:
    return playbook(site["root"], DEPLOY, {"release_source": str(site["bundle"]),
                                           "gemma_airgap_release_root": str(site["releases"])})


def test_a_good_bundle_becomes_current_and_the_old_one_previous(site):
    result = deploy(site)
    assert result.returncode == 0, result.stdout[-3000:]
    releases = site["releases"]
    assert os.readlink(releases / "current") == str(releases / "v1")
    assert os.readlink(releases / "previous") == str(releases / "v0")
    assert (releases / "v1" / "images" / "ollama.tar").is_file()


def test_symlinks_in_a_release_on_the_target_are_replaced_never_followed(site):
    assert deploy(site).returncode == 0
    release, outside = site["releases"] / "v1", site["root"] / "outside"
    outside.mkdir()
    tar = release / "images" / "ollama.tar"
    (outside / "ollama.tar").write_bytes(tar.read_bytes())  # the same bytes: a follower passes
    tar.unlink()
    tar.symlink_to(outside / "ollama.tar")
    (release / "models" / "blobs").rename(outside / "blobs")
    (release / "models" / "blobs").symlink_to(outside / "blobs")
    before = tree(outside)
    again = deploy(site)
    assert again.returncode == 0, again.stdout[-3000:]
    assert not tar.is_symlink() and tar.is_file()
    assert not (release / "models" / "blobs").is_symlink()
    assert (release / "models" / "blobs").is_dir()
    assert tree(outside) == before  # what the links pointed at was never touched


@pytest.mark.parametrize("version", ["../victim", ".", "current", "previous"])
def test_a_hostile_version_is_refused_before_anything_changes(site, version):
    forge_manifest(site["bundle"], version=version)
    before = tree(site["root"] / "opt")
    result = deploy(site)
    assert result.returncode != 0
    out = result.stdout
    failed = out[out.index("fatal:") - 400:]
    assert "Verify the bundle on the control node before sending anything" in failed
    assert f"records the version {json.dumps(version)}" in out
    assert "corrupt or forged" in out and "nothing was changed" in out
    assert tree(site["root"] / "opt") == before  # canary, victim, v0 and the links


def test_a_dangling_current_link_does_not_block_the_deploy(site):
    releases = site["releases"]
    (releases / "current").unlink()
    (releases / "current").symlink_to(releases / "gone")  # its release was removed by hand
    first = deploy(site)
    assert first.returncode == 0, first.stdout[-3000:]
    assert os.readlink(releases / "current") == str(releases / "v1")
    assert not os.path.lexists(releases / "previous")  # never a link to what is gone
    second = deploy(site)
    assert second.returncode == 0, second.stdout[-3000:]
    assert recap(second)["changed"] == 0


@pytest.mark.parametrize("damage", ["blob removed", "image tar swapped"])
def test_an_inconsistent_bundle_is_refused_before_anything_is_sent(site, damage):
    bundle = site["bundle"]
    if damage == "blob removed":
        max((bundle / "models" / "blobs").iterdir(), key=lambda p: p.stat().st_size).unlink()
    else:
        (bundle / "images" / "gateway.tar").write_bytes(
            (bundle / "images" / "ollama.tar").read_bytes())
    forge_sums(bundle)  # the line dropped or changed with it: the checksums agree
    before = tree(site["root"] / "opt")
    result = deploy(site)
    assert result.returncode != 0
    out = result.stdout
    assert "Check the bundle's parts agree on the control node" in out[out.index("fatal:") - 400:]
    assert "is not consistent" in out and "corrupt or forged" in out
    assert tree(site["root"] / "opt") == before


def test_prepare_and_bundle_manifest_share_one_version_rule():
    rule = yaml.safe_load((ROOT / "roles/bundle/vars/main.yml").read_text())
    assert rule["bundle_version_pattern"] == VERSION_PATTERN
    assert tuple(rule["bundle_reserved_versions"]) == RESERVED_VERSIONS


# One model to pull (preflight refuses an empty list), counted as needing no space.
PREFLIGHT_VARS = {"bundle_models": [{"name": "tiny:v1"}], "bundle_preflight_margin_bytes": 0,
                  "bundle_preflight_pull_bytes": 0}


@pytest.mark.parametrize("version", ["current", "previous", "v1\n"])
def test_prepare_refuses_a_reserved_or_unplain_version_before_writing(tmp_path, version):
    root = tmp_path / "bundles"
    result = playbook(tmp_path, PREFLIGHT, {**PREFLIGHT_VARS, "bundle_root": str(root),
                                            "bundle_version": version})
    assert result.returncode != 0
    out = result.stdout
    assert "Check the bundle version is a plain directory name" in out[out.index("fatal:") - 400:]
    assert f"bundle_version {json.dumps(version)} must be a plain name" in out
    assert not root.exists()


def test_prepare_accepts_a_plain_version(tmp_path):
    result = playbook(tmp_path, PREFLIGHT, {**PREFLIGHT_VARS, "bundle_root": str(tmp_path / "b"),
                                            "bundle_version": "2026.11.25-1"})
    assert result.returncode == 0, result.stdout[-3000:]


PARTIALS = """
- name: Which rsync partial files the release role keeps for the next rsync run
  hosts: all
  gather_facts: false
  vars_files: [{vars}]
  tasks:
    - name: Show them
      ansible.builtin.debug:
        msg: "KEPT{{{{ __release_resumable | map(attribute='path') | list | to_json }}}}KEPT"
      vars:
        __release_how: rsync
        __release_before:
          bad_files:
            - {{path: models/blobs/.rsync-partial/sha256-a, reason: not listed in SHA256SUMS}}
            - {{path: models/blobs/.rsync-partial/sha256-gone, reason: not listed in SHA256SUMS}}
            - {{path: .rsync-partial/bundle.json, reason: not listed in SHA256SUMS}}
            - {{path: models/.rsync-partial/x/y, reason: not listed in SHA256SUMS}}
            - {{path: models/blobs/.rsync-partial/sha256-b, reason: symlink}}
            - {{path: models/blobs/sha256-a, reason: missing}}
            - {{path: models/blobs/sha256-b, reason: missing}}
            - {{path: bundle.json, reason: checksum mismatch}}
"""


def test_only_partial_files_of_files_still_to_send_are_kept(tmp_path):
    """A partial file rsync resumes from stays; one whose file is no longer to be sent (a
    bundle re-made under its version, or rsync cut after its rename) is a stray, removed."""
    done = playbook(tmp_path, PARTIALS.format(vars=ROOT / "roles/release/vars/main.yml"), {})
    assert done.returncode == 0, done.stdout[-3000:]
    shown = re.search(r"KEPT(\[.*?\])KEPT", done.stdout)
    assert shown, done.stdout[-3000:]
    kept = json.loads(shown.group(1))
    assert kept == ["models/blobs/.rsync-partial/sha256-a", ".rsync-partial/bundle.json"]
