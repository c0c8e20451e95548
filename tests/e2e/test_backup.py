"""backup.yml and restore.yml against the deployed lab: what a site gets back after losing
Prometheus' data, a model made on site and a silence.

A backup of the lab target (its model blobs taken from the lab bundle, not fetched, except
those of the model made on site), then the loss, then the restore: the site's model with its
digest, the same greedy answer, the gateway's keys, a silence, and Prometheus' series from
before the loss. A second backup of the unchanged site fetches no blob.
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

from .test_deploy_refusals import ROOT, TARGET, on_target, stack_state
from .test_gateway_deployed import call
from .test_monitoring import ALERTMANAGER, get, wait_for

pytestmark = pytest.mark.e2e

ADMIN = "gk_lab-admin-key-not-a-secret"
USER = "gk_lab-user-key-not-a-secret"
SITE_MODEL = "site/terse:v1"
BUNDLES = "/var/lib/gemma-airgap/bundles"
PROMETHEUS_DATA = "/opt/gemma-airgap/monitoring/prometheus/data"
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


def test_a_restore_brings_back_a_site_model_a_silence_and_prometheus_history(tmp_path):
    backup_root = tmp_path / "backups"
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

    # The loss: Prometheus' data, the site's model, the silence.
    on_target("sh", "-c", "docker stop gemma-airgap-monitoring-prometheus-1 >/dev/null && "
                          f"rm -rf {PROMETHEUS_DATA}/* && "
                          "docker start gemma-airgap-monitoring-prometheus-1 >/dev/null")
    assert call_admin("/api/delete", {"model": SITE_MODEL}, method="DELETE")[0] == 200
    for silence in get(f"{ALERTMANAGER}/api/v2/silences"):
        if silence["comment"] == "disk swap on Tuesday" and silence["status"]["state"] == "active":
            on_target("python3", "-c", "import sys, urllib.request; urllib.request.urlopen("
                      "urllib.request.Request(sys.argv[1], method='DELETE'), timeout=30)",
                      f"{ALERTMANAGER}/api/v2/silence/{silence['id']}")
    wait_for("Prometheus answering on empty data", lambda: query_at(history, moment) == [],
             timeout=120)
    assert SITE_MODEL not in models() and "disk swap on Tuesday" not in silences()

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

    second = playbook("backup.yml", backup_root)
    assert second.returncode == 0, second.stdout[-4000:]
    again = re.search(r"of which (\d+) fetched \((\d+) bytes\)", " ".join(second.stdout.split()))
    assert again and again[1] == "0" and again[2] == "0", second.stdout[-3000:]
    call_admin("/api/delete", {"model": SITE_MODEL}, method="DELETE")


def call_admin(path: str, body: dict, method: str = "POST") -> tuple[int, str]:
    from .test_releases import call as release_call

    return release_call(path, body, key=ADMIN, method=method)


def query_at(expr: str, moment: int) -> list:
    import urllib.parse

    answer = get("http://127.0.0.1:9090/api/v1/query?"
                 + urllib.parse.urlencode({"query": expr, "time": moment}))
    return [sample["value"][1] for sample in answer["data"]["result"]]
