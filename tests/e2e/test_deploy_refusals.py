"""Against the deployed lab (after the airgap scenario's converge): bad bundles change nothing.

A copy of the bundle with one flipped byte in a model blob, and one with a
truncated image tar: deploy stops at the on-target verification naming the file,
and the running stack keeps the same containers and gives the same answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TARGET = "gemma-airgap-lab-target-1"
BUNDLE = Path("/var/lib/gemma-airgap/bundles/lab-1")
RELEASE = "/opt/gemma-airgap/releases/lab-1"
PROBE = {"model": "gemma3:270m", "prompt": "The capital of France is", "raw": True,
         "stream": False, "options": {"num_predict": 8, "temperature": 0, "seed": 7}}


def on_target(*command: str) -> str:
    result = subprocess.run(["docker", "exec", TARGET, *command], text=True,
                            capture_output=True, check=True)
    return result.stdout


def stack_state() -> tuple[list[str], str]:
    """The stack's container IDs, and its answer to a fixed greedy prompt."""
    containers = sorted(on_target("docker", "ps", "-q", "--no-trunc").split())
    address = on_target("docker", "inspect", "-f",
                        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                        "gemma-airgap-ollama-1").strip()
    script = ("import json,sys,urllib.request;"
              f"r=urllib.request.urlopen(urllib.request.Request('http://{address}:11434/api/"
              "generate',data=sys.argv[1].encode()),timeout=120);"
              "print(json.load(r)['response'])")
    answer = on_target("python3", "-c", script, json.dumps(PROBE))
    return containers, answer


def deploy(source: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"),
                           str(ROOT / "playbooks" / "deploy.yml"),
                           "-e", f"release_source={source}"],
                          cwd=ROOT, env=env, text=True, capture_output=True, check=False)


@pytest.fixture(scope="module")
def deployed():
    containers, answer = stack_state()
    assert containers and answer.strip(), "the lab is not deployed: run the airgap scenario first"
    yield containers, answer
    # The refused deploys change nothing and the damaged copy is repaired by its own test's
    # deploy: the release on the target is whole again, which a check shows in seconds. Only
    # where it is not (a test that failed half-way) does a deploy repair it, for the suites
    # after this one, and the module fails.
    whole = subprocess.run(["docker", "exec", TARGET, "sh", "-c",
                            f"cd {RELEASE} && sha256sum -c --quiet SHA256SUMS"],
                           text=True, capture_output=True, check=False)
    if whole.returncode != 0:
        repaired = deploy(BUNDLE)
        assert repaired.returncode == 0, repaired.stdout[-3000:]
        pytest.fail(f"the tests left the target's release damaged:\n{whole.stdout[-2000:]}")


@pytest.fixture
def bundle_copy(tmp_path):
    """A hard-linked copy of the bundle: files are replaced, never edited in place."""
    copy = tmp_path / "lab-1"
    subprocess.run(["cp", "-al", str(BUNDLE), str(copy)], check=True)
    return copy


def replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def assert_refused(result, relative: str) -> None:
    assert result.returncode != 0
    out = result.stdout
    assert "Verify the bundle on the control node before sending anything" in out
    assert f"{relative}: checksum mismatch" in out, out[-3000:]
    assert "nothing was changed" in out
    for later in ("docker_engine :", "ollama_stack :", "health :"):
        assert later not in out, f"deploy went on past verification: {later}"


