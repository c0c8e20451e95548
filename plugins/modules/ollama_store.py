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
  - "Copies the manifests and blobs of the named models from the Ollama store at
    O(src) (an C(OLLAMA_MODELS) directory, with C(manifests/) and C(blobs/)) to the
    store at O(dest). Used to export models from a staging Ollama into a bundle,
    and to import them from the bundle into a target's store."
  - Every blob is hashed while it is copied and renamed into place only if its
    digest matches its name, so a corrupt blob in O(src) fails the task naming the
    blob and its model, and nothing half-written ever appears in O(dest).
  - A model's manifest is written last, after all its blobs, so Ollama sees a
    model only when it is complete.
  - A blob already in O(dest) is kept only when its content hashes to its name; any
    other (truncated, same size but corrupt, not a regular file) is replaced from
    O(src) and reported in RV(repaired_blobs). The O(src) blob it stands for is
    verified too, so a source whose blob file is named for another digest is refused
    even when O(dest) already holds that model.
  - Digests of verified blobs are kept in O(hash_cache), keyed by path, inode, size,
    modification and change time (ns); a blob whose stat changed in any way is hashed
    again, so an unchanged re-run reads no blob.
  - Model names and manifests are checked before use; a name with a C(..) part or a
    malformed manifest fails naming it.
  - Each model's record carries the shape of its weights from their GGUF header
    (architecture, layers, K/V heads and their lengths), what the GPU memory estimate
    of host_preflight needs; the header is read within fixed limits, and one that
    cannot be read is named in the record instead (C(gguf_problem)), without failing.
  - Stdlib only, so it runs on closed-network targets.
version_added: "0.1.0"
author: gemma-airgap developers (@gemma-airgap)
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
  digests:
    description:
      - Manifest digests (C(sha256:<hex>) or the bare hex, as C(/api/tags) shows them) the
        named models must have, by model name as in O(models).
      - A model whose manifest hashes to anything else is refused, naming both digests,
        before any file is written; models not named here are not checked.
    type: dict
    default: {}
  hash_cache:
    description:
      - The JSON file that keeps digests of verified blobs (written atomically).
      - Default C(.<name>.hashcache.json) beside O(dest), never inside a store. Set it
        when O(dest) is inside a bundle, so the cache stays out of the bundle.
    type: path
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
requirements:
  - Python standard library only.
seealso:
  - module: gemma_airgap.ollama.bundle_manifest
  - module: gemma_airgap.ollama.bundle_consistency
"""

EXAMPLES = r"""
- name: Export the configured models from the staging Ollama into the bundle
  gemma_airgap.ollama.ollama_store:
    src: /srv/staging/ollama
    dest: /srv/bundles/2026.11.25-1/models
    models: [gemma3n:e4b, gemma3n:e2b]
    hash_cache: /srv/bundles/.staging/2026.11.25-1.models.hashcache.json

- name: Import every model of the bundle into the target's store
  gemma_airgap.ollama.ollama_store:
    src: /opt/gemma-airgap/releases/current/models
    dest: /var/lib/gemma-airgap/ollama
"""

RETURN = r"""
models:
  description:
    - Each model copied or found up to date, with the shape of its weights read from their
      GGUF header (C(gguf)), or why that header could not be read (C(gguf_problem)).
  returned: always
  type: list
  elements: dict
  sample:
    - name: gemma3n:e4b
      manifest_digest: 8d1b...
      size: 7547579000
      layers: 4
      gguf: {architecture: gemma3n, block_count: 35, context_length: 32768,
             embedding_length: 2048, head_count_kv: 2, key_length: 256, value_length: 256,
             sliding_window: 512, shared_kv_layers: 15, file_type: 15}
pinned:
  description: The models O(digests) pinned (each checked), named as Ollama writes them.
  returned: always
  type: list
  elements: str
  sample: [gemma3n:e4b]
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
repaired_blobs:
  description: Blobs that were in O(dest) but wrong, replaced (or, in check mode, to be replaced).
  returned: always
  type: list
  elements: dict
  sample:
    - {digest: "sha256:ab12...", model: "gemma3n:e4b", reason: "content hashes to sha256:9f3c..."}
