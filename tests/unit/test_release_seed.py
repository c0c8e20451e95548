"""release_seed: a new release takes from earlier ones only what is provably the same."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import run_module


def release(root: Path, version: str, files: dict[str, bytes],
            listed: dict[str, bytes] | None = None) -> Path:
    """A release directory holding files, with a SHA256SUMS of listed (files by default)."""
    directory = root / version
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    directory.mkdir(parents=True, exist_ok=True)
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                   for name, data in (files if listed is None else listed).items())
    (directory / "SHA256SUMS").write_text(sums)
    return directory


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "releases"


def seed(root: Path, version: str, files: list[str], check: bool = False) -> dict:
    return run_module("release_seed", {"path": str(root / version), "root": str(root),
                                       "files": files}, check=check)


def test_files_an_earlier_release_holds_are_linked_under_any_name(root):
    old = release(root, "v1", {"models/blob-a": b"weights" * 1000, "images/gw.tar": b"old gateway"})
    release(root, "v2", {}, listed={"models/blob-a": b"weights" * 1000,
                                    "blobs/renamed": b"old gateway",
                                    "images/gw.tar": b"new gateway"})
    result = seed(root, "v2", ["models/blob-a", "blobs/renamed", "images/gw.tar"])
    assert result["changed"] is True, result
    assert sorted(result["linked"]) == ["blobs/renamed", "models/blob-a"]
    assert result["linked_bytes"] == 7000 + len(b"old gateway")
    new = root / "v2"
    assert os.path.samefile(new / "models/blob-a", old / "models/blob-a")
    assert os.path.samefile(new / "blobs/renamed", old / "images/gw.tar")
    assert not (new / "images/gw.tar").exists()  # a new content: it has to travel
    assert [p.name for p in (new / "models").iterdir()] == ["blob-a"]  # no temporary left

    again = seed(root, "v2", ["images/gw.tar"])
    assert again["changed"] is False and again["linked"] == []


def test_a_damaged_file_in_an_earlier_release_is_never_linked(root):
    old = release(root, "v1", {"blob": b"good bytes"})
    (old / "blob").write_bytes(b"evil bytes")
    release(root, "v2", {}, listed={"blob": b"good bytes"})
    result = seed(root, "v2", ["blob"])
    assert result["changed"] is False and result["linked"] == []
    assert result["not_taken"] == [{"path": "blob", "from": str(old),
                                    "reason": "checksum mismatch"}]
    assert not (root / "v2" / "blob").exists()


def test_links_and_odd_entries_in_the_release_root_are_not_followed(root, tmp_path):
    outside = release(tmp_path, "elsewhere", {"blob": b"data"})
    release(root, "v2", {}, listed={"blob": b"data", "other": b"x"})
    (root / "current").symlink_to(outside)        # a link named like a release link
    (root / "v0").symlink_to(outside)             # a link named like a release
    (root / ".hidden").mkdir()                    # not a plain version name
    (root / ".hidden" / "SHA256SUMS").write_text(f"{hashlib.sha256(b'data').hexdigest()}  blob\n")
    (root / ".hidden" / "blob").write_bytes(b"data")
    linked = release(root, "v1", {"other": b"x"})
    (linked / "blob").symlink_to(outside / "blob")  # listed in v1, but a symlink there
    (linked / "SHA256SUMS").write_text(
        f"{hashlib.sha256(b'data').hexdigest()}  blob\n{hashlib.sha256(b'x').hexdigest()}  other\n")
    result = seed(root, "v2", ["blob", "other"])
    assert result["linked"] == ["other"], result
    assert [s["path"] for s in result["not_taken"]] == ["blob"]
    assert not (root / "v2" / "blob").exists()


def test_a_hostile_list_in_an_earlier_release_cannot_reach_outside_it(root, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"data")
    old = root / "v1"
    old.mkdir(parents=True)
    digest = hashlib.sha256(b"data").hexdigest()
    (old / "SHA256SUMS").write_text(f"{digest}  ../../secret\n{digest}  /etc/passwd\n")
    release(root, "v2", {}, listed={"blob": b"data"})
    result = seed(root, "v2", ["blob"])
    assert result["linked"] == [] and result["not_taken"] == []


def test_only_listed_files_are_taken_and_check_mode_changes_nothing(root):
    release(root, "v1", {"blob": b"data"})
    release(root, "v2", {}, listed={"blob": b"data"})
    refused = seed(root, "v2", ["../v1/blob"])
    assert refused.get("failed") and "not listed" in refused["msg"]
    checked = seed(root, "v2", ["blob"], check=True)
    assert checked["changed"] is True and checked["linked"] == ["blob"]
    assert not (root / "v2" / "blob").exists()


def test_a_release_without_its_list_is_refused_with_what_to_do(root):
    (root / "v2").mkdir(parents=True)
    result = seed(root, "v2", ["blob"])
    assert result.get("failed") and "copy the bundle's SHA256SUMS there first" in result["msg"]


def test_a_directory_link_in_an_earlier_release_is_not_a_way_out(root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "blob").write_bytes(b"data")
    old = root / "v1"
    old.mkdir(parents=True)
    (old / "models").symlink_to(outside)  # listed as models/blob, reached through a link
    (old / "SHA256SUMS").write_text(f"{hashlib.sha256(b'data').hexdigest()}  models/blob\n")
    release(root, "v2", {}, listed={"models/blob": b"data"})
    result = seed(root, "v2", ["models/blob"])
    assert result["linked"] == []
    assert result["not_taken"][0]["reason"] == "a link on its way leads out of its release"
    assert not (root / "v2" / "models" / "blob").exists()
