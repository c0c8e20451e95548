"""The scenario's Ollama: answers GET / (its healthcheck) and appends each POST's path and
body to /flags/requests.jsonl, so verify can see what the healer asked."""

import json
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
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"model": "m", "response": "", "done": true, "done_reason": "load"}')


HTTPServer(("0.0.0.0", 11434), Handler).serve_forever()
