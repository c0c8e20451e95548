"""The one published port against clients that misbehave on purpose.

The backend is the Ollama stand-in, whose HTTP layer is Go's net/http + Gin like
Ollama's own: it decodes paths, answers Expect: 100-continue, matches JSON keys
case-insensitively and refuses origins it does not know — so a request the gateway
lets through wrongly does to it what it would do to Ollama. What reached the backend
is read from its own access log. A few cases need a backend that misbehaves; those
use a scripted one (`Scripted`), named as such.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import socket
import time
from pathlib import Path

import pytest
from PIL import Image

from .conftest import ADMIN_KEY, INFERENCE_KEY, METRICS_KEY, TINY_GEMMA3N, Gateway
from .scripted import Scripted
from .test_gateway import http, metric

MODEL = "gemma3:270m"
AUTH = {"Authorization": f"Bearer {INFERENCE_KEY}"}


def raw_request(gateway: Gateway, head: bytes, body: bytes = b"", timeout: float = 30) -> bytes:
    """Send bytes as written; return everything the gateway answers before it closes or
    stops talking for a second."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout) as sock:
        sock.sendall(head + body)
        sock.settimeout(1)
        received = b""
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            received += data
        return received


def backend_saw(standin, fragment: str) -> bool:
    """Whether the stand-in's access log (Gin's) names a request path holding `fragment`."""
    return any(fragment in line for line in Path(standin.log.name).read_text().splitlines()
               if "[GIN]" in line)


def picture(size=(32, 24)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 90, 200)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# --- 1. one canonical path: no scope bypass by encoding ---------------------------------------


@pytest.mark.parametrize("path", [
    "/api/%2570ull", "/%2561pi/pull", "/api/%2564elete", "/api/blobs%2Fsha256:" + "0" * 64,
    "/api/pull%00", "/api/p%75ll/../pull", "/api/%E2%82%AC", "/api/pu\x01ll",
])
def test_an_encoded_path_never_reaches_an_admin_handler(gateway, standin, path):
    status, _h, body = http(gateway, "POST", path.replace("\x01", "%01"), {"model": "x"}, AUTH)
    assert status in (400, 404), (path, status, body)
    assert not backend_saw(standin, "/api/pull") and not backend_saw(standin, "/api/delete")


@pytest.mark.parametrize("path", ["/api/%70ull", "/api/pu%6cl"])
def test_a_path_decoded_once_is_checked_as_decoded(gateway, standin, path):
    status, _h, body = http(gateway, "POST", path, {"model": "x"}, AUTH)
    assert status == 403
    assert "lacks the admin scope that /api/pull needs" in json.loads(body)["error"]


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/signout"), ("POST", "/api/me"), ("DELETE", "/api/user/keys/abc"),
    ("POST", "/api/experimental/web_search"), ("GET", "/api/status"), ("POST", "/v1/messages"),
])
def test_endpoints_outside_the_allow_list_are_404_without_a_backend(gateway, standin, method,
                                                                    path):
    status, _h, body = http(gateway, method, path, {}, AUTH)
    assert status == 404 and "not an endpoint of this gateway" in json.loads(body)["error"]
    assert not backend_saw(standin, path)


def test_the_query_string_never_reaches_the_backend(gateway, standin):
    status, _h, _b = http(gateway, "GET", "/api/tags?debug=1&x=%2570ull", headers=AUTH)
    assert status == 200 and not backend_saw(standin, "debug=1")


# --- 2. Expect: 100-continue answers only its own client -------------------------------------


