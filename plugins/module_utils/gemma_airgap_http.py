# -*- coding: utf-8 -*-
# Shared by the gemma-airgap modules; Ansible's own module_utils only (it runs on
# closed-network targets, where nothing else can be installed).
"""The one HTTP client of the modules: JSON requests and NDJSON streams to Ollama's API.

Requests go through ansible.module_utils.urls, so TLS and CA handling are Ansible's.
Errors carry what an operator needs: the URL, the HTTP status and Ollama's
`{"error": ...}` text, or the connection failure.
"""

from __future__ import absolute_import, division, print_function

import json
import socket
import time
from urllib.error import HTTPError, URLError

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import Request, make_context

__metaclass__ = type


class ApiError(Exception):
    def __init__(self, url, message, status=None, cause=None):
        text = "%s: %s" % (url, message) if status is None else "%s: HTTP %s: %s" % (
            url, status, message)
        super(ApiError, self).__init__(text)
        self.url = url
        self.status = status
        self.message = message
        # What kept the connection from being made (None after an HTTP answer).
        self.cause = cause


class OllamaClient:
    def __init__(self, base_url, timeout=60.0, headers=None, ca_path=None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        # One TLS context for all requests: Ansible's (the system's CAs, as open_url
        # trusts them), built once rather than re-reading the CA store on every request.
        context = make_context(cafile=ca_path)
        if ca_path:
            # The chain is verified against ca_path; the name is not, because probes reach
            # the gateway on the target's loopback while its certificate names the host.
            # open_url's own ca_path would also check the name, hence a context of ours.
            context.check_hostname = False
        # use_proxy=False: Ollama and the gateway are on the closed network (mostly the
        # target's loopback); a proxy from the environment (http_proxy, https_proxy) can
        # never reach them and would turn a healthy server into a connection failure.
        # use_netrc=False: a ~/.netrc entry for the host would replace the Bearer key.
        self.request = Request(use_proxy=False, use_netrc=False, context=context,
                               follow_redirects="urllib2")

    def _open(self, method, path, body=None, timeout=None):
        url = self.base_url + path
        data = json.dumps(body).encode("utf-8") if body is not None else None
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            return self.request.open(method, url, data=data, headers=headers,
                                     timeout=timeout or self.timeout)
        except HTTPError as error:
            raw = error.read()
            try:
                message = json.loads(raw.decode("utf-8")).get("error") or raw.decode("utf-8")
            except (ValueError, AttributeError):
                message = raw.decode("utf-8", "replace").strip() or error.reason
            raise ApiError(url, message, error.code) from None
        except (URLError, UrlsConnectionError, socket.timeout, ConnectionError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ApiError(url, "cannot connect (%s)" % reason, cause=reason) from None

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
