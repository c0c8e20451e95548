"""backup_collect and backup_apply on a target's directories: a round trip, and hostile input."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.conftest import run_module


def blob(data: bytes) -> str:
    return "sha256-" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def target(tmp_path: Path) -> dict[str, Path]:
    """A target's directories: a release with current and previous, a stack, and an Ollama
    store holding one model made of a config and a layer."""
    releases, stack, models = tmp_path / "releases", tmp_path / "stack", tmp_path / "ollama"
    for version in ("v1", "v2"):
        (releases / version).mkdir(parents=True)
        (releases / version / "bundle.json").write_text(json.dumps({"version": version}))
    (releases / "current").symlink_to(releases / "v2")
    (releases / "previous").symlink_to(releases / "v1")
    (stack / "tls").mkdir(parents=True)
    (stack / "compose.yml").write_text("services: {}\n")
    (stack / "tls" / "key.pem").write_text("secret key")
    os.chmod(stack / "tls" / "key.pem", 0o400)
    (stack / "outside").symlink_to("/etc/hostname")  # never followed into the backup
    config, layer = b'{"model_format":"gguf"}', b"weights" * 1000
    (models / "blobs").mkdir(parents=True)
    for data in (config, layer):
        (models / "blobs" / blob(data)).write_bytes(data)
    manifest = models / "manifests" / "registry.ollama.ai" / "site" / "terse" / "v1"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2, "config": {"digest": "sha256:" + blob(config)[7:], "size": len(config)},
        "layers": [{"digest": "sha256:" + blob(layer)[7:], "size": len(layer)}]}))
    return {"releases": releases, "stack": stack, "models": models, "tmp": tmp_path,
            "blobs": [blob(config), blob(layer)]}


def collect(target: dict, **extra) -> dict:
    return run_module("backup_collect", {
        "archive": str(target["tmp"] / "work" / "set.tar"), "release_root": str(target["releases"]),
        "stack_dir": str(target["stack"]), "models_dir": str(target["models"]), **extra})


def apply(archive: Path, models: Path, stack: Path, blobs: list[str], check: bool = False,
          **extra) -> dict:
    return run_module("backup_apply", {"archive": str(archive), "blobs": blobs,
                                       "models_dir": str(models), "stack_dir": str(stack),
                                       **extra}, check=check)


def test_a_round_trip_brings_back_models_and_stack_files_and_nothing_else(target, tmp_path):
    collected = collect(target, silences=[{"id": "a", "comment": "maintenance"}])
    assert collected["changed"] and not collected.get("failed"), collected
    assert collected["release"] == {"current": "v2", "previous": "v1"}
    assert sorted(b["name"] for b in collected["blobs"]) == sorted(target["blobs"])
    archive = tmp_path / "work" / "set.tar"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "stack/outside" not in names and "stack/tls/key.pem" in names
    # A fresh disk: an empty store and stack; the blobs come from the set, staged.
    models, stack, staged = tmp_path / "new-ollama", tmp_path / "new-stack", tmp_path / "staged"
    staged.mkdir()
    for name in target["blobs"]:
        (staged / name).write_bytes((target["models"] / "blobs" / name).read_bytes())
    lacking = apply(archive, models, stack, target["blobs"], missing=True)
    assert sorted(lacking["missing"]) == sorted(target["blobs"]) and not lacking["changed"]
    checked = apply(archive, models, stack, target["blobs"], check=True, staged=str(staged))
    assert checked["changed"] and not models.exists()
    done = apply(archive, models, stack, target["blobs"], staged=str(staged))
    assert done["changed"] and done["stack_changed"], done
    assert done["silences"] == [{"id": "a", "comment": "maintenance"}]
    assert done["release"]["bundle"] == {"version": "v2"}
    for path in target["models"].rglob("*"):
        if path.is_file():
            assert (models / path.relative_to(target["models"])).read_bytes() == path.read_bytes()
    assert (stack / "tls" / "key.pem").read_text() == "secret key"
    assert (stack / "tls" / "key.pem").stat().st_mode & 0o777 == 0o400
    # A second restore: the first call finds nothing missing, so nothing is sent.
    for name in target["blobs"]:
        (staged / name).unlink()
    assert apply(archive, models, stack, target["blobs"], missing=True)["missing"] == []
    again = apply(archive, models, stack, target["blobs"], staged=str(staged))
    assert not again["changed"] and again["missing"] == []


def test_a_blob_neither_in_the_store_nor_sent_stops_the_restore_naming_it(target, tmp_path):
    """The apply call trusts the first call's hashing of the store (one read of GBs, not two),
    but a blob that is neither there nor among those sent is never passed over."""
    collect(target)
    staged = tmp_path / "staged"
    staged.mkdir()
    result = apply(tmp_path / "work" / "set.tar", tmp_path / "new", tmp_path / "new-stack",
                   target["blobs"], staged=str(staged))
    assert result.get("failed"), result
    assert (f"blob {target['blobs'][0]} is neither in the model store nor among those sent"
            in result["msg"]), result
    assert not (tmp_path / "new-stack").exists() and not (tmp_path / "new").exists()


def test_prometheus_data_is_replaced_by_the_snapshot_streamed_file_by_file(target, tmp_path):
    snapshot = tmp_path / "snapshot"
    (snapshot / "01BLOCK" / "chunks").mkdir(parents=True)
    chunk = os.urandom(9 << 20)  # three copy chunks: written piece by piece
    (snapshot / "01BLOCK" / "chunks" / "000001").write_bytes(chunk)
    (snapshot / "01BLOCK" / "meta.json").write_text('{"ulid": "01BLOCK"}')
    assert collect(target, snapshot=str(snapshot))["changed"]
    data = tmp_path / "prometheus-data"
    (data / "wal").mkdir(parents=True)
    (data / "wal" / "00000000").write_bytes(b"after the loss")
    done = apply(tmp_path / "work" / "set.tar", target["models"], target["stack"],
                 target["blobs"], staged=str(tmp_path / "none"), prometheus_data=str(data),
                 prometheus_owner=os.getuid())
    assert done["prometheus"] and "prometheus/" in done["installed"], done
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()) == [
        "01BLOCK/chunks/000001", "01BLOCK/meta.json"]
    assert (data / "01BLOCK" / "chunks" / "000001").read_bytes() == chunk


def test_a_manifest_naming_a_blob_the_store_lacks_stops_the_backup(target):
    (target["models"] / "blobs" / target["blobs"][1]).unlink()
    result = collect(target)
    assert result.get("failed")
    assert f"names blob {target['blobs'][1]}, which the store lacks" in result["msg"]
    assert not (target["tmp"] / "work" / "set.tar").exists()


def test_a_release_link_to_something_else_stops_the_backup(target):
    (target["releases"] / "current").unlink()
    (target["releases"] / "current").symlink_to("/etc")
    result = collect(target)
    assert result.get("failed") and "which is not a release in" in result["msg"], result


def hostile_tar(path: Path, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE) -> Path:
    with tarfile.open(path, "w") as tar:
        release = json.dumps({"current": None, "previous": None, "bundle": None}).encode()
        info = tarfile.TarInfo("release.json")
        info.size = len(release)
        tar.addfile(info, io.BytesIO(release))
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/shadow"
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(("name", "kind", "size", "says"), [
    ("stack/../../etc/cron.d/x", tarfile.REGTYPE, 1, "which no backup writes"),
    ("/etc/passwd", tarfile.REGTYPE, 1, "which no backup writes"),
    ("bin/sh", tarfile.REGTYPE, 1, "which no backup writes"),
    ("stack/compose.yml", tarfile.SYMTYPE, 0, "is not a regular file"),
    ("models/manifests/x/y/z/w", tarfile.REGTYPE, (1 << 20) + 1, "a regular file of at most"),
])
def test_a_hostile_tar_is_refused_before_anything_is_written(tmp_path, name, kind, size, says):
    archive = hostile_tar(tmp_path / "bad.tar", name, b"x" * size, kind)
    result = apply(archive, tmp_path / "ollama", tmp_path / "stack", [])
    assert result.get("failed") and says in result["msg"], result
    assert not (tmp_path / "ollama").exists() and not (tmp_path / "stack").exists()


def test_a_blob_damaged_on_its_way_is_not_installed(target, tmp_path):
    collect(target)
    staged = tmp_path / "staged"
    staged.mkdir()
    for name in target["blobs"]:
        (staged / name).write_bytes(b"damaged")
    result = apply(tmp_path / "work" / "set.tar", tmp_path / "new", tmp_path / "new-stack",
                   target["blobs"], staged=str(staged))
    assert result.get("failed") and "was damaged on its way" in result["msg"], result
    assert not any((tmp_path / "new").rglob("sha256-*"))


def test_a_symlink_where_a_stack_file_belongs_is_replaced_never_read_through(target, tmp_path):
    """A link planted at a stack file's place (to /dev/zero: reading through it never ends)
    is compared without following it, and replaced by the file from the backup."""
    collect(target)
    stack = tmp_path / "new-stack"
    stack.mkdir()
    (stack / "compose.yml").symlink_to("/dev/zero")
    done = apply(tmp_path / "work" / "set.tar", tmp_path / "new", stack, [])
    assert done["changed"] and "stack/compose.yml" in done["installed"], done
    assert not (stack / "compose.yml").is_symlink()
    assert (stack / "compose.yml").read_text() == "services: {}\n"
