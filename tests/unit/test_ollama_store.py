"""ollama_store: verified, atomic, idempotent model copies between Ollama stores."""

import hashlib
import json

import pytest

from tests.conftest import run_module


def blob(store, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def model(store, name_parts, weights: bytes, template: bytes = b"{{ .Prompt }}"):
    config = blob(store, b'{"model_family":"gemma3"}')
    layers = [{"mediaType": "application/vnd.ollama.image.model", **blob(store, weights)},
              {"mediaType": "application/vnd.ollama.image.template", **blob(store, template)}]
    path = store.joinpath("manifests", *name_parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schemaVersion": 2, "config": config, "layers": layers}))
    return layers


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