hashed_bytes:
  description: Bytes read to verify blobs already in place (0 on an unchanged re-run).
  returned: always
  type: int
  sample: 0
"""

import hashlib
import json
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_files import (
    ChecksumMismatch,
    UnsafeFile,
    copy_verified,
    read_regular,
    sha256_file,
    write_atomic,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_gguf import (
    GGUFError,
    read_shape,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_ollama import (
    MANIFEST_LIMIT,
    blob_name,
    display_name,
    manifest_entries,
    manifest_path,
    parse_name,
)

TMP = ".gemma-airgap-partial"
MODEL_LAYER = "application/vnd.ollama.image.model"
CACHE_LIMIT = 64 * 1024 * 1024


class StoreError(Exception):
    pass


class HashCache(object):
    """Digests of blobs, trusted only while the file's stat is exactly what it was.

    Keyed by absolute path with inode, size, mtime_ns and ctime_ns: a rewrite, a
    truncation or a replacement changes one of them and the blob is hashed again;
    ctime also catches a rewrite whose mtime was set back (utime cannot set ctime).
    The file lives beside the store, not in it: the store is Ollama's tree.
    """

    def __init__(self, path):
        self.path = path
        self.known = self._load(path)
        self.fresh = {}  # what this run found: the next run's cache
        self.hashed_bytes = 0

    @staticmethod
    def _load(path):
        try:
            data = json.loads(read_regular(path, CACHE_LIMIT).decode("utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return dict((k, v) for k, v in data.items() if isinstance(v, list) and len(v) == 5)

    @staticmethod
    def stamp(path):
        info = os.lstat(path)
        return [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]

    def digest(self, path):
        """Hex sha256 of the regular file at path: from the cache while its stat holds."""
        path = os.path.abspath(path)
        before = self.stamp(path)
        entry = self.known.get(path)
        if entry and entry[:4] == before:
            self.fresh[path] = entry
            return entry[4]
        actual = sha256_file(path)
        self.hashed_bytes += before[1]
        # A file that changed while it was read is not remembered.
        if self.stamp(path) == before:
            self.fresh[path] = [*before, actual]
        return actual

    def remember(self, path, stamp, digest):
        self.fresh[os.path.abspath(path)] = [*stamp, digest]

    def save(self):
        """Keep what this run found (and only that), when it differs from the file."""
        if self.fresh != self.known:
            write_atomic(self.path, json.dumps(self.fresh, sort_keys=True).encode("utf-8"))


def default_cache(dest):
    dest = os.path.abspath(dest)
    return os.path.join(os.path.dirname(dest), ".%s.hashcache.json" % os.path.basename(dest))


def store_models(store):
    """Every model name in a store (as found: checked when it is read)."""
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
    try:
        parts = parse_name(name)
    except ValueError as error:
        raise StoreError("%s: a name part is letters, digits, '.', '_' and '-', starting "
                         "with a letter or digit (never '..')" % error) from None
    path = manifest_path(store, parts)
    try:
        raw = read_regular(path, MANIFEST_LIMIT)
        entries = manifest_entries(raw)
    except UnsafeFile as error:
        raise StoreError("manifest of %r is refused: %s" % (name, error)) from None
    except OSError:
        available = ", ".join(store_models(store)) or "none"
        raise StoreError("model %r is not in the store at %s (models there: %s)"
                         % (name, store, available)) from None
    except ValueError as error:
        raise StoreError("manifest of %r at %s is not a valid Ollama manifest: %s"
                         % (name, path, error)) from None
    return parts, raw, entries


def blob_path(store, digest):
    return os.path.join(store, "blobs", blob_name(digest))


def check_source(src, entry, name):
    """Fail unless the source blob is a regular file of the manifest's size."""
    source = blob_path(src, entry["digest"])
    try:
        info = os.lstat(source)
    except FileNotFoundError:
        raise StoreError("blob %s of model %r is missing from %s"
                         % (entry["digest"], name, src)) from None
    if not stat.S_ISREG(info.st_mode):
        raise StoreError("blob %s of model %r in %s is not a regular file (a symlink?): "
                         "the store is damaged or forged" % (entry["digest"], name, src))
    if info.st_size != entry["size"]:
        raise StoreError("blob %s of model %r has %d bytes, its manifest says %d: "
                         "the store is corrupt or a copy was cut short"
                         % (entry["digest"], name, info.st_size, entry["size"]))


