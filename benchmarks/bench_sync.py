#!/usr/bin/env python3
"""The release sync over SSH against plain `rsync -a`, measured in one run.

A lab of its own (LAB_PREFIX gemma-airgap-labbench, 3 targets and a control node with the
kit installed from the bundle) sends the lab bundle from the control node to:
  1. one target:    deploy --tags preflight,release   vs   rsync -a of the same directory
  2. three targets: the same, at once (forks)         vs   three rsync -a at once
Each measured run starts from an empty release directory (a warm-up run installs rsync on
the targets from the bundle first). The deploy also verifies the bundle on the control node
and every checksum on each target; "sync task" is the synchronize step alone.
Targets: >= 0.8x rsync's throughput; three targets in < 1.5x the time of one.

    .venv/bin/python benchmarks/bench_sync.py [--bundle DIR] [--keep]   (make bench)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "gemma-airgap-labbench"
CONTROL = f"{PREFIX}-control"
TARGETS = [f"{PREFIX}-target-{index}" for index in (1, 2, 3)]
BASELINE_DIR = "/opt/rsync-baseline"
KEY = "/root/.ssh/id_ed25519"


def sh(*command: str, env: dict | None = None) -> str:
    out = subprocess.run(command, text=True, capture_output=True, check=False,
                         env=dict(os.environ, **(env or {})))
    if out.returncode != 0:
        sys.exit(f"{' '.join(command[:6])}... failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def on_control(*command: str) -> str:
    return sh("docker", "exec", "--env=ANSIBLE_FORCE_COLOR=0", "--env=ANSIBLE_PIPELINING=1",
              "--env=ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks", CONTROL, *command)


def addresses() -> dict[str, str]:
    hosts = on_control("cat", "/root/inventory/hosts.yml")
    return dict(re.findall(r"^\s+(\S+):\n\s+ansible_host: (\S+)$", hosts, re.M))


def wipe(targets: list[str]) -> None:
    for target in targets:
        sh("docker", "exec", target, "rm", "-rf", "/opt/gemma-airgap/releases",
           "/opt/gemma-airgap/.sync-partial", BASELINE_DIR)


def ours(targets: list[str]) -> tuple[float, float]:
    """Seconds for the whole --tags preflight,release run and for its sync step."""
    wipe(targets)
    started = time.perf_counter()
    out = on_control("/opt/gemma-airgap/venv/bin/ansible-playbook", "--inventory=/root/inventory",
                     "gemma_airgap.ollama.deploy", "--tags=preflight,release",
                     f"--limit={','.join(targets)}")
    took = time.perf_counter() - started
    step = re.search(r"Send the files the target lacks, by rsync over SSH -+ (\d+)\.(\d+)s", out)
    step_s = float(f"{step.group(1)}.{step.group(2)}") if step else float("nan")
    return took, step_s


def baseline(bundle_mount: str, targets: list[str], ips: dict[str, str]) -> float:
    """Plain rsync -a of the bundle directory to each target at once, as root there."""
    wipe(targets)
    started = time.perf_counter()
    script = " & ".join(
        f"rsync -a --rsync-path='sudo rsync' -e 'ssh -i {KEY} -o StrictHostKeyChecking=yes' "
        f"{bundle_mount}/ deploy@{ips[target]}:{BASELINE_DIR}/" for target in targets)
    on_control("sh", "-c", f"{script} & wait")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="/var/lib/gemma-airgap/bundles/lab-1")
    parser.add_argument("--keep", action="store_true", help="leave the bench lab running")
    args = parser.parse_args()
    bundle = Path(args.bundle)
    size = sum(path.stat().st_size for path in bundle.rglob("*") if path.is_file()
               and path.name != ".hashcache.json")
    env = {"LAB_PREFIX": PREFIX, "LAB_TARGETS": "3", "LAB_BUNDLE": str(bundle)}
    labctl = [sys.executable, str(ROOT / "lab" / "labctl.py")]
    try:
        sh(*labctl, "control", env=env)
        mount = f"/media/bundle/{bundle.name}"
        signer = sh(*labctl, "signing-key", env=env).strip()  # the lab's pinned key
        sh("docker", "exec", CONTROL, "sh", f"{mount}/control-node/install.sh", "--signer", signer)
        ips = addresses()
        ours(TARGETS)  # warm-up: rsync installed on every target from the bundle
        rows = []
        for targets in (TARGETS[:1], TARGETS):
            whole, step = ours(targets)
            plain = baseline(mount, targets, ips)
            rows.append((len(targets), whole, step, plain))
        mib = size / (1 << 20)
        print(f"bundle {bundle} ({mib:.0f} MiB), sent from the control node over SSH")
        print(f"{'targets':>7} {'deploy s':>9} {'sync task s':>12} {'rsync -a s':>11} "
              f"{'MB/s ours':>10} {'MB/s rsync':>11} {'sync/rsync':>11}")
        for count, whole, step, plain in rows:
            total = mib * count
            print(f"{count:>7} {whole:>9.1f} {step:>12.1f} {plain:>11.1f} {total / step:>10.0f} "
                  f"{total / plain:>11.0f} {plain / step:>10.2f}x")
        print(f"3 targets vs 1 (sync task): {rows[1][2] / rows[0][2]:.2f}x the time "
              f"(rsync -a: {rows[1][3] / rows[0][3]:.2f}x); target < 1.5x")
    finally:
        if not args.keep:
            sh(*labctl, "down", env=env)


if __name__ == "__main__":
    main()
