"""model_licenses: each bundled model's licence layers as a file under LICENSES/, exactly the
bundled models', with the Gemma Terms of Use recognised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_module
from tests.unit.bundle_parts import blob, model

GEMMA = "Gemma Terms of Use\n\nLast modified: (a lab text, not the terms)\n"
OTHER = "  \nApache License\nVersion 2.0\n"


def add_licenses(store: Path, name_parts, *texts: str) -> None:
    path = store.joinpath("manifests", *name_parts)
    manifest = json.loads(path.read_text())
    for text in texts:
        manifest["layers"].append({"mediaType": "application/vnd.ollama.image.license",
                                   **blob(store, text.encode())})
    path.write_text(json.dumps(manifest))


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "models"
    e4b = ("registry.ollama.ai", "library", "gemma3n", "e4b")
    model(root, e4b, b"W" * 1000)
    add_licenses(root, e4b, GEMMA)
    tiny = ("registry.ollama.ai", "lab", "tiny", "v1")
    model(root, tiny, b"t" * 100)
    add_licenses(root, tiny, OTHER, "second licence")
    model(root, ("registry.ollama.ai", "library", "plain", "latest"), b"p" * 10)
    return root


def licenses(store: Path, dest: Path, *models: str, check: bool = False) -> dict:
    return run_module("model_licenses", {"store": str(store), "dest": str(dest),
                                         "models": list(models)}, check=check)


def test_each_models_licences_are_written_and_described(store, tmp_path):
    dest = tmp_path / "LICENSES"
    result = licenses(store, dest, "gemma3n:e4b", "lab/tiny:v1", "plain")
    assert result["changed"] and not result.get("failed"), result
    assert result["licenses"] == [
        {"model": "gemma3n:e4b", "file": "gemma3n_e4b.txt", "titles": ["Gemma Terms of Use"],
         "gemma": True},
        {"model": "lab/tiny:v1", "file": "lab__tiny_v1.txt",
         "titles": ["Apache License", "second licence"], "gemma": False},
        {"model": "plain:latest", "file": None, "titles": [], "gemma": False}]
    assert (dest / "gemma3n_e4b.txt").read_text() == GEMMA
    # Several licences of one model, joined as `ollama show --license` shows them.
    assert (dest / "lab__tiny_v1.txt").read_text() == OTHER + "\nsecond licence"
    assert sorted(p.name for p in dest.iterdir()) == ["gemma3n_e4b.txt", "lab__tiny_v1.txt"]
    again = licenses(store, dest, "gemma3n:e4b", "lab/tiny:v1", "plain")
    assert not again["changed"] and again["removed"] == [], again


def test_a_model_no_longer_bundled_loses_its_file(store, tmp_path):
    dest = tmp_path / "LICENSES"
    licenses(store, dest, "gemma3n:e4b", "lab/tiny:v1")
    (dest / "left-by-hand.txt").write_text("x")
    result = licenses(store, dest, "gemma3n:e4b")
    assert result["changed"] and result["removed"] == ["lab__tiny_v1.txt", "left-by-hand.txt"]
    assert [p.name for p in dest.iterdir()] == ["gemma3n_e4b.txt"]


def test_check_mode_writes_nothing(store, tmp_path):
    dest = tmp_path / "LICENSES"
    result = licenses(store, dest, "gemma3n:e4b", check=True)
    assert result["changed"] and not dest.exists()


def test_a_licence_blob_that_does_not_match_its_digest_is_refused(store, tmp_path):
    manifest = json.loads(store.joinpath(
        "manifests/registry.ollama.ai/library/gemma3n/e4b").read_text())
    layer = next(entry for entry in manifest["layers"]
                 if entry["mediaType"].endswith(".license"))
    store.joinpath("blobs", "sha256-" + layer["digest"][7:]).write_text("Forged terms\n")
    result = licenses(store, tmp_path / "LICENSES", "gemma3n:e4b")
    assert result.get("failed") and "does not match its digest" in result["msg"], result
    assert not (tmp_path / "LICENSES").exists()


@pytest.mark.parametrize(("name", "says"), [
    ("gemma3n:e8b", "model gemma3n:e8b is not in the store"),
    ("../../etc:passwd", "invalid model name"),
])
def test_an_unknown_or_hostile_name_is_refused(store, tmp_path, name, says):
    result = licenses(store, tmp_path / "LICENSES", name)
    assert result.get("failed") and says in result["msg"], result


def test_a_directory_in_licenses_is_not_removed_but_named(store, tmp_path):
    dest = tmp_path / "LICENSES"
    (dest / "nested").mkdir(parents=True)
    result = licenses(store, dest, "gemma3n:e4b")
    assert result.get("failed") and "nested is a directory" in result["msg"], result
    assert [p.name for p in dest.iterdir()] == ["nested"]  # nothing written either


def test_two_models_that_would_share_a_file_are_refused(store, tmp_path):
    """a_b:c and a:b_c both read as a_b_c.txt: one licence would be lost, shown for the other."""
    for parts in (("registry.ollama.ai", "library", "a_b", "c"),
                  ("registry.ollama.ai", "library", "a", "b_c")):
        model(store, parts, b"x" * 10)
        add_licenses(store, parts, "Terms of " + parts[2])
    result = licenses(store, tmp_path / "LICENSES", "a_b:c", "a:b_c")
    assert result.get("failed"), result
    assert "a_b:c and a:b_c would share the licence file a_b_c.txt" in result["msg"]
    assert not (tmp_path / "LICENSES").exists()
