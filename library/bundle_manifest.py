#!/usr/bin/python
# -*- coding: utf-8 -*-
# gemma-airgap: seal and verify an offline bundle.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bundle_manifest
short_description: Write or verify a bundle's SHA256SUMS and bundle.json
description:
  - With O(state=present), hashes every file under O(path) (one read per file,
    several files at once) and writes C(SHA256SUMS) in C(sha256sum -c) format and
    C(bundle.json) (version, creation time, sizes and the given O(metadata)).
  - Incremental: a file whose size, modification time and inode match the hash
    cache (C(.hashcache.json)) is not read again, so a re-run over an unchanged
    bundle only calls C(stat). C(bundle.json) keeps its C(created_at) while its
    content is unchanged, so a second run reports no change.
  - With O(state=verified), reads every file listed in C(SHA256SUMS) and fails,
    naming each file, if one is missing, truncated or different. Nothing is
    written. Never uses the cache.
version_added: "0.1.0"
author: gemma-airgap
options:
  path:
    description: The bundle directory.
    type: path
    required: true
  state:
    description: V(present) writes the manifest; V(verified) checks the files against it.
    type: str
    choices: [present, verified]
    default: present
  version:
    description: The bundle's version, recorded in C(bundle.json). Required with O(state=present).
    type: str
  metadata:
    description: Extra keys for C(bundle.json) (images, models, platforms, tool versions).
    type: dict
    default: {}
  jobs:
    description: Files hashed at once. V(0) means one per CPU.
    type: int
    default: 0
  use_cache:
    description: Reuse hashes of files whose size, mtime and inode did not change.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
notes:
  - C(SHA256SUMS) covers C(bundle.json); it does not cover itself. Carry its own
    digest out of band (the media tar's C(.sha256)) where that matters.
requirements:
  - Python standard library only.
"""

EXAMPLES = r"""
- name: Seal the bundle
  bundle_manifest:
    path: /srv/bundles/2026.11.25-1
    version: 2026.11.25-1
    metadata:
      images: "{{ bundle_image_records }}"

- name: Verify a bundle on a closed-network target before changing anything
  bundle_manifest:
    path: /opt/gemma-airgap/releases/2026.11.25-1
    state: verified
"""

RETURN = r"""
files:
  description: Number of files covered by SHA256SUMS.
  returned: always
  type: int
  sample: 42
total_bytes:
  description: Total size of those files.
  returned: always
  type: int
  sample: 8123456789
hashed:
  description: Files actually read this run (0 on an unchanged re-run).
  returned: always
  type: int
  sample: 0
hashed_bytes:
  description: Bytes read to hash this run.
  returned: always
  type: int
  sample: 0
bad_files:
  description: With O(state=verified), each file that failed and why.
  returned: failure
  type: list
  elements: dict
  sample: [{"path": "models/blobs/sha256-ab12", "reason": "checksum mismatch"}]
manifest:
  description: The content of bundle.json.
  returned: with O(state=present)
  type: dict
"""

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.gemma_airgap_files import sha256_file, write_atomic

SUMS = "SHA256SUMS"
META = "bundle.json"
CACHE = ".hashcache.json"
# Never part of the sealed content: the sums themselves, the cache, partial files.
EXCLUDED = (SUMS, CACHE)
FORMAT = 1


def list_files(root):
    """Relative paths of every regular file under root, sorted, excluding our own state."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in files:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if relative in EXCLUDED or name.startswith(".partial-"):
                continue
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            found.append(relative)
    return sorted(found)


def stat_key(stat):
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def load_json(path, default):
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):
        return default


def hash_all(root, paths, jobs):
    """{path: hex} for the given relative paths, several at once."""
    workers = jobs or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = pool.map(lambda rel: sha256_file(os.path.join(root, rel)), paths)
        return dict(zip(paths, digests, strict=True))


def parse_sums(text):
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, path = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ValueError("%s line %d is not in sha256sum format" % (SUMS, number))
        entries.append((path, digest))
    return entries


