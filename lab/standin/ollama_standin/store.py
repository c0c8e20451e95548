"""Ollama's on-disk model store, read and written as Ollama does.

Layout under OLLAMA_MODELS:
  manifests/<host>/<namespace>/<model>/<tag>   Docker manifest v2 JSON
  blobs/sha256-<hex>                            content-addressed; name = sha256 of bytes

Every write goes to a temporary file in the same directory and is renamed into
place, so a reader never sees half a blob or half a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_LICENSE = "application/vnd.ollama.image.license"

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,349}$")
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_CHUNK = 1 << 20


class StoreError(Exception):
    """A store operation failed; the message says why."""


class InvalidName(StoreError):
    pass


class NotFound(StoreError):
    pass


class DigestMismatch(StoreError):
    pass


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, raw: str) -> ModelName:
        """Parse `[host/][namespace/]model[:tag]` with Ollama's defaults."""
        if not raw or not isinstance(raw, str):
            raise InvalidName("invalid model name")
        name, tag = raw, DEFAULT_TAG
        last = raw.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = raw.rsplit(":", 1)
        parts = name.split("/")
        if len(parts) > 3:
            raise InvalidName("invalid model name")
        model = parts[-1]
        namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
        host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
        if not (_PART.match(model) and _PART.match(namespace) and _PART.match(tag)
                and _HOST.match(host)):
            raise InvalidName("invalid model name")
        return cls(host, namespace, model, tag)

    @property
    def display(self) -> str:
        """The short name Ollama shows (`gemma3:270m`, `user/model:tag`)."""
        prefix = ""
        if self.host != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def relative_path(self) -> Path:
        return Path(self.host, self.namespace, self.model, self.tag)


def parse_digest(raw: str) -> str:
    """Return the hex of `sha256:<hex>` (or `sha256-<hex>`); raise on anything else."""
    match = _DIGEST.match(raw or "")
    if not match:
        raise StoreError("invalid digest format")
    return match.group(1)


def now_rfc3339(timestamp: float | None = None) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC) if timestamp else datetime.now(UTC)
    return moment.isoformat().replace("+00:00", "Z")


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.manifests = self.root / "manifests"
        self.blobs = self.root / "blobs"
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.blobs.mkdir(parents=True, exist_ok=True)

    # --- blobs -----------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / f"sha256-{parse_digest(digest)}"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def write_blob_stream(self, digest: str, chunks: Iterator[bytes]) -> bool:
        """Store a blob from chunks, verifying its digest. Returns False if it existed."""
        expected = parse_digest(digest)
        target = self.blob_path(digest)
        if target.is_file():
            for _ in chunks:  # drain the request body
                pass
            return False
        hasher = hashlib.sha256()
        fd, partial = tempfile.mkstemp(dir=self.blobs, prefix=f"sha256-{expected}-partial-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    out.write(chunk)
            actual = hasher.hexdigest()
            if actual != expected:
                raise DigestMismatch(
                    f'digest mismatch, expected "sha256:{expected}", got "sha256:{actual}"')
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return True

    def write_blob_bytes(self, data: bytes) -> dict:
        """Store small content (template, params, config) and return its layer entry."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.write_blob_stream(digest, iter([data]))
        return {"digest": digest, "size": len(data)}

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    # --- manifests ---------------------------------------------------------------

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests / name.relative_path

    def read_manifest(self, name: ModelName) -> dict:
        path = self.manifest_path(name)
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            raise NotFound(f"model '{name.display}' not found") from None
        except json.JSONDecodeError as error:
            raise StoreError(f"manifest {path} is not valid JSON: {error}") from None

    def manifest_digest(self, name: ModelName) -> str:
        return hashlib.sha256(self.manifest_path(name).read_bytes()).hexdigest()

    def manifest_mtime(self, name: ModelName) -> float:
        return self.manifest_path(name).stat().st_mtime

    def write_manifest(self, name: ModelName, config: dict, layers: list[dict]) -> dict:
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config,
            "layers": layers,
        }
        for entry in [config, *layers]:
            if not self.has_blob(entry["digest"]):
                raise StoreError(f"blob {entry['digest']} is missing from the store")
        self._write_atomic(self.manifest_path(name), json.dumps(manifest).encode())
        return manifest

    def delete_manifest(self, name: ModelName) -> None:
        path = self.manifest_path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFound(f"model '{name.display}' not found") from None
        # Drop now-empty directories up to manifests/.
        for parent in path.parents:
            if parent == self.manifests:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def names(self) -> list[ModelName]:
        found = []
        for path in sorted(self.manifests.glob("*/*/*/*")):
            if path.is_file() and ".tmp-" not in path.name:
                host, namespace, model, tag = path.relative_to(self.manifests).parts
                found.append(ModelName(host, namespace, model, tag))
        return found

    # --- housekeeping -----------------------------------------------------------

    def referenced_digests(self) -> set[str]:
        referenced = set()
        for name in self.names():
            try:
                manifest = self.read_manifest(name)
            except StoreError:
                continue
            for entry in [manifest.get("config", {}), *manifest.get("layers", [])]:
                if "digest" in entry:
                    referenced.add(parse_digest(entry["digest"]))
        return referenced

    def remove_layers(self, manifest: dict) -> list[str]:
        """Delete the blobs of a removed manifest that no remaining manifest references."""
        keep = self.referenced_digests()
        removed = []
        for entry in [manifest.get("config", {}), *manifest.get("layers", [])]:
            hex_digest = parse_digest(entry.get("digest", ""))
            path = self.blobs / f"sha256-{hex_digest}"
            if hex_digest not in keep and path.exists():
                path.unlink()
                removed.append(path.name)
        return removed

    def prune(self, grace_seconds: float = 0) -> list[str]:
        """Delete blobs (and partial downloads) that no manifest references.

        A blob modified less than `grace_seconds` ago is left alone, as Ollama's
        start-up prune leaves blobs younger than an hour.
        """
        keep = self.referenced_digests()
        removed = []
        now = time.time()
        for path in self.blobs.iterdir():
            name = path.name
            if grace_seconds and now - path.stat().st_mtime < grace_seconds:
                continue
            hex_part = name[len("sha256-"):] if name.startswith("sha256-") else ""
            if hex_part not in keep:
                path.unlink()
                removed.append(name)
        return removed

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(partial, 0o644)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
