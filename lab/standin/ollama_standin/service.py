"""The engine behind the stand-in's Go front: the store, the scheduler, llama.cpp.

The front (lab/standin/front, Go + Gin like Ollama) owns everything a client
sees: routing, request parsing, option types, keep-alive durations, templates,
status codes and the JSON it answers with. It starts this process and talks to
it over a Unix socket that nothing else can reach, sending only requests it has
already checked. This is the counterpart of Ollama's runner plus its store.

Answers are JSON; refusals carry an HTTP status, `{"error": message}` and, for
name lookups, a `kind` (`not_found`, `invalid_name`, ...) the front words as
Ollama does. /completion and /create stream NDJSON.

Usage: python -m ollama_standin.service --socket PATH
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import signal
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

from .engine import Generation, GenerationError, ModelRef, QueueFull, Scheduler, generate
from .gguf import GGUFError, read_gguf
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
)

log = logging.getLogger("ollama_standin")

# Ollama's prune (server/images.go PruneLayers) leaves blobs younger than this alone.
PRUNE_GRACE_SECONDS = 3600


class Refusal(Exception):
    """An answer other than success: status, message, and what kind of failure."""

    def __init__(self, status: int, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def env_bool(env: dict, key: str) -> bool:
    """Ollama's envconfig.Bool: unset is false; anything strconv.ParseBool cannot read is true."""
    raw = env.get(key, "")
    if not raw:
        return False
    return raw not in ("0", "f", "F", "false", "FALSE", "False")


def env_uint(env: dict, key: str, default: int) -> int:
    raw = env.get(key, "")
    return int(raw) if raw.isdigit() else default


class Settings:
    """What the engine reads of the OLLAMA_* environment (the front reads the rest)."""

    def __init__(self, env: dict | None = None) -> None:
        env = os.environ if env is None else env
        default_models = Path(env.get("HOME", "/root")) / ".ollama" / "models"
        self.models = Path(env.get("OLLAMA_MODELS") or default_models)
        self.num_parallel = env_uint(env, "OLLAMA_NUM_PARALLEL", 1) or 1
        self.max_queue = env_uint(env, "OLLAMA_MAX_QUEUE", 512)
        # 0 means automatic in Ollama: three models per GPU, three on a CPU.
        self.max_loaded = env_uint(env, "OLLAMA_MAX_LOADED_MODELS", 0) or 3
        self.noprune = env_bool(env, "OLLAMA_NOPRUNE")


_GO_JSON_TYPES = {bool: "bool", int: "number", float: "number", dict: "object", list: "array"}


