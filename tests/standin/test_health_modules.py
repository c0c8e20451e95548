"""ollama_info and ollama_probe, run through Ansible against the live stand-in."""

from tests.conftest import run_module

from .conftest import MODEL


def test_info_reports_version_models_digests_and_capabilities(standin, client):
    digest = {m.model: m.digest for m in client.list().models}[MODEL]
    result = run_module("ollama_info", {"url": standin.url, "min_version": "0.9.3",
                                        "expected_models": [{"name": MODEL, "digest": digest}]})
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is False
    assert result["version"].startswith("0.")
    model = next(m for m in result["models"] if m["name"] == MODEL)
    assert model["digest"] == digest
    assert model["capabilities"] == ["completion"]
    assert model["context_length"] == 32768
    assert result["missing"] == [] and result["mismatched"] == []


def test_info_fails_naming_missing_and_mismatched_models(standin):
    result = run_module("ollama_info", {
        "url": standin.url, "hint": "See: docker logs ollama",
        "expected_models": ["gemma3n:e4b", {"name": MODEL, "digest": "0" * 64}]})
    assert result["failed"] is True
    assert "models missing: gemma3n:e4b" in result["msg"]
    assert f"model {MODEL} has digest" in result["msg"] and "the bundle says 000" in result["msg"]
    assert result["msg"].endswith("See: docker logs ollama")


def test_info_fails_clearly_when_nothing_answers():
    result = run_module("ollama_info", {"url": "http://127.0.0.1:9", "wait": 1})
    assert result["failed"] is True
    assert result["msg"].startswith("Ollama is not answering: http://127.0.0.1:9/api/version")


def test_info_refuses_an_old_server(standin):
    result = run_module("ollama_info", {"url": standin.url, "min_version": "99.0"})
    assert result["failed"] and "older than the required 99.0" in result["msg"]


def test_probe_text_and_stream_pass_with_figures_and_image_is_skipped_with_reason(standin):
    result = run_module("ollama_probe", {"url": standin.url, "model": MODEL, "num_predict": 8})
    assert result.get("failed") is not True, result.get("msg")
    checks = result["checks"]
    assert checks["text"]["passed"] and checks["text"]["eval_count"] >= 1
    assert checks["text"]["tokens_per_s"] > 0
    assert checks["stream"]["passed"] and checks["stream"]["chunks"] >= 1
    assert 0 < checks["stream"]["ttft_s"] < 60
    assert checks["image"]["skipped"] is True
    assert "has no vision capability" in checks["image"]["reason"]
    assert result["summary"][2].startswith("image: skipped")


def test_probe_fails_with_the_servers_reason(standin):
    result = run_module("ollama_probe", {"url": standin.url, "model": "gemma3n:e4b",
                                         "hint": "Next: ollama list"})
    assert result["failed"] is True
    assert "HTTP 404: model 'gemma3n:e4b' not found" in result["msg"]
    assert result["msg"].endswith("Next: ollama list")


def test_probe_checks_the_answer_against_an_expectation(standin):
    result = run_module("ollama_probe", {"url": standin.url, "model": MODEL,
                                         "checks": ["text"], "expect": "^ZZZ-never$"})
    assert result["failed"] is True
    assert "does not match" in result["msg"]
    assert result["checks"]["text"]["passed"] is False
