"""ollama_store: verified, atomic, idempotent model copies between Ollama stores."""

import hashlib
import json
import os

import pytest

import ollama_store
from tests.conftest import run_module
from tests.unit.bundle_parts import model


@pytest.fixture
def source(tmp_path):
    store = tmp_path / "src"
    model(store, ("registry.ollama.ai", "library", "gemma3n", "e4b"), b"W" * 100_000)
    model(store, ("registry.ollama.ai", "library", "gemma3n", "e2b"), b"w" * 50_000)
    model(store, ("registry.ollama.ai", "lab", "tiny", "v1"), b"t" * 1_000)
    return store


def test_export_copies_exactly_the_named_models(source, tmp_path):
    dest = tmp_path / "dest"
    result = run_module("ollama_store", {"src": str(source), "dest": str(dest),
                                         "models": ["gemma3n:e4b", "lab/tiny:v1"]})
    assert result["changed"] is True
    assert sorted(m["name"] for m in result["models"]) == ["gemma3n:e4b", "lab/tiny:v1"]
    assert (dest / "manifests/registry.ollama.ai/library/gemma3n/e4b").is_file()
    assert not (dest / "manifests/registry.ollama.ai/library/gemma3n/e2b").exists()
    for path in (dest / "blobs").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name[7:]
    assert result["copied_blobs"] == 4  # two weights; config and template shared, once
    assert not (dest / ".gemma-airgap-partial").exists()


def test_second_run_copies_nothing(source, tmp_path):
    dest = tmp_path / "dest"
    run_module("ollama_store", {"src": str(source), "dest": str(dest)})
    again = run_module("ollama_store", {"src": str(source), "dest": str(dest)})
    assert again["changed"] is False
    assert again["copied_bytes"] == 0
    assert len(again["models"]) == 3


def test_check_mode_reports_without_writing(source, tmp_path):
    dest = tmp_path / "dest"
    result = run_module("ollama_store", {"src": str(source), "dest": str(dest)}, check=True)
    assert result["changed"] is True
    assert not (dest / "manifests").exists()


def test_a_corrupt_blob_fails_naming_blob_and_model_and_writes_no_manifest(source, tmp_path):
    layers = model(source, ("registry.ollama.ai", "library", "bad", "latest"), b"B" * 5000)
    weights = source / "blobs" / f"sha256-{layers[0]['digest'][7:]}"
    data = bytearray(weights.read_bytes())
    data[10] ^= 0xFF
    weights.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    result = run_module("ollama_store", {"src": str(source), "dest": str(dest),
                                         "models": ["bad"]})
    assert result["failed"] is True
    assert layers[0]["digest"] in result["msg"] and "'bad'" in result["msg"]
    assert "corrupt" in result["msg"]
    assert not (dest / "manifests/registry.ollama.ai/library/bad").exists()
    assert not (dest / "blobs" / weights.name).exists()
    assert not any((dest / ".gemma-airgap-partial").glob("*"))


def test_a_truncated_blob_fails_before_copying(source, tmp_path):
    layers = model(source, ("registry.ollama.ai", "library", "short", "latest"), b"S" * 5000)
    weights = source / "blobs" / f"sha256-{layers[0]['digest'][7:]}"
    weights.write_bytes(weights.read_bytes()[:100])
    result = run_module("ollama_store", {"src": str(source), "dest": str(tmp_path / "d"),
                                         "models": ["short"]})
    assert result["failed"] and "has 100 bytes, its manifest says 5000" in result["msg"]


def test_an_unknown_model_is_named_with_what_the_store_has(source, tmp_path):
    result = run_module("ollama_store", {"src": str(source), "dest": str(tmp_path / "d"),
                                         "models": ["gemma3n:e8b"]})
    assert result["failed"] is True
    assert "'gemma3n:e8b' is not in the store" in result["msg"]
    assert "gemma3n:e4b" in result["msg"]


