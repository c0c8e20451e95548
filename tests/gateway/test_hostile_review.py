"""A second, independent hostile pass over the gateway: each test asserts the safe behaviour.

Every test here failed on the gateway as it stood before this pass: a repeated `options`
that Go merges, a keep_alive that overflows Go's durations, runner options and a smaller
num_ctx that reload the model for everyone, a lone surrogate, a body of millions of values,
a trickled body, a client that stops reading, a null model name after the real one. Most
use `Scripted`, a backend that answers every request 200 with `Connection: close` and keeps
what it received, so what the gateway forwarded can be read; those that need Ollama's
behaviour use the stand-in (Go + Gin, the real llama.cpp engine behind it).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request

import pytest

from .conftest import INFERENCE_KEY, Gateway
from .scripted import OK, Scripted
from .test_gateway import http

MODEL = "gemma3:270m"
AUTH = {"Authorization": f"Bearer {INFERENCE_KEY}"}
def post_raw(gateway: Gateway, path: str, data: bytes, timeout: float = 60):
    request = urllib.request.Request(gateway.url + path, data=data, method="POST",
                                     headers={**AUTH, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def recorded(tmp_path):
    recorder = Scripted()
    with recorder as url:
        front = Gateway(url, tmp_path, poll_seconds=3600,
                        inference_policy={"min_keep_alive": "1h", "num_ctx": 4096})
        try:
            yield front, recorder
        finally:
            front.stop()


# --- 1. Go merges a repeated map-valued key: `options` twice smuggles num_ctx ------------------
#
# encoding/json decodes the second "options" object INTO the map the first one made
# (it "reuses the existing map, keeping existing entries"), so Ollama gets
# {num_ctx: 131072, temperature: 0}. The gateway checks only the last value ({}) and
# forwards /api/embed and /api/embeddings bodies unchanged.


@pytest.mark.parametrize("path", ["/api/embed", "/api/embeddings"])
def test_a_repeated_options_key_cannot_smuggle_num_ctx(recorded, path):
    front, recorder = recorded
    body = (b'{"model": "' + MODEL.encode() + b'", "input": "x", "prompt": "x", '
            b'"options": {"num_ctx": 131072}, "options": {"temperature": 0}}')
    status, answer = post_raw(front, path, body)
    assert not any(b"131072" in seen for seen in recorder.bodies(path)), \
        "Go merges both objects: the backend got num_ctx 131072 from an inference key"
    assert status == 400, answer


# --- 2. keep_alive beyond Go's time.Duration range is a NEGATIVE duration to Ollama -----------
#
# Duration.UnmarshalJSON does time.Duration(t * float64(time.Second)); for t >= ~9.22e9
# the float->int64 conversion overflows, on amd64 to math.MinInt64: a negative session
# duration, which Ollama's scheduler unloads as soon as the request ends
# ("runner with zero duration has gone idle, expiring to unload"). With a finite
# min_keep_alive the gateway lets it through as "a very long keep_alive".


@pytest.mark.parametrize("path", ["/api/generate", "/api/embed"])
def test_a_keep_alive_that_overflows_go_duration_is_refused(recorded, path):
    front, recorder = recorded
    body = {"model": MODEL, "prompt": "", "input": "x", "keep_alive": 1e10}
    status, answer = post_raw(front, path, json.dumps(body).encode())
    assert not recorder.bodies(path), "forwarded: Ollama reads it as -292 years (unload)"
    assert status == 400, answer


def test_a_keep_alive_that_overflows_go_duration_does_not_unload_the_model(standin, tmp_path):
    """On the stand-in (Ollama's Duration type, Go on amd64): the model is unloaded."""
    front = Gateway(standin.url, tmp_path,
                    inference_policy={"min_keep_alive": "1h", "num_ctx": 4096})
    try:
        assert http(front, "POST", "/api/generate",
                    {"model": MODEL, "prompt": "", "keep_alive": -1}, AUTH)[0] == 200
        assert loaded_context(standin) is not None
        status, _h, _b = http(front, "POST", "/api/generate",
                              {"model": MODEL, "prompt": "", "keep_alive": 1e10}, AUTH)
        time.sleep(1.5)
        still_loaded = loaded_context(standin) is not None
    finally:
        front.stop()
    assert still_loaded, f"status {status}: keep_alive 1e10 from an inference key unloaded it"


# --- 3. other ways to reload (evict) the shared model from an inference key --------------------
#
# Ollama reloads a loaded model whenever a request's runner options differ from the
# loaded ones (server/sched.go needsReload compares NumCtx, NumBatch, NumGPU, MainGPU,
# UseMMap, NumThread). The policy only caps num_ctx from above.


@pytest.mark.parametrize("options", [
    {"num_ctx": 512}, {"num_ctx": 0}, {"num_gpu": 0}, {"num_batch": 1}, {"num_thread": 1},
    {"main_gpu": 1}, {"use_mmap": False},
])
def test_an_inference_key_cannot_change_the_runner_options(recorded, options):
    front, _recorder = recorded
    status, answer = post_raw(front, "/api/generate", json.dumps(
        {"model": MODEL, "prompt": "hi", "options": options}).encode())
    assert status == 400, (options, status, answer)


def loaded_context(standin) -> int | None:
    with urllib.request.urlopen(standin.url + "/api/ps", timeout=30) as response:
        models = json.loads(response.read())["models"]
    return next((m["context_length"] for m in models if m["name"] == MODEL), None)


def test_a_smaller_num_ctx_reloads_the_model_for_everyone(standin, tmp_path):
    """On the stand-in: an inference key's num_ctx below the cap reloads the model."""
    front = Gateway(standin.url, tmp_path,
                    inference_policy={"min_keep_alive": "-1", "num_ctx": 4096})
    try:
        assert http(front, "POST", "/api/generate", {"model": MODEL, "prompt": ""}, AUTH)[0] \
            == 200
        before = loaded_context(standin)
        status, _h, _b = http(front, "POST", "/api/generate",
                              {"model": MODEL, "prompt": "", "options": {"num_ctx": 256}},
                              AUTH)
        after = loaded_context(standin)
    finally:
        http(front, "POST", "/api/generate", {"model": MODEL, "prompt": ""}, AUTH)  # restore
        front.stop()
    assert after == before, f"status {status}: the model was reloaded, num_ctx {before} -> {after}"


# --- 4. a lone surrogate escape is a 500 (Go reads it as U+FFFD) --------------------------------


def test_a_lone_surrogate_escape_is_not_a_server_error(recorded):
    front, _recorder = recorded
    status, answer = post_raw(front, "/api/generate",
                              b'{"model": "' + MODEL.encode() + b'", "prompt": "\\ud800"}')
    assert status != 500, answer
    status, answer = post_raw(front, "/api/embed",
                              b'{"model": "m", "input": "x", "keep_alive": 1' + b"0" * 400 + b"}")
    assert status != 500, answer


# --- 5. one inference key stalls every client: the body is parsed on the event loop -----------


def test_a_large_body_does_not_stall_other_clients(recorded):
    front, _recorder = recorded
    big = (b'{"model": "' + MODEL.encode() + b'", "prompt": "x", "context": [' +
           b"0," * (30 * 1024 * 1024) + b"0]}")  # 60 MiB, under max_body_bytes (64 MiB)
    sender = threading.Thread(target=post_raw, args=(front, "/api/generate", big, 120))
    sender.start()
    worst = 0.0
    try:
        while sender.is_alive():
            started = time.monotonic()
            with urllib.request.urlopen(front.url + "/healthz", timeout=60) as response:
                response.read()
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.05)
    finally:
        sender.join()
    assert worst < 1.0, f"/healthz waited {worst:.1f} s while one request's body was parsed"


