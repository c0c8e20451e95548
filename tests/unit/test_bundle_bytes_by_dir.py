"""bundle_manifest's bytes per top-level directory: prepare's summary reads it, not du."""

import os

from bundle_manifest import bytes_by_dir
from tests.conftest import run_module


def test_sizes_are_summed_under_their_top_level_directory_only():
    sizes = {"images/a.tar": 10, "images/sub/b.tar": 5, "models/blobs/sha256-aa": 7,
             "bundle.json": 100, "README": 3}
    assert bytes_by_dir(sizes) == {"images": 15, "models": 7}
    assert bytes_by_dir({}) == {}


def test_seal_and_verify_report_the_same_bytes_per_directory(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ollama.tar").write_bytes(os.urandom(3000))
    (tmp_path / "models" / "blobs").mkdir(parents=True)
    (tmp_path / "models" / "blobs" / "sha256-aa").write_bytes(b"w" * 7000)
    (tmp_path / "models" / "manifest").write_bytes(b"m" * 11)
    (tmp_path / "packages").mkdir()  # empty: no bytes, so not listed
    (tmp_path / "README").write_text("bundle\n")
    sealed = run_module("bundle_manifest", {"path": str(tmp_path), "version": "v1"})
    assert sealed["bytes_by_dir"] == {"images": 3000, "models": 7011}
    again = run_module("bundle_manifest", {"path": str(tmp_path), "version": "v1"})
    assert again["hashed"] == 0 and again["bytes_by_dir"] == sealed["bytes_by_dir"]
    verified = run_module("bundle_manifest", {"path": str(tmp_path), "state": "verified"})
    assert verified["bytes_by_dir"] == sealed["bytes_by_dir"]
