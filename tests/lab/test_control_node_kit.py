"""The control-node kit: built by the bundle role's control_node tasks with the lab's
settings, then installed by its install.sh with no network, from read-only media, on the OS
the kit is for: the image the lab inventory's bundle_control_node_platform names (the lab's
fresh Debian 13 control node: python3, no python3-venv, ssh or rsync).

Builds the kit alone (not a whole prepare) into its own scratch bundle directory, sealed and
signed with the lab's key as prepare does it: install.sh installs nothing from a bundle whose
signature is not by the key it is given, or from a kit file SHA256SUMS does not vouch for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_module

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
LAB_VARS = yaml.safe_load((ROOT / "inventories" / "lab" / "group_vars" / "all.yml").read_text())
IMAGE = LAB_VARS["bundle_control_node_platform"]["image"]
CORE = re.search(r"^ansible-core==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)[1]
COLLECTIONS = ("gemma_airgap.ollama", "community.docker", "ansible.posix", "community.general")
SIGNING = Path(os.environ.get("LAB_CACHE", "/var/cache/gemma-airgap")) / "signing"
PLAYBOOK = """\
- name: The control-node kit alone
  hosts: staging
  gather_facts: false
  tasks:
    - name: The bundle role's control_node tasks
      ansible.builtin.include_role:
        name: bundle
        tasks_from: control_node
      vars:
        bundle_dir: "{{ kit_bundle_dir }}"
"""


def build_kit(playbook: Path, bundle: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i",
         str(ROOT / "inventories" / "lab"), str(playbook), "-e", f"kit_bundle_dir={bundle}"],
        cwd=ROOT, env=env, text=True, capture_output=True, check=False)


def changed_tasks(result: subprocess.CompletedProcess) -> list[str]:
    """The names of the tasks that reported a change (the recap's count must agree)."""
    match = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", result.stdout)
    assert match, result.stdout[-3000:]
    names, task = [], None
    for line in result.stdout.splitlines():
        if line.startswith("TASK ["):
            task = line[6:line.rindex("]")]
        elif line.startswith("changed: ") and task not in names:
            names.append(task)
    assert len(names) == int(match[1]), result.stdout[-3000:]
    return names


def offline(bundle: Path, script: str, *docker_args: str, timeout: int = 600
            ) -> subprocess.CompletedProcess:
    """Run a shell script in a fresh container of the lab's Debian 13, with no network and
    the bundle read-only at /media/bundle."""
    name = f"gemma-airgap-kittest-{os.getpid()}"
    command = ["docker", "run", "--rm", "--name", name, "--network", "none",
               "-v", f"{bundle}:/media/bundle:ro", *docker_args, IMAGE,
               "sh", "-c", script]
    try:
        return subprocess.run(command, text=True, capture_output=True, check=False,
                              timeout=timeout)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def lab_signer() -> str:
    subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), "signing-key"], check=True,
                   capture_output=True)
    return (SIGNING / "fingerprint").read_text().strip()


def seal_and_sign(bundle: Path) -> None:
    """What prepare does after the kit: the kit's package repository signed (Release.gpg),
    SHA256SUMS over the bundle, and SHA256SUMS signed, all by the lab key."""
    key = {"path": str(bundle), "fingerprint": lab_signer(),
           "secret_key": (SIGNING / "secret.asc").read_text()}
    repository = run_module("bundle_signature", {**key, "sign": "repositories",
                                                 "repositories": ["control-node/packages"]})
    assert not repository.get("failed"), repository
    sealed = run_module("bundle_manifest", {"path": str(bundle), "version": bundle.name})
    assert not sealed.get("failed"), sealed
    signed = run_module("bundle_signature", key)
    assert not signed.get("failed"), signed