def licenses_of(value) -> list[str]:
    """/api/create's `license` as Ollama's createModel reads it: a string (none when empty)
    or a list of strings (a JSON null reads as ""), each a layer of its own; Go's unmarshal
    error otherwise."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, list):
        kind = _GO_JSON_TYPES.get(type(value), "value")
        raise StoreError(f"json: cannot unmarshal {kind} into Go value of type []string")
    for item in value:
        if item is not None and not isinstance(item, str):
            kind = _GO_JSON_TYPES.get(type(item), "value")
            raise StoreError(f"json: cannot unmarshal {kind} into Go value of type string")
    return ["" if item is None else item for item in value]


def lookup_name(raw, kind: str = "invalid_name") -> ModelName:
    try:
        return ModelName.parse(raw)
    except InvalidName:
        raise Refusal(400, "invalid model name", kind) from None


class Backend:
    """The store and the scheduler, and what Ollama tells of a stored model."""

    def __init__(self, settings: Settings, scheduler: Scheduler | None = None) -> None:
        self.settings = settings
        self.store = Store(settings.models)
        self._kv_bytes: dict[str, int] = {}
        self.scheduler = scheduler or Scheduler(
            num_parallel=settings.num_parallel, max_queue=settings.max_queue,
            max_loaded=settings.max_loaded)
        if not settings.noprune:
            removed = self.store.prune(grace_seconds=PRUNE_GRACE_SECONDS)
            if removed:
                log.info("pruned %d unreferenced blob(s)", len(removed))

    def model(self, raw) -> dict:
        """Everything about a stored model; a Refusal when it is not there."""
        name = lookup_name(raw)
        try:
            manifest = self.store.read_manifest(name)
        except NotFound:
            raise Refusal(404, f"model '{raw}' not found", "not_found") from None
        config = json.loads(self.store.read_blob(manifest["config"]["digest"]))
        layers = {layer["mediaType"]: layer for layer in manifest["layers"]}
        text = {}
        for media, key in ((MEDIA_TEMPLATE, "template"), (MEDIA_SYSTEM, "system")):
            if media in layers:
                text[key] = self.store.read_blob(layers[media]["digest"]).decode()
        # A model may carry several licences (a layer each); Ollama shows them joined.
        text["license"] = "\n".join(
            self.store.read_blob(layer["digest"]).decode() for layer in manifest["layers"]
            if layer["mediaType"] == MEDIA_LICENSE)
        params = {}
        if MEDIA_PARAMS in layers:
            params = json.loads(self.store.read_blob(layers[MEDIA_PARAMS]["digest"]))
        model_layer = layers.get(MEDIA_MODEL)
        if model_layer is None:
            raise Refusal(500, f"model '{name.display}' has no model layer")
        return {
            "name": name.display,
            "full_name": f"{name.host}/{name.namespace}/{name.model}:{name.tag}",
            "digest": self.store.manifest_digest(name),
            # Ollama's Manifest.Size: every layer and the config blob.
            "size": sum(layer["size"] for layer in [*manifest["layers"], manifest["config"]]),
            "modified_at": self.store.manifest_mtime(name),
            "details": self.details(config),
            "template": text.get("template", ""),
            "system": text.get("system", ""),
            "license": text.get("license", ""),
            "params": params,
            "capabilities": ["completion"] + (["vision"] if MEDIA_PROJECTOR in layers else []),
            "path": str(self.store.blob_path(model_layer["digest"])),
            "weights": model_layer["size"],
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
        path = info["path"]
        if path not in self._kv_bytes:  # a blob's name is its digest: it never changes
            self._kv_bytes[path] = read_gguf(path, keep_arrays=0).kv_bytes_per_token()
        return ModelRef(name=info["name"], digest=info["digest"], path=path,
                        size=info["weights"], details=info["details"],
                        kv_bytes_per_token=self._kv_bytes[path])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backend: Backend  # set by make_server

    ROUTES: ClassVar[dict[tuple[str, str], str]] = {
        ("GET", "/health"): "health", ("GET", "/models"): "models",
        ("POST", "/model"): "model", ("POST", "/show"): "show", ("POST", "/name"): "name",
        ("GET", "/ps"): "ps", ("POST", "/load"): "load", ("POST", "/unload"): "unload",
        ("POST", "/completion"): "completion", ("POST", "/create"): "create",
        ("POST", "/copy"): "copy", ("POST", "/delete"): "delete",
    }

    def log_message(self, fmt, *args) -> None:
        log.debug("engine: " + fmt, *args)

    def address_string(self) -> str:
        return "front"

    # --- plumbing ---------------------------------------------------------------------

    def send_json(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def body_chunks(self):
        """The request body as it arrives (the front sends chunked or sized bodies)."""
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
                raise Refusal(400, "unexpected EOF in request body")
            remaining -= len(chunk)
            yield chunk

    def json_body(self) -> dict:
        return json.loads(b"".join(self.body_chunks()) or b"{}")

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def stream_line(self, obj: dict) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def dispatch(self) -> None:
        try:
            if self.path.startswith("/blobs/") and self.command in ("HEAD", "POST"):
                self.blob(self.path[len("/blobs/"):])
                return
            route = self.ROUTES.get((self.command, self.path))
            if route is None:
                raise Refusal(404, f"no engine route {self.command} {self.path}")
            getattr(self, f"do_{route}")()
        except Refusal as refusal:
            self.send_json(refusal.status, {"error": refusal.message, "kind": refusal.kind})
        except (BrokenPipeError, ConnectionResetError):
            log.info("the front went away during %s %s", self.command, self.path)
        except Exception as error:  # a bug in the stand-in: report it, stay up
            log.exception("unhandled error in %s %s", self.command, self.path)
            with contextlib.suppress(OSError):
                self.send_json(500, {"error": str(error)})

    do_GET = do_POST = do_HEAD = dispatch

    # --- the store ---------------------------------------------------------------------

    def do_health(self) -> None:
        self.send_json(200, {})

    def do_models(self) -> None:
        models = []
        for name in self.backend.store.names():
            try:
                models.append(self.backend.model(name.display))
            except (Refusal, StoreError, ValueError) as error:
                log.warning("skipping %s: %s", name.display, error)
        self.send_json(200, {"models": models})

    def do_model(self) -> None:
        self.send_json(200, self.backend.model(self.json_body().get("model")))

    def do_name(self) -> None:
        name = lookup_name(self.json_body().get("model"))
        self.send_json(200, {"host": name.host, "namespace": name.namespace,
                             "model": name.model, "tag": name.tag})

    def do_show(self) -> None:
        body = self.json_body()
        info = self.backend.model(body.get("model"))
        gguf = _shown_gguf(info["path"], bool(body.get("verbose")))
        model_info = {key: value for key, value in gguf.metadata.items()
                      if key not in ("general.name", "tokenizer.chat_template")}
        model_info["general.parameter_count"] = gguf.parameter_count
        params = "\n".join(
            f"{key:<30} {json.dumps(v) if isinstance(v, str) else v}"
            for key, value in info["params"].items()
            for v in (value if isinstance(value, list) else [value]))
        modelfile = (f'# Modelfile generated by "ollama show"\n'
                     f"# To build a new Modelfile based on this, replace FROM with:\n"
                     f"# FROM {info['name']}\n\n"
                     f"FROM {info['path']}\n"
                     f'TEMPLATE """{info["template"]}"""\n' + "".join(
                         f"PARAMETER {line}\n" for line in params.splitlines()))
        self.send_json(200, {**info, "modelfile": modelfile, "parameters": params,
                             "model_info": model_info, "tensors": gguf.tensors})

    def do_ps(self) -> None:
        models = []
        for loaded in self.backend.scheduler.running():
            expires = loaded.expires_at()
            models.append({
                "name": loaded.ref.name, "digest": loaded.ref.digest,
                "details": loaded.ref.details, "memory": loaded.memory,
                "expires_at": expires, "context_length": loaded.num_ctx,
            })
        self.send_json(200, {"models": models})

    def blob(self, digest: str) -> None:
        store = self.backend.store
        try:
            exists = store.has_blob(digest)
        except StoreError as error:
            raise Refusal(400, str(error)) from None
        if self.command == "HEAD":
            self.send_response(200 if exists else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            created = store.write_blob_stream(digest, self.body_chunks())
        except DigestMismatch as error:
            raise Refusal(400, str(error)) from None
        self.send_json(201 if created else 200, {})

    def do_copy(self) -> None:
        body = self.json_body()
        source = lookup_name(body.get("source"), "invalid_source")
        target = lookup_name(body.get("destination"), "invalid_destination")
        try:
            manifest = self.backend.store.read_manifest(source)
        except NotFound:
            raise Refusal(404, "not found", "not_found") from None
        self.backend.store.write_manifest(target, manifest["config"], manifest["layers"])
        self.send_json(200, {})

    def do_delete(self) -> None:
        """The manifest, then its layers no other manifest uses (Ollama's RemoveLayers,
        whatever OLLAMA_NOPRUNE says: that only concerns the prune at start)."""
        name = lookup_name(self.json_body().get("model"))
        store = self.backend.store
        try:
            manifest = store.read_manifest(name)
        except NotFound:
            raise Refusal(404, "not found", "not_found") from None
        self.backend.scheduler.unload(name.display)
        store.delete_manifest(name)
        store.remove_layers(manifest)
        self.send_json(200, {})

    def do_create(self) -> None:
        body = self.json_body()
        name = lookup_name(body.get("model"))
        statuses: list[str] = []
        try:
            layers, config = self._create_layers(body, statuses)
            statuses.append("writing manifest")
            self.backend.store.write_manifest(name, config, layers)
            statuses.append("success")
        except (StoreError, GGUFError) as error:
            if not statuses:
                raise Refusal(400, str(error)) from None
            self.start_stream()
            for status in statuses:
                self.stream_line({"status": status})
            self.stream_line({"error": str(error), "http_status": 400})
            self.end_stream()
            return
        self.start_stream()
        for status in statuses:
            self.stream_line({"status": status})
        self.end_stream()

    def _create_layers(self, body: dict, statuses: list[str]) -> tuple[list[dict], dict]:
        store = self.backend.store
        layers: list[dict] = []
        config: dict = {"model_format": "gguf", "architecture": "amd64", "os": "linux"}
        if body.get("from"):
            try:
                base = self.backend.model(body["from"])
            except Refusal:
                raise StoreError(f"base model '{body['from']}' not found") from None
            base_manifest = store.read_manifest(ModelName.parse(base["name"]))
            layers = [dict(layer) for layer in base_manifest["layers"]]
            base_config = json.loads(store.read_blob(base_manifest["config"]["digest"]))
            config.update({k: v for k, v in base_config.items() if k != "rootfs"})
        files = body.get("files") or {}
        if not files and not body.get("from"):
            raise StoreError("neither 'from' or 'files' was specified")
        for filename, digest in files.items():
            layers = self._file_layer(filename, digest, layers, config, statuses)
        if not any(layer["mediaType"] == MEDIA_MODEL for layer in layers):
            raise StoreError("no model layer: files must include a GGUF model")

        def put_text(media: str, text: str) -> None:
            nonlocal layers
            layers = [layer for layer in layers if layer["mediaType"] != media]
            entry = store.write_blob_bytes(text.encode())
            layers.append({"mediaType": media, **entry})
            statuses.append(f"creating new layer {entry['digest']}")

        if body.get("template"):
            put_text(MEDIA_TEMPLATE, body["template"])
        if body.get("system"):
            put_text(MEDIA_SYSTEM, body["system"])
        # Ollama's setLicense: one layer per licence, added to those of `from`.
        for text in licenses_of(body.get("license")):
            entry = store.write_blob_bytes(text.encode())
            layers.append({"mediaType": MEDIA_LICENSE, **entry})
            statuses.append(f"creating new layer {entry['digest']}")
        if body.get("parameters"):
            # Stored as given: Ollama checks types when a request uses them.
            put_text(MEDIA_PARAMS, json.dumps(body["parameters"], sort_keys=True))
        config["rootfs"] = {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}
        config_entry = store.write_blob_bytes(json.dumps(config, sort_keys=True).encode())
        return layers, {"mediaType": CONFIG_MEDIA_TYPE, **config_entry}

    def _file_layer(self, filename: str, digest: str, layers: list[dict], config: dict,
                    statuses: list[str]) -> list[dict]:
        store = self.backend.store
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
        return layers

    # --- inference -----------------------------------------------------------------------

    def _job(self) -> tuple[dict, dict, dict]:
        job = self.json_body()
        info = self.backend.model(job.get("model"))
        return job, info, job["options"]

    def do_load(self) -> None:
        job, info, options = self._job()
        try:
            self.backend.scheduler.load(self.backend.ref(info), options["num_ctx"],
                                        job.get("keep_alive"))
        except QueueFull as error:
            raise Refusal(503, str(error)) from None
        self.send_json(200, {})

    def do_unload(self) -> None:
        self.backend.scheduler.unload(lookup_name(self.json_body().get("model")).display)
        self.send_json(200, {})

    def do_completion(self) -> None:
        started = time.perf_counter_ns()
        job, info, options = self._job()
        if job.get("images") and "vision" not in info["capabilities"]:
            raise Refusal(500, "this model is missing data required for image input")
        grammar = _grammar(job.get("format"))
        keep_alive = job.get("keep_alive")
        scheduler = self.backend.scheduler
        try:
            loaded, slot, _load_only = scheduler.acquire(self.backend.ref(info), options["num_ctx"],
                                             keep_alive)
        except QueueFull as error:
            raise Refusal(503, str(error)) from None
        load_ns = time.perf_counter_ns() - started
        stats = Generation()
        tokens = list(job.get("context") or [])
        prompt = job["prompt"]

        def work(llama):
            tokens.extend(llama.tokenize(prompt.encode(), add_bos=not tokens, special=True))
            yield from generate(llama, tokens, options, stats, grammar=grammar)

        pieces = slot.run(work)
        try:
            try:
                first = next(pieces, None)
            except GenerationError as error:
                raise Refusal(400, str(error)) from None
            self.start_stream()
            try:
                if first is not None:
                    self.stream_line({"content": first})
                    for text in pieces:
                        self.stream_line({"content": text})
                final = {"done": True, "done_reason": stats.done_reason,
                         "load_duration": load_ns,
                         "prompt_eval_count": stats.prompt_eval_count,
                         "prompt_eval_duration": stats.prompt_eval_duration,
                         "eval_count": stats.eval_count, "eval_duration": stats.eval_duration}
                if job.get("want_context"):
                    final["context"] = tokens + stats.tokens
                self.stream_line(final)
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as error:  # the stream began: report it in-band, as Ollama does
                log.exception("generation failed mid-stream")
                self.stream_line({"error": str(error)})
            self.end_stream()
        finally:
            pieces.close()
            scheduler.release(loaded, slot, keep_alive)


@functools.lru_cache(maxsize=16)
def _shown_gguf(path: str, verbose: bool):
    """What /api/show reads of a model file; a blob's name is its digest, so it never changes
    under one path (Ollama caches its show answers too)."""
    return read_gguf(path, keep_arrays=None if verbose else 5, tensors=True)


def _grammar(fmt):
    """A llama.cpp grammar for format "json" or a JSON schema (the front checked the shape)."""
    if not fmt or fmt == "":
        return None
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    if fmt == "json":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    return LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)


class UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 1024


def make_server(socket_path: str, settings: Settings | None = None,
                backend: Backend | None = None) -> UnixServer:
    settings = settings or Settings()
    backend = backend or Backend(settings)
    handler = type("BoundHandler", (Handler,), {"backend": backend})
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server = UnixServer(socket_path, handler)
    os.chmod(socket_path, 0o600)
    server.backend = backend
    return server


def _follow_the_front(stop) -> None:
    """The engine serves only the front that started it: when that process is gone
    (killed, crashed), the engine stops too instead of running on unreachable."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    log.info("the front (pid %d) is gone: stopping", parent)
    stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The Ollama stand-in's engine (lab only)")
    parser.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("OLLAMA_STANDIN_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make_server(args.socket)
    log.info("engine listening on %s, models in %s", args.socket, server.backend.settings.models)
    stop = lambda *_: threading.Thread(target=server.shutdown, daemon=True).start()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=_follow_the_front, args=(stop,), daemon=True).start()
    try:
        server.serve_forever()
    finally:
        server.backend.scheduler.shutdown()
        server.server_close()
        with contextlib.suppress(OSError):
            os.unlink(args.socket)


if __name__ == "__main__":
    main()
