"""backup.yml and restore.yml against the deployed lab: what a site gets back after it loses
the target's disk.

A backup of the lab target (its model blobs taken from the lab bundle, not fetched, except
those of a model made on site); then the loss: the target container and its Docker volume
are removed, and a fresh one from the bare image takes its place (only the OS); the same
bundle is deployed to it, and the set restored. Back come the site's model with its digest,
the same greedy answer, the gateway's keys, a silence, and Prometheus' series from before
the loss. A second backup of the unchanged site fetches no blob. The suites after this one
run on the restored target.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_deploy_refusals import BUNDLE, ROOT, TARGET, deploy, on_target, stack_state
from .test_gateway_deployed import call
from .test_inside_sync import docker, labctl
from .test_monitoring import ALERTMANAGER, get, wait_for

pytestmark = pytest.mark.e2e

ADMIN = "gk_lab-admin-key-not-a-secret"
USER = "gk_lab-user-key-not-a-secret"
SITE_MODEL = "site/terse:v1"
TEXTFILE = "/var/lib/gemma-airgap/textfile"
BUNDLES = "/var/lib/gemma-airgap/bundles"
SILENCE = """
import json, sys, urllib.request
body = json.dumps({"matchers": [{"name": "alertname", "value": "DiskFilling", "isRegex": False,
                                 "isEqual": True}],
                   "startsAt": sys.argv[2], "endsAt": sys.argv[3], "createdBy": "e2e",
                   "comment": "disk swap on Tuesday"}).encode()
