"""bundle_consistency: a verified bundle whose parts disagree is refused, naming the file."""

import json
import tarfile

import pytest

import bundle_manifest
from tests.conftest import run_module
from tests.unit.bundle_parts import (
    add_member,
    build_bundle,
    docker_save_tar,
    forge_manifest,
    forge_sums,
)

WEIGHTS_MANIFEST = "models/manifests/registry.ollama.ai/library/tiny/v1"


@pytest.fixture
def bundle(tmp_path):
    return build_bundle(tmp_path)


def weights_blob(bundle):
    manifest = json.loads((bundle / WEIGHTS_MANIFEST).read_text())
    digest = manifest["layers"][0]["digest"]
    return digest, bundle / "models" / "blobs" / f"sha256-{digest[7:]}"


def assert_verifies(bundle):
    """The forgery passes the checksums: only the consistency check can catch it."""
    assert bundle_manifest.verify(str(bundle), 1)["bad_files"] == []


def check(bundle):
    return run_module("bundle_consistency", {"path": str(bundle)})


def test_a_consistent_bundle_passes_with_both_tar_layouts(bundle):
    result = check(bundle)
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is False
    assert result["models"] == ["tiny:v1"] and result["manifests"] == 1
    assert result["images"] == ["ollama", "gateway"]  # legacy and OCI docker save layouts


def test_a_removed_blob_with_its_line_dropped_is_refused(bundle):
    digest, weights = weights_blob(bundle)
    weights.unlink()
    forge_sums(bundle)
    assert_verifies(bundle)
    result = check(bundle)
    assert result["failed"] is True
    assert f"{WEIGHTS_MANIFEST}: needs models/blobs/sha256-{digest[7:]} ({digest}, 5000 bytes), " \
           "which the bundle does not hold" in result["msg"]
    assert "corrupt or forged" in result["msg"] and "re-make the bundle" in result["msg"]
    assert "nothing was changed" in result["msg"]


def test_a_blob_named_for_another_digest_is_refused(bundle):
    digest, weights = weights_blob(bundle)
    weights.write_bytes(b"X" * 5000)  # same size, other content, SHA256SUMS agreeing
    forge_sums(bundle)
    assert_verifies(bundle)
    result = check(bundle)
    assert result["failed"] is True
    assert f"models/blobs/sha256-{digest[7:]}: named for {digest}, but SHA256SUMS records " \
           "its content as sha256:" in result["msg"]


def test_a_swapped_image_tar_is_refused_naming_both_ids(bundle):
    meta = json.loads((bundle / "bundle.json").read_text())
    ids = {image["name"]: image["id"] for image in meta["images"]}
    (bundle / "images" / "gateway.tar").write_bytes((bundle / "images" / "ollama.tar").read_bytes())
    forge_sums(bundle)
    assert_verifies(bundle)
    result = check(bundle)
    assert result["failed"] is True
    assert f"images/gateway.tar: bundle.json records image ID {ids['gateway']} for gateway " \
           f"(lab/gateway:1), the tar holds {ids['ollama']}" in result["msg"]


def test_a_model_record_with_another_manifest_digest_is_refused(bundle):
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["models"][0]["manifest_digest"] = "0" * 64
    forge_manifest(bundle, models=meta["models"])
    assert_verifies(bundle)
    result = check(bundle)
    assert result["failed"] is True
    assert f"{WEIGHTS_MANIFEST}: bundle.json records manifest sha256 {'0' * 64}" in result["msg"]


def test_a_model_record_without_its_manifest_is_refused(bundle):
    meta = json.loads((bundle / "bundle.json").read_text())
    forge_manifest(bundle, models=[*meta["models"], {**meta["models"][0], "name": "other:v1"}])
    result = check(bundle)
    assert result["failed"] is True
    assert "bundle.json lists model other:v1, but the bundle holds no valid manifest" \
        in result["msg"]


def test_an_image_id_from_the_containerd_image_store_is_its_oci_index_digest(bundle):
    meta = json.loads((bundle / "bundle.json").read_text())
    tar = bundle / "images" / "ollama.tar"
    meta["images"][0]["id"] = docker_save_tar(tar, b'{"c": 1}', oci=True,
                                              oci_index=b'{"schemaVersion": 2}')
    forge_manifest(bundle, images=meta["images"])
    result = check(bundle)
    assert result.get("failed") is not True, result.get("msg")
    with tarfile.open(tar) as archive:  # an index.json digest counts only with its blob
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    with tarfile.open(tar, "w") as archive:
        for member, data in members:
            if member.name.startswith("blobs/sha256/") and b"schemaVersion" in data:
                data = data.replace(b"2", b"3")
            add_member(archive, member.name, data)
    forge_sums(bundle)
    result = check(bundle)
    assert result["failed"] is True
    assert f"records image ID {meta['images'][0]['id']} for ollama" in result["msg"]


@pytest.mark.parametrize(("build", "found"), [
    (lambda path: docker_save_tar(path, b"{}", extra_configs=[b'{"x": 1}']),
     "the tar holds sha256:"),
    (lambda path: docker_save_tar(path, b"{}", index=b" " * (1024 * 1024 + 1)),
     "not a readable docker save archive: its manifest.json has 1048577 bytes"),
    (lambda path: docker_save_tar(path, b"{}", index=b'{"Config": "x"}'),
     "its manifest.json is not a docker save manifest"),
    (lambda path: docker_save_tar(path, b"{}", index=b'[{"Config": "../etc/passwd"}]'),
     "its manifest.json names the config '../etc/passwd'"),
    (lambda path: path.write_bytes(b"not a tar at all" * 100), "not a readable docker save"),
])
def test_a_tar_that_is_not_one_docker_save_image_is_refused(bundle, build, found):
    build(bundle / "images" / "ollama.tar")
    forge_sums(bundle)
    result = check(bundle)
    assert result["failed"] is True
    assert "images/ollama.tar: " in result["msg"] and found in result["msg"]


def test_a_tar_whose_manifest_json_is_a_link_is_refused(bundle):
    path = bundle / "images" / "ollama.tar"
    with tarfile.open(path, "w") as tar:
        add_member(tar, "real.json", b"[]")
        link = tarfile.TarInfo("manifest.json")
        link.type, link.linkname = tarfile.SYMTYPE, "real.json"
        tar.addfile(link)
    forge_sums(bundle)
    result = check(bundle)
    assert result["failed"] is True and "it has no file manifest.json" in result["msg"]


def test_vision_files_and_package_repositories_named_must_be_in_the_bundle(bundle):
    forge_manifest(bundle, vision=[{"model": "tiny:v1", "model_file": "vision/m.gguf",
                                    "mmproj_file": "../outside.gguf"}],
                   platforms=[{"name": "debian-13-amd64", "repo": "packages/debian-13-amd64"}])
    result = check(bundle)
    assert result["failed"] is True
    assert "vision/m.gguf: bundle.json names it as the vision file" in result["msg"]
    assert "../outside.gguf: bundle.json names it as the vision file" in result["msg"]
    assert "packages/debian-13-amd64/Packages: bundle.json names it as the package index" \
        in result["msg"]
