"""bundle_manifest: sealing, incremental re-runs, and verification failures."""

import json
import os
import subprocess

import pytest

import bundle_manifest
from tests.conftest import run_module


@pytest.fixture
def bundle(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ollama.tar").write_bytes(os.urandom(300_000))
    (tmp_path / "models" / "blobs").mkdir(parents=True)
    (tmp_path / "models" / "blobs" / "sha256-aa").write_bytes(b"weights" * 1000)
    (tmp_path / "README").write_text("bundle\n")
    return tmp_path


def test_seal_writes_sums_that_sha256sum_accepts(bundle):
    result = run_module("bundle_manifest", {"path": str(bundle), "version": "v1",
                                            "metadata": {"images": [{"name": "x"}]}})
    assert result["changed"] is True
    assert result["files"] == 4  # three files + bundle.json
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=bundle,
                           text=True, capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "bundle.json: OK" in check.stdout
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["version"] == "v1" and meta["images"] == [{"name": "x"}]
    assert meta["created_at"].endswith("Z")


def test_rerun_with_nothing_changed_reads_nothing_and_reports_unchanged(bundle):
    first = run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    sums = (bundle / "SHA256SUMS").read_bytes()
    meta = (bundle / "bundle.json").read_bytes()
    second = run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    assert first["hashed"] == 3
    assert second["changed"] is False
    assert second["hashed"] == 0 and second["hashed_bytes"] == 0
    assert (bundle / "SHA256SUMS").read_bytes() == sums
    assert (bundle / "bundle.json").read_bytes() == meta  # created_at kept


def test_a_changed_file_is_rehashed_alone(bundle):
    run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    (bundle / "README").write_text("changed\n")
    result = run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    assert result["changed"] is True
    assert result["hashed"] == 1
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle,
                          capture_output=True, check=False).returncode == 0


def test_check_mode_writes_nothing(bundle):
    result = run_module("bundle_manifest", {"path": str(bundle), "version": "v1"}, check=True)
    assert result["changed"] is True
    assert not (bundle / "SHA256SUMS").exists()
    assert not (bundle / "bundle.json").exists()


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda b: (b / "images" / "ollama.tar").write_bytes(b"flipped"), "checksum mismatch"),
    (lambda b: (b / "models" / "blobs" / "sha256-aa").unlink(), "missing"),
    (lambda b: (b / "extra.bin").write_bytes(b"?"), "not listed in SHA256SUMS"),
])
def test_verify_names_each_bad_file(bundle, damage, reason):
    run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    assert run_module("bundle_manifest", {"path": str(bundle), "state": "verified"})[
        "changed"] is False
    damage(bundle)
    result = run_module("bundle_manifest", {"path": str(bundle), "state": "verified"})
    assert result["failed"] is True
    assert reason in result["msg"]
    assert "copy it again from the original media" in result["msg"]
    assert any(bad["reason"] == reason for bad in result["bad_files"])


def test_verify_catches_one_flipped_byte_in_a_large_file(bundle):
    run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    target = bundle / "images" / "ollama.tar"
    data = bytearray(target.read_bytes())
    data[150_000] ^= 0x01
    target.write_bytes(bytes(data))
    result = bundle_manifest.verify(str(bundle), 2)
    assert [b["path"] for b in result["bad_files"]] == ["images/ollama.tar"]


def test_verify_without_sums_fails_clearly(tmp_path):
    result = run_module("bundle_manifest", {"path": str(tmp_path), "state": "verified"})
    assert result["failed"] and "SHA256SUMS: missing" in result["msg"]
    missing = run_module("bundle_manifest", {"path": str(tmp_path / "nope"), "version": "v"})
    assert missing["failed"] and "does not exist" in missing["msg"]