def show(gateway: Gateway, key: str, nonce: str, expect: bool = False) -> bytes:
    body = json.dumps({"model": MODEL, "system": nonce}).encode()
    head = (b"POST /api/show HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n" +
            (b"Expect: 100-continue\r\n" if expect else b"") +
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(head)
        if expect:
            assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        answer = b""
        while b'"modified_at"' not in answer:
            answer += sock.recv(65536)
        return answer


def test_expect_100_continue_gets_its_own_answer_and_the_next_client_its_own(gateway):
    for round_ in range(5):
        first = show(gateway, INFERENCE_KEY, f"nonce-a-{round_}", expect=True)
        second = show(gateway, ADMIN_KEY, f"nonce-b-{round_}")
        assert b"HTTP/1.1 200" in first and f"nonce-a-{round_}".encode() in first
        assert f"nonce-b-{round_}".encode() in second
        assert b"nonce-a" not in second


# --- 3 and 4. limits that hold for every client, with or without a key ------------------------


@pytest.fixture(scope="module")
def strict(standin, tmp_path_factory):
    server = Gateway(standin.url, tmp_path_factory.mktemp("strict"), max_body_bytes=1_000_000,
                     limits={"header_timeout": 1.0, "max_header_bytes": 16384},
                     inference_policy={"min_keep_alive": "-1", "num_ctx": 4096})
    yield server
    server.stop()


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(strict):
    with socket.create_connection(("127.0.0.1", strict.port), timeout=30) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer " +
                     INFERENCE_KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        sent, answer = 0, b""
        try:
            while sent < 300 * 1024 * 1024 and not answer:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    answer = sock.recv(4096)
                sock.setblocking(True)
        except (BrokenPipeError, ConnectionResetError):
            sock.setblocking(True)
            answer = answer or sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    assert sent < 32 * 1024 * 1024  # refused long before 300 MiB (socket buffers hold some)


def test_oversized_headers_are_refused_without_a_key(strict):
    answer = raw_request(strict, b"GET /api/tags HTTP/1.1\r\nHost: g\r\n" +
                         b"X-Filler: " + b"a" * 100_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    many = b"".join(b"X-%d: 1\r\n" % number for number in range(200))
    assert raw_request(strict, b"GET /api/tags HTTP/1.1\r\nHost: g\r\n" + many +
                       b"\r\n").startswith(b"HTTP/1.1 431")


def test_half_sent_requests_are_cut_off_after_the_header_deadline(strict):
    sockets = []
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", strict.port), timeout=10)
        sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: g\r\nX-Slow: ")
        sockets.append(sock)
    time.sleep(2.5)  # the deadline is 1 s here (10 s by default)
    closed = 0
    for sock in sockets:
        sock.settimeout(1)
        try:
            data = sock.recv(4096)
            closed += data == b"" or data.startswith(b"HTTP/1.1 408")
        except (TimeoutError, ConnectionResetError):
            pass
        sock.close()
    assert closed == 100


# --- 5. a backend that hangs ----------------------------------------------------------------


async def hang(writer) -> None:
    await asyncio.sleep(60)


def test_a_backend_that_never_answers_is_a_504_and_frees_the_key(tmp_path):
    with Scripted(hang) as url:
        front = Gateway(url, tmp_path, key_limits={"concurrency": 1},
                        limits={"backend_timeout": 1.0, "generation_timeout": 1.5})
        try:
            started = time.monotonic()
            status, _h, body = http(front, "GET", "/api/tags", headers=AUTH)
            assert status == 504 and "too slow" in json.loads(body)["error"]
            assert time.monotonic() - started < 5
            status, _h, _b = http(front, "POST", "/api/show", {"model": MODEL}, AUTH)
            assert status == 504  # the key's one slot was freed by the first 504
        finally:
            front.stop()


# --- 6. /metrics: a key, and labels only from known values ------------------------------------


def test_metrics_need_the_metrics_scope(gateway):
    assert http(gateway, "GET", "/metrics")[0] == 401
    assert http(gateway, "GET", "/metrics", headers=AUTH)[0] == 403
    status, _h, body = http(gateway, "GET", "/metrics",
                            headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert status == 200 and b"gateway_request_duration_seconds" in body


def test_client_chosen_names_and_paths_cannot_grow_the_metrics(gateway):
    def series() -> set[str]:
        text = http(gateway, "GET", "/metrics",
                    headers={"Authorization": f"Bearer {METRICS_KEY}"})[2].decode()
        return {line.rsplit(" ", 1)[0] for line in text.splitlines()
                if line and not line.startswith("#")}

    def hostile(number: int, model: str) -> None:
        http(gateway, "POST", "/api/show", {"model": model}, AUTH)
        http(gateway, "GET", f"/api/random-{number}", headers=AUTH)

    # The first such requests make their series ("other" models, 400/404 statuses).
    hostile(0, "warm-up-unknown")
    hostile(1, "m" * 2_000_000)
    before = series()
    hostile(2, "n" * 2_000_000)
    for number in range(100):
        hostile(number, f"nope-{number}:{os.urandom(4).hex()}")
    # The poller's gauges follow the backend's own loaded models, not clients' names.
    added = {name for name in series() - before if not name.startswith("gateway_model_")}
    assert not added, sorted(added)[:5]  # no series per client-chosen name or path
    assert metric(gateway, "gateway_request_duration_seconds_count", model="other") >= 100
    assert all(len(name) < 300 for name in before)


# --- 7. image checks that Go's reading of the body cannot dodge --------------------------------


@pytest.mark.parametrize("body", [
    {"model": MODEL, "prompt": "x", "IMAGES": ["bm90IGFuIGltYWdl"]},
    {"model": MODEL, "prompt": "x", "images": None, "Images": ["bm90IGFuIGltYWdl"]},
    # LONG S folds to s for Go (DOTLESS I does not fold to i, and is ignored by both).
    {"model": MODEL, "prompt": "x", "\u0131mages": [], "image\u017f": ["bm90IGFuIGltYWdl"]},
])
def test_images_under_any_key_go_reads_as_images_are_checked(gateway, body):
    status, _h, answer = http(gateway, "POST", "/api/generate", body, AUTH)
    assert status == 400 and "image 1 is not a readable image" in json.loads(answer)["error"]


def test_invalid_utf8_does_not_skip_the_checks(gateway):
    data = (b'{"model": "' + MODEL.encode() + b'", "prompt": "\xff", '
            b'"images": ["bm90IGFuIGltYWdl"]}')
    answer = raw_request(gateway, b"POST /api/generate HTTP/1.1\r\nHost: g\r\nAuthorization: "
                         b"Bearer " + INFERENCE_KEY.encode() + b"\r\nContent-Length: " +
                         str(len(data)).encode() + b"\r\n\r\n", data)
    assert answer.startswith(b"HTTP/1.1 400") and b"not a readable image" in answer


BAD_BODIES = {
    "cut short": b'{"model": "x", "prompt": ',
    "not an object": b"[1, 2]",
    "NaN": b'{"model": NaN}',
    "nested arrays": b"[" * 10000 + b"]" * 10000,
    "nested objects": b'{"model": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_a_body_the_gateway_cannot_parse_is_a_400_never_forwarded(gateway, name):
    status, _h, answer = http(gateway, "POST", "/api/chat", headers=AUTH, data=BAD_BODIES[name])
    assert status == 400, answer[:200]
    assert json.loads(answer)["error"]


def test_openai_image_parts_are_checked_too(gateway):
    for url in ("data:image/png;base64,bm90IGFuIGltYWdl", "https://example.com/cat.png"):
        status, _h, answer = http(gateway, "POST", "/v1/chat/completions", {
            "model": MODEL, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is it?"},
                {"type": "image_url", "image_url": {"url": url}}]}]}, AUTH)
        assert status == 400, answer


# --- 8. CORS: the gateway's own, never the backend's -----------------------------------------


def test_a_browser_post_crosses_with_one_allow_origin_and_no_origin_to_ollama(gateway, standin):
    headers = {**AUTH, "Origin": "https://chat.example.internal",
               "Referer": "https://chat.example.internal/page", "Content-Type": "application/json",
               "User-Agent": "ollama-js/0.5.16 (x64 linux Browser/JS)"}
    status, answer_headers, body = http(gateway, "POST", "/api/show", {"model": MODEL}, headers)
    # The stand-in (like Ollama) would answer 403 to this origin: it never saw it.
    assert status == 200, body
    allow = [value for name, value in answer_headers.items()
             if name.lower() == "access-control-allow-origin"]
    assert allow == ["https://chat.example.internal"]
    status, answer_headers, _b = http(gateway, "GET", "/api/tags", headers={
        **AUTH, "Origin": "https://chat.example.internal"})
    assert "retry-after" in answer_headers.get("access-control-expose-headers", "").lower()


# --- 9. errors are 4xx with a reason, backend faults 502/504 ------------------------------------


def bomb() -> str:
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, "PNG")  # tiny file, 900 M pixels
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(("body", "fragment"), [
    ({"model": MODEL, "prompt": "x", "images": 5}, "images must be a JSON array"),
    ({"model": MODEL, "prompt": "x", "images": [5]}, "array of base64 strings"),
    ({"model": MODEL, "messages": [{"role": "user", "content": ["a"]}]}, "content must be"),
    ({"model": MODEL, "prompt": "x", "images": ["BOMB"]}, "image 1"),
])
def test_bad_bodies_are_400_with_a_reason(gateway, body, fragment):
    path = "/api/chat" if "messages" in body else "/api/generate"
    if body.get("images") == ["BOMB"]:
        body = {**body, "images": [bomb()]}
    status, _h, answer = http(gateway, "POST", path, body, AUTH)
    assert status == 400 and fragment in json.loads(answer)["error"], answer