def test_a_flipped_byte_in_a_model_blob_stops_deploy_and_changes_nothing(deployed, bundle_copy):
    blob = max((bundle_copy / "models" / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    replace(blob, bytes(data))
    result = deploy(bundle_copy)
    assert_refused(result, f"models/blobs/{blob.name}")
    assert stack_state() == deployed


def test_a_truncated_image_tar_stops_deploy_and_changes_nothing(deployed, bundle_copy):
    tar = bundle_copy / "images" / "ollama.tar"
    data = tar.read_bytes()
    replace(tar, data[: len(data) // 3])
    result = deploy(bundle_copy)
    assert_refused(result, "images/ollama.tar")
    assert stack_state() == deployed


def test_a_damaged_file_on_the_target_is_resent_alone_and_verified(deployed):
    """A release copy damaged on the target (a bad disk, a cut transfer) is repaired."""
    blob = on_target("sh", "-c", f"ls -S {RELEASE}/models/blobs | head -1")
    path = f"{RELEASE}/models/blobs/{blob.strip()}"
    on_target("sh", "-c", f"head -c 1000 {path} > {path}.cut && mv {path}.cut {path}")
    result = deploy(BUNDLE)
    assert result.returncode == 0, result.stdout[-3000:]
    sent = [line for line in result.stdout.splitlines()
            if line.startswith("changed:") and "models/blobs/" in line]
    assert len(sent) == 1 and blob.strip() in sent[0]
    assert stack_state() == deployed


def test_a_forged_bundle_with_a_consistent_sha256sums_is_refused_by_its_signature(deployed,
                                                                                bundle_copy):
    """What an attacker with write access to the media makes: a file changed and SHA256SUMS
    sealed again to match. Every checksum agrees; the signature does not, and deploy stops
    before it reads any other file."""
    from tests.conftest import run_module

    replace(bundle_copy / "images" / "ollama.tar", b"an image of the attacker's")
    (bundle_copy / "SHA256SUMS").unlink()
    resealed = run_module("bundle_manifest", {"path": str(bundle_copy),
                                              "version": bundle_copy.name})
    assert not resealed.get("failed"), resealed
    result = deploy(bundle_copy)
    assert result.returncode != 0
    out = " ".join(result.stdout.split())
    assert "Check the bundle's signature on the control node before anything reads it" in out
    assert "SHA256SUMS.sig does not verify with the key the bundle carries" in out, out[-3000:]
    assert "host_preflight :" not in result.stdout  # nothing read the forged bundle.json
    assert "checksum mismatch" not in out and "nothing was changed" in out
    for later in ("docker_engine :", "ollama_stack :", "health :"):
        assert later not in result.stdout, f"deploy went on past verification: {later}"
    assert stack_state() == deployed


def test_a_deploy_without_a_pinned_signing_key_is_refused(deployed):
    result = run_deploy("-e", json.dumps({"release_source": str(BUNDLE),
                                          "gemma_airgap_bundle_signers": []}))
    assert result.returncode != 0
    assert "No bundle signing key is pinned" in result.stdout, result.stdout[-3000:]
    assert "gemma_airgap_bundle_signers" in result.stdout and "Nothing was changed" in result.stdout
    assert stack_state() == deployed


def test_a_bundle_missing_a_file_is_refused_naming_it(deployed, bundle_copy):
    shutil.rmtree(bundle_copy / "control-node")
    result = deploy(bundle_copy)
    assert result.returncode != 0
    assert "control-node/" in result.stdout
    assert stack_state() == deployed


def run_deploy(*arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"),
                           str(ROOT / "playbooks" / "deploy.yml"), *arguments],
                          cwd=ROOT, env=env, text=True, capture_output=True, check=False)


def test_a_setting_under_its_old_name_is_refused_naming_the_new_one(deployed):
    """A site inventory from before the shared facts had one owner: its value is not ignored."""
    result = run_deploy("-e", "gateway_port=9000", "-e", "ollama_stack_context_length=2048")
    assert result.returncode != 0
    assert "gateway_port is now gemma_airgap_gateway_port" in result.stdout
    assert "ollama_stack_context_length is now gemma_airgap_context_length" in result.stdout
    assert "nothing was changed" in result.stdout
    one_part = run_deploy("--tags", "gateway", "-e", "gateway_port=9000")  # whatever the tags
    assert one_part.returncode != 0
    assert "gateway_port is now gemma_airgap_gateway_port" in one_part.stdout
    assert stack_state() == deployed


def test_a_deploy_without_a_bundle_says_how_to_give_one(deployed):
    result = run_deploy("-e", "release_source=")
    assert result.returncode != 0
    assert "No bundle given" in result.stdout and "-e release_source=" in result.stdout
    assert "Unable to access" not in result.stdout
    assert stack_state() == deployed