def install(signer: str, prefix: str = "/opt/gemma-airgap") -> str:
    return f"sh /media/bundle/control-node/install.sh --signer {signer} {prefix}"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True,
                      check=False).returncode != 0:
        subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), "images"], check=True,
                       capture_output=True)
    work = tmp_path_factory.mktemp("kit")
    playbook = work / "kit.yml"
    playbook.write_text(PLAYBOOK)
    bundle = work / "lab-1"
    first = build_kit(playbook, bundle)
    assert first.returncode == 0, first.stdout[-4000:]
    seal_and_sign(bundle)
    return playbook, bundle, first


def test_the_kit_holds_wheels_for_the_control_nodes_python_and_no_ansible_package(kit):
    _playbook, bundle, _first = kit
    control = bundle / "control-node"
    pins = (control / "requirements.txt").read_text()
    assert not re.search(r"^ansible==", pins, re.M)
    assert f"ansible-core=={CORE}" in pins
    wheels = sorted(p.name for p in (control / "wheels").iterdir())
    assert not [w for w in wheels if w.startswith("ansible-")]
    binary = [w for w in wheels if not w.endswith("-none-any.whl")]
    assert binary and all(re.search(r"-(cp313-cp313|cp3\d+-abi3)-manylinux", w)
                          for w in binary), binary
    assert {w.split("-")[0] for w in binary} >= {"cffi", "cryptography", "pyyaml", "markupsafe"}
    tarballs = {p.name.rsplit("-", 1)[0] for p in (control / "collections").iterdir()}
    assert tarballs >= {c.replace(".", "-") for c in COLLECTIONS}
    debs = {p.name.split("_")[0] for p in (control / "packages" / "debs").iterdir()}
    assert debs >= {"python3.13-venv", "python3-pip-whl", "rsync", "openssh-client"}
    assert (control / "packages" / "Packages").is_file()
    assert os.access(control / "install.sh", os.X_OK)


def test_a_second_build_changes_nothing(kit):
    playbook, bundle, _first = kit
    again = build_kit(playbook, bundle)
    assert again.returncode == 0, again.stdout[-3000:]
    # (The collection's tarball is rebuilt when a file of the collection changed in between.)
    assert changed_tasks(again) == [], again.stdout[-3000:]


def test_install_sh_installs_ansible_and_the_collections_offline_and_again(kit):
    _playbook, bundle, _first = kit
    script = f"""
{install(lab_signer())}; echo "first-rc=$?"
echo "--- version"; /opt/gemma-airgap/venv/bin/ansible --version; command -v ssh; command -v rsync
echo "--- list"; /opt/gemma-airgap/venv/bin/ansible-galaxy collection list
echo "--- playbook"; cd /root && /opt/gemma-airgap/venv/bin/ansible-playbook -i localhost, \
  gemma_airgap.ollama.deploy --syntax-check; echo "syntax-rc=$?"
echo "--- again"; {install(lab_signer())}; echo "second-rc=$?"
"""
    out = offline(bundle, script)
    text = out.stdout + out.stderr
    assert "first-rc=0" in out.stdout, text[-4000:]
    first, rest = out.stdout.split("--- version", 1)
    version, rest = rest.split("--- list", 1)
    listing, second = rest.split("--- again", 1)
    assert re.search(r"lacks: python3-venv rsync", first), first  # apt, from the kit
    assert f"ansible [core {CORE}]" in version
    assert re.search(r"python version = 3\.13\.", version), version
    assert "/usr/bin/ssh\n/usr/bin/rsync" in version  # what deploy needs besides Ansible
    for collection in COLLECTIONS:
        assert re.search(rf"^{re.escape(collection)}\s+\d", listing, re.M), listing
    assert re.search(rf"install\.sh: OK: ansible-core {re.escape(CORE)} \(Python 3\.13\.",
                     first), first
    assert ("ansible-playbook -i <inventory> gemma_airgap.ollama.deploy "
            "-e release_source=/media/bundle") in first
    # The collection's own playbook, by its name, from the venv alone.
    assert "syntax-rc=0" in listing, listing
    assert "second-rc=0" in second, text[-4000:]
    # The second run finds everything in place: no apt, no venv, no collection reinstall.
    assert "lacks" not in second and "the collections are there" in second, second
    assert "install.sh: OK:" in second


