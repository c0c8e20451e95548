"""Releases on a deployed lab target: a new version becomes current, rollback brings the
whole stack back (the gateway's configuration too), prune keeps current and previous."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from .test_deploy_refusals import ROOT, deploy, on_target, stack_state

pytestmark = pytest.mark.e2e

RELEASES = "/opt/gemma-airgap/releases"
BUNDLES = Path("/var/lib/gemma-airgap/bundles")
# lab-2: the lab's models plus one only it brings, and no vision service.
VARIANT = """
bundle_vision: []
bundle_models:
  - "{{ lab_model_text }}"
  - "{{ lab_model_gemma3n }}"
  - name: lab/only-in-lab-2:v1
    gguf: "{{ lab_model_text.gguf }}"
    template: "{{ lab_model_text.template }}"
    system: Answer in one word.
"""

CALL = """
import json, sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1], data=sys.argv[3].encode() or None,
                                 headers={'Authorization': 'Bearer ' + sys.argv[2]})
if sys.argv[4]:
    request.method = sys.argv[4]
try:
    with urllib.request.urlopen(request, timeout=120) as r:
        print(json.dumps([r.status, r.read().decode()]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
"""


def call(path: str, body: dict | None = None, key: str = "gk_lab-user-key-not-a-secret",
         method: str = "") -> tuple[int, str]:
    """A request to the gateway from the target itself."""
    data = json.dumps(body) if body is not None else ""
    return tuple(json.loads(on_target("python3", "-c", CALL, f"http://127.0.0.1:8080{path}",
                                      key, data, method)))


def picture() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (30, 160, 90)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_request() -> tuple[int, str]:
    return call("/api/generate", {"model": "gemma3n:tiny", "prompt": "What is this?",
                                  "images": [picture()], "stream": False,
                                  "options": {"num_predict": 3}})


def models() -> dict[str, str]:
    status, body = call("/api/tags")
    assert status == 200, body
    return {m["name"]: m["digest"] for m in json.loads(body)["models"]}


STEPS: list[tuple[str, float]] = []  # (what, seconds): printed after the test, for its cost


def playbook(name: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    started = time.monotonic()
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"),
                           str(ROOT / "playbooks" / name), *extra],
                          cwd=ROOT, env=env, text=True, capture_output=True, check=False)
    STEPS.append((" ".join([name, *extra]), time.monotonic() - started))
    return done


def timed_deploy(source: Path) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = deploy(source)
    STEPS.append((f"deploy.yml {source.name}", time.monotonic() - started))
    return done


def links() -> tuple[str, str]:
    current = on_target("readlink", f"{RELEASES}/current").strip()
    previous = on_target("sh", "-c", f"readlink {RELEASES}/previous || true").strip()
    return current, previous


@pytest.fixture
def variant(tmp_path, capsys):
    path = tmp_path / "lab-2.yml"
    path.write_text(VARIANT)
    yield path
    with capsys.disabled():  # what each step cost, in make test's output
        print("\n" + "\n".join(f"{seconds:6.1f} s  {what}" for what, seconds in STEPS))
    for version in ("lab-2", "lab-3"):  # the target keeps its copies; the host needs none
        shutil.rmtree(BUNDLES / version, ignore_errors=True)


def test_releases_roll_back_whole_and_prune_keeps_current_and_previous(variant):
    before = stack_state()
    assert links()[0] == f"{RELEASES}/lab-1"
    assert image_request()[0] == 200
    prepared = playbook("prepare.yml", "-e", "bundle_version=lab-2", "-e", f"@{variant}")
    assert prepared.returncode == 0, prepared.stdout[-3000:]
    deployed = timed_deploy(BUNDLES / "lab-2")
    assert deployed.returncode == 0, deployed.stdout[-3000:]
    assert links() == (f"{RELEASES}/lab-2", f"{RELEASES}/lab-1")
    assert "lab/only-in-lab-2:v1" in models()
    # lab-2 has no vision service: the gateway it configured routes no images.
    status, body = image_request()
    assert status == 400 and "gemma3n:tiny" in body
    assert "gemma-airgap-vision-1" not in on_target("docker", "ps", "--format", "{{.Names}}")

    rolled = playbook("rollback.yml")
    assert rolled.returncode == 0, rolled.stdout[-3000:]
    assert links() == (f"{RELEASES}/lab-1", f"{RELEASES}/lab-2")
    assert "probes through the gateway" in rolled.stdout
    assert image_request()[0] == 200  # lab-1's vision route and service are back
    assert stack_state()[1] == before[1]  # same model, same greedy answer

    again = playbook("rollback.yml")  # back and forth: the links swap again
    assert again.returncode == 0, again.stdout[-3000:]
    assert links() == (f"{RELEASES}/lab-2", f"{RELEASES}/lab-1")
    assert playbook("rollback.yml").returncode == 0
    assert links() == (f"{RELEASES}/lab-1", f"{RELEASES}/lab-2")

    # lab-3 (the lab's own profile) on top: lab-2 is then older than previous.
    prepared = playbook("prepare.yml", "-e", "bundle_version=lab-3")
    assert prepared.returncode == 0, prepared.stdout[-3000:]
    deployed = timed_deploy(BUNDLES / "lab-3")
    assert deployed.returncode == 0, deployed.stdout[-3000:]
    assert links() == (f"{RELEASES}/lab-3", f"{RELEASES}/lab-1")
    # A model made on site is the site's, whatever prune finds.
    created = call("/api/create", {"model": "site/tuned:v1", "from": "gemma3:270m",
                                   "system": "Be terse.", "stream": False},
                   key="gk_lab-admin-key-not-a-secret")
    assert created[0] == 200, created
    kept = models()

    pruned = playbook("prune.yml")
    assert pruned.returncode == 0, pruned.stdout[-3000:]
    releases = on_target("ls", RELEASES).split()
    assert "lab-2" not in releases and {"lab-1", "lab-3", "current", "previous"} <= set(releases)
    after = models()
    assert "lab/only-in-lab-2:v1" not in after
    assert after == {name: digest for name, digest in kept.items()
                     if name != "lab/only-in-lab-2:v1"}
    assert "site/tuned:v1" in after
    assert stack_state()[1] == before[1]  # the weights lab-2's model shared are still there
    assert image_request()[0] == 200

    second = playbook("prune.yml")
    assert second.returncode == 0 and "changed=0" in second.stdout, second.stdout[-2000:]
    call("/api/delete", {"model": "site/tuned:v1"}, key="gk_lab-admin-key-not-a-secret",
         method="DELETE")