def dest_problem(dest, entry, cache):
    """Why the blob in dest cannot stand for entry, or None when it can."""
    target = blob_path(dest, entry["digest"])
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return "missing"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size != entry["size"]:
        return "has %d bytes, not %d" % (info.st_size, entry["size"])
    actual = cache.digest(target)
    if actual != entry["digest"][7:]:
        return "content hashes to sha256:%s" % actual
    return None


def verify_source(src, entry, name, cache):
    """Refuse a source blob named for another digest, even when dest needs no copy."""
    actual = cache.digest(blob_path(src, entry["digest"]))
    if actual != entry["digest"][7:]:
        raise StoreError("blob %s of model %r is corrupt: its content in %s hashes to sha256:%s"
                         " (the file is named for another digest). The store or release is "
                         "corrupt or forged: re-make or re-copy it; nothing was written."
                         % (entry["digest"], name, src, actual))


def pinned_digest(name, value):
    """The bare lower-case hex of a pinned manifest digest; StoreError when it is none."""
    text = str(value).strip().lower()
    text = text[7:] if text.startswith("sha256:") else text
    if len(text) != 64 or any(char not in "0123456789abcdef" for char in text):
        raise StoreError("the digest pinned for %s, %r, is not a sha256 digest (64 hex digits, "
                         "optionally after sha256:)" % (name, value))
    return text


def check_pin(name, raw, pins):
    if name not in pins:
        return
    actual = hashlib.sha256(raw).hexdigest()
    if actual != pins[name]:
        raise StoreError(
            "model %s has the manifest digest sha256:%s, but sha256:%s is pinned for it: the "
            "registry now serves another build under this name (a new upload of the tag, or "
            "not the model that was checked). Check the new one and pin its digest, or pin a "
            "tag that still serves the checked build; nothing was written"
            % (name, actual, pins[name]))


def plan(src, dest, names, cache, pins=None):
    """What to copy: [(name, parts, manifest bytes, entries, missing entries, manifest stale)],
    and the blobs in dest that are wrong. Reads only; every source blob is checked first, and
    every pinned manifest digest before that."""
    pins = dict((name, pinned_digest(name, value)) for name, value in (pins or {}).items())
    unknown = sorted(set(pins) - set(names))
    if unknown:
        raise StoreError("digests are pinned for %s, which %s not among the models (%s)"
                         % (", ".join(unknown), "is" if len(unknown) == 1 else "are",
                            ", ".join(names)))
    manifests = []
    for name in names:
        parts, raw, entries = read_manifest(src, name)
        check_pin(name, raw, pins)
        manifests.append((name, parts, raw, entries))
    result, repaired, checked = [], [], {}
    for name, parts, raw, entries in manifests:
        missing = []
        for entry in entries:
            digest = entry["digest"]
            if digest not in checked:
                check_source(src, entry, name)
                checked[digest] = dest_problem(dest, entry, cache)
                if checked[digest] is None:
                    verify_source(src, entry, name, cache)
                elif checked[digest] != "missing":
                    repaired.append({"digest": digest, "model": name,
                                     "reason": checked[digest]})
            if checked[digest] is not None:
                missing.append(entry)
        current = manifest_path(dest, parts)
        try:
            stale = read_regular(current, MANIFEST_LIMIT) != raw
        except (OSError, ValueError):
            stale = True
        result.append((name, parts, raw, entries, missing, stale))
    return result, repaired


