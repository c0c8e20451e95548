#!/usr/bin/python
# -*- coding: utf-8 -*-
# gemma-airgap: move Ollama models between stores without a registry.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ollama_store
short_description: Copy named Ollama models from one on-disk store to another, verified
description:
  - Copies the manifests and blobs of the named models from the Ollama store at
    O(src) (an C(OLLAMA_MODELS) directory: C(manifests/) and C(blobs/)) to the
    store at O(dest). Used to export models from a staging Ollama into a bundle,
    and to import them from the bundle into a target's store.
  - Every blob is hashed while it is copied and renamed into place only if its
    digest matches its name, so a corrupt blob in O(src) fails the task naming the
    blob and its model, and nothing half-written ever appears in O(dest).
  - A model's manifest is written last, after all its blobs, so Ollama sees a
    model only when it is complete. Blobs already in O(dest) with the right size
    are not copied again (they were verified when written).
  - Stdlib only, so it runs on closed-network targets.
version_added: "0.1.0"
author: gemma-airgap
options:
  src:
    description: The source store (contains C(manifests/) and C(blobs/)).
    type: path
    required: true
  dest:
    description: The destination store; created if missing.
    type: path
    required: true
  models:
    description:
      - Model names as Ollama writes them (C(gemma3n:e4b), C(namespace/model:tag)).
      - Empty means every model in O(src).
    type: list
    elements: str
    default: []
  owner:
    description: Owner (numeric or name) of what is written; unchanged if unset.
    type: str
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
requirements:
  - Python standard library only.
seealso:
  - module: bundle_manifest
"""

EXAMPLES = r"""
- name: Export the configured models from the staging Ollama into the bundle
  ollama_store:
    src: /srv/staging/ollama
    dest: /srv/bundles/2026.11.25-1/models
    models: [gemma3n:e4b, gemma3n:e2b]

- name: Import every model of the bundle into the target's store
  ollama_store:
    src: /opt/gemma-airgap/releases/current/models
    dest: /var/lib/gemma-airgap/ollama
"""

RETURN = r"""
models:
  description: Each model copied or found up to date.
  returned: always
  type: list
  elements: dict
  sample:
    - name: gemma3n:e4b
      manifest_digest: 8d1b...
      size: 7547579000
      layers: 4
copied_blobs:
  description: Blobs written to O(dest) this run.
  returned: always
  type: int
  sample: 0
copied_bytes:
  description: Bytes written to O(dest) this run.
  returned: always
  type: int
  sample: 0
"""

import hashlib
import json
import os
import pwd
import re

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.gemma_airgap_files import (
    ChecksumMismatch,
    copy_verified,
    write_atomic,
)

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
TMP = ".gemma-airgap-partial"


class StoreError(Exception):
    pass


def parse_name(raw):
    """(host, namespace, model, tag) of an Ollama model name, with Ollama's defaults."""
    name, tag = raw, DEFAULT_TAG
    if ":" in raw.rsplit("/", 1)[-1]:
        name, tag = raw.rsplit(":", 1)
    parts = name.split("/")
    if not 1 <= len(parts) <= 3:
        raise StoreError("invalid model name %r" % raw)
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
    for part in (namespace, model, tag):
        if not PART.match(part):
            raise StoreError("invalid model name %r" % raw)
    return host, namespace, model, tag


def display_name(parts):
    host, namespace, model, tag = parts
    prefix = ""
    if host != DEFAULT_HOST:
        prefix = "%s/%s/" % (host, namespace)
    elif namespace != DEFAULT_NAMESPACE:
        prefix = "%s/" % namespace
    return "%s%s:%s" % (prefix, model, tag)


def manifest_path(store, parts):
    return os.path.join(store, "manifests", *parts)


def store_models(store):
    """Every model name in a store."""
    root = os.path.join(store, "manifests")
    found = []
    for directory, _dirs, files in os.walk(root):
        relative = os.path.relpath(directory, root).split(os.sep)
        if len(relative) == 3:
            for tag in files:
                if not tag.startswith("."):
                    found.append(display_name((*relative, tag)))
    return sorted(found)


