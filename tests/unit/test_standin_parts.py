"""The Ollama stand-in engine's pure parts: names, the store, GGUF reading.

Durations, options, templates and OLLAMA_HOST belong to the Go front; their
unit tests are lab/standin/front/front_test.go (run by `make unit`).
"""

import hashlib
import json
import os

import pytest

from ollama_standin import gguf, service, store


@pytest.mark.parametrize(("raw", "expected", "display"), [
    ("gemma3n", ("registry.ollama.ai", "library", "gemma3n", "latest"), "gemma3n:latest"),
    ("gemma3n:e4b", ("registry.ollama.ai", "library", "gemma3n", "e4b"), "gemma3n:e4b"),
    ("lab/tiny:v1", ("registry.ollama.ai", "lab", "tiny", "v1"), "lab/tiny:v1"),
    ("reg.local:5000/ns/m:t", ("reg.local:5000", "ns", "m", "t"), "reg.local:5000/ns/m:t"),
])
def test_model_names_follow_ollama_defaults(raw, expected, display):
    name = store.ModelName.parse(raw)
    assert (name.host, name.namespace, name.model, name.tag) == expected
    assert name.display == display


@pytest.mark.parametrize("raw", ["", "a/b/c/d", "bad name", "x:", "../etc:passwd"])
def test_bad_model_names_are_refused(raw):
    with pytest.raises(store.InvalidName):
        store.ModelName.parse(raw)


def test_store_writes_verified_blobs_and_atomic_manifests(tmp_path):
    models = store.Store(tmp_path)
    data = b"weights"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(store.DigestMismatch):
        models.write_blob_stream(digest, iter([b"other"]))
    assert list(models.blobs.iterdir()) == []  # nothing half-written left behind
    assert models.write_blob_stream(digest, iter([b"wei", b"ghts"])) is True
    assert models.write_blob_stream(digest, iter([data])) is False
    config = models.write_blob_bytes(b"{}")
    name = store.ModelName.parse("lab/m:t")
    models.write_manifest(name, config, [{"mediaType": store.MEDIA_MODEL, "digest": digest,
                                          "size": len(data)}])
    manifest_file = tmp_path / "manifests/registry.ollama.ai/lab/m/t"
    assert json.loads(manifest_file.read_text())["layers"][0]["digest"] == digest
    stray = models.write_blob_bytes(b"unreferenced")
    (models.blobs / "sha256-abc-partial-1").write_bytes(b"x")
    removed = models.prune()
    assert sorted(removed) == sorted(["sha256-abc-partial-1",
                                      "sha256-" + stray["digest"][7:]])
    assert models.has_blob(digest)
    models.delete_manifest(name)
    assert not (tmp_path / "manifests/registry.ollama.ai/lab").exists()


def test_manifest_refuses_layers_missing_from_the_store(tmp_path):
    models = store.Store(tmp_path)
    with pytest.raises(store.StoreError, match="missing"):
        models.write_manifest(store.ModelName.parse("m"), {"digest": "sha256:" + "0" * 64},
                              [])


def test_start_up_prune_leaves_young_blobs_alone_as_ollama_does(tmp_path):
    """server/images.go PruneLayers skips blobs modified within the grace period."""
    models = store.Store(tmp_path)
    young = models.write_blob_bytes(b"young and unreferenced")
    old = models.write_blob_bytes(b"old and unreferenced")
    old_path = models.blob_path(old["digest"])
    hour_ago = old_path.stat().st_mtime - 2 * service.PRUNE_GRACE_SECONDS
    os.utime(old_path, (hour_ago, hour_ago))
    removed = models.prune(grace_seconds=service.PRUNE_GRACE_SECONDS)
    assert removed == [old_path.name]
    assert models.has_blob(young["digest"])


@pytest.mark.parametrize(("raw", "expected"), [
    ("", False), ("0", False), ("false", False), ("F", False),
    ("1", True), ("true", True), ("yes", True), ("anything", True),
])
def test_boolean_environment_reads_like_ollamas_envconfig(raw, expected):
    """envconfig.Bool: what strconv.ParseBool cannot read counts as true."""
    assert service.env_bool({"OLLAMA_NOPRUNE": raw}, "OLLAMA_NOPRUNE") is expected


def test_kv_cache_size_comes_from_the_model_metadata():
    info = gguf.GGUFInfo(version=3, metadata={
        "general.architecture": "gemma3", "gemma3.block_count": 18,
        "gemma3.attention.head_count": 4, "gemma3.attention.head_count_kv": 1,
        "gemma3.embedding_length": 640, "gemma3.attention.key_length": 256,
        "gemma3.attention.value_length": 256})
    assert info.kv_bytes_per_token() == 18 * 2 * 1 * (256 + 256)
    assert gguf.GGUFInfo(version=3).kv_bytes_per_token() == 0


def test_deleting_a_model_removes_only_the_layers_no_other_model_uses(tmp_path):
    """manifest/manifest.go RemoveLayers, which Ollama runs on every delete."""
    models = store.Store(tmp_path)
    shared = models.write_blob_bytes(b"shared weights")
    own = models.write_blob_bytes(b"a system prompt")
    config = models.write_blob_bytes(b"{}")
    layer = {"mediaType": store.MEDIA_MODEL, **shared}
    first, second = store.ModelName.parse("lab/a:v1"), store.ModelName.parse("lab/b:v1")
    manifest = models.write_manifest(first, config, [layer, {"mediaType": store.MEDIA_SYSTEM,
                                                              **own}])
    models.write_manifest(second, config, [layer])
    models.delete_manifest(first)
    assert models.remove_layers(manifest) == ["sha256-" + own["digest"][7:]]
    assert models.has_blob(shared["digest"]) and models.has_blob(config["digest"])
