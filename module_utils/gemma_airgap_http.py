# -*- coding: utf-8 -*-
# Shared by the gemma-airgap modules; stdlib only (it runs on closed-network targets).
"""The one HTTP client of the modules: JSON requests and NDJSON streams to Ollama's API.

Errors carry what an operator needs: the URL, the HTTP status and Ollama's
`{"error": ...}` text, or the connection failure.
"""

from __future__ import absolute_import, division, print_function

import json
import socket
import ssl
import time
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

__metaclass__ = type


class ApiError(Exception):
    def __init__(self, url, message, status=None):
        text = "%s: %s" % (url, message) if status is None else "%s: HTTP %s: %s" % (
            url, status, message)
        super(ApiError, self).__init__(text)
        self.url = url
        self.status = status
        self.message = message


class OllamaClient:
    def __init__(self, base_url, timeout=60.0, headers=None, ca_path=None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.context = None
        if ca_path:
            # The chain is verified against ca_path; the name is not, because probes reach
            # the gateway on the target's loopback while its certificate names the host.
            self.context = ssl.create_default_context(cafile=ca_path)
            self.context.check_hostname = False

    def _open(self, method, path, body=None, timeout=None):
        url = self.base_url + path
        data = json.dumps(body).encode("utf-8") if body is not None else None
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = Request(url, data=data, method=method, headers=headers)
        try:
            return urlopen(request, timeout=timeout or self.timeout, context=self.context)
        except HTTPError as error:
            raw = error.read()
            try:
                message = json.loads(raw.decode("utf-8")).get("error") or raw.decode("utf-8")
            except (ValueError, AttributeError):
                message = raw.decode("utf-8", "replace").strip() or error.reason
            raise ApiError(url, message, error.code) from None
        except (URLError, socket.timeout, ConnectionError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ApiError(url, "cannot connect (%s)" % reason) from None

    def get(self, path, timeout=None):
        with self._open("GET", path, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8") or "{}")

    def post(self, path, body, timeout=None):
        with self._open("POST", path, body, timeout=timeout) as response:
            raw = response.read().decode("utf-8")
        return json.loads(raw) if raw.strip() else {}

    def stream(self, path, body, timeout=None):
        """Yield (seconds since the request was sent, object) for each NDJSON line."""
        started = time.monotonic()
        with self._open("POST", path, body, timeout=timeout) as response:
            for line in response:
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line.decode("utf-8"))
                except ValueError:
                    raise ApiError(self.base_url + path,
                                   "not NDJSON: %r" % line[:200]) from None
                yield time.monotonic() - started, obj
