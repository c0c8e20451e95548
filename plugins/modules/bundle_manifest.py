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
  - "Incremental: a file whose size, modification time and inode match the hash
    cache (C(.hashcache.json)) is not read again, so a re-run over an unchanged
    bundle only calls C(stat). C(bundle.json) keeps its C(created_at) while its
    content is unchanged, so a second run reports no change."
  - With O(state=verified), reads every file listed in C(SHA256SUMS) and fails,
    naming each file, if one is missing, truncated or different, or if a file is
    not listed. Nothing is written. Never uses the cache.
  - A bundle holds regular files only. Sealing refuses a bundle with a symlink or a
    special file in it; verifying never follows a symlink and reports each one.
  - Verifying accepts any list C(sha256sum -c --strict) accepts (either case of hex,
    C(*) binary markers, escaped names, the BSD C(SHA256 (name) = hex) form), but
    refuses absolute names and names with a C(..) component.
  - The version becomes a directory name on every target, so both states refuse a
    version that is not a plain name (letters, digits, C(.), C(_), C(-), starting
    with a letter or digit) or that is C(current) or C(previous). With
    O(state=verified), the version in an intact C(bundle.json) is checked before
    any other file is read.
version_added: "0.1.0"
author: gemma-airgap developers (@gemma-airgap)
options:
  path:
    description: The bundle directory.
    type: path
    required: true
  state:
    description:
      - V(present) writes the manifest; V(verified) checks the files against it.
      - V(signature_verified) checks only the signature of C(SHA256SUMS) (see
        O(trusted_signers), which it needs), reading no other file.
    type: str
    choices: [present, verified, signature_verified]
    default: present
  version:
    description:
      - The bundle's version, recorded in C(bundle.json). Required with O(state=present).
      - A plain name, not C(current) or C(previous).
    type: str
  metadata:
    description:
      - Extra keys for C(bundle.json) (images, models, platforms, tool versions).
      - The keys this module writes itself (C(format), C(version), C(files),
        C(total_bytes), C(created_at)) are refused.
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
  trusted_signers:
    description:
      - With O(state=verified), the fingerprints of the keys a bundle must be signed by
        (C(SHA256SUMS.sig), made by M(gemma_airgap.ollama.bundle_signature)). The signature is
        checked first, with gpgv or sqv, and an unsigned bundle, a bad signature or one by
        another key is refused naming the fingerprint found and those expected.
      - Empty, the signature is not checked.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