def test_a_damaged_destination_blob_of_wrong_size_is_replaced(source, tmp_path):
    dest = tmp_path / "dest"
    run_module("ollama_store", {"src": str(source), "dest": str(dest), "models": ["lab/tiny:v1"]})
    victim = max((dest / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    victim.write_bytes(b"half")
    result = run_module("ollama_store", {"src": str(source), "dest": str(dest),
                                         "models": ["lab/tiny:v1"]})
    assert result["changed"] is True and result["copied_blobs"] == 1
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == victim.name[7:]


def cache_of(dest):
    return dest.parent / f".{dest.name}.hashcache.json"


def test_an_unchanged_rerun_reads_no_blob_and_keeps_its_cache_beside_the_store(source, tmp_path):
    dest = tmp_path / "dest"
    first = run_module("ollama_store", {"src": str(source), "dest": str(dest)})
    again = run_module("ollama_store", {"src": str(source), "dest": str(dest)})
    assert first["changed"] is True and again["changed"] is False
    assert again["hashed_bytes"] == 0 and again["repaired_blobs"] == []
    cache = json.loads(cache_of(dest).read_text())
    assert str(dest / "blobs" / next((dest / "blobs").iterdir()).name) in cache
    assert not [p for p in dest.iterdir() if p.name not in ("manifests", "blobs")]


def test_a_same_size_corrupt_blob_in_the_store_is_repaired_and_reported(source, tmp_path):
    dest = tmp_path / "dest"
    layers = model(source, ("registry.ollama.ai", "library", "rot", "v1"), b"R" * 20_000)
    run_module("ollama_store", {"src": str(source), "dest": str(dest), "models": ["rot:v1"]})
    weights = dest / "blobs" / f"sha256-{layers[0]['digest'][7:]}"
    data = bytearray(weights.read_bytes())
    data[1234] ^= 0x01
    weights.write_bytes(bytes(data))  # same size: a size check alone trusts it
    repaired = run_module("ollama_store", {"src": str(source), "dest": str(dest),
                                           "models": ["rot:v1"]})
    assert repaired["changed"] is True and repaired["copied_blobs"] == 1
    assert [(b["digest"], b["model"]) for b in repaired["repaired_blobs"]] == [
        (layers[0]["digest"], "rot:v1")]
    assert repaired["repaired_blobs"][0]["reason"].startswith("content hashes to sha256:")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == layers[0]["digest"][7:]
    again = run_module("ollama_store", {"src": str(source), "dest": str(dest),
                                        "models": ["rot:v1"]})
    assert again["changed"] is False and again["hashed_bytes"] == 0


def test_check_mode_reports_a_corrupt_blob_without_repairing_it(source, tmp_path):
    dest = tmp_path / "dest"
    run_module("ollama_store", {"src": str(source), "dest": str(dest), "models": ["lab/tiny:v1"]})
    victim = max((dest / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    victim.write_bytes(b"x" * victim.stat().st_size)
    result = run_module("ollama_store", {"src": str(source), "dest": str(dest),
                                         "models": ["lab/tiny:v1"]}, check=True)
    assert result["changed"] is True and len(result["repaired_blobs"]) == 1
    assert victim.read_bytes() == b"x" * victim.stat().st_size


def test_a_blob_rewritten_with_its_old_mtime_is_hashed_again(source, tmp_path):
    dest = tmp_path / "dest"
    run_module("ollama_store", {"src": str(source), "dest": str(dest), "models": ["lab/tiny:v1"]})
    victim = max((dest / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    before = victim.stat()
    with open(victim, "r+b") as handle:  # same inode, same size
        handle.write(b"Z")
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime
    result = run_module("ollama_store", {"src": str(source), "dest": str(dest),
                                         "models": ["lab/tiny:v1"]})
    assert result["changed"] is True and len(result["repaired_blobs"]) == 1
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == victim.name[7:]


def test_a_source_blob_named_for_another_digest_is_refused_even_when_the_store_has_it(
        source, tmp_path):
    dest = tmp_path / "dest"
    run_module("ollama_store", {"src": str(source), "dest": str(dest), "models": ["gemma3n:e4b"]})
    manifest = json.loads((source / "manifests/registry.ollama.ai/library/gemma3n/e4b")
                          .read_text())
    named = source / "blobs" / f"sha256-{manifest['layers'][0]['digest'][7:]}"
    named.write_bytes(b"V" * named.stat().st_size)  # another content under the same name
    before = {p.name: p.read_bytes() for p in (dest / "blobs").iterdir()}
    result = run_module("ollama_store", {"src": str(source), "dest": str(dest),
                                         "models": ["gemma3n:e4b"]})
    assert result["failed"] is True
    assert manifest["layers"][0]["digest"] in result["msg"]
    assert "named for another digest" in result["msg"] and "'gemma3n:e4b'" in result["msg"]
    assert {p.name: p.read_bytes() for p in (dest / "blobs").iterdir()} == before


MALFORMED = [
    "[]",
    '{"config": "sha256:00", "layers": []}',
    '{"config": {"digest": "sha256:' + "a" * 64 + '", "size": 1}, "layers": ["x"]}',
    '{"config": {"digest": "sha256:' + "a" * 64 + '", "size": "1"}, "layers": []}',
    '{"config": {"digest": "sha256:' + "a" * 64 + '", "size": -1}, "layers": []}',
    '{"config": {"digest": "sha256:' + "a" * 64 + '", "size": true}, "layers": []}',
    '{"config": {"digest": "sha256:' + "a" * 64 + '\\n", "size": 1}, "layers": []}',
    '{"config": {"digest": "sha256:../../x", "size": 1}, "layers": []}',
    "\xff not json",
]


def plant_manifest(source, text):
    path = source / "manifests/registry.ollama.ai/library/broken/v1"
    path.parent.mkdir(parents=True)
    path.write_bytes(text.encode("latin-1"))


def test_a_malformed_manifest_fails_the_module_cleanly(source, tmp_path):
    plant_manifest(source, '{"config": {"digest": "sha256:' + "a" * 64 + '", "size": 1}, '
                           '"layers": ["x"]}')
    result = run_module("ollama_store", {"src": str(source), "dest": str(tmp_path / "d"),
                                         "models": ["broken:v1"]})
    assert result["failed"] is True
    assert "manifest of 'broken:v1'" in result["msg"]
    assert "is not a valid Ollama manifest: bad digest None" in result["msg"]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("text", MALFORMED)
def test_every_malformed_manifest_is_refused_naming_it(source, tmp_path, text):
    plant_manifest(source, text)
    with pytest.raises(ollama_store.StoreError,
                       match=r"manifest of 'broken:v1' at .* is not a valid Ollama manifest"):
        ollama_store.run(str(source), str(tmp_path / "d"), ["broken:v1"], False)
    assert not (tmp_path / "d").exists()


def test_a_model_name_that_leaves_manifests_fails_the_module_cleanly(source, tmp_path):
    # The host part of a name once went unchecked: a manifest planted where
    # "../outside/x:v1" leads (outside manifests/) was read and imported.
    planted = source / "outside" / "x" / "v1"
    planted.parent.mkdir(parents=True)
    model(source, ("registry.ollama.ai", "library", "plant", "v1"), b"P" * 100)
    planted.write_text((source / "manifests/registry.ollama.ai/library/plant/v1").read_text())
    result = run_module("ollama_store", {"src": str(source), "dest": str(tmp_path / "d"),
                                         "models": ["../outside/x:v1"]})
    assert result["failed"] is True
    assert "invalid model name '../outside/x:v1'" in result["msg"]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("name", ["../x/y:v1", "./a/b:v1", "a/..:v1", "tiny:..", "tiny:v1\n",
                                  "a/b/c/d:v1", ":v1"])
def test_every_model_name_with_a_dot_dot_or_odd_part_is_refused(source, tmp_path, name):
    with pytest.raises(ollama_store.StoreError, match="invalid model name"):
        ollama_store.run(str(source), str(tmp_path / "d"), [name], False)


def manifest_digest(store, *parts):
    path = store / "manifests" / "registry.ollama.ai" / "/".join(parts)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_pinned_digest_that_matches_exports_the_model(source, tmp_path):
    """Pins as people copy them from /api/tags (bare hex) or write them (sha256:, upper case)."""
    e4b = manifest_digest(source, "library", "gemma3n", "e4b")
    e2b = manifest_digest(source, "library", "gemma3n", "e2b")
    result = run_module("ollama_store", {
        "src": str(source), "dest": str(tmp_path / "dest"),
        "models": ["gemma3n:e4b", "gemma3n:e2b"],
        "digests": {"gemma3n:e4b": e4b, "gemma3n:e2b": "sha256:" + e2b.upper()}})
    assert not result.get("failed"), result
    assert {m["name"]: m["manifest_digest"] for m in result["models"]} == {
        "gemma3n:e4b": e4b, "gemma3n:e2b": e2b}
    assert result["pinned"] == ["gemma3n:e4b", "gemma3n:e2b"]
    # Pinned by the name as written in bundle_models, reported as Ollama writes it; the
    # records (bundle.json's) do not change when a model is pinned.
    one = run_module("ollama_store", {"src": str(source), "dest": str(tmp_path / "dest"),
                                      "models": ["library/gemma3n:e4b", "gemma3n:e2b"],
                                      "digests": {"library/gemma3n:e4b": e4b}})
    assert one["pinned"] == ["gemma3n:e4b"] and one["models"] == result["models"]


def test_a_model_whose_digest_differs_from_its_pin_is_refused_before_anything_is_written(
        source, tmp_path):
    """The registry serves another build under the tag: prepare stops, naming both digests,
    and the bundle's store gets none of the models (the pin is checked before any copy)."""
    e4b = manifest_digest(source, "library", "gemma3n", "e4b")
    pinned = "ab" * 32
    dest = tmp_path / "dest"
    result = run_module("ollama_store", {
        "src": str(source), "dest": str(dest), "models": ["gemma3n:e2b", "gemma3n:e4b"],
        "digests": {"gemma3n:e4b": pinned}})
    assert result.get("failed"), result
    assert (f"model gemma3n:e4b has the manifest digest sha256:{e4b}, but sha256:{pinned} is "
            "pinned for it") in result["msg"]
    assert "nothing was written" in result["msg"]
    assert not dest.exists() or not any(dest.rglob("*"))


@pytest.mark.parametrize(("pins", "says"), [
    ({"gemma3n:e4b": "15cb39fd9394"}, "is not a sha256 digest"),  # the short ID `ollama list` shows
    ({"gemma3n:e4b": "sha256:" + "g" * 64}, "is not a sha256 digest"),
    ({"gemma3n:e4b": "<the digest prepare printed>"}, "is not a sha256 digest"),
    ({"gemma3n:e8b": "ab" * 32}, "gemma3n:e8b, which is not among the models"),
])
def test_a_pin_that_is_no_digest_or_names_no_model_is_refused(source, tmp_path, pins, says):
    result = run_module("ollama_store", {"src": str(source), "dest": str(tmp_path / "dest"),
                                         "models": ["gemma3n:e4b"], "digests": pins})
    assert result.get("failed") and says in result["msg"], result
