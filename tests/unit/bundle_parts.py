"""Small Ollama stores, docker save tars and bundles for the unit tests.

Bundles are made the way prepare makes them: ollama_store exports the models and
bundle_manifest seals the result. The forging helpers then do what a forger (or a
careless hand) would: change the content and write a SHA256SUMS that agrees with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import bundle_manifest
import ollama_store

SKIP = ("SHA256SUMS", ".hashcache.json")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(store: Path, data: bytes) -> dict:
    digest = sha256(data)
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def model(store: Path, name_parts, weights: bytes, template: bytes = b"{{ .Prompt }}"):
    config = blob(store, b'{"model_family":"gemma3"}')
    layers = [{"mediaType": "application/vnd.ollama.image.model", **blob(store, weights)},
              {"mediaType": "application/vnd.ollama.image.template", **blob(store, template)}]
    path = store.joinpath("manifests", *name_parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schemaVersion": 2, "config": config, "layers": layers}))
    return layers


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def docker_save_tar(path: Path, config: bytes, oci: bool = False, extra_configs=(),
                    index: bytes | None = None, oci_index: bytes | None = None) -> str:
    """A tar shaped like `docker save` (legacy or OCI layout); returns the image ID.

    With oci_index (the blob of an OCI image index), index.json lists it and the ID is
    its digest, as an engine with the containerd image store reports it.
    """
    configs = [config, *extra_configs]
    names = [f"blobs/sha256/{sha256(c)}" if oci else f"{sha256(c)}.json" for c in configs]
    layer = b"layer of " + config
    entries = [{"Config": name, "RepoTags": [f"lab/image{i}:1"],
                "Layers": [f"blobs/sha256/{sha256(layer)}"]} for i, name in enumerate(names)]
    with tarfile.open(path, "w") as tar:
        add_member(tar, f"blobs/sha256/{sha256(layer)}", layer)
        for name, data in zip(names, configs, strict=True):
            add_member(tar, name, data)
        add_member(tar, "manifest.json", index if index is not None else
                   json.dumps(entries).encode())
        if oci_index is not None:
            add_member(tar, f"blobs/sha256/{sha256(oci_index)}", oci_index)
            listing = {"manifests": [{"digest": f"sha256:{sha256(oci_index)}"}]}
            add_member(tar, "index.json", json.dumps(listing).encode())
            return f"sha256:{sha256(oci_index)}"
    return f"sha256:{sha256(config)}"


def build_bundle(root: Path, version: str = "v1") -> Path:
    """<root>/<version>: one model (tiny:v1) and two images (ollama legacy, gateway OCI)."""
    bundle = root / version
    store = root / "staging"
    model(store, ("registry.ollama.ai", "library", "tiny", "v1"), b"T" * 5000)
    exported = ollama_store.run(str(store), str(bundle / "models"), ["tiny:v1"], False,
                                cache_path=str(root / "staging.hashcache.json"))
    (bundle / "images").mkdir()
    images = []
    for name, oci in (("ollama", False), ("gateway", True)):
        config = json.dumps({"architecture": "amd64", "config": {"Labels": {"n": name}}})
        image_id = docker_save_tar(bundle / "images" / f"{name}.tar", config.encode(), oci=oci)
        images.append({"name": name, "image": f"lab/{name}:1", "file": f"images/{name}.tar",
                       "id": image_id})
    bundle_manifest.seal(str(bundle), version, {"images": images, "models": exported["models"]},
                         1, True, False)
    return bundle


def forge_sums(bundle: Path) -> None:
    """Write a SHA256SUMS that agrees with whatever the bundle holds now."""
    lines = []
    for path in sorted(p for p in bundle.rglob("*") if p.is_file() and p.name not in SKIP):
        lines.append(f"{sha256(path.read_bytes())}  {path.relative_to(bundle)}\n")
    (bundle / "SHA256SUMS").write_text("".join(lines))


def forge_manifest(bundle: Path, **changes) -> None:
    """Change keys of bundle.json (the version, a record) and agree SHA256SUMS with it."""
    meta = json.loads((bundle / "bundle.json").read_text())
    meta.update(changes)
    (bundle / "bundle.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    forge_sums(bundle)


def tree(root: Path) -> dict:
    """Everything under root (links recorded, never followed), to prove nothing changed."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_file():
                found[key] = ("file", path.read_bytes())
            else:
                found[key] = ("dir", None)
    return found
