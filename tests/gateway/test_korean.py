"""Korean text end to end: no broken character, none split between chunks, counts right.

Our users prompt in Korean. A Hangul syllable is three bytes of UTF-8; a model whose
vocabulary falls back to bytes emits it over several tokens, and an HTTP chunk can end in
the middle of one. Whatever the boundaries, every streamed piece must carry whole
characters (no U+FFFD), and the pieces must add up to the non-streamed answer.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from PIL import Image

from .conftest import INFERENCE_KEY, TINY_GEMMA3N, Gateway
from .test_vision import routed  # noqa: F401  (the gateway with the vision backend)

KOREAN = "안녕하세요! 오늘 날씨가 어때요?"
HANGUL = range(0xAC00, 0xD7A4)


def has_hangul(text: str) -> bool:
    return any(ord(ch) in HANGUL for ch in text)


def raw_stream(gateway: Gateway, path: str, body: dict) -> list[bytes]:
    """The NDJSON lines of a streamed answer, as bytes."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=120)
    try:
        connection.request("POST", path, body=json.dumps(body).encode(), headers={
            "Authorization": f"Bearer {INFERENCE_KEY}", "Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        return [line for line in response.read().split(b"\n") if line]
    finally:
        connection.close()


def test_korean_streams_whole_characters_from_ollama_through_the_gateway(gateway):
    client = gateway.client()
    options = {"num_predict": 40, "temperature": 0}
    # The same cache state for both answers (llama.cpp's sums differ slightly between
    # a prompt evaluated whole and one reused from the cache).
    client.generate(model="gemma3:270m", prompt=KOREAN, options={"num_predict": 1})
    whole = client.generate(model="gemma3:270m", prompt=KOREAN, options=options)
    lines = raw_stream(gateway, "/api/generate",
                       {"model": "gemma3:270m", "prompt": KOREAN, "options": options})
    chunks = [json.loads(line.decode("utf-8", "strict")) for line in lines]
    streamed = "".join(chunk["response"] for chunk in chunks)
    assert streamed == whole.response
    assert has_hangul(streamed) and "\ufffd" not in streamed
    assert all("\ufffd" not in chunk["response"] for chunk in chunks)
    assert chunks[-1]["eval_count"] == whole.eval_count == 40


class DribblingBackend(BaseHTTPRequestHandler):
    """An OpenAI-compatible backend that sends its SSE one byte per write: every
    Hangul syllable arrives split across HTTP chunks."""

    protocol_version = "HTTP/1.1"
    pieces: ClassVar[list[str]] = ["안녕", "하세요", "! 날씨가 ", "맑아요", "."]

    def log_message(self, *_args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = [{"choices": [{"delta": {"content": text}}]} for text in self.pieces]
        events.append({"choices": [{"delta": {}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 270, "completion_tokens": len(self.pieces)}})
        stream = b"".join(b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\n\n"
                          for e in events) + b"data: [DONE]\n\n"
        for byte in stream:
            self.wfile.write(b"1\r\n" + bytes([byte]) + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


def picture() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_korean_split_across_the_vision_backends_chunks_arrives_whole(standin, tmp_path):
    backend = ThreadingHTTPServer(("127.0.0.1", 0), DribblingBackend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    dribbled = Gateway(standin.url, tmp_path, vision_backends=[
        {"model": TINY_GEMMA3N, "url": f"http://127.0.0.1:{backend.server_address[1]}"}])
    try:
        started = time.monotonic()
        lines = raw_stream(dribbled, "/api/chat", {"model": TINY_GEMMA3N, "messages": [
            {"role": "user", "content": KOREAN, "images": [picture()]}]})
        chunks = [json.loads(line.decode("utf-8", "strict")) for line in lines]
        texts = [chunk["message"]["content"] for chunk in chunks]
        assert "".join(texts) == "".join(DribblingBackend.pieces)
        assert texts[:-1] == DribblingBackend.pieces  # one Ollama chunk per backend delta
        assert chunks[-1]["done"] and chunks[-1]["eval_count"] == len(DribblingBackend.pieces)
        assert time.monotonic() - started < 30
    finally:
        dribbled.stop()
        backend.shutdown()


def test_the_tiny_gemma3n_byte_fallback_answer_streams_as_it_answers_whole(routed):  # noqa: F811
    """The tiny Gemma 3n's vocabulary is mostly byte-fallback tokens: whatever it emits,
    the streamed pieces through the gateway add up to its non-streamed answer."""
    client = routed.client()
    options = {"num_predict": 30, "temperature": 0}
    message = {"role": "user", "content": KOREAN, "images": [base64.b64decode(picture())]}
    whole = client.chat(model=TINY_GEMMA3N, messages=[message], options=options)
    chunks = list(client.chat(model=TINY_GEMMA3N, messages=[message], options=options,
                              stream=True))
    streamed = "".join(chunk.message.content for chunk in chunks)
    assert streamed == whole.message.content
    assert streamed.count("\ufffd") == whole.message.content.count("\ufffd")