@pytest.mark.parametrize(("reply", "status"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", 502),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc", 502),
    (b"garbage\r\n\r\n", 502),
])
def test_a_backend_that_breaks_http_is_a_502(tmp_path, reply, status):
    with Scripted(reply) as url:
        front = Gateway(url, tmp_path)
        try:
            got, _h, body = http(front, "GET", "/api/tags", headers=AUTH)
            assert got == status and "broke HTTP framing" in json.loads(body)["error"]
        finally:
            front.stop()


async def bad_chunk(writer) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    line = json.dumps({"model": MODEL, "response": "a", "done": False}).encode() + b"\n"
    writer.write(b"%x\r\n%s\r\nzz\r\n" % (len(line), line))
    await writer.drain()
    await asyncio.sleep(1)


def test_a_bad_chunk_mid_stream_ends_with_an_error_line(tmp_path):
    with Scripted(bad_chunk) as url:
        front = Gateway(url, tmp_path)
        try:
            status, _h, body = http(front, "POST", "/api/generate",
                                    {"model": MODEL, "prompt": "x"}, AUTH)
            lines = [json.loads(line) for line in body.splitlines()]
            assert status == 200 and lines[0]["response"] == "a"
            assert "broke HTTP framing" in lines[-1]["error"]
        finally:
            front.stop()