# --- 6. no deadline on a request body: a key holds connections forever -------------------------


def test_a_trickled_body_is_cut_off(tmp_path):
    with Scripted() as url:
        front = Gateway(url, tmp_path, poll_seconds=3600,
                        limits={"header_timeout": 1.0, "body_timeout": 3.0})
        try:
            with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
                sock.sendall(b"POST /api/show HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer " +
                             INFERENCE_KEY.encode() + b"\r\nContent-Length: 100000\r\n\r\n")
                cut_off = False
                for _ in range(16):  # 8 s at one byte per 0.5 s
                    try:
                        sock.sendall(b" ")
                    except OSError:
                        cut_off = True
                        break
                    time.sleep(0.5)
                    sock.setblocking(False)
                    try:
                        cut_off = cut_off or sock.recv(100) is not None
                    except BlockingIOError:
                        pass
                    except OSError:
                        cut_off = True
                    sock.setblocking(True)
                    if cut_off:
                        break
        finally:
            front.stop()
    assert cut_off, "a body trickled at 2 bytes/s kept its connection (and key slot) for 8 s"


# --- 7. a client that stops reading holds the backend (and Ollama's slot) forever --------------


class Firehose(Scripted):
    """A backend that streams NDJSON as fast as it is read, and notes when it is cut off."""

    def __init__(self) -> None:
        super().__init__()
        self.cut_off = threading.Event()

    async def _handle(self, reader, writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"POST /api/generate "):  # the gateway's own polls
                writer.write(OK)
                return
            line = json.dumps({"model": MODEL, "response": "x" * 1000, "done": False}).encode()
            chunk = b"%x\r\n%s\r\n" % (len(line + b"\n") * 64, (line + b"\n") * 64)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for _ in range(20_000):  # ~1.3 GB if read
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.cut_off.set()
        finally:
            writer.close()


def test_a_client_that_stops_reading_is_dropped(tmp_path):
    firehose = Firehose()
    with firehose as url:
        front = Gateway(url, tmp_path, poll_seconds=3600,
                        limits={"stream_idle_timeout": 1.0, "backend_timeout": 2.0})
        try:
            with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                body = json.dumps({"model": MODEL, "prompt": "x"}).encode()
                sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer " +
                             INFERENCE_KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                assert sock.recv(1024).startswith(b"HTTP/1.1 200")
                dropped = firehose.cut_off.wait(10)  # the client reads nothing more
        finally:
            front.stop()
    assert dropped, "10 s after the client stopped reading, the backend was still held"


# --- 8. "model": null after the real name: Go keeps the name, the gateway routes on "" ---------


def test_a_null_model_after_the_name_does_not_dodge_the_vision_routing(tmp_path):
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    ollama, vision = Scripted(), Scripted()
    with ollama as ollama_url, vision as vision_url:
        front = Gateway(ollama_url, tmp_path, poll_seconds=3600,
                        vision_backends=[{"model": "gemma3n:tiny", "url": vision_url}])
        try:
            body = (b'{"model": "gemma3n:tiny", "model": null, "messages": [{"role": "user", '
                    b'"content": [{"type": "image_url", "image_url": {"url": "' +
                    url.encode() + b'"}}]}]}')
            post_raw(front, "/v1/chat/completions", body)
        finally:
            front.stop()
    # Go decodes "model": null into a string as a no-op: Ollama would serve gemma3n:tiny
    # (text-only there) the image the vision backend was configured to take.
    assert not ollama.bodies("/v1/chat/completions"), "the image went to Ollama, not vision"