notes:
  - C(SHA256SUMS) covers C(bundle.json); it does not cover itself. Carry its own
    digest out of band (the media tar's C(.sha256)) where that matters.
requirements:
  - Python standard library only.
seealso:
  - module: gemma_airgap.ollama.bundle_consistency
"""

EXAMPLES = r"""
- name: Seal the bundle
  gemma_airgap.ollama.bundle_manifest:
    path: /srv/bundles/2026.11.25-1
    version: 2026.11.25-1
    metadata:
      images: "{{ __bundle_image_records }}"

- name: Verify a bundle on a closed-network target before changing anything
  gemma_airgap.ollama.bundle_manifest:
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
  description:
    - With O(state=verified), each file that failed, why (C(reason)), and for some a C(detail).
    - "Reasons: C(missing), C(checksum mismatch), C(symlink), C(not a regular file),
      C(path outside the bundle), C(not listed in SHA256SUMS)."
  returned: failure
  type: list
  elements: dict
  sample: [{"path": "models/blobs/sha256-ab12", "reason": "checksum mismatch"}]
version:
  description: The bundle's version, checked to be a plain name, not C(current) or C(previous).
  returned: success
  type: str
  sample: 2026.11.25-1
manifest:
  description: The content of bundle.json (with O(state=verified), as read and verified).
  returned: success
  type: dict
signer:
  description: The fingerprint of the trusted key that signed the bundle (O(trusted_signers)).
  returned: when O(trusted_signers) is given and the signature is good
  type: str
bytes_by_dir:
  description:
    - Bytes of the covered files under each top-level directory of the bundle (files at
      its top, such as C(bundle.json), are in none), from the sizes this run already read.
    - Only regular files count, not the directories themselves (unlike C(du)).
  returned: success
  type: dict
  sample: {"images": 1203741696, "models": 5619863552, "packages": 98304512}
"""

import hashlib
import json
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_bundle import (
    META,
    SUMS,
    SUMS_LIMIT,
    parse_sums,
    relative_path,
    sums_line,
    version_problem,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_files import (
    UnsafeFile,
    read_regular,
    sha256_file,
    write_atomic,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_signature import (
    KEYS,
    SIGNATURE,
    SignatureRefused,
    check,
)

CACHE = ".hashcache.json"
# Never part of the sealed content: the sums themselves, their signature and the signer's
# key (both made after the seal, checked by the signature itself), the cache, partial files.
EXCLUDED = (SUMS, SIGNATURE, KEYS, CACHE)
FORMAT = 1
# The keys seal writes itself: metadata may not replace them (a version among them).
OWN_KEYS = ("format", "version", "files", "total_bytes", "created_at")
META_LIMIT = 16 * 1024 * 1024


class Refused(Exception):
    """The bundle cannot be used as it is; the message says what to do."""


def kind_of(mode):
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    return "link" if stat.S_ISLNK(mode) else "other"


def scan(root):
    """{relative path: file, dir, link or other} of everything under root.

    Symlinks are listed, never followed (os.walk does not descend into them), and
    an unreadable directory fails rather than hiding part of the bundle.
    """
    def fail(error):
        raise error

    kinds = {}
    for directory, subdirs, names in os.walk(root, onerror=fail):
        for name in subdirs + names:
            path = os.path.join(directory, name)
            kinds[os.path.relpath(path, root)] = kind_of(os.lstat(path).st_mode)
    return kinds


def own_state(relative):
    return relative in EXCLUDED or os.path.basename(relative).startswith(".partial-")


def list_files(root):
    """Relative paths of every regular file under root, sorted, excluding our own state."""
    return sorted(p for p, kind in scan(root).items() if kind == "file" and not own_state(p))


def stat_key(stat_result):
    return [stat_result.st_size, stat_result.st_mtime_ns, stat_result.st_ino]


def load_json(path, default):
    try:
        return json.loads(read_regular(path, SUMS_LIMIT).decode("utf-8"))
    except (OSError, ValueError):
        return default


def bytes_by_dir(sizes):
    """{top-level directory: bytes of the files below it} from {relative path: size}.

    prepare's summary shows each part of the bundle from this rather than running du
    over the directories again.
    """
    totals = {}
    for path, size in sizes.items():
        top, sep, _rest = path.partition("/")
        if sep:
            totals[top] = totals.get(top, 0) + size
    return totals


def hash_all(root, paths, jobs):
    """{path: hex} for the given relative paths, several at once."""
    workers = jobs or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = pool.map(lambda rel: sha256_file(os.path.join(root, rel)), paths)
        return dict(zip(paths, digests, strict=True))


def check_seal_inputs(root, version, metadata):
    """Refuse, before anything is written, what would make a bundle unusable or unsafe."""
    problem = version_problem(version)
    if problem:
        raise Refused("version %s %s: set bundle_version to a plain name such as "
                      "2026.11.25-1" % (json.dumps(version), problem))
    clashes = sorted(set(OWN_KEYS) & set(metadata))
    if clashes:
        raise Refused("metadata may not set %s: bundle_manifest writes them itself"
                      % ", ".join(clashes))
    kinds = scan(root)
    odd = sorted("%s (%s)" % (p, "symlink" if k == "link" else "not a regular file")
                 for p, k in kinds.items() if k in ("link", "other"))
    if odd:
        raise Refused("it holds what a bundle never carries: %s. Replace each link with a "
                      "copy of its file (cp --dereference) or remove it, then seal again; "
                      "nothing was written." % ", ".join(odd[:20]))
    return sorted(p for p, k in kinds.items() if k == "file" and not own_state(p))


def seal(root, version, metadata, jobs, use_cache, check_mode):
    files = check_seal_inputs(root, version, metadata)
    cache_path = os.path.join(root, CACHE)
    cache = load_json(cache_path, {}) if use_cache else {}
    if not isinstance(cache, dict):
        cache = {}
    result = {"hashed": 0, "hashed_bytes": 0}

    # bundle.json first: it is covered by SHA256SUMS like every other file.
    meta_path = os.path.join(root, META)
    previous = load_json(meta_path, {})
    paths = [p for p in files if p != META]
    stats = dict((p, os.lstat(os.path.join(root, p))) for p in paths)
    manifest = {
        "format": FORMAT,
        "version": version,
        "files": len(paths) + 1,
        "total_bytes": sum(s.st_size for s in stats.values()),
    }
    manifest.update(metadata)
    comparable = dict(previous) if isinstance(previous, dict) else {}
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
        if isinstance(entry, list) and len(entry) == 4 and entry[:3] == stat_key(stats[path]):
            digests[path] = entry[3]
        else:
            stale.append(path)
    fresh = hash_all(root, stale, jobs) if stale else {}
    digests.update(fresh)
    result["hashed"] = len(fresh)
    result["hashed_bytes"] = sum(stats[p].st_size for p in fresh)

    ordered = sorted(digests)
    sums = "".join(sums_line(digests[p], p) for p in ordered).encode("utf-8")
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
        "version": version,
        "bytes_by_dir": bytes_by_dir(dict((p, s.st_size) for p, s in stats.items())),
    })
    return result


def read_bytes(path):
    """The bytes of the regular file at path, or None if there is none (or a link)."""
    try:
        return read_regular(path, SUMS_LIMIT)
    except (OSError, UnsafeFile):
        return None


def read_listed(root, kinds, signed=None):
    """[(relative path, hex)] of SHA256SUMS (the bytes the signature check read, when
    signed), and the entries that cannot be checked."""
    try:
        data = signed if signed is not None else read_regular(os.path.join(root, SUMS),
                                                              SUMS_LIMIT)
        text = data.decode("utf-8")
    except FileNotFoundError:
        return [], [{"path": SUMS, "reason": "missing"}]
    except UnsafeFile as error:
        return [], [{"path": SUMS, "reason": "not a regular file", "detail": str(error)}]
    entries, bad = [], []
    for name, digest in parse_sums(text):
        relative = relative_path(name)
        if relative is None:
            bad.append({"path": name, "reason": "path outside the bundle"})
        else:
            entries.append((relative, digest))
    if META not in dict(entries) and META not in kinds:
        bad.append({"path": META, "reason": "missing",
                    "detail": "a sealed bundle always lists it"})
    return entries, bad


def intact_manifest(root, entries, kinds):
    """bundle.json's content when it matches SHA256SUMS, its version checked first.

    None when it is missing or damaged: that is reported with the other files. An
    intact bundle.json with a version that cannot name a release directory is forged
    (or was sealed by a tool that did not check): refused before any other file is read.
    """
    listed = [digest for path, digest in entries if path == META]
    if not listed or kinds.get(META) != "file":
        return None
    data = read_regular(os.path.join(root, META), META_LIMIT)
    if any(digest != hashlib.sha256(data).hexdigest() for digest in listed):
        return None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise Refused("%s is not a JSON object. The media is corrupt or forged: re-make "
                      "the bundle with prepare.yml or copy it again from the original media; "
                      "nothing was changed." % META)
    problem = version_problem(manifest.get("version"))
    if problem:
        raise Refused("%s records the version %s, which %s; a version becomes a directory "
                      "name on every target. The media is corrupt or forged: re-make the "
                      "bundle with prepare.yml (bundle_version a plain name such as "
                      "2026.11.25-1) or copy it again from the original media; nothing was "
                      "changed." % (META, json.dumps(manifest.get("version")), problem))
    return manifest


def check_listed(entries, kinds):
    """The listed paths that are regular files (to hash), and why each other one is bad."""
    present, bad = [], []
    for path, _digest in entries:
        kind = kinds.get(path)
        if kind == "file":
            present.append(path)
        elif kind == "link":
            bad.append({"path": path, "reason": "symlink",
                        "detail": "a bundle holds regular files only; links are never followed"})
        elif kind is None:
            bad.append({"path": path, "reason": "missing"})
        else:
            bad.append({"path": path, "reason": "not a regular file"})
    return sorted(set(present)), bad


def unlisted(kinds, entries):
    """Everything in the bundle that SHA256SUMS does not cover, links included."""
    listed = set(path for path, _digest in entries)
    bad = []
    for path, kind in sorted(kinds.items()):
        if path in listed or kind == "dir" or (kind == "file" and own_state(path)):
            continue
        entry = {"path": path, "reason": "not listed in SHA256SUMS"}
        if kind != "file":
            entry["detail"] = "a symlink" if kind == "link" else "not a regular file"
        bad.append(entry)
    return bad


def verify(root, jobs, trusted=None):
    """Every file against SHA256SUMS; with trusted fingerprints, the signature first (before
    any other file is read: SignatureRefused)."""
    signed, signer = check(root, trusted) if trusted else (None, None)
    kinds = scan(root)
    entries, bad = read_listed(root, kinds, signed)
    result = {"files": len(entries), "total_bytes": 0, "hashed": 0, "hashed_bytes": 0}
    if signer:
        result["signer"] = signer
    if any(item["path"] == SUMS for item in bad):
        result["bad_files"] = bad
        return result
    manifest = intact_manifest(root, entries, kinds)
    present, problems = check_listed(entries, kinds)
    bad += problems
    sizes = dict((p, os.lstat(os.path.join(root, p)).st_size) for p in present)
    actual = hash_all(root, present, jobs)
    for path, expected in entries:
        if path in actual and actual[path] != expected:
            bad.append({"path": path, "reason": "checksum mismatch",
                        "expected": expected, "actual": actual[path]})
    bad += unlisted(kinds, entries)
    result.update({"bad_files": bad, "total_bytes": sum(sizes.values()),
                   "hashed": len(actual), "hashed_bytes": sum(sizes.values())})
    if manifest is not None:
        result.update({"manifest": manifest, "version": manifest["version"],
                       "bytes_by_dir": bytes_by_dir(sizes)})
    return result


def describe(bad):
    line = "%s: %s" % (bad["path"], bad["reason"])
    return line + (" (%s)" % bad["detail"] if bad.get("detail") else "")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "verified", "signature_verified"],
                       default="present"),
            version=dict(type="str"),
            metadata=dict(type="dict", default={}),
            jobs=dict(type="int", default=0),
            use_cache=dict(type="bool", default=True),
            trusted_signers=dict(type="list", elements="str", default=[]),
        ),
        required_if=[("state", "present", ["version"])],
        supports_check_mode=True,
    )
    root = module.params["path"]
    if not os.path.isdir(root):
        module.fail_json(msg="bundle directory %s does not exist" % root)
    try:
        if module.params["state"] == "signature_verified":
            try:
                _sums, signer = check(root, module.params["trusted_signers"])
            except SignatureRefused as error:
                module.fail_json(msg="bundle %s is refused: %s. Only a bundle signed by a trusted "
                                     "key is used; nothing was changed." % (root, error),
                                 bad_signature=str(error))
            module.exit_json(changed=False, signer=signer)
        if module.params["state"] == "verified":
            try:
                result = verify(root, module.params["jobs"], module.params["trusted_signers"])
            except SignatureRefused as error:
                module.fail_json(msg="bundle %s is refused: %s. Only a bundle signed by a trusted "
                                     "key is used; nothing was changed." % (root, error),
                                 bad_signature=str(error))
            if result["bad_files"]:
                lines = [describe(b) for b in result["bad_files"][:20]]
                module.fail_json(
                    msg="bundle %s failed verification (%d bad file(s)): %s. The bundle is "
                        "corrupt or incomplete: copy it again from the original media; "
                        "nothing was changed." % (root, len(result["bad_files"]),
                                                  "; ".join(lines)), **result)
            module.exit_json(changed=False, **result)
        result = seal(root, module.params["version"], module.params["metadata"],
                      module.params["jobs"], module.params["use_cache"], module.check_mode)
        module.exit_json(**result)
    except Refused as error:
        module.fail_json(msg="bundle %s refused: %s" % (root, error))
    except (OSError, ValueError) as error:
        module.fail_json(msg="bundle %s: %s" % (root, error))


if __name__ == "__main__":
    main()
