"""The modules' HTTP client (plugins/module_utils/gemma_airgap_http.py) against a local server.

What ollama_info and ollama_probe rely on: JSON and NDJSON, Ollama's error text, no
proxy from the environment (the closed network has none that reaches Ollama), and
https verified against ca_path without a host name check (probes use the loopback).
"""

import json
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_http import (
    ApiError,
    OllamaClient,
)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="application/json"):
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/api/version":
            self.reply(200, json.dumps({"version": "0.9.3",
                                        "auth": self.headers.get("Authorization")}))
        elif self.path == "/plain-error":
            self.reply(502, "bad gateway\n", "text/plain")
        else:
            self.reply(404, json.dumps({"error": "model 'x' not found"}))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/api/generate":
            lines = "".join(json.dumps({"response": word, "done": False}) + "\n"
                            for word in body["prompt"].split())
            self.reply(200, lines + "\n" + json.dumps({"done": True}) + "\n",
                       "application/x-ndjson")
        elif self.path == "/api/broken":
            self.reply(200, "{not json}\n", "application/x-ndjson")
        else:
            self.reply(200, json.dumps({"echo": body}))


def serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def http_url():
    server = serve(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def https_server(tmp_path):
    """https on 127.0.0.1 with a self-signed certificate that names another host only."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=gateway.example", "-addext",
                    "subjectAltName=DNS:gateway.example", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    serve(server)
    yield f"https://127.0.0.1:{server.server_address[1]}", str(cert)
    server.shutdown()
    server.server_close()


def test_json_requests_carry_the_headers_and_bodies(http_url):
    client = OllamaClient(http_url + "/", timeout=5, headers={"Authorization": "Bearer k"})
    assert client.get("/api/version") == {"version": "0.9.3", "auth": "Bearer k"}
    assert client.post("/api/show", {"model": "m"}) == {"echo": {"model": "m"}}


def test_ndjson_is_streamed_line_by_line_with_times(http_url):
    client = OllamaClient(http_url, timeout=5)
    chunks = list(client.stream("/api/generate", {"prompt": "blue sky"}))
    assert [obj for _t, obj in chunks] == [{"response": "blue", "done": False},
                                           {"response": "sky", "done": False}, {"done": True}]
    assert all(seconds >= 0 for seconds, _obj in chunks)
    with pytest.raises(ApiError, match="not NDJSON"):
        list(client.stream("/api/broken", {}))


def test_errors_name_the_url_the_status_and_ollamas_text(http_url):
    client = OllamaClient(http_url, timeout=5)
    with pytest.raises(ApiError) as caught:
        client.get("/api/nothing")
    assert str(caught.value) == f"{http_url}/api/nothing: HTTP 404: model 'x' not found"
    assert caught.value.status == 404
    with pytest.raises(ApiError, match="HTTP 502: bad gateway"):
        client.get("/plain-error")
    with pytest.raises(ApiError, match=r"^http://127\.0\.0\.1:9/api/version: cannot connect"):
        OllamaClient("http://127.0.0.1:9", timeout=5).get("/api/version")


def test_a_proxy_in_the_environment_is_not_used(http_url, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert OllamaClient(http_url, timeout=5).get("/api/version")["version"] == "0.9.3"


def test_https_is_verified_against_ca_path_without_the_host_name(https_server):
    url, cert = https_server
    assert OllamaClient(url, timeout=5, ca_path=cert).get("/api/version")["version"] == "0.9.3"
    # Without ca_path the self-signed chain is not trusted: refused, saying why.
    with pytest.raises(ApiError, match=r"cannot connect.*CERTIFICATE_VERIFY_FAILED"):
        OllamaClient(url, timeout=5).get("/api/version")