def read_manifest(store, name):
    parts = parse_name(name)
    path = manifest_path(store, parts)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except (IOError, OSError):
        available = ", ".join(store_models(store)) or "none"
        raise StoreError("model %r is not in the store at %s (models there: %s)"
                         % (name, store, available)) from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
        entries = [manifest["config"], *manifest["layers"]]
        for entry in entries:
            if not DIGEST.match(entry.get("digest", "")):
                raise ValueError("bad digest %r" % entry.get("digest"))
            int(entry["size"])
    except (ValueError, KeyError, TypeError) as error:
        raise StoreError("manifest of %r at %s is not a valid Ollama manifest: %s"
                         % (name, path, error)) from None
    return parts, raw, entries


def blob_path(store, digest):
    return os.path.join(store, "blobs", "sha256-" + DIGEST.match(digest).group(1))


def plan(src, dest, names):
    """What to copy: [(name, parts, manifest bytes, entries, missing entries, manifest stale)]."""
    result = []
    for name in names:
        parts, raw, entries = read_manifest(src, name)
        missing = []
        for entry in entries:
            target = blob_path(dest, entry["digest"])
            if not (os.path.isfile(target) and os.path.getsize(target) == int(entry["size"])):
                missing.append(entry)
        current = manifest_path(dest, parts)
        try:
            with open(current, "rb") as handle:
                stale = handle.read() != raw
        except (IOError, OSError):
            stale = True
        result.append((name, parts, raw, entries, missing, stale))
    return result


def chown_tree(path, uid):
    if uid is None:
        return
    for directory, dirs, files in os.walk(path):
        os.chown(directory, uid, -1)
        for name in dirs + files:
            os.lchown(os.path.join(directory, name), uid, -1)


def resolve_owner(owner):
    if owner in (None, ""):
        return None
    if str(owner).isdigit():
        return int(owner)
    return pwd.getpwnam(owner).pw_uid


def run(src, dest, names, check_mode, uid=None):
    if not os.path.isdir(os.path.join(src, "manifests")):
        raise StoreError("%s is not an Ollama store (no manifests/ directory)" % src)
    names = names or store_models(src)
    if not names:
        raise StoreError("the store at %s holds no models" % src)
    work = plan(src, dest, names)
    copied_blobs = copied_bytes = 0
    changed = False
    models = []
    seen = set()
    for name, parts, raw, entries, missing, stale in work:
        for entry in missing:
            changed = True
            if check_mode or entry["digest"] in seen:
                continue
            seen.add(entry["digest"])
            source = blob_path(src, entry["digest"])
            if not os.path.isfile(source):
                raise StoreError("blob %s of model %r is missing from %s"
                                 % (entry["digest"], name, src))
            if os.path.getsize(source) != int(entry["size"]):
                raise StoreError("blob %s of model %r has %d bytes, its manifest says %d: "
                                 "the store is corrupt or a copy was cut short"
                                 % (entry["digest"], name, os.path.getsize(source),
                                    int(entry["size"])))
            target = blob_path(dest, entry["digest"])
            try:
                copied_bytes += copy_verified(source, target, entry["digest"][7:],
                                              tmp_dir=os.path.join(dest, TMP))
            except ChecksumMismatch as error:
                raise StoreError("blob %s of model %r is corrupt: its content hashes to "
                                 "sha256:%s" % (entry["digest"], name, error.actual)) from None
            copied_blobs += 1
        if stale:
            changed = True
            if not check_mode:
                write_atomic(manifest_path(dest, parts), raw)
        models.append({
            "name": display_name(parts),
            "manifest_digest": hashlib.sha256(raw).hexdigest(),
            "size": sum(int(e["size"]) for e in entries),
            "layers": len(entries) - 1,
        })
    if not check_mode:
        tmp = os.path.join(dest, TMP)
        if os.path.isdir(tmp) and not os.listdir(tmp):
            os.rmdir(tmp)
        if changed:
            chown_tree(dest, uid)
    return {"changed": changed, "models": models, "copied_blobs": copied_blobs,
            "copied_bytes": copied_bytes}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            models=dict(type="list", elements="str", default=[]),
            owner=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        result = run(params["src"], params["dest"], params["models"], module.check_mode,
                     resolve_owner(params["owner"]))
    except StoreError as error:
        module.fail_json(msg=str(error))
    except (IOError, OSError, KeyError) as error:
        module.fail_json(msg="copying models from %s to %s failed: %s"
                             % (params["src"], params["dest"], error))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
