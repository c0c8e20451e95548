"""The release sync as a site runs it: from the control node inside the gap, over SSH, by
rsync, to two fresh targets at once, after a sync cut in the middle.

Runs on the lab the air-gap scenario deployed (its control node has the kit installed).
Two more targets join for this module and leave after it, so the other suites see the lab
as they found it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from .test_deploy_refusals import RELEASE, ROOT

pytestmark = pytest.mark.e2e

PREFIX = os.environ.get("LAB_PREFIX", "gemma-airgap-lab")
CONTROL = f"{PREFIX}-control"
FRESH = [f"{PREFIX}-target-2", f"{PREFIX}-target-3"]
PARTIAL = ".rsync-partial"
PLAYBOOK = ["/opt/gemma-airgap/venv/bin/ansible-playbook", "--inventory=/root/inventory",
            "gemma_airgap.ollama.deploy", "--tags=preflight,release"]


def labctl(command: str, targets: int) -> None:
    env = dict(os.environ, LAB_TARGETS=str(targets))
    out = subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), command], env=env,
                         text=True, capture_output=True, check=False)
    assert out.returncode == 0, out.stderr + out.stdout


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["docker", *args], text=True, capture_output=True, check=False)
    assert out.returncode == 0 or not check, out.stderr + out.stdout
    return out


def inside(*extra: str) -> list[str]:
    """docker exec into the control node: what an operator types there."""
    return ["docker", "exec", "--env=ANSIBLE_FORCE_COLOR=0", "--env=ANSIBLE_PIPELINING=1",
            CONTROL, *PLAYBOOK, *extra]


@pytest.fixture(scope="module")
def fresh_targets():
    if docker("inspect", CONTROL, check=False).returncode != 0:
        pytest.fail(f"{CONTROL} is not running: the air-gap scenario (make e2e) starts it")
    labctl("control", 3)
    yield FRESH
    docker("rm", "-f", "-v", *FRESH)
    docker("volume", "rm", "-f", *[f"{name}-docker" for name in FRESH])
    labctl("control", 1)


def partial_files(target: str) -> dict[str, int]:
    """The files a cut rsync left beside their place in the release, kept for the next run."""
    out = docker("exec", target, "find", RELEASE, "-path", f"*/{PARTIAL}/*", "-type", "f",
                 "-printf", "%f %s\\n", check=False)
    return {name: int(size) for name, size in
            (line.rsplit(" ", 1) for line in out.stdout.splitlines() if line)}


def in_flight(target: str) -> dict[str, int]:
    """The files rsync is writing now: `.<name>.XXXXXX` in the file's own directory (rsync's
    temporary name, receiver.c get_tmpname), by the name they will have once whole."""
    out = docker("exec", target, "find", RELEASE, "-type", "f", "-name", ".*.??????",
                 "-printf", "%f %s\\n", check=False)
    return {name[1:-7]: int(size) for name, size in
            (line.rsplit(" ", 1) for line in out.stdout.splitlines() if line)}


def receiver_gone(target: str, seconds: float = 60) -> None:
    """The target's rsync moves a cut file into the partial directory as it exits."""
    deadline = time.monotonic() + seconds
    while docker("exec", target, "pgrep", "-x", "rsync", check=False).returncode == 0:
        assert time.monotonic() < deadline, f"rsync on {target} outlived its sender"
        time.sleep(0.5)


