"""The Ollama stand-in's pure parts: names, durations, options, templates, store."""

import hashlib
import json

import pytest

from ollama_standin import options, store
from ollama_standin.server import parse_host
from tests.standin.conftest import GEMMA_TEMPLATE


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


@pytest.mark.parametrize(("raw", "seconds"), [
    ("5m", 300.0), ("1h30m", 5400.0), ("0", 0.0), (0, 0.0), ("-1", None), (-1, None),
    (90, 90.0), ("2.5s", 2.5), ("250ms", 0.25),
])
def test_keep_alive_parses_like_ollama(raw, seconds):
    assert options.parse_keep_alive(raw) == seconds


@pytest.mark.parametrize("raw", ["soon", "5 minutes", True, [1]])
def test_bad_keep_alive_is_an_option_error(raw):
    with pytest.raises(options.OptionError):
        options.parse_keep_alive(raw)


def test_options_layer_defaults_model_then_request():
    merged = options.merge_options(2048, {"temperature": 0.1, "stop": "<end>"},
                                   {"temperature": 1, "num_predict": 5.0, "unknown": 1})
    assert merged["num_ctx"] == 2048
    assert merged["temperature"] == 1.0 and isinstance(merged["temperature"], float)
    assert merged["num_predict"] == 5 and isinstance(merged["num_predict"], int)
    assert merged["stop"] == ["<end>"]
    assert "unknown" not in merged
    with pytest.raises(options.OptionError, match="num_predict"):
        options.merge_options(2048, {"num_predict": 1.5})


def test_gemma_template_renders_turns_like_ollamas_gemma3_template():
    text = options.render(GEMMA_TEMPLATE, [
        {"role": "system", "content": "S"}, {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}])
    assert text == ("<start_of_turn>user\nS<end_of_turn>\n<start_of_turn>user\nU<end_of_turn>\n"
                    "<start_of_turn>model\nA<end_of_turn>\n"
                    "<start_of_turn>user\nV<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(options.TemplateError):
        options.render("{{ .System }} ### {{ .Prompt }}", [{"role": "user", "content": "x"}])


@pytest.mark.parametrize(("raw", "expected"), [
    (None, ("127.0.0.1", 11434)), ("0.0.0.0:11434", ("0.0.0.0", 11434)),
    ("http://10.0.0.5:8080/", ("10.0.0.5", 8080)), ("example", ("example", 11434)),
    ("[::1]:9000", ("::1", 9000)), (":7000", ("127.0.0.1", 7000)),
])
def test_ollama_host_parsing(raw, expected):
    assert parse_host(raw) == expected


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