request = urllib.request.Request(sys.argv[1] + "/api/v2/silences", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(request, timeout=30).read().decode())
"""


def playbook(name: str, backup_root: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    settings = json.dumps({"backup_root": str(backup_root), "backup_bundle_roots": [BUNDLES]})
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"),
                           str(ROOT / "playbooks" / name), "-e", settings, *extra],
                          cwd=ROOT, env=env, text=True, capture_output=True, check=False)


def models() -> dict[str, str]:
    status, body = call("http://127.0.0.1:8080/api/tags", USER)
    assert status == 200, body
    return {m["name"]: m["digest"] for m in json.loads(body)["models"]}


def silences() -> list[str]:
    return [s["comment"] for s in get(f"{ALERTMANAGER}/api/v2/silences")
            if s["status"]["state"] == "active"]


def expire_silences(comment: str) -> None:
    """Expire the silences an earlier run of this test left (a rerun against the same lab)."""
    for silence in get(f"{ALERTMANAGER}/api/v2/silences"):
        if silence["comment"] == comment and silence["status"]["state"] != "expired":
            on_target("python3", "-c", "import sys, urllib.request; urllib.request.urlopen("
                      "urllib.request.Request(sys.argv[1], method='DELETE'), timeout=30)",
                      f"{ALERTMANAGER}/api/v2/silence/{silence['id']}")


def test_a_fresh_target_after_a_lost_disk_gets_back_models_keys_silences_history(tmp_path):
    backup_root = tmp_path / "backups"
    expire_silences("disk swap on Tuesday")
    status, body = call_admin("/api/create", {"model": SITE_MODEL, "from": "gemma3:270m",
                                             "system": "Be terse.", "stream": False})
    assert status == 200, body
    now = time.time()
    on_target("python3", "-c", SILENCE, ALERTMANAGER,
              time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
              time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 86400)))
    before = {"models": models(), "answer": stack_state()[1], "silences": silences()}
    assert SITE_MODEL in before["models"] and "disk swap on Tuesday" in before["silences"]
    # A moment Prometheus has recorded, and what it recorded then.
    moment = int(time.time()) - 30
    history = f'count(up{{instance="{TARGET}"}})'
    recorded = query_at(history, moment)
    assert recorded, "Prometheus has no history to lose"

    first = playbook("backup.yml", backup_root)
    assert first.returncode == 0, first.stdout[-4000:]
    report = re.search(r"Backup (\S+) of \S+: .*? blob\(s\), of which (\d+) fetched "
                       r"\((\d+) bytes\), (\d+) taken from bundles", " ".join(first.stdout.split()))
    assert report, first.stdout[-3000:]
    # Only the site's own blobs (its system prompt, its config) crossed the network; the
    # weights came from the lab bundle on this machine.
    assert 1 <= int(report[2]) <= 3 and int(report[3]) < 1 << 20 and int(report[4]) >= 1, report[0]
    sealed = backup_root / "sets" / report[1]
    check = subprocess.run(["sha256sum", "-c", "--strict", "--quiet", "SHA256SUMS"], cwd=sealed,
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    succeeded = on_target("cat", f"{TEXTFILE}/backup.prom")
    assert "gemma_airgap_backup_last_success_timestamp_seconds" in succeeded

    # A run where one target fails (a second name for the lab target, whose working directory
    # cannot be made): the set is not sealed and no target's backup counts as done.
    ghost = tmp_path / "ghost.yml"
    ghost.write_text(json.dumps({"all": {"children": {"targets": {"hosts": {"ghost": {
        "ansible_connection": "community.docker.docker", "ansible_host": TARGET,
        "ansible_python_interpreter": "/usr/bin/python3", "backup_monitoring": False,
        "backup_staging_dir": "/proc/no-place-for-a-backup"}}}}}}))
    cut = playbook("backup.yml", backup_root, "-i", str(ROOT / "inventories" / "lab"),
                   "-i", str(ghost))
    assert cut.returncode != 0, cut.stdout[-4000:]
    assert "was not sealed: a target of this run failed" in " ".join(cut.stdout.split())
    assert [p.name for p in (backup_root / "sets").glob("[0-9]*")] == [report[1]]
    assert on_target("cat", f"{TEXTFILE}/backup.prom") == succeeded

    # The loss: the whole disk. A fresh target from the bare image (only the OS), reachable
    # again by SSH from the control node, and the same bundle deployed to it.
    docker("rm", "-f", "-v", TARGET)
    docker("volume", "rm", "-f", f"{TARGET}-docker")
    labctl("control", 1)
    assert "gemma-airgap" not in on_target("ls", "/opt")
    deployed = deploy(BUNDLE)
    assert deployed.returncode == 0, deployed.stdout[-4000:]
    assert SITE_MODEL not in models() and "disk swap on Tuesday" not in silences()
    assert query_at(history, moment) == [], "the fresh Prometheus has history it cannot have"

    restored = playbook("restore.yml", backup_root)
    assert restored.returncode == 0, restored.stdout[-4000:]
    assert "probes through the gateway" in restored.stdout  # verify.yml ran after it
    after = {"models": models(), "answer": stack_state()[1], "silences": silences()}
    assert after["models"] == before["models"]
    assert after["answer"] == before["answer"]
    assert "disk swap on Tuesday" in after["silences"]
    assert call("http://127.0.0.1:8080/api/tags", USER)[0] == 200  # the same keys
    wait_for("the history from before the loss", lambda: query_at(history, moment) == recorded,
             timeout=120)

    # The same set again onto the same, now whole, target: its silences are there already.
    again = playbook("restore.yml", backup_root)
    assert again.returncode == 0, again.stdout[-4000:]
    assert silences().count("disk swap on Tuesday") == 1, silences()
    assert "0 blob(s) sent, " in " ".join(again.stdout.split()), again.stdout[-3000:]
    assert models() == before["models"]

    second = playbook("backup.yml", backup_root)
    assert second.returncode == 0, second.stdout[-4000:]
    again = re.search(r"of which (\d+) fetched \((\d+) bytes\)", " ".join(second.stdout.split()))
    assert again and again[1] == "0" and again[2] == "0", second.stdout[-3000:]
    # Retention kept the newest set of the day; the cut run's partial set is gone.
    assert [p.name for p in (backup_root / "sets").iterdir()] == [
        re.search(r"Backup (\S+) of", second.stdout)[1]]
    call_admin("/api/delete", {"model": SITE_MODEL}, method="DELETE")


def call_admin(path: str, body: dict, method: str = "POST") -> tuple[int, str]:
    from .test_releases import call as release_call

    return release_call(path, body, key=ADMIN, method=method)


def query_at(expr: str, moment: int) -> list:
    import urllib.parse

    answer = get("http://127.0.0.1:9090/api/v1/query?"
                 + urllib.parse.urlencode({"query": expr, "time": moment}))
    return [sample["value"][1] for sample in answer["data"]["result"]]
