"""The backup store: a pool of blobs checked once, sets sealed like a bundle, retention."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.gemma_airgap.ollama.plugins.module_utils import gemma_airgap_backup
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_backup import (
    BackupError,
    Store,
    set_name,
)


def blob(data: bytes) -> str:
    return "sha256-" + hashlib.sha256(data).hexdigest()


def incoming(store: Store, data: bytes) -> Path:
    store.ensure()
    path = Path(store.incoming) / "fetched"
    path.write_bytes(data)
    return path


def one_set(store: Store, name: str, host: str, blobs: dict[str, bytes]) -> Path:
    partial = Path(store.begin(name))
    (partial / host).mkdir()
    (partial / host / "config.tar").write_bytes(b"config of " + host.encode())
    for data in blobs.values():
        if not store.has_blob(blob(data)):
            store.receive(str(incoming(store, data)), blob(data))
    return Path(store.seal(name, {host: {"blobs": sorted(blobs)}}, {"created_at": name}))


def test_a_sealed_set_passes_sha256sum_and_its_blobs_are_links_into_the_pool(tmp_path):
    store = Store(tmp_path / "backups")
    weights = b"weights" * 10000
    sealed = one_set(store, "20261129T010000Z", "llm-01", {blob(weights): weights})
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=sealed,
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    linked = sealed / "llm-01" / "blobs" / blob(weights)
    assert linked.stat().st_ino == (Path(store.pool) / blob(weights)).stat().st_ino
    assert store.verify("20261129T010000Z") == []
    assert store.manifest("20261129T010000Z")["hosts"] == {"llm-01": {"blobs": [blob(weights)]}}


def test_a_blob_that_does_not_hash_to_its_name_never_enters_the_pool(tmp_path):
    store = Store(tmp_path / "backups")
    fetched = incoming(store, b"damaged on the way")
    with pytest.raises(BackupError, match="arrived as sha256:"):
        store.receive(str(fetched), blob(b"what it should be"))
    assert not fetched.exists() and os.listdir(store.pool) == []


def test_blobs_in_a_bundle_on_the_location_are_taken_after_a_check_never_fetched(tmp_path):
    store = Store(tmp_path / "backups")
    store.ensure()
    good, bad = b"bundled weights" * 1000, b"changed after sealing"
    blobs = tmp_path / "bundles" / "2026.11.25-1" / "models" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / blob(good)).write_bytes(good)
    (blobs / blob(bad)).write_bytes(b"not what the name says")
    adopted, missing = store.adopt([blob(good), blob(bad), blob(b"only on the target")],
                                   [str(tmp_path / "bundles")])
    assert adopted == [blob(good)]
    assert missing == [blob(bad), blob(b"only on the target")]
    assert (Path(store.pool) / blob(good)).read_bytes() == good
    # Same filesystem: the pool shares the bundle's inode, so it costs no space.
    assert (Path(store.pool) / blob(good)).stat().st_ino == (blobs / blob(good)).stat().st_ino
    assert store.adopt([blob(good)], [str(tmp_path / "bundles")]) == ([], [])


def test_a_cut_backup_leaves_no_set_that_looks_whole_and_the_next_prune_removes_it(tmp_path):
    store = Store(tmp_path / "backups")
    one_set(store, "20261129T010000Z", "llm-01", {})
    cut = Path(store.begin("20261129T020000Z"))
    (cut / "llm-01").mkdir()
    (cut / "llm-01" / "config.tar").write_bytes(b"half")
    assert store.sets() == ["20261129T010000Z"]
    removed, _freed = store.prune(7, 4)
    assert removed == [".partial-20261129T020000Z"] and not cut.exists()


def test_verify_names_a_flipped_byte_a_missing_file_and_a_file_not_listed(tmp_path):
    store = Store(tmp_path / "backups")
    weights = b"weights" * 1000
    sealed = one_set(store, "20261129T010000Z", "llm-01", {blob(weights): weights})
    config = sealed / "llm-01" / "config.tar"
    data = bytearray(config.read_bytes())
    data[3] ^= 1
    config.write_bytes(bytes(data))
    (sealed / "llm-01" / "stray").write_bytes(b"x")
    os.chmod(Path(store.pool) / blob(weights), 0o644)
    (Path(store.pool) / blob(weights)).write_bytes(b"rot")  # the same inode as the set's link
    problems = store.verify("20261129T010000Z")
    assert any(p.startswith("llm-01/config.tar: checksum mismatch") for p in problems), problems
    assert any(p.startswith(f"llm-01/blobs/{blob(weights)}: checksum mismatch")
               for p in problems), problems
    assert "llm-01/stray: not listed in SHA256SUMS" in problems
    with pytest.raises(BackupError, match="there is no set"):
        store.verify("20261128T010000Z")


def test_a_symlink_in_a_set_is_refused_not_followed(tmp_path):
    store = Store(tmp_path / "backups")
    sealed = one_set(store, "20261129T010000Z", "llm-01", {})
    (sealed / "llm-01" / "config.tar").unlink()
    (sealed / "llm-01" / "config.tar").symlink_to("/etc/passwd")
    problems = store.verify("20261129T010000Z")
    assert any("symlink" in p or "not a regular file" in p for p in problems), problems


def test_retention_keeps_days_and_weeks_and_frees_only_unshared_blobs(tmp_path):
    store = Store(tmp_path / "backups")
    shared, old_only = b"base model" * 1000, b"a model deleted since" * 1000
    start = datetime.datetime(2026, 11, 1, 3, 0, tzinfo=datetime.UTC)
    names = []
    for day in range(29):  # one set a day for four weeks, two on the last day
        name = set_name(start + datetime.timedelta(days=day))
        blobs = {blob(shared): shared} | ({blob(old_only): old_only} if day < 3 else {})
        one_set(store, name, "llm-01", blobs)
        names.append(name)
    last = set_name(start + datetime.timedelta(days=28, hours=2))
    one_set(store, last, "llm-01", {blob(shared): shared})
    kept = store.keep(7, 4)
    # The last seven days (the second set of the last day, not its first), and the newest
    # of each of the last four ISO weeks.
    days = {name[:8] for name in kept}
    assert last in kept and names[-1] not in kept
    assert len([n for n in kept if n >= names[-7]]) == 7
    assert len(kept) == len(days)
    removed, freed = store.prune(7, 4)
    assert set(store.sets()) == kept and set(removed) == set([*names, last]) - kept
    assert [name for name, _size in freed] == [blob(old_only)]
    assert store.has_blob(blob(shared))
    for name in store.sets():
        assert store.verify(name) == []


def test_names_from_hostile_requests_are_refused(tmp_path):
    store = Store(tmp_path / "backups")
    for bad in ("../x", "20261129T010000Z/..", "latest"):
        with pytest.raises(BackupError, match="not a set name"):
            store.begin(bad)
    with pytest.raises(BackupError, match="not a blob name"):
        store.receive(str(tmp_path / "x"), "../../etc/passwd")
    partial = Path(store.begin("20261129T010000Z"))
    (partial / "llm-01").mkdir()
    (partial / "llm-01" / "config.tar").write_bytes(b"c")
    with pytest.raises(BackupError, match="not a host name"):
        store.seal("20261129T010000Z", {"../etc": {"blobs": []}}, {})
    with pytest.raises(BackupError, match="is not in the pool"):
        store.seal("20261129T010000Z", {"llm-01": {"blobs": [blob(b"never fetched")]}}, {})


# --- one run at a time -----------------------------------------------------------------


def live_owner() -> dict:
    """This test process, as a run that is alive."""
    return {"pid": os.getpid(), "start": gemma_airgap_backup._proc_stat(os.getpid())[1]}


def dead_owner() -> dict:
    """A process that has exited, as a run that died with the lock held."""
    child = subprocess.Popen(["true"])
    start = gemma_airgap_backup._proc_stat(child.pid)
    child.wait()
    return {"pid": child.pid, "start": start[1] if start else 1}


def test_a_second_run_beside_a_live_one_is_refused_and_changes_nothing(tmp_path):
    store = Store(str(tmp_path / "backups"))
    store.begin("20261129T020000Z", live_owner())
    other = {"pid": os.getppid(), "start": gemma_airgap_backup._proc_stat(os.getppid())[1]}
    with pytest.raises(BackupError, match=rf"another backup run \(process {os.getpid()}, set "
                       r"20261129T020000Z, since .*\) is writing to"):
        store.begin("20261129T021500Z", other)
    assert sorted(os.listdir(store.sets_dir)) == [".partial-20261129T020000Z"]
    with pytest.raises(BackupError, match="another backup run"):
        store.acquire(other, "20261129T021500Z")  # nor may it prune
    store.begin("20261129T020000Z", live_owner())  # the run itself goes on
    store.release(other)  # only its holder gives it back
    assert os.path.exists(store.lock_path)
    store.release(live_owner())
    assert not os.path.exists(store.lock_path)
    store.begin("20261129T021500Z", other)


def test_the_lock_of_a_run_that_died_is_taken_over(tmp_path):
    store = Store(str(tmp_path / "backups"))
    gone = dead_owner()
    store.begin("20261129T020000Z", gone)
    assert store.holder()["pid"] == gone["pid"]
    store.begin("20261129T030000Z", live_owner())
    assert store.holder()["pid"] == os.getpid()
    # A lock that is not ours to read (a symlink, garbage) names no live run: taken over too.
    os.unlink(store.lock_path)
    os.symlink("/dev/zero", store.lock_path)
    store.begin("20261129T040000Z", live_owner())
    assert not os.path.islink(store.lock_path) and store.holder()["set"] == "20261129T040000Z"


def test_a_run_is_its_outermost_ansible_playbook(tmp_path):
    """The owner is the process that lives as long as the run: the outermost process named
    ansible-playbook above the module (its forked workers carry the same name)."""
    script = tmp_path / "ansible-playbook"
    script.write_text(f"#!{sys.executable}\n" + (
        "import os, subprocess, sys\n"
        "if sys.argv[1] == 'outer':\n"
        "    print(os.getpid(), flush=True)\n"
        "    subprocess.run([sys.argv[0], 'worker', sys.argv[2]], check=True)\n"
        "else:\n"
        "    subprocess.run(['sh', '-c', sys.argv[2]], check=True)\n"))
    script.chmod(0o755)
    probe = tmp_path / "module.py"
    probe.write_text(f"import json, sys\nsys.path[:0] = {sys.path!r}\n" + (
        "from ansible_collections.gemma_airgap.ollama.plugins.module_utils import "
        "gemma_airgap_backup as b\nprint(json.dumps(b.run_owner()))\n"))
    # ansible-playbook -> ansible-playbook (a worker) -> sh -> python (the module)
    out = subprocess.run([str(script), "outer", f"{sys.executable} {probe}"], text=True,
                         capture_output=True, check=True).stdout.split("\n")
    owner = json.loads(out[1])
    assert owner["pid"] == int(out[0]) and owner["start"] > 0
