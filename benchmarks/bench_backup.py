#!/usr/bin/env python3
"""backup.yml against `tar -cf` of the same directories, measured in one run.

Against the deployed lab (`make lab`; target gemma-airgap-lab-target-1, inventories/lab):
  1. backup.yml into an empty backup location, its blobs taken from the lab bundle
     (backup_bundle_roots), then a second run on the unchanged site;
  2. the baseline: `tar -cf` on the target of the same directories (the model store, the
     stack's files, the release links' targets' bundle.json, Prometheus' data), streamed to
     this machine, first and second run alike (tar has no memory of the last run).
Prints bytes copied from the target and seconds, side by side.

    .venv/bin/python benchmarks/bench_backup.py   (make bench)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = "gemma-airgap-lab-target-1"
BUNDLES = "/var/lib/gemma-airgap/bundles"
DIRECTORIES = ["/var/lib/gemma-airgap/ollama", "/opt/gemma-airgap/stack",
               "/opt/gemma-airgap/monitoring/prometheus/data"]


def backup(root: Path) -> tuple[float, int, int]:
    """(seconds, blob bytes fetched, tar bytes) of one backup.yml run."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    settings = json.dumps({"backup_root": str(root), "backup_bundle_roots": [BUNDLES]})
    started = time.monotonic()
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"),
                          str(ROOT / "playbooks" / "backup.yml"), "-e", settings],
                         cwd=ROOT, env=env, text=True, capture_output=True, check=False)
    took = time.monotonic() - started
    if out.returncode != 0:
        sys.exit(f"backup.yml failed:\n{out.stdout[-3000:]}")
    text = " ".join(out.stdout.split())
    fetched = re.search(r"of which \d+ fetched \((\d+) bytes\)", text)
    files = re.search(r"; (\d+) bytes of files", text)
    return took, int(fetched[1]), int(files[1])


def tar_baseline() -> tuple[float, int]:
    """(seconds, bytes) of tar -cf of the same directories, streamed off the target."""
    started = time.monotonic()
    tar = subprocess.Popen(["docker", "exec", TARGET, "tar", "-cf", "-", *DIRECTORIES],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    total = 0
    while chunk := tar.stdout.read(1 << 20):
        total += len(chunk)
    tar.wait()
    return time.monotonic() - started, total


def main() -> None:
    if subprocess.run(["docker", "inspect", TARGET], capture_output=True).returncode != 0:
        sys.exit(f"{TARGET} is not running: `make lab` deploys the lab first")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as scratch:
        root = Path(scratch) / "backups"
        for run in ("first", "second"):
            seconds, fetched, files = backup(root)
            tar_seconds, tar_bytes = tar_baseline()
            rows.append((run, seconds, fetched + files, tar_seconds, tar_bytes))
            time.sleep(1)  # the next set gets a name of its own
    print(f"{'run':8} {'backup.yml s':>13} {'bytes copied':>14} {'tar -cf s':>10} "
          f"{'tar bytes':>14}")
    for run, seconds, copied, tar_seconds, tar_bytes in rows:
        print(f"{run:8} {seconds:13.1f} {copied:14,d} {tar_seconds:10.1f} {tar_bytes:14,d}")
    print("backup.yml copies the blobs no bundle or earlier set holds, and the small files; "
          "its seconds include Ansible's own work (the snapshot, hashing, sealing).")


if __name__ == "__main__":
    main()