async def vision_fails(writer) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    for event in ({"choices": [{"delta": {"content": "half an "}}]},
                  {"error": {"message": "failed to decode the image batch", "code": 500}}):
        data = b"data: " + json.dumps(event).encode() + b"\n\n"
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def test_a_vision_backends_error_mid_stream_is_an_error_line_not_done(standin, tmp_path):
    with Scripted(vision_fails) as url:
        front = Gateway(standin.url, tmp_path, vision_backends=[{"model": TINY_GEMMA3N,
                                                                  "url": url}])
        try:
            status, _h, body = http(front, "POST", "/api/chat", {
                "model": TINY_GEMMA3N, "messages": [
                    {"role": "user", "content": "x", "images": [picture()]}]}, AUTH)
            lines = [json.loads(line) for line in body.splitlines()]
            assert status == 200 and lines[0]["message"]["content"] == "half an "
            assert "failed to decode the image batch" in lines[-1]["error"]
            assert not any(line.get("done") for line in lines)
        finally:
            front.stop()


# --- 10. what crosses, and what an inference key may ask ----------------------------------------


def test_only_the_allowed_answer_headers_reach_the_client(tmp_path):
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
             b"Access-Control-Allow-Origin: *\r\nSet-Cookie: s=1\r\n\r\n{}")
    with Scripted(reply) as url:
        front = Gateway(url, tmp_path)
        try:
            status, answer_headers, _b = http(front, "GET", "/api/tags", headers={
                **AUTH, "Connection": "X-Secret", "X-Secret": "1", "Proxy-Connection": "x",
                "Trailer": "X-T", "Origin": "http://x", "Referer": "http://x/",
                "Cookie": "c=1", "Expect": "100-continue", "Accept": "application/json"})
            assert status == 200
            names = {name.lower() for name, _v in answer_headers.items()}
            assert "access-control-allow-origin" not in names and "set-cookie" not in names
        finally:
            front.stop()