def seal(root, version, metadata, jobs, use_cache, check_mode):
    cache_path = os.path.join(root, CACHE)
    cache = load_json(cache_path, {}) if use_cache else {}
    result = {"hashed": 0, "hashed_bytes": 0}

    # bundle.json first: it is covered by SHA256SUMS like every other file.
    meta_path = os.path.join(root, META)
    previous = load_json(meta_path, {})
    paths = [p for p in list_files(root) if p != META]
    stats = dict((p, os.stat(os.path.join(root, p))) for p in paths)
    manifest = {
        "format": FORMAT,
        "version": version,
        "files": len(paths) + 1,
        "total_bytes": sum(s.st_size for s in stats.values()),
    }
    manifest.update(metadata)
    comparable = dict(previous)
    created_at = comparable.pop("created_at", None)
    if comparable != manifest or not created_at:
        created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest["created_at"] = created_at
    meta_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    meta_changed = read_bytes(meta_path) != meta_bytes
    if meta_changed and not check_mode:
        write_atomic(meta_path, meta_bytes)

    digests = {META: hashlib.sha256(meta_bytes).hexdigest()}
    stale = []
    for path in paths:
        entry = cache.get(path)
        if entry and entry[:3] == stat_key(stats[path]):
            digests[path] = entry[3]
        else:
            stale.append(path)
    fresh = hash_all(root, stale, jobs) if stale else {}
    digests.update(fresh)
    result["hashed"] = len(fresh)
    result["hashed_bytes"] = sum(stats[p].st_size for p in fresh)

    ordered = sorted(digests)
    sums = "".join("%s  %s\n" % (digests[p], p) for p in ordered).encode("utf-8")
    sums_path = os.path.join(root, SUMS)
    sums_changed = read_bytes(sums_path) != sums
    if not check_mode:
        if sums_changed:
            write_atomic(sums_path, sums)
        new_cache = {p: [*stat_key(stats[p]), digests[p]] for p in paths}
        if new_cache != cache:
            write_atomic(cache_path, json.dumps(new_cache, sort_keys=True).encode("utf-8"))
    result.update({
        "changed": meta_changed or sums_changed,
        "files": len(ordered),
        "total_bytes": manifest["total_bytes"] + len(meta_bytes),
        "manifest": manifest,
    })
    return result


def read_bytes(path):
    """The file's bytes, or None if it does not exist."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _read_text(path):
    return read_bytes(path).decode("utf-8")


def verify(root, jobs):
    sums_path = os.path.join(root, SUMS)
    if not os.path.isfile(sums_path):
        return {"bad_files": [{"path": SUMS, "reason": "missing"}], "files": 0,
                "total_bytes": 0, "hashed": 0, "hashed_bytes": 0}
    entries = parse_sums(_read_text(sums_path))
    bad = []
    present = []
    total = 0
    for path, _digest in entries:
        full = os.path.join(root, path)
        if os.path.normpath(path).startswith("..") or os.path.isabs(path):
            bad.append({"path": path, "reason": "path outside the bundle"})
        elif not os.path.isfile(full):
            bad.append({"path": path, "reason": "missing"})
        else:
            present.append(path)
            total += os.path.getsize(full)
    actual = hash_all(root, present, jobs)
    for path, expected in entries:
        if path in actual and actual[path] != expected:
            bad.append({"path": path, "reason": "checksum mismatch",
                        "expected": expected, "actual": actual[path]})
    listed = set(p for p, _d in entries)
    for path in list_files(root):
        if path not in listed:
            bad.append({"path": path, "reason": "not listed in SHA256SUMS"})
    return {"bad_files": bad, "files": len(entries), "total_bytes": total,
            "hashed": len(actual), "hashed_bytes": total}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "verified"], default="present"),
            version=dict(type="str"),
            metadata=dict(type="dict", default={}),
            jobs=dict(type="int", default=0),
            use_cache=dict(type="bool", default=True),
        ),
        required_if=[("state", "present", ["version"])],
        supports_check_mode=True,
    )
    root = module.params["path"]
    if not os.path.isdir(root):
        module.fail_json(msg="bundle directory %s does not exist" % root)
    try:
        if module.params["state"] == "verified":
            result = verify(root, module.params["jobs"])
            if result["bad_files"]:
                lines = ["%s: %s" % (b["path"], b["reason"]) for b in result["bad_files"][:20]]
                module.fail_json(
                    msg="bundle %s failed verification (%d bad file(s)): %s. The bundle is "
                        "corrupt or incomplete: copy it again from the original media; "
                        "nothing was changed." % (root, len(result["bad_files"]),
                                                  "; ".join(lines)), **result)
            module.exit_json(changed=False, **result)
        result = seal(root, module.params["version"], module.params["metadata"],
                      module.params["jobs"], module.params["use_cache"], module.check_mode)
        module.exit_json(**result)
    except (OSError, ValueError) as error:
        module.fail_json(msg="bundle %s: %s" % (root, error))


if __name__ == "__main__":
    main()