def damaged_copy(bundle: Path, tmp_path: Path) -> Path:
    """A copy of the signed bundle to damage (hard links: files are replaced, never edited)."""
    copy = tmp_path / bundle.name
    subprocess.run(["cp", "-al", str(bundle), str(copy)], check=True)
    return copy


def test_a_kit_missing_a_wheel_fails_naming_it(kit, tmp_path):
    _playbook, bundle, _first = kit
    damaged = damaged_copy(bundle, tmp_path)
    cffi = next((damaged / "control-node" / "wheels").glob("cffi-*.whl"))
    cffi.unlink()
    out = offline(damaged, install(lab_signer()))
    assert out.returncode != 0
    assert f"control-node/wheels/{cffi.name}: No such file or directory" in out.stderr, \
        out.stderr[-3000:]
    assert "A file of the kit does not match SHA256SUMS" in out.stderr
    assert "sha256sum -c SHA256SUMS" in out.stderr  # and what to do


def test_a_changed_kit_with_a_consistent_sha256sums_installs_nothing(kit, tmp_path):
    """What an attacker with write access to the media makes: a wheel swapped and SHA256SUMS
    sealed again to match it. The checksums agree; the signature does not."""
    _playbook, bundle, _first = kit
    damaged = damaged_copy(bundle, tmp_path)
    wheel = next((damaged / "control-node" / "wheels").glob("cffi-*.whl"))
    data = wheel.read_bytes()
    wheel.unlink()
    wheel.write_bytes(data + b"tampered")
    (damaged / "SHA256SUMS").unlink()
    assert not run_module("bundle_manifest", {"path": str(damaged),
                                              "version": damaged.name}).get("failed")
    out = offline(damaged, install(lab_signer()) + "; ls /opt/gemma-airgap 2>&1")
    assert "The bundle's signature does not verify" in out.stderr, out.stderr[-3000:]
    assert "No such file or directory" in out.stdout  # nothing installed


def test_an_unsigned_bundle_or_another_signer_installs_nothing(kit, tmp_path):
    _playbook, bundle, _first = kit
    other = "0123456789ABCDEF0123456789ABCDEF01234567"
    out = offline(bundle, install(other))
    assert out.returncode != 0
    assert (f"The bundle is signed by {lab_signer()}, which is not the key given; expected "
            f"{other}") in " ".join(out.stderr.split()), out.stderr
    out = offline(bundle, "sh /media/bundle/control-node/install.sh /opt/gemma-airgap")
    assert out.returncode != 0 and "--signer <fingerprint>" in out.stderr, out.stderr
    out = offline(bundle, install("1234ABCD"))
    assert out.returncode != 0 and "a key ID is too short" in out.stderr, out.stderr
    damaged = damaged_copy(bundle, tmp_path)
    (damaged / "SHA256SUMS.sig").unlink()
    out = offline(damaged, install(lab_signer()))
    assert out.returncode != 0
    assert "The bundle has no SHA256SUMS.sig: it is not signed" in out.stderr, out.stderr


def test_a_file_slipped_into_the_kit_installs_nothing(kit, tmp_path):
    _playbook, bundle, _first = kit
    damaged = damaged_copy(bundle, tmp_path)
    (damaged / "control-node" / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"x")
    out = offline(damaged, install(lab_signer()))
    assert out.returncode != 0
    assert ("The kit holds files SHA256SUMS does not list: wheels/evil-1.0-py3-none-any.whl"
            in out.stderr), out.stderr


def test_without_root_it_says_the_os_packages_need_root(kit):
    _playbook, bundle, _first = kit
    out = offline(bundle, install(lab_signer(), "/tmp/gemma-airgap"),
                  "--user", "65534:65534", timeout=120)
    assert out.returncode != 0
    assert "Installing them from the kit needs root" in out.stderr, out.stderr
    assert (f"sudo sh /media/bundle/control-node/install.sh --signer {lab_signer()} "
            "/tmp/gemma-airgap") in out.stderr
