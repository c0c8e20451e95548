"""The Ollama stand-in checked through the official `ollama` client and raw HTTP.

Every answer comes from the real llama.cpp engine running Gemma 3 270M.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.error
import urllib.request

import ollama
import pytest

from .conftest import MODEL, StandIn, import_lab_model

PROMPT = "The capital of France is"


def raw(standin, method: str, path: str, body=None, data: bytes | None = None):
    """(status, headers, body bytes) of one HTTP request, errors included."""
    if body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(standin.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


# --- listing and metadata -----------------------------------------------------------


def test_list_shows_the_imported_model_with_its_details(client):
    models = {m.model: m for m in client.list().models}
    assert MODEL in models
    entry = models[MODEL]
    assert entry.details.family == "gemma3"
    assert entry.details.quantization_level == "Q4_K_M"
    assert entry.details.parameter_size == "268.10M"
    assert entry.size > 253_000_000
    assert len(entry.digest) == 64


def test_show_reports_template_parameters_and_capabilities(client):
    shown = client.show(MODEL)
    assert "<start_of_turn>" in shown.template
    assert "completion" in shown.capabilities
    assert "vision" not in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "gemma3"
    assert shown.modelinfo["gemma3.context_length"] == 32768
    assert 'stop                           "<end_of_turn>"' in shown.parameters


def test_unknown_model_is_404_with_an_ollama_error(client, standin):
    with pytest.raises(ollama.ResponseError) as error:
        client.show("nope:latest")
    assert error.value.status_code == 404
    assert "not found" in error.value.error
    status, _headers, body = raw(standin, "POST", "/api/generate",
                                 {"model": "nope", "prompt": "x"})
    assert status == 404
    assert json.loads(body) == {"error": "model 'nope' not found"}


def test_root_and_version(standin):
    status, _headers, body = raw(standin, "GET", "/")
    assert (status, body) == (200, b"Ollama is running")
    status, _headers, _body = raw(standin, "HEAD", "/")
    assert status == 200
    status, _headers, body = raw(standin, "GET", "/api/version")
    assert status == 200 and json.loads(body)["version"]


# --- generation ---------------------------------------------------------------------


def test_generate_non_streaming_has_ollama_final_stats(client):
    response = client.generate(model=MODEL, prompt=PROMPT, raw=True,
                               options={"num_predict": 8, "temperature": 0, "seed": 1})
    assert response.done is True
    assert response.done_reason in ("stop", "length")
    assert response.eval_count and 0 < response.eval_count <= 8
    assert response.prompt_eval_count and response.prompt_eval_count > 0
    for field in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert getattr(response, field) > 0
    assert response.total_duration >= response.eval_duration
    assert response.response.strip()


def test_generate_streams_pieces_then_a_final_object(client):
    chunks = list(client.generate(model=MODEL, prompt=PROMPT, raw=True, stream=True,
                                  options={"num_predict": 12, "temperature": 0}))
    assert len(chunks) >= 3
    assert all(not c.done for c in chunks[:-1])
    pieces = [c.response for c in chunks[:-1] if c.response]
    assert chunks[-1].done and chunks[-1].response == ""
    assert 1 <= len(pieces) <= chunks[-1].eval_count  # one piece per token, or fewer
    streamed = "".join(c.response for c in chunks)
    whole = client.generate(model=MODEL, prompt=PROMPT, raw=True,
                            options={"num_predict": 12, "temperature": 0})
    assert streamed == whole.response  # greedy: streaming changes framing, not text


def test_num_predict_limits_tokens_and_reports_length(client):
    response = client.generate(model=MODEL, prompt="Count: one, two, three,", raw=True,
                               options={"num_predict": 3, "temperature": 0})
    assert response.eval_count == 3
    assert response.done_reason == "length"


def test_stop_sequence_cuts_the_text(client):
    free = client.generate(model=MODEL, prompt="1, 2, 3, 4, 5, 6,", raw=True,
                           options={"num_predict": 16, "temperature": 0})
    assert "8" in free.response
    stopped = client.generate(model=MODEL, prompt="1, 2, 3, 4, 5, 6,", raw=True,
                              options={"num_predict": 16, "temperature": 0, "stop": ["8"]})
    assert "8" not in stopped.response
    assert stopped.done_reason == "stop"
    assert free.response.startswith(stopped.response)


def test_seed_makes_sampling_repeatable(client):
    options = {"num_predict": 12, "temperature": 1.0, "seed": 42}
    first = client.generate(model=MODEL, prompt=PROMPT, raw=True, options=options)
    second = client.generate(model=MODEL, prompt=PROMPT, raw=True, options=options)
    assert first.response == second.response


def test_chat_streaming_and_not(client):
    messages = [{"role": "user", "content": "Say hello."}]
    whole = client.chat(model=MODEL, messages=messages, options={"num_predict": 8})
    assert whole.message.role == "assistant"
    assert whole.done and whole.eval_count >= 1
    chunks = list(client.chat(model=MODEL, messages=messages, stream=True,
                              options={"num_predict": 8}))
    assert chunks[-1].done and chunks[-1].done_reason in ("stop", "length")
    assert all(c.message.role == "assistant" for c in chunks)


def test_chat_prompt_uses_the_gemma_turn_template(client):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}]
    response = client.chat(model=MODEL, messages=messages, options={"num_predict": 1})
    # <bos> + two user turns + the open model turn, tokenized by the real tokenizer.
    expected = client.generate(model=MODEL, raw=True, options={"num_predict": 1}, prompt=(
        "<start_of_turn>user\nBe brief.<end_of_turn>\n"
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"))
    assert response.prompt_eval_count >= 1
    assert response.message.content == expected.response


def test_generate_returns_context_that_continues_a_conversation(client):
    first = client.generate(model=MODEL, prompt="Hello", options={"num_predict": 4})
    assert first.context and len(first.context) >= first.eval_count
    follow = client.generate(model=MODEL, prompt=" again", context=first.context,
                             options={"num_predict": 2})
    assert follow.done


def test_images_for_a_text_only_model_fail_like_ollama(client):
    with pytest.raises(ollama.ResponseError) as error:
        client.generate(model=MODEL, prompt="What is this?", images=[b"\x89PNG\r\n"])
    assert error.value.status_code == 500
    assert error.value.error == "this model is missing data required for image input"


# --- loading, ps, keep-alive ----------------------------------------------------------


def test_empty_prompt_loads_and_keep_alive_zero_unloads(client):
    loaded = client.generate(model=MODEL, prompt="", keep_alive="10m")
    assert loaded.done_reason == "load"
    running = {m.model: m for m in client.ps().models}
    assert MODEL in running
    assert running[MODEL].context_length == 4096
    unloaded = client.generate(model=MODEL, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert MODEL not in {m.model for m in client.ps().models}


def test_load_duration_is_reported_when_the_request_loads_the_model(client):
    client.generate(model=MODEL, prompt="", keep_alive=0)
    cold = client.generate(model=MODEL, prompt=PROMPT, raw=True, options={"num_predict": 1})
    warm = client.generate(model=MODEL, prompt=PROMPT, raw=True, options={"num_predict": 1})
    assert cold.load_duration > 10_000_000  # a real model load: well over 10 ms
    # Ollama's load_duration is the time until the runner was ready: never 0, small when warm.
    assert 0 < warm.load_duration < cold.load_duration / 5


def test_keep_alive_expiry_unloads_the_model(client):
    client.generate(model=MODEL, prompt="", keep_alive="1s")
    assert MODEL in {m.model for m in client.ps().models}
    time.sleep(2.0)
    assert MODEL not in {m.model for m in client.ps().models}


# --- create, copy, delete, blobs ------------------------------------------------------


def test_blob_upload_verifies_the_digest(standin):
    data = b"not the content you named"
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    status, _h, body = raw(standin, "POST", f"/api/blobs/{wrong}", data=data)
    assert status == 400 and "digest mismatch" in json.loads(body)["error"]
    assert raw(standin, "HEAD", f"/api/blobs/{wrong}")[0] == 404
    right = "sha256:" + hashlib.sha256(data).hexdigest()
    assert raw(standin, "POST", f"/api/blobs/{right}", data=data)[0] == 201
    assert raw(standin, "HEAD", f"/api/blobs/{right}")[0] == 200
    assert raw(standin, "POST", f"/api/blobs/{right}", data=data)[0] == 200
    assert raw(standin, "HEAD", "/api/blobs/sha256:xyz")[0] == 400


def test_create_copy_delete_round_trip(client):
    import_lab_model(client, "lab/copy-source:v1")
    client.copy("lab/copy-source:v1", "lab/copied:v2")
    names = {m.model for m in client.list().models}
    assert {"lab/copy-source:v1", "lab/copied:v2"} <= names
    copied = client.generate(model="lab/copied:v2", prompt=PROMPT, raw=True,
                             options={"num_predict": 4, "temperature": 0})
    original = client.generate(model=MODEL, prompt=PROMPT, raw=True,
                               options={"num_predict": 4, "temperature": 0})
    assert copied.response == original.response
    assert client.delete("lab/copied:v2").status == "success"
    assert client.delete("lab/copy-source:v1").status == "success"
    assert "lab/copied:v2" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as error:
        client.delete("lab/copied:v2")
    assert error.value.status_code == 404


def test_create_streams_progress_and_refuses_missing_blobs(client, standin):
    statuses = [p.status for p in client.create(
        model="lab/streamed", from_=MODEL, system="You are terse.", stream=True)]
    assert statuses[-1] == "success"
    assert "writing manifest" in statuses
    shown = json.loads(raw(standin, "POST", "/api/show", {"model": "lab/streamed"})[2])
    assert shown["system"] == "You are terse."
    with pytest.raises(ollama.ResponseError) as error:
        client.create(model="lab/missing",
                      files={"x.gguf": "sha256:" + "0" * 64})
    assert error.value.status_code == 400
    assert "not found" in error.value.error
    client.delete("lab/streamed")


def test_pull_answers_as_ollama_does_without_a_registry(client, standin):
    with pytest.raises(ollama.ResponseError) as error:
        client.pull("gemma3n:e4b")
    assert error.value.status_code == 500
    assert error.value.error.startswith(
        'pull model manifest: Get "https://registry.ollama.ai/v2/library/gemma3n/manifests/e4b"')
    status, headers, body = raw(standin, "POST", "/api/pull", {"model": "gemma3n:e4b"})
    lines = [json.loads(line) for line in body.splitlines()]
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    assert lines[0] == {"status": "pulling manifest"}
    assert "error" in lines[-1]


def test_every_manifest_layer_matches_its_blob(client, standin):
    import_lab_model(client, "lab/audit:v1")
    manifests = list((standin.models / "manifests").rglob("*"))
    files = [m for m in manifests if m.is_file()]
    assert any(f.parts[-2:] == ("audit", "v1") for f in files)
    for manifest_path in files:
        manifest = json.loads(manifest_path.read_bytes())
        assert manifest["schemaVersion"] == 2
        for entry in [manifest["config"], *manifest["layers"]]:
            hex_digest = entry["digest"].removeprefix("sha256:")
            blob = standin.models / "blobs" / f"sha256-{hex_digest}"
            content = blob.read_bytes()
            assert hashlib.sha256(content).hexdigest() == hex_digest, blob
            assert len(content) == entry["size"], blob
    client.delete("lab/audit:v1")


# --- raw HTTP: framing, content types, status codes -------------------------------------


def test_streaming_is_ndjson_one_object_per_line(standin):
    status, headers, body = raw(standin, "POST", "/api/generate", {
        "model": MODEL, "prompt": PROMPT, "raw": True, "options": {"num_predict": 5}})
    assert status == 200
    assert headers["Content-Type"] == "application/x-ndjson"
    assert headers["Transfer-Encoding"] == "chunked"
    lines = body.decode().splitlines()
    objects = [json.loads(line) for line in lines]
    assert all(o["model"] == MODEL for o in objects)
    assert [o["done"] for o in objects] == [False] * (len(objects) - 1) + [True]
    assert body.endswith(b"\n")


def test_stream_false_is_one_json_object(standin):
    status, headers, body = raw(standin, "POST", "/api/chat", {
        "model": MODEL, "stream": False, "messages": [{"role": "user", "content": "Hi"}],
        "options": {"num_predict": 3}})
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    obj = json.loads(body)
    assert obj["done"] is True and obj["message"]["role"] == "assistant"


@pytest.mark.parametrize(("payload", "status", "message"), [
    # Go's encoding/json words a syntax error itself (server/routes.go: 400 err.Error()).
    (b"{not json", 400, "invalid character 'n' looking for beginning of object key string"),
    (b"", 400, "missing request body"),
    # Option types are checked when the request is scheduled: 500 (handleScheduleError).
    (json.dumps({"model": MODEL, "prompt": "x", "options": {"temperature": "hot"}}).encode(),
     500, 'option "temperature" must be of type float32'),
    (json.dumps({"model": MODEL, "prompt": "x", "keep_alive": "soon"}).encode(),
     400, 'time: invalid duration "soon"'),
    (json.dumps({"model": "bad name!", "prompt": "x"}).encode(), 400, "invalid model name"),
    (json.dumps({"prompt": "x"}).encode(), 404, "model '' not found"),
    # Ollama names the type api.ImageData; the stand-in's package is main.
    (json.dumps({"model": MODEL, "prompt": "x", "images": 5}).encode(), 400,
     "json: cannot unmarshal number into Go struct field GenerateRequest.images of type []"),
])
def test_bad_requests_get_a_4xx_with_a_reason(standin, payload, status, message):
    got, headers, body = raw(standin, "POST", "/api/generate", data=payload)
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"].startswith(message)


def test_unknown_route_is_gins_404(standin):
    status, headers, body = raw(standin, "GET", "/api/nothing")
    assert (status, body) == (404, b"404 page not found")
    assert headers["Content-Type"] == "text/plain"


# --- concurrency: NUM_PARALLEL and MAX_QUEUE ------------------------------------------------


def test_queue_limit_answers_503(tmp_path):
    server = StandIn(tmp_path / "models", OLLAMA_MAX_QUEUE="1", OLLAMA_NUM_PARALLEL="1")
    try:
        client = server.client()
        import_lab_model(client)
        client.generate(model=MODEL, prompt="", keep_alive="5m")
        results: list = []

        def long_request():
            try:
                client.generate(model=MODEL, prompt=PROMPT, raw=True,
                                options={"num_predict": 200, "stop": []})
                results.append("ok")
            except ollama.ResponseError as error:
                results.append(error.status_code)

        threads = [threading.Thread(target=long_request) for _ in range(3)]
        for thread in threads:
            thread.start()
            time.sleep(0.2)
        for thread in threads:
            thread.join(120)
        assert "ok" in results
        assert 503 in results
        status, _h, _body = raw(server, "POST", "/api/generate", {
            "model": MODEL, "prompt": PROMPT, "raw": True, "options": {"num_predict": 1}})
        assert status == 200
    finally:
        server.stop()