def copy_blob(src, dest, entry, name, cache, uid):
    """Copy one blob, verified in the same read; remember both files' digests.

    The copy gets its owner before its stat is taken: a later chown would change its
    ctime and cost a needless hash on the next run.
    """
    source, target = blob_path(src, entry["digest"]), blob_path(dest, entry["digest"])
    before = cache.stamp(source)
    try:
        copied = copy_verified(source, target, entry["digest"][7:],
                               tmp_dir=os.path.join(dest, TMP))
    except ChecksumMismatch as error:
        raise StoreError("blob %s of model %r is corrupt: its content hashes to "
                         "sha256:%s" % (entry["digest"], name, error.actual)) from None
    if uid is not None:
        os.lchown(target, uid, -1)
    if cache.stamp(source) == before:
        cache.remember(source, before, entry["digest"][7:])
    cache.remember(target, cache.stamp(target), entry["digest"][7:])
    return copied


def chown_tree(path, uid):
    """Give uid what it does not own yet (a chown of the rest would only touch ctimes)."""
    if uid is None:
        return
    for directory, dirs, files in os.walk(path):
        for target in [directory] + [os.path.join(directory, n) for n in dirs + files]:
            if os.lstat(target).st_uid != uid:
                os.lchown(target, uid, -1)


def resolve_owner(owner):
    if owner in (None, ""):
        return None
    if str(owner).isdigit():
        return int(owner)
    return pwd.getpwnam(owner).pw_uid


def describe(store, entries):
    """{"gguf": shape} of a model's weights (its first model layer), or {"gguf_problem": why}.

    The blob was verified by this run; its header is read within gemma_airgap_gguf's limits.
    """
    layer = next((e for e in entries[1:] if e.get("mediaType") == MODEL_LAYER), None)
    if layer is None:
        return {"gguf_problem": "the manifest has no model layer (%s)" % MODEL_LAYER}
    try:
        return {"gguf": read_shape(blob_path(store, layer["digest"]))}
    except (GGUFError, OSError) as error:
        return {"gguf_problem": "blob %s: %s" % (layer["digest"], error)}


def run(src, dest, names, check_mode, uid=None, cache_path=None, pins=None):
    if not os.path.isdir(os.path.join(src, "manifests")):
        raise StoreError("%s is not an Ollama store (no manifests/ directory)" % src)
    names = names or store_models(src)
    if not names:
        raise StoreError("the store at %s holds no models" % src)
    cache = HashCache(cache_path or default_cache(dest))
    work, repaired = plan(src, dest, names, cache, pins)
    copied_blobs = copied_bytes = 0
    changed = bool(repaired)
    models, pinned = [], []
    seen = set()
    for name, parts, raw, entries, missing, stale in work:
        for entry in missing:
            changed = True
            if check_mode or entry["digest"] in seen:
                continue
            seen.add(entry["digest"])
            copied_bytes += copy_blob(src, dest, entry, name, cache, uid)
            copied_blobs += 1
        if stale:
            changed = True
            if not check_mode:
                write_atomic(manifest_path(dest, parts), raw)
        record = {
            "name": display_name(parts),
            "manifest_digest": hashlib.sha256(raw).hexdigest(),
            "size": sum(e["size"] for e in entries),
            "layers": len(entries) - 1,
        }
        # By the name as given, reported as Ollama writes it; not in the record, which
        # bundle.json keeps: pinning a model does not change the bundle.
        if name in (pins or {}):
            pinned.append(record["name"])
        record.update(describe(src, entries))
        models.append(record)
    if not check_mode:
        tmp = os.path.join(dest, TMP)
        if os.path.isdir(tmp) and not os.listdir(tmp):
            os.rmdir(tmp)
        if changed:
            chown_tree(dest, uid)
        cache.save()
    return {"changed": changed, "models": models, "pinned": pinned, "copied_blobs": copied_blobs,
            "copied_bytes": copied_bytes, "repaired_blobs": repaired,
            "hashed_bytes": cache.hashed_bytes}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            models=dict(type="list", elements="str", default=[]),
            owner=dict(type="str"),
            hash_cache=dict(type="path"),
            digests=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        result = run(params["src"], params["dest"], params["models"], module.check_mode,
                     resolve_owner(params["owner"]), params["hash_cache"], params["digests"])
    except StoreError as error:
        module.fail_json(msg=str(error))
    except (IOError, OSError, KeyError, ValueError) as error:
        module.fail_json(msg="copying models from %s to %s failed: %s"
                             % (params["src"], params["dest"], error))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
