"""The backup store: a pool of blobs checked once, sets sealed like a bundle, retention."""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
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
