"""A stand-in Ollama for the healer's tests (the role scenario and tests/unit/test_healer.py):
answers GET / (its healthcheck) and appends each POST's path and body to
/flags/requests.jsonl; with /flags/fail present it refuses as Ollama does (400 and an error
object)."""

import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"Ollama is running")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open("/flags/requests.jsonl", "a") as log:
            log.write(json.dumps({"path": self.path, "body": body.decode()}) + "\n")
        failing = os.path.exists("/flags/fail")
        self.send_response(400 if failing else 200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        answer = {"error": "model not found"} if failing else {
            "model": "m", "response": "", "done": True, "done_reason": "load"}
        self.wfile.write(json.dumps(answer).encode())


HTTPServer(("0.0.0.0", 11434), Handler).serve_forever()