def test_forwarded_headers_are_an_allow_list(tmp_path):
    backend = Scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    with backend as url:
        front = Gateway(url, tmp_path)
        try:
            http(front, "GET", "/api/tags", headers={
                **AUTH, "Connection": "X-Secret", "X-Secret": "1", "Proxy-Connection": "x",
                "Trailer": "X-T", "Origin": "http://x", "Referer": "http://x/",
                "Cookie": "c=1", "Accept": "application/json"})
        finally:
            front.stop()
    relayed = [request for request in backend.requests if b"ccept: application/json" in request]
    assert len(relayed) == 1  # the client's; the others are the gateway's own polls
    for received in backend.requests:
        names = {line.split(b":")[0].lower() for line in received.split(b"\r\n")[1:]
                 if b":" in line}
        assert names <= {b"host", b"accept", b"user-agent", b"content-type", b"content-length"}


def test_an_inference_key_cannot_evict_or_resize_the_model(strict):
    for body, fragment in (({"keep_alive": 0}, "may not set keep_alive below"),
                           ({"keep_alive": "5m"}, "may not set keep_alive below"),
                           ({"options": {"num_ctx": 32768}}, "may not set num_ctx (the site")):
        status, _h, answer = http(strict, "POST", "/api/generate",
                                  {"model": MODEL, "prompt": "", **body}, AUTH)
        assert status == 400 and fragment in json.loads(answer)["error"]
    status, _h, answer = http(strict, "POST", "/api/embed",
                              {"model": MODEL, "input": "x", "KEEP_ALIVE": 0}, AUTH)
    assert status == 400 and "may not set keep_alive below" in json.loads(answer)["error"]
    status, _h, _b = http(strict, "POST", "/api/generate",
                          {"model": MODEL, "prompt": "", "keep_alive": -1}, AUTH)
    assert status == 200
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    status, _h, _b = http(strict, "POST", "/api/generate",
                          {"model": MODEL, "prompt": "", "keep_alive": "10m"}, admin)
    assert status == 200


def test_a_key_with_no_scopes_is_a_configuration_error():
    from gemma_gateway.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="scopes must list at least one"):
        Settings.from_dict({"keys": [{"name": "k", "sha256": "0" * 64, "scopes": []}]})


def test_connections_beyond_the_limit_are_answered_503(standin, tmp_path):
    capped = Gateway(standin.url, tmp_path, limits={"max_connections": 10})
    held = []
    try:
        for _ in range(12):  # idle keep-alive connections count too
            sock = socket.create_connection(("127.0.0.1", capped.port), timeout=10)
            held.append(sock)
        time.sleep(0.3)
        answer = raw_request(capped, b"GET /api/tags HTTP/1.1\r\nHost: g\r\nAuthorization: "
                             b"Bearer " + INFERENCE_KEY.encode() + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503")
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert http(capped, "GET", "/api/tags", headers=AUTH)[0] == 200
    finally:
        for sock in held:
            sock.close()
        capped.stop()
