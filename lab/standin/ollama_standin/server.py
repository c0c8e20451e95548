"""Ollama's native HTTP API over the real llama.cpp engine (lab equipment).

Follows Ollama's documented behaviour: NDJSON streaming by default
(`application/x-ndjson`), one `application/json` object with `"stream": false`,
`{"error": ...}` bodies with Ollama's status codes, and a final error line when
a stream breaks after it began.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from . import VERSION
from .engine import Generation, GenerationError, ModelRef, QueueFull, Scheduler, generate
from .gguf import GGUFError, read_gguf
from .options import (
    OptionError,
    TemplateError,
    merge_options,
    parse_keep_alive,
    render,
)
from .store import (
    CONFIG_MEDIA_TYPE,
    MEDIA_LICENSE,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    DigestMismatch,
    InvalidName,
    ModelName,
    NotFound,
    Store,
    StoreError,
    now_rfc3339,
)

log = logging.getLogger("ollama_standin")

NDJSON = "application/x-ndjson"
JSON = "application/json; charset=utf-8"
REGISTRY = "registry.ollama.ai"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_host(value: str | None) -> tuple[str, int]:
    """OLLAMA_HOST as Ollama reads it: [scheme://]host[:port], default 127.0.0.1:11434."""
    value = (value or "").strip()
    if "://" in value:
        value = value.split("://", 1)[1]
    value = value.rstrip("/")
    host, port = value, 11434
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, raw_port = value.split(":")
        port = int(raw_port)
    return host or "127.0.0.1", port


class Settings:
    """The OLLAMA_* environment, read once."""

    def __init__(self, env: dict | None = None) -> None:
        env = os.environ if env is None else env
        self.host, self.port = parse_host(env.get("OLLAMA_HOST"))
        default_models = Path(env.get("HOME", "/root")) / ".ollama" / "models"
        self.models = Path(env.get("OLLAMA_MODELS") or default_models)
        self.keep_alive = parse_keep_alive(env.get("OLLAMA_KEEP_ALIVE") or "5m")
        self.num_parallel = int(env.get("OLLAMA_NUM_PARALLEL") or 1)
        self.max_queue = int(env.get("OLLAMA_MAX_QUEUE") or 512)
        self.max_loaded = int(env.get("OLLAMA_MAX_LOADED_MODELS") or 3)
        self.context_length = int(env.get("OLLAMA_CONTEXT_LENGTH") or 4096)
        self.noprune = (env.get("OLLAMA_NOPRUNE") or "").lower() in ("1", "true", "yes")
        self.origins = [o for o in (env.get("OLLAMA_ORIGINS") or "").split(",") if o]


class Backend:
    """Everything behind the HTTP layer: the store, the scheduler, the models' metadata."""

    def __init__(self, settings: Settings, scheduler: Scheduler | None = None) -> None:
        self.settings = settings
        self.store = Store(settings.models)
        self.scheduler = scheduler or Scheduler(
            num_parallel=settings.num_parallel, max_queue=settings.max_queue,
            max_loaded=settings.max_loaded, default_keep_alive=settings.keep_alive)
        if not settings.noprune:
            removed = self.store.prune()
            if removed:
                log.info("pruned %d unreferenced blob(s)", len(removed))

    # --- model metadata -----------------------------------------------------------

    def model(self, raw_name: str) -> dict:
        """Everything about a stored model; NotFound / InvalidName otherwise."""
        name = ModelName.parse(raw_name)
        manifest = self.store.read_manifest(name)
        config = json.loads(self.store.read_blob(manifest["config"]["digest"]))
        layers = {layer["mediaType"]: layer for layer in manifest["layers"]}
        text = {}
        for media, key in ((MEDIA_TEMPLATE, "template"), (MEDIA_SYSTEM, "system"),
                           (MEDIA_LICENSE, "license")):
            if media in layers:
                text[key] = self.store.read_blob(layers[media]["digest"]).decode()
        params = {}
        if MEDIA_PARAMS in layers:
            params = json.loads(self.store.read_blob(layers[MEDIA_PARAMS]["digest"]))
        model_layer = layers.get(MEDIA_MODEL)
        if model_layer is None:
            raise StoreError(f"model '{name.display}' has no model layer")
        return {
            "name": name,
            "manifest": manifest,
            "config": config,
            "layers": layers,
            "params": params,
            "template": text.get("template", "{{ .Prompt }}"),
            "system": text.get("system", ""),
            "license": text.get("license", ""),
            "path": str(self.store.blob_path(model_layer["digest"])),
            "digest": self.store.manifest_digest(name),
            "size": sum(layer["size"] for layer in manifest["layers"]),
            "modified_at": now_rfc3339(self.store.manifest_mtime(name)),
            "capabilities": ["completion"] + (["vision"] if MEDIA_PROJECTOR in layers else []),
        }

    @staticmethod
    def details(config: dict) -> dict:
        return {
            "parent_model": "",
            "format": config.get("model_format", "gguf"),
            "family": config.get("model_family", ""),
            "families": config.get("model_families") or None,
            "parameter_size": config.get("model_type", ""),
            "quantization_level": config.get("file_type", ""),
        }

    def ref(self, info: dict) -> ModelRef:
        return ModelRef(name=info["name"].display, digest=info["digest"], path=info["path"],
                        size=info["size"], details=self.details(info["config"]))


def _ns(seconds_ns: int) -> int:
    return int(seconds_ns)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ollama-standin"
    # Stream lines are small writes: without TCP_NODELAY each waits for the
    # client's delayed ACK of the previous one.
    disable_nagle_algorithm = True
    backend: Backend  # set by make_server

    # --- plumbing -----------------------------------------------------------------

    def log_message(self, fmt, *args) -> None:  # route access logs through logging
        log.debug("%s - %s", self.address_string(), fmt % args)

    def _cors(self) -> None:
        origin = self.headers.get("Origin")
        allowed = self.backend.settings.origins
        if origin and ("*" in allowed or origin in allowed or origin.startswith(
                ("http://localhost", "http://127.0.0.1", "https://localhost"))):
            self.send_header("Access-Control-Allow-Origin", origin)

    def send_json(self, status: int, body, content_type: str = JSON) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self._cors()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error_json(self, status: int, message: str) -> None:
        self.send_json(status, {"error": message})

    def body_chunks(self):
        """The request body, chunked or with Content-Length, as it arrives."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield from self._read_exactly(size)
                self.rfile.readline()
        else:
            yield from self._read_exactly(int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, remaining: int):
        while remaining:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                raise ApiError(400, "unexpected EOF in request body")
            remaining -= len(chunk)
            yield chunk

    def json_body(self) -> dict:
        raw = b"".join(self.body_chunks())
        if not raw.strip():
            raise ApiError(400, "missing request body")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ApiError(400, f"invalid JSON: {error}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", NDJSON)
        self.send_header("Transfer-Encoding", "chunked")
        self._cors()
        self.end_headers()

    def stream_line(self, obj: dict) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # --- dispatch -----------------------------------------------------------------

    ROUTES: ClassVar[dict[tuple[str, str], str]] = {
        ("GET", "/"): "root", ("HEAD", "/"): "root",
        ("GET", "/api/version"): "version", ("HEAD", "/api/version"): "version",
        ("GET", "/api/tags"): "tags", ("HEAD", "/api/tags"): "tags",
        ("GET", "/api/ps"): "ps",
        ("POST", "/api/show"): "show",
        ("POST", "/api/generate"): "generate",
        ("POST", "/api/chat"): "chat",
        ("POST", "/api/embed"): "embed", ("POST", "/api/embeddings"): "embed",
        ("POST", "/api/create"): "create",
        ("POST", "/api/copy"): "copy",
        ("DELETE", "/api/delete"): "delete",
        ("POST", "/api/pull"): "pull", ("POST", "/api/push"): "push",
    }

    def dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path.startswith("/api/blobs/") and self.command in ("HEAD", "POST"):
                self.blob(path[len("/api/blobs/"):])
                return
            route = self.ROUTES.get((self.command, path))
            if route is None:
                if self.command == "OPTIONS":
                    self.send_response(204)
                    self._cors()
                    self.send_header("Access-Control-Allow-Methods",
                                     "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS")
                    self.send_header("Access-Control-Allow-Headers",
                                     "Authorization, Content-Type, User-Agent, Accept")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_text(404, "404 page not found")
                return
            getattr(self, f"api_{route}")()
        except ApiError as error:
            self.send_error_json(error.status, error.message)
        except (BrokenPipeError, ConnectionResetError):
            log.info("client went away during %s %s", self.command, path)
        except Exception as error:  # a bug in the stand-in: report, stay up
            log.exception("unhandled error in %s %s", self.command, path)
            with contextlib.suppress(OSError):
                self.send_error_json(500, str(error))

    do_GET = do_POST = do_HEAD = do_DELETE = do_OPTIONS = dispatch

    # --- simple endpoints ------------------------------------------------------------

    def api_root(self) -> None:
        self.send_text(200, "Ollama is running")

    def api_version(self) -> None:
        self.send_json(200, {"version": VERSION})

    def api_tags(self) -> None:
        models = []
        for name in self.backend.store.names():
            try:
                info = self.backend.model(name.display)
            except (StoreError, ValueError) as error:
                log.warning("skipping %s: %s", name.display, error)
                continue
            models.append({
                "name": name.display, "model": name.display,
                "modified_at": info["modified_at"], "size": info["size"],
                "digest": info["digest"], "details": self.backend.details(info["config"]),
            })
        self.send_json(200, {"models": models})

    def api_ps(self) -> None:
        models = []
        for loaded in self.backend.scheduler.running():
            expires = loaded.expires_at()
            models.append({
                "name": loaded.ref.name, "model": loaded.ref.name,
                "size": loaded.ref.size, "digest": loaded.ref.digest,
                "details": loaded.ref.details,
                "expires_at": now_rfc3339(expires if expires is not None else 2**33),
                "size_vram": 0, "context_length": loaded.num_ctx,
            })
        self.send_json(200, {"models": models})

    def lookup(self, body: dict, key: str = "model") -> dict:
        raw = body.get(key) or body.get("name")
        if not raw:
            raise ApiError(400, "model is required")
        try:
            return self.backend.model(raw)
        except InvalidName as error:
            raise ApiError(400, str(error)) from None
        except NotFound:
            raise ApiError(404, f"model '{raw}' not found") from None

    def api_show(self) -> None:
        body = self.json_body()
        info = self.lookup(body)
        gguf = read_gguf(info["path"])
        model_info = {key: value for key, value in gguf.metadata.items()
                      if not key.startswith("tokenizer.ggml.") or value is not None}
        model_info["general.parameter_count"] = gguf.parameter_count
        params = "\n".join(
            f"{key:<30} {json.dumps(v) if isinstance(v, str) else v}"
            for key, value in info["params"].items()
            for v in (value if isinstance(value, list) else [value]))
        modelfile = (f'# Modelfile generated by "ollama show"\n'
                     f"FROM {info['path']}\n"
                     f'TEMPLATE """{info["template"]}"""\n' + "".join(
                         f"PARAMETER {line}\n" for line in params.splitlines()))
        response = {
            "license": info["license"], "modelfile": modelfile, "parameters": params,
            "template": info["template"], "details": self.backend.details(info["config"]),
            "model_info": model_info, "capabilities": info["capabilities"],
            "modified_at": info["modified_at"],
        }
        if info["system"]:
            response["system"] = info["system"]
        self.send_json(200, response)

    # --- blobs, create, copy, delete ------------------------------------------------------

    def blob(self, digest: str) -> None:
        store = self.backend.store
        try:
            exists = store.has_blob(digest)
        except StoreError as error:
            raise ApiError(400, str(error)) from None
        if self.command == "HEAD":
            self.send_response(200 if exists else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            created = store.write_blob_stream(digest, self.body_chunks())
        except DigestMismatch as error:
            raise ApiError(400, str(error)) from None
        self.send_response(201 if created else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def api_create(self) -> None:
        body = self.json_body()
        stream = body.get("stream", True) is not False
        try:
            name = ModelName.parse(body.get("model") or body.get("name") or "")
        except InvalidName as error:
            raise ApiError(400, str(error)) from None
        if body.get("quantize"):
            raise ApiError(400, "quantization is not supported by the Ollama stand-in")
        if body.get("modelfile"):
            raise ApiError(400, "the modelfile field is no longer supported; "
                                "use files, template and parameters")
        statuses = []
        try:
            layers, config = self._create_layers(body, statuses)
            statuses.append("writing manifest")
            self.backend.store.write_manifest(name, config, layers)
            statuses.append("success")
        except (StoreError, GGUFError, OptionError) as error:
            if stream and statuses:
                self.start_stream()
                for status in statuses:
                    self.stream_line({"status": status})
                self.stream_line({"error": str(error)})
                self.end_stream()
                return
            raise ApiError(400, str(error)) from None
        if stream:
            self.start_stream()
            for status in statuses:
                self.stream_line({"status": status})
            self.end_stream()
        else:
            self.send_json(200, {"status": "success"})

    def _create_layers(self, body: dict, statuses: list[str]) -> tuple[list[dict], dict]:
        store = self.backend.store
        layers: list[dict] = []
        config: dict = {"model_format": "gguf", "architecture": "amd64", "os": "linux"}
        base = None
        if body.get("from"):
            try:
                base = self.backend.model(body["from"])
            except NotFound:
                raise StoreError(f"base model '{body['from']}' not found") from None
            layers = [dict(layer) for layer in base["manifest"]["layers"]]
            config.update({k: v for k, v in base["config"].items() if k != "rootfs"})
        files = body.get("files") or {}
        if not isinstance(files, dict):
            raise StoreError("files must map file names to digests")
        if not files and base is None:
            raise StoreError("neither 'from' nor 'files' was specified")
        for filename, digest in files.items():
            if not filename.endswith(".gguf"):
                raise StoreError(f"unsupported file {filename!r}: the Ollama stand-in "
                                 "imports GGUF files only")
            if not store.has_blob(digest):
                raise StoreError(f"blob {digest} for {filename} not found; "
                                 "upload it with POST /api/blobs/<digest> first")
            statuses.append("parsing GGUF")
            gguf = read_gguf(store.blob_path(digest))
            media = MEDIA_PROJECTOR if gguf.is_projector else MEDIA_MODEL
            layers = [layer for layer in layers if layer["mediaType"] != media]
            layers.append({"mediaType": media, "digest": digest,
                           "size": store.blob_path(digest).stat().st_size})
            if not gguf.is_projector:
                config.update({
                    "model_family": gguf.architecture,
                    "model_families": [gguf.architecture],
                    "model_type": gguf.parameter_size,
                    "file_type": gguf.file_type,
                })
            statuses.append(f"using existing layer sha256:{digest.split(':')[-1]}")
        if not any(layer["mediaType"] == MEDIA_MODEL for layer in layers):
            raise StoreError("no model layer: files must include a GGUF model")

        def put_text(media: str, text: str) -> None:
            nonlocal layers
            layers = [layer for layer in layers if layer["mediaType"] != media]
            entry = store.write_blob_bytes(text.encode())
            layers.append({"mediaType": media, **entry})
            statuses.append(f"creating new layer {entry['digest']}")

        if body.get("template") is not None:
            put_text(MEDIA_TEMPLATE, body["template"])
        if body.get("system") is not None:
            put_text(MEDIA_SYSTEM, body["system"])
        if body.get("license"):
            license_text = body["license"]
            put_text(MEDIA_LICENSE, "\n".join(license_text) if isinstance(license_text, list)
                     else license_text)
        if body.get("parameters"):
            params = body["parameters"]
            merge_options(0, params)  # validates types; raises OptionError
            put_text(MEDIA_PARAMS, json.dumps(params, sort_keys=True))
        config["rootfs"] = {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}
        config_entry = store.write_blob_bytes(json.dumps(config, sort_keys=True).encode())
        return layers, {"mediaType": CONFIG_MEDIA_TYPE, **config_entry}

    def api_copy(self) -> None:
        body = self.json_body()
        source, destination = body.get("source"), body.get("destination")
        if not source or not destination:
            raise ApiError(400, "source and destination are required")
        info = self.lookup({"model": source})
        try:
            target = ModelName.parse(destination)
        except InvalidName as error:
            raise ApiError(400, f"destination {error}") from None
        manifest = info["manifest"]
        self.backend.store.write_manifest(target, manifest["config"], manifest["layers"])
        self.send_json(200, b"", content_type=JSON)

    def api_delete(self) -> None:
        body = self.json_body()
        info = self.lookup(body)
        self.backend.scheduler.unload(info["name"].display)
        self.backend.store.delete_manifest(info["name"])
        if not self.backend.settings.noprune:
            self.backend.store.prune()
        self.send_json(200, b"", content_type=JSON)

    def registry_error(self, action: str) -> None:
        body = self.json_body()
        raw = body.get("model") or body.get("name") or ""
        try:
            name = ModelName.parse(raw)
        except InvalidName as error:
            raise ApiError(400, str(error)) from None
        url = (f"https://{name.host}/v2/{name.namespace}/{name.model}/manifests/{name.tag}")
        try:
            socket.setdefaulttimeout(5)
            socket.getaddrinfo(name.host, 443)
            reason = "the Ollama stand-in cannot download from a registry"
        except OSError as error:
            reason = f"dial tcp: lookup {name.host}: {error}"
        finally:
            socket.setdefaulttimeout(None)
        message = f'{action} model manifest: Get "{url}": {reason}'
        if body.get("stream", True) is False:
            raise ApiError(500, message)
        self.start_stream()
        self.stream_line({"status": f"{action}ing manifest"})
        self.stream_line({"error": message})
        self.end_stream()

    def api_pull(self) -> None:
        self.registry_error("pull")

    def api_push(self) -> None:
        self.registry_error("push")

    def api_embed(self) -> None:
        raise ApiError(501, "embeddings are not implemented by the Ollama stand-in")

    # --- inference ----------------------------------------------------------------------

    def _prepare(self, body: dict) -> tuple[dict, dict, float | None]:
        info = self.lookup(body)
        if "completion" not in info["capabilities"]:
            raise ApiError(400, f'"{body.get("model")}" does not support generate')
        try:
            options = merge_options(self.backend.settings.context_length, info["params"],
                                    body.get("options"))
            keep_alive = (parse_keep_alive(body["keep_alive"]) if body.get("keep_alive")
                          is not None else self.backend.settings.keep_alive)
        except OptionError as error:
            raise ApiError(400, str(error)) from None
        return info, options, keep_alive

    def api_generate(self) -> None:
        body = self.json_body()
        info, options, keep_alive = self._prepare(body)
        prompt = body.get("prompt") or ""
        if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
            raise ApiError(400, "raw mode does not support template, system, or context")
        if not prompt and not body.get("images"):
            self._load_or_unload(body, info, options, keep_alive)
            return
        if body.get("raw"):
            text = prompt
        else:
            messages = []
            system = body.get("system") or info["system"]
            if system:
                messages.append({"role": "system", "content": system})
            messages.append({"role": "user", "content": prompt})
            text = self._render(body.get("template") or info["template"], messages)
        self._infer(body, info, options, keep_alive, text, chat=False)

    def api_chat(self) -> None:
        body = self.json_body()
        info, options, keep_alive = self._prepare(body)
        messages = body.get("messages")
        if messages is None:
            messages = []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "messages must be a list of objects")
        if body.get("tools"):
            raise ApiError(400, f'"{body.get("model")}" does not support tools')
        if not messages:
            self._load_or_unload(body, info, options, keep_alive)
            return
        for message in messages:
            if message.get("role") not in ("system", "user", "assistant", "tool"):
                raise ApiError(400, f"invalid role: {message.get('role')!r}")
        if info["system"] and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": info["system"]}, *messages]
        text = self._render(info["template"], messages)
        images = [img for m in messages for img in (m.get("images") or [])]
        self._infer(body, info, options, keep_alive, text, chat=True, images=images)

    def _render(self, template: str, messages: list[dict]) -> str:
        try:
            return render(template, messages)
        except TemplateError as error:
            raise ApiError(500, str(error)) from None

    def _load_or_unload(self, body, info, options, keep_alive) -> None:
        name = body.get("model")
        chat = self.path.startswith("/api/chat")
        base = {"model": name, "created_at": now_rfc3339(), "done": True}
        if chat:
            base["message"] = {"role": "assistant", "content": ""}
        else:
            base["response"] = ""
        if keep_alive == 0:
            self.backend.scheduler.unload(info["name"].display)
            self.send_json(200, {**base, "done_reason": "unload"})
            return
        try:
            self.backend.scheduler.load(self.backend.ref(info), options["num_ctx"], keep_alive)
        except QueueFull as error:
            raise ApiError(503, str(error)) from None
        self.send_json(200, {**base, "done_reason": "load"})

    def _grammar(self, fmt):
        if not fmt:
            return None
        from llama_cpp import LlamaGrammar
        from llama_cpp.llama_grammar import JSON_GBNF

        if fmt == "json":
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        if isinstance(fmt, dict):
            return LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)
        raise ApiError(400, f"invalid format: {fmt!r}")

    def _infer(self, body, info, options, keep_alive, prompt, chat, images=None) -> None:
        images = images if images is not None else (body.get("images") or [])
        if images and "vision" not in info["capabilities"]:
            raise ApiError(500, "this model is missing data required for image input")
        stream = body.get("stream", True) is not False
        name = body.get("model")
        started = time.perf_counter_ns()
        grammar = self._grammar(body.get("format"))
        scheduler = self.backend.scheduler
        try:
            loaded, slot, load_ns = scheduler.acquire(self.backend.ref(info),
                                                      options["num_ctx"], keep_alive)
        except QueueFull as error:
            raise ApiError(503, str(error)) from None
        stats = Generation()
        tokens = list(body.get("context") or []) if not chat else []

        def work(llama):
            tokens.extend(llama.tokenize(prompt.encode(), add_bos=not tokens, special=True))
            yield from generate(llama, tokens, options, stats, grammar=grammar)

        try:
            pieces = slot.run(work)

            def chunk(text: str, done: bool) -> dict:
                obj = {"model": name, "created_at": now_rfc3339()}
                if chat:
                    obj["message"] = {"role": "assistant", "content": text}
                else:
                    obj["response"] = text
                obj["done"] = done
                return obj

            def final() -> dict:
                obj = chunk("", True)
                obj.update({
                    "done_reason": stats.done_reason,
                    "total_duration": time.perf_counter_ns() - started,
                    "load_duration": load_ns,
                    "prompt_eval_count": stats.prompt_eval_count,
                    "prompt_eval_duration": stats.prompt_eval_duration,
                    "eval_count": stats.eval_count,
                    "eval_duration": stats.eval_duration,
                })
                if not chat and not body.get("raw"):
                    obj["context"] = tokens + stats.tokens
                return obj

            if not stream:
                try:
                    text = "".join(pieces)
                except GenerationError as error:
                    raise ApiError(400, str(error)) from None
                obj = final()
                if chat:
                    obj["message"]["content"] = text
                else:
                    obj["response"] = text
                self.send_json(200, obj)
                return
            try:
                first = next(pieces, None)
            except GenerationError as error:
                raise ApiError(400, str(error)) from None
            self.start_stream()
            try:
                if first is not None:
                    self.stream_line(chunk(first, False))
                    for piece in pieces:
                        self.stream_line(chunk(piece, False))
                self.stream_line(final())
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as error:  # the stream began: report in-band, as Ollama does
                log.exception("generation failed mid-stream")
                self.stream_line({"error": str(error)})
            self.end_stream()
        finally:
            pieces.close()
            scheduler.release(loaded, slot, keep_alive)


def make_server(settings: Settings | None = None,
                backend: Backend | None = None) -> ThreadingHTTPServer:
    settings = settings or Settings()
    backend = backend or Backend(settings)
    handler = type("BoundHandler", (Handler,), {"backend": backend})
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # A deep accept queue, as Ollama's Go server has: socketserver's default of 5
    # refuses connections when a gateway opens hundreds at once.
    server_class = type("Server", (ThreadingHTTPServer,),
                        {"address_family": family, "daemon_threads": True,
                         "request_queue_size": 1024})
    server = server_class((settings.host, settings.port), handler)
    server.backend = backend
    return server


def serve() -> None:
    logging.basicConfig(level=os.environ.get("OLLAMA_STANDIN_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    server = make_server(settings)
    log.info("Ollama stand-in %s listening on %s:%d, models in %s", VERSION,
             settings.host, settings.port, settings.models)
    # docker stop sends SIGTERM to PID 1: stop serving at once, as Ollama does.
    signal.signal(signal.SIGTERM,
                  lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.backend.scheduler.shutdown()
        server.server_close()
