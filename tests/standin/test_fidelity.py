"""The stand-in's fidelity table (lab/standin/README.md): one test per row.

Each test sends what a client (or a proxy in front of Ollama) may send and
checks the answer real Ollama gives — its status, headers and bytes — as read
in Ollama's source (v0.32.15). A test that accepts something Ollama refuses is
a defect: the lab would pass where a real site fails.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ollama_options import ollama_option_problems
from ollama_standin.gguf import TENSOR_TYPES

from .conftest import MODEL, StandIn, import_lab_model


def request(standin, method: str, path: str, body=None, headers: dict | None = None,
            data: bytes | None = None):
    """(status, headers, body) of one request sent as written (no client-side path cleaning)."""
    if body is not None:
        data = json.dumps(body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", standin.port, timeout=120)
    try:
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


# --- keep_alive: api/types.go Duration.UnmarshalJSON ------------------------------------


@pytest.mark.parametrize("value", ["-1", "90"])
def test_a_keep_alive_string_without_a_unit_is_refused(standin, value):
    status, _h, body = request(standin, "POST", "/api/generate",
                               {"model": MODEL, "prompt": "", "keep_alive": value})
    assert status == 400
    assert error_of(body) == f'time: missing unit in duration "{value}"'


@pytest.mark.parametrize("value", [-1, "-1m"])
def test_a_negative_keep_alive_keeps_the_model_loaded_for_good(standin, value):
    status, _h, _b = request(standin, "POST", "/api/generate",
                             {"model": MODEL, "prompt": "", "keep_alive": value})
    assert status == 200
    _s, _h, body = request(standin, "GET", "/api/ps")
    loaded = {m["name"]: m for m in json.loads(body)["models"]}
    expires = datetime.fromisoformat(loaded[MODEL]["expires_at"].replace("Z", "+00:00"))
    assert expires.year > 2300  # now + Go's largest Duration, as Ollama reports it


def test_a_keep_alive_of_another_json_type_is_refused(standin):
    status, _h, body = request(standin, "POST", "/api/chat",
                               {"model": MODEL, "messages": [], "keep_alive": True})
    assert (status, error_of(body)) == (400, "Unsupported type: 'bool'")


# --- options: api/types.go FromMap, server/routes.go handleScheduleError ---------------


@pytest.mark.parametrize(("parameters", "message"), [
    ({"stop": "<end_of_turn>"}, 'option "stop" must be of type array'),
    ({"num_ctx": "8192"}, 'option "num_ctx" must be of type integer'),
])
def test_a_stored_parameter_of_the_wrong_type_fails_every_request(standin, parameters, message):
    name = "lab/wrong-type:v1"
    status, _h, body = request(standin, "POST", "/api/create", {
        "model": name, "from": MODEL, "parameters": parameters, "stream": False})
    assert status == 200, body  # /api/create stores parameters unchecked
    # prepare's preflight refuses it beforehand, in Ollama's words.
    assert message in ollama_option_problems(parameters)
    try:
        for path, payload in (
                ("/api/generate", {"model": name, "prompt": "hi"}),
                ("/api/chat", {"model": name, "messages": [{"role": "user", "content": "hi"}]})):
            status, _h, body = request(standin, "POST", path, payload)
            assert (status, error_of(body)) == (500, message)
    finally:
        request(standin, "DELETE", "/api/delete", {"model": name})


def test_unknown_options_are_ignored(standin):
    status, _h, body = request(standin, "POST", "/api/generate", {
        "model": MODEL, "prompt": "x", "raw": True, "stream": False,
        "options": {"num_predict": 1, "no_such_option": "x", "TEMPERATURE": "ignored too"}})
    assert status == 200, body


# --- JSON decoding: encoding/json into typed structs ---------------------------------------


def test_json_keys_match_field_names_case_insensitively(standin):
    status, _h, body = request(standin, "POST", "/api/generate", {
        "MODEL": MODEL, "Prompt": "x", "RAW": True, "STREAM": False,
        "OPTIONS": {"num_predict": 1}})
    assert status == 200
    answer = json.loads(body)
    assert answer["model"] == MODEL and answer["done"] is True


def test_invalid_utf8_in_a_request_is_replaced_not_refused(standin):
    data = b'{"model": "' + MODEL.encode() + b'", "system": "a\xffb"}'
    status, _h, body = request(standin, "POST", "/api/show", data=data)
    assert status == 200
    assert json.loads(body)["system"] == "a\ufffdb"


def test_answers_escape_html_characters_as_go_does(standin):
    _s, _h, body = request(standin, "POST", "/api/show", {"model": MODEL})
    assert b"\\u003cstart_of_turn\\u003e" in body and b"<start_of_turn>" not in body


def test_times_are_rfc3339_with_nanoseconds_in_utc(standin):
    _s, _h, body = request(standin, "POST", "/api/generate",
                           {"model": MODEL, "prompt": "", "keep_alive": "5m"})
    created = json.loads(body)["created_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", created), created


# --- net/http and Gin: framing, paths, methods, hosts ----------------------------------


def read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return head


def test_expect_100_continue_gets_an_interim_answer_first(standin):
    body = json.dumps({"model": MODEL}).encode()
    with socket.create_connection(("127.0.0.1", standin.port), timeout=30) as sock:
        sock.sendall(b"POST /api/show HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        assert read_head(sock).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        final = read_head(sock)
        assert final.startswith(b"HTTP/1.1 200 OK\r\n")


def test_an_error_answer_consumes_the_body_so_the_connection_stays_usable(standin):
    connection = http.client.HTTPConnection("127.0.0.1", standin.port, timeout=60)
    try:
        for path, payload, status in (
                ("/api/generate", {"model": "nope", "prompt": "x" * 5000}, 404),
                ("/api/nothing", {"filler": "y" * 5000}, 404),
                ("/api/show", {"model": MODEL}, 200)):
            connection.request("POST", path, body=json.dumps(payload).encode())
            response = connection.getresponse()
            response.read()
            assert response.status == status, path
    finally:
        connection.close()


def test_paths_are_decoded_once_before_routing(standin):
    assert request(standin, "GET", "/api/%74ags")[0] == 200
    # Decoded once this is /api/%74ags, which is no route: 404, never /api/tags.
    assert request(standin, "GET", "/api/%2574ags")[0] == 404


def test_a_trailing_slash_is_redirected_as_gin_does(standin):
    status, headers, _b = request(standin, "GET", "/api/tags/")
    assert (status, headers["Location"]) == (301, "/api/tags")
    status, headers, _b = request(standin, "POST", "/api/show/", {"model": MODEL})
    assert (status, headers["Location"]) == (307, "/api/show")


def test_a_known_path_with_another_method_is_405(standin):
    status, headers, body = request(standin, "DELETE", "/api/tags")
    assert (status, body) == (405, b"405 method not allowed")
    assert headers["Content-Type"] == "text/plain"


def test_a_host_that_is_not_local_is_refused_while_listening_on_loopback(standin):
    assert request(standin, "GET", "/api/version", headers={"Host": "evil.example"})[0] == 403
    assert request(standin, "GET", "/api/version", headers={"Host": "ai.site.internal"})[0] == 200


# --- CORS: gin-contrib/cors with Ollama's configuration ---------------------------------------


def test_an_origin_outside_ollama_origins_gets_403_with_no_body(standin):
    status, headers, body = request(standin, "POST", "/api/show", {"model": MODEL},
                                    headers={"Origin": "http://evil.example"})
    assert (status, body) == (403, b"")
    assert "Access-Control-Allow-Origin" not in headers


def test_local_origins_are_allowed_by_default(standin):
    status, headers, _b = request(standin, "GET", "/api/version",
                                  headers={"Origin": "http://localhost:3000"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    status, headers, _b = request(standin, "OPTIONS", "/api/chat", headers={
        "Origin": "http://127.0.0.1:8080", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-stainless-os"})
    assert status == 204
    assert "X-Stainless-Os" in headers["Access-Control-Allow-Headers"]


def test_ollama_origins_adds_a_site_origin(tmp_path):
    server = StandIn(tmp_path / "models", OLLAMA_ORIGINS="https://chat.site.internal")
    try:
        site = {"Origin": "https://chat.site.internal"}
        status, headers, _b = request(server, "GET", "/api/version", headers=site)
        assert status == 200
        assert headers["Access-Control-Allow-Origin"] == "https://chat.site.internal"
        other = {"Origin": "https://other.site.internal"}
        assert request(server, "GET", "/api/version", headers=other)[0] == 403
    finally:
        server.stop()


# --- what the answers hold ------------------------------------------------------------------


def test_thinking_is_refused_for_a_model_that_cannot_think(standin):
    status, _h, body = request(standin, "POST", "/api/generate",
                               {"model": MODEL, "prompt": "x", "think": True})
    assert (status, error_of(body)) == (400, f'"{MODEL}" does not support thinking')
    status, _h, body = request(standin, "POST", "/api/generate",
                               {"model": MODEL, "prompt": "x", "think": "hard"})
    assert status == 400 and error_of(body).startswith('invalid think value: "hard"')


def test_ps_reports_memory_size_vram_and_expiry(standin):
    request(standin, "POST", "/api/generate", {"model": MODEL, "prompt": "", "keep_alive": "5m"})
    _s, _h, body = request(standin, "GET", "/api/ps")
    loaded = {m["name"]: m for m in json.loads(body)["models"]}[MODEL]
    _s, _h, tags = request(standin, "GET", "/api/tags")
    stored = {m["name"]: m for m in json.loads(tags)["models"]}[MODEL]
    assert loaded["size"] > stored["size"]  # the weights and the KV cache of num_ctx tokens
    assert loaded["size_vram"] == 0  # present, and 0 on a machine without a GPU
    expires = datetime.fromisoformat(loaded["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=4) < expires - datetime.now(UTC) <= timedelta(minutes=5)
    assert loaded["context_length"] == 4096


def test_tags_size_counts_every_layer_and_the_config_blob(standin):
    _s, _h, body = request(standin, "GET", "/api/tags")
    listed = {m["name"]: m for m in json.loads(body)["models"]}[MODEL]
    name, tag = MODEL.split(":")
    manifest = json.loads(
        (standin.models / "manifests/registry.ollama.ai/library" / name / tag).read_bytes())
    assert listed["size"] == manifest["config"]["size"] + sum(
        layer["size"] for layer in manifest["layers"])


def test_show_lists_the_tensors(standin):
    _s, _h, body = request(standin, "POST", "/api/show", {"model": MODEL})
    shown = json.loads(body)
    tensors = shown["tensors"]
    assert tensors and all(set(t) == {"name", "type", "shape"} for t in tensors)
    assert {t["type"] for t in tensors} <= set(TENSOR_TYPES.values())  # names, as ggml's
    parameters = 0
    for tensor in tensors:
        count = 1
        for size in tensor["shape"]:
            count *= size
        parameters += count
    assert parameters == shown["model_info"]["general.parameter_count"]
    assert shown["model_info"]["tokenizer.ggml.tokens"] == []  # long arrays shown empty
    assert "general.name" not in shown["model_info"]


def test_metrics_that_are_zero_are_left_out(standin):
    _s, _h, body = request(standin, "POST", "/api/generate",
                           {"model": MODEL, "prompt": "", "keep_alive": "5m"})
    assert set(json.loads(body)) == {"model", "created_at", "response", "done", "done_reason"}
    _s, _h, body = request(standin, "POST", "/api/generate", {
        "model": MODEL, "prompt": "1, 2,", "raw": True, "options": {"num_predict": 3}})
    chunks = [json.loads(line) for line in body.splitlines()]
    for chunk in chunks[:-1]:
        assert set(chunk) == {"model", "created_at", "response", "done"}
    assert {"total_duration", "load_duration", "eval_count"} <= set(chunks[-1])


def test_status_reports_whether_cloud_features_are_off(tmp_path):
    server = StandIn(tmp_path / "models", OLLAMA_NO_CLOUD="1")
    try:
        _s, _h, body = request(server, "GET", "/api/status")
        assert json.loads(body) == {"cloud": {"disabled": True, "source": "env"}}
    finally:
        server.stop()


def engine_pid(server: StandIn) -> int:
    """The engine process the front started (its only child)."""
    children = []
    for task in (Path("/proc") / str(server.process.pid) / "task").iterdir():
        children += (task / "children").read_text().split()
    [pid] = children
    return int(pid)


def test_a_stream_that_breaks_after_it_began_ends_with_an_error_line(tmp_path):
    server = StandIn(tmp_path / "models")
    try:
        import_lab_model(server.client())
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        connection.request("POST", "/api/generate", body=json.dumps({
            "model": MODEL, "prompt": "Once upon a time", "raw": True,
            "options": {"num_predict": 2000, "stop": []}}).encode())
        response = connection.getresponse()
        assert response.status == 200
        first = json.loads(response.readline())
        assert first["done"] is False
        os.kill(engine_pid(server), signal.SIGKILL)  # the runner dies mid-answer
        lines = [json.loads(line) for line in response.read().splitlines() if line]
        assert "error" in lines[-1] and not any(line.get("done") for line in lines)
    finally:
        server.stop()


def test_each_license_is_a_layer_of_its_own_added_to_those_of_the_base(standin):
    """Ollama's createModel: a string is one licence, a list one layer per entry, added to the
    base model's (`from`); /api/show joins them with a newline."""
    first, second = "Lab Terms A\nfirst licence", "Lab Terms B"
    names = ("lab/one-license:v1", "lab/two-licenses:v1")
    try:
        status, _h, body = request(standin, "POST", "/api/create", {
            "model": names[0], "from": MODEL, "license": first, "stream": False})
        assert status == 200, body
        status, _h, body = request(standin, "POST", "/api/create", {
            "model": names[1], "from": names[0], "license": [second, ""], "stream": False})
        assert status == 200, body
        namespace, tag = names[1].split(":")
        manifest = json.loads((standin.models / "manifests/registry.ollama.ai" / namespace
                               / tag).read_bytes())
        licenses = [standin.models.joinpath("blobs", "sha256-" + layer["digest"][7:]).read_text()
                    for layer in manifest["layers"]
                    if layer["mediaType"] == "application/vnd.ollama.image.license"]
        assert licenses == [first, second, ""]
        _s, _h, body = request(standin, "POST", "/api/show", {"model": names[1]})
        assert json.loads(body)["license"] == "\n".join([first, second, ""])
    finally:
        for name in names:
            request(standin, "DELETE", "/api/delete", {"model": name})


@pytest.mark.parametrize(("value", "message"), [
    (5, "json: cannot unmarshal number into Go value of type []string"),
    ({"a": 1}, "json: cannot unmarshal object into Go value of type []string"),
    (["ok", 1], "json: cannot unmarshal number into Go value of type string"),
])
def test_a_license_that_is_no_string_or_list_of_strings_is_refused(standin, value, message):
    name = "lab/bad-license:v1"
    try:
        _s, _h, body = request(standin, "POST", "/api/create", {
            "model": name, "from": MODEL, "license": value, "stream": False})
        assert message in body.decode(), body
        status, _h, _b = request(standin, "POST", "/api/show", {"model": name})
        assert status == 404
    finally:
        request(standin, "DELETE", "/api/delete", {"model": name})