def cut_a_sync(target: str) -> dict[str, int]:
    """Start a slow sync to one target and kill it once rsync is part way through a file;
    returns the partial files the target kept."""
    run = subprocess.Popen(inside(f"--limit={target}", "-e", "release_rsync_bwlimit=20000"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    writing: dict[str, int] = {}
    try:
        while time.monotonic() < deadline and run.poll() is None:
            writing = {name: size for name, size in in_flight(target).items()
                       if size > 8 << 20}
            if writing:
                break
            time.sleep(0.5)
    finally:
        docker("exec", CONTROL, "pkill", "-KILL", "-f", "ansible-playbook|rsync", check=False)
        output = run.communicate(timeout=60)[0]
    assert writing, f"rsync was never part way through a file on {target}:\n{output[-3000:]}"
    receiver_gone(target)
    kept = partial_files(target)
    assert set(writing) <= set(kept), f"cut while writing {writing}, kept {kept}"
    return kept


def test_a_cut_sync_leaves_no_half_file_and_two_targets_then_sync_at_once(fresh_targets):
    first, second = fresh_targets
    cut = cut_a_sync(first)
    # The cut file waits in the partial directory; its place in the release stays empty.
    listed = docker("exec", first, "find", RELEASE, "-name", PARTIAL, "-prune", "-o",
                    "-type", "f", "-printf", "%f\\n", check=False).stdout.split()
    assert not set(cut) & set(listed), f"a cut file sits in the release: {set(cut) & set(listed)}"
    assert in_flight(first) == {}, "rsync left a temporary file behind"

    started = time.monotonic()
    out = subprocess.run(inside(f"--limit={first},{second}"), text=True, capture_output=True,
                         check=False)
    took = time.monotonic() - started
    assert out.returncode == 0, out.stdout[-6000:]
    reports = dict(re.findall(r'ok: \[(\S+)\] => \{\s+"msg": "(Release lab-1: sent [^"]+)"',
                              out.stdout))
    assert set(reports) == {first, second}, out.stdout[-6000:]
    for report in reports.values():
        assert "by rsync" in report and "verified on the target" in report, report
    # The one that was cut had part of the bundle already: it was sent fewer files.
    sent = {target: int(re.search(r"sent (\d+) file", report).group(1))
            for target, report in reports.items()}
    assert sent[first] < sent[second], sent
    # Both finished: nothing is left half-sent, and both are whole.
    assert partial_files(first) == {} and partial_files(second) == {}
    for target in (first, second):
        check = docker("exec", target, "sh", "-c",
                       f"cd {RELEASE} && sha256sum -c --quiet SHA256SUMS", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    print(f"two fresh targets synced over SSH in parallel in {took:.1f} s")


def test_files_of_one_name_in_two_directories_travel_together_by_rsync(fresh_targets):
    """A target that has rsync already gets every package by rsync in one run: the kit's and
    the platform's rsync .deb share a name, and must not meet in one partial directory."""
    target = fresh_targets[0]
    docker("exec", target, "rm", "-rf", f"{RELEASE}/control-node/packages", f"{RELEASE}/packages")
    out = subprocess.run(inside(f"--limit={target}"), text=True, capture_output=True, check=False)
    assert out.returncode == 0, out.stdout[-6000:]
    report = re.search(r"Release lab-1: sent (\d+) file\(s\)[^\"]* by (\w+)", out.stdout)
    assert report and report.group(2) == "rsync", out.stdout[-4000:]
    names = docker("exec", target, "sh", "-c",
                   f"cd {RELEASE} && find control-node/packages packages -name '*.deb' "
                   "-printf '%f\\n' | sort | uniq -d").stdout.split()
    assert names, "the kit and the platform share no package name: this test proves nothing"
    assert int(report.group(1)) >= 2 * len(names)
    assert partial_files(target) == {}
    check = docker("exec", target, "sh", "-c",
                   f"cd {RELEASE} && sha256sum -c --quiet SHA256SUMS", check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def serve(state: str, server: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", "exec", "--env=ANSIBLE_FORCE_COLOR=0", CONTROL,
         "/opt/gemma-airgap/venv/bin/ansible-playbook", "--inventory=/root/inventory",
         "gemma_airgap.ollama.serve", "-e", f"serve_host={server}", "-e", f"serve_state={state}"],
        text=True, capture_output=True, check=False)


def test_a_large_site_fetches_from_one_target_over_http_each_file_checked(fresh_targets):
    server, fetcher = f"{PREFIX}-target-1", fresh_targets[1]
    started = serve("started", server)
    assert started.returncode == 0, started.stdout[-4000:]
    url = re.search(r"Serving \S+ at (http://\S+):(\d+)/", started.stdout)
    assert url, started.stdout[-2000:]
    base = f"{url.group(1)}:{url.group(2)}"
    try:
        # A forged copy on the server: same names, other bytes. Nothing of it is kept.
        docker("exec", server, "sh", "-c", "mkdir -p /opt/gemma-airgap/releases/forged && "
               "echo '{}' > /opt/gemma-airgap/releases/forged/bundle.json")
        # The fetcher lost part of its copy (the models, the vision files, bundle.json): the
        # rest passed the first verification and is kept (the whole bundle by rsync is above).
        docker("exec", fetcher, "rm", "-rf", f"{RELEASE}/bundle.json", f"{RELEASE}/models",
               f"{RELEASE}/vision")
        forged = subprocess.run(inside(f"--limit={fetcher}", "-e", "release_transfer=http",
                                       "-e", f"release_http_url={base}/forged"),
                                text=True, capture_output=True, check=False)
        assert forged.returncode != 0, forged.stdout[-3000:]
        assert "checksum" in forged.stdout.lower() or "404" in forged.stdout, forged.stdout[-3000:]
        assert docker("exec", fetcher, "test", "-e", f"{RELEASE}/bundle.json",
                      check=False).returncode != 0

        good = subprocess.run(inside(f"--limit={fetcher}", "-e", "release_transfer=http",
                                     "-e", f"release_http_url={base}/lab-1"),
                              text=True, capture_output=True, check=False)
        assert good.returncode == 0, good.stdout[-4000:]
        report = re.search(r"Release lab-1: sent (\d+) file\(s\), [^\"]+ by http; .* verified on "
                           r"the target", good.stdout)
        assert report and int(report.group(1)) > 3, good.stdout[-3000:]
        check = docker("exec", fetcher, "sh", "-c",
                       f"cd {RELEASE} && sha256sum -c --quiet SHA256SUMS", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        docker("exec", server, "rm", "-rf", "/opt/gemma-airgap/releases/forged")
        stopped = serve("stopped", server)
    assert stopped.returncode == 0 and "Not serving" in stopped.stdout, stopped.stdout[-2000:]
