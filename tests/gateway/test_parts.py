"""The gateway's pure parts: the canonical path, Go's reading of a body, the policy's
durations. Each expectation is what Go (Ollama's server) does with the same input."""

from __future__ import annotations

import json
import math

import pytest

from gemma_gateway import gojson, policy, routes


@pytest.mark.parametrize(("raw", "canonical"), [
    (b"/api/tags", "/api/tags"),
    (b"/api/%74ags", "/api/tags"),            # Go decodes this once too
    (b"/api/show", "/api/show"),
    (b"/v1/models/gemma3n:e4b", "/v1/models/gemma3n:e4b"),
])
def test_a_path_is_decoded_once(raw, canonical):
    assert routes.canonical_path(raw) == canonical


@pytest.mark.parametrize("raw", [
    b"/api/%2570ull", b"/api%2Fpull", b"/api%2fpull", b"/api/%5Cpull", b"/api/pull%00",
    b"/api/pull x", b"/api/\x01pull", b"/api/%E2%82%AC", "/api/€".encode(), b"/api/%G1",
    b"/api/pu%",
])
def test_a_path_that_could_mean_something_else_is_refused(raw):
    with pytest.raises(routes.PathRefused):
        routes.canonical_path(raw)


def test_routes_are_an_allow_list_with_scopes():
    assert routes.match("POST", "/api/pull").scope == routes.ADMIN
    assert routes.match("POST", "/api/generate").kind == routes.GENERATE
    assert routes.match("HEAD", "/api/blobs/sha256:" + "a" * 64).kind == routes.UPLOAD
    assert routes.match("GET", "/v1/models/library/gemma3:270m").label == "/v1/models/:model"
    for method, path in (("POST", "/api/signout"), ("GET", "/api/tags/"), ("GET", "/api//tags"),
                         ("POST", "/api/blobs/sha256:" + "a" * 63), ("GET", "/v1/models/../x")):
        with pytest.raises(routes.NotServed) as refused:
            routes.match(method, path)
        assert not refused.value.allowed
    with pytest.raises(routes.NotServed) as wrong_method:
        routes.match("DELETE", "/api/tags")
    assert wrong_method.value.allowed == {"GET", "HEAD"}


def test_keys_fold_as_go_folds_field_names():
    assert gojson.go_fold("images") == gojson.go_fold("IMAGES") == gojson.go_fold("ImAgEs")
    assert gojson.go_fold("\u212aeep_alive") == gojson.go_fold("keep_alive")  # KELVIN SIGN
    assert gojson.go_fold("image\u017f") == gojson.go_fold("images")          # LONG S
    assert gojson.go_fold("\u0131mages") != gojson.go_fold("images")          # DOTLESS I


def test_the_last_key_go_matches_is_the_value():
    body = gojson.parse_object(b'{"model": "a", "MODEL": "b", "Model": "c", "other": 1}')
    assert body.field("model") == "c"
    assert body.fields("model") == ["a", "b", "c"]


def test_a_body_is_read_as_go_reads_it():
    assert gojson.parse(b'{"prompt": "a\xffb"}')["prompt"] == "a\ufffdb"   # replaced
    assert gojson.parse(b'  {"a": 1} trailing')["a"] == 1                   # first value
    for bad, fragment in ((b"", "missing request body"), (b'{"a": NaN}', "invalid character"),
                          (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
                          (b'{"a": ', "invalid JSON")):
        with pytest.raises(gojson.BodyError, match=fragment):
            gojson.parse(bad)
    assert gojson.parse(b"[" * 64 + b"]" * 64) is not None
    assert gojson.parse(b'{"a": "[[[[[["}') == {"a": "[[[[[["}  # brackets in strings


def test_generate_and_chat_are_re_encoded_with_gos_names_and_values():
    body = gojson.parse_object(json.dumps({
        "MODEL": "m", "Prompt": "p", "images": None, "IMAGES": ["aGk="], "unknown": 1,
        "options": {"NUM_CTX": 9, "num_ctx": 8}}).encode())
    assert gojson.canonical_generate(body) == {
        "model": "m", "prompt": "p", "images": ["aGk="], "options": {"NUM_CTX": 9, "num_ctx": 8}}
    chat = gojson.parse_object(json.dumps({"model": "m", "messages": [
        {"Role": "USER", "content": "hi", "IMAGES": ["aGk="]}]}).encode())
    assert gojson.canonical_chat(chat)["messages"] == [
        {"role": "user", "content": "hi", "images": ["aGk="]}]
    for wrong, fragment in (({"images": 5}, "images must be a JSON array"),
                            ({"top_logprobs": 1.5}, "must be an integer"),
                            ({"stream": "yes"}, "stream must be a JSON boolean")):
        with pytest.raises(gojson.BodyError, match=fragment):
            gojson.canonical_generate(gojson.parse_object(json.dumps(wrong).encode()))


def test_openai_image_urls_are_collected_under_every_spelling():
    body = gojson.parse_object(json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:a"}},
        {"type": "image_url", "IMAGE_URL": "data:b", "image_url": {"URL": "data:c"}},
        {"type": "text", "text": "x"}]}]}).encode())
    assert sorted(gojson.openai_images(body)) == ["data:a", "data:b", "data:c"]


@pytest.mark.parametrize(("text", "seconds"), [
    ("5m", 300.0), ("1h30m", 5400.0), ("0", 0.0), ("-1m", -60.0), ("250ms", 0.25),
    ("1.5s", 1.5), ("2h45m30.5s", 9930.5), ("3\u00b5s", 3e-6),
])
def test_go_durations_parse_as_time_parseduration(text, seconds):
    assert policy.go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "message"), [
    ("-1", 'time: missing unit in duration "-1"'), ("90", 'time: missing unit in duration "90"'),
    ("soon", 'time: invalid duration "soon"'), ("", 'time: invalid duration ""'),
    ("5 m", 'time: unknown unit " m" in duration "5 m"'),
])
def test_go_durations_are_refused_as_go_refuses_them(text, message):
    with pytest.raises(ValueError) as refused:
        policy.go_duration(text)
    assert str(refused.value) == message


def test_the_policy_reads_keep_alive_as_ollama_does():
    assert policy.keep_alive_seconds(-1) == math.inf
    assert policy.keep_alive_seconds("-5m") == math.inf
    assert policy.keep_alive_seconds(90) == 90.0
    site = policy.InferencePolicy.from_dict({"min_keep_alive": "-1", "num_ctx": 8192})
    site.check("k", {"keep_alive": -1, "options": {"num_ctx": 8192, "temperature": 0}})
    with pytest.raises(policy.PolicyError, match="below the site's for good"):
        site.check("k", {"keep_alive": "24h"})
    for options in ({"num_ctx": 16384}, {"num_ctx": 256}, {"num_gpu": 0}, {"use_mmap": False}):
        with pytest.raises(policy.PolicyError, match="reloads it for everyone"):
            site.check("k", {"options": options})
    with pytest.raises(policy.PolicyError, match="may not set shift"):
        site.check("k", {"shift": False})
    for overflowing in (1e10, -1e10, float("inf"), 10**400, "3000000h"):
        with pytest.raises(policy.PolicyError, match=r"out of range|invalid"):
            site.check("k", {"keep_alive": overflowing})
    lenient = policy.InferencePolicy.from_dict({"min_keep_alive": "10m"})
    lenient.check("k", {"keep_alive": "1h"})


def test_a_null_leaves_a_string_field_and_repeated_maps_add_up_as_in_go():
    body = gojson.parse_object(b'{"model": "m", "model": null, "options": {"num_ctx": 9}, '
                               b'"OPTIONS": {"temperature": 0}, "keep_alive": "5m", '
                               b'"keep_alive": null}')
    assert body.scalar("model") == "m"
    assert body.merged("options") == {"num_ctx": 9, "temperature": 0}
    assert gojson.canonical("/api/embed", body) == {
        "model": "m", "options": {"num_ctx": 9, "temperature": 0}}
    assert gojson.encode({"p": "\ud800"}) == b'{"p":"\\ud800"}'
