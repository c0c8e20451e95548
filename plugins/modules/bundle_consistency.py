#!/usr/bin/python
# -*- coding: utf-8 -*-
# gemma-airgap: check that a verified bundle's parts agree with each other.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bundle_consistency
short_description: Check that a bundle's models, images and files agree with its bundle.json
description:
  - Run after M(gemma_airgap.ollama.bundle_manifest) with C(state=verified) has checked
    every file against C(SHA256SUMS). Checksums alone do not prove the parts agree. A
    bundle with a model blob removed (and its line dropped from C(SHA256SUMS)), or with
    one image tar swapped for another, passes them, deploys to a target that already
    has those parts, and would fail half-way, after changes, on a fresh one.
  - "Models: every manifest under C(models/manifests/) is a valid Ollama manifest whose
    config and layers are all in the bundle as C(models/blobs/sha256-<hex>), of the
    manifest's size, with content that C(SHA256SUMS) records as that same digest
    (no blob is hashed again); every blob's name matches its recorded content; every
    model C(bundle.json) lists has its manifest, with the recorded manifest digest
    and size."
  - "Images: every image C(bundle.json) lists has its tar in the bundle, and the tar
    (a C(docker save) archive, read in place with limits and never extracted) holds
    exactly one image, whose ID is the recorded C(id): the sha256 of its config, or
    (an engine with the containerd image store) the digest of its OCI index, listed in
    C(index.json) with a blob that hashes to it."
  - The vision files and each platform's package repository C(bundle.json) names are
    in the bundle.
  - Reads only; fails naming each file, what was expected and what was found.
version_added: "0.1.0"
author: gemma-airgap developers (@gemma-airgap)
options:
  path:
    description: The bundle directory, already verified by M(gemma_airgap.ollama.bundle_manifest).
    type: path
    required: true
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
requirements:
  - Python standard library only.
seealso:
  - module: gemma_airgap.ollama.bundle_manifest
  - module: gemma_airgap.ollama.ollama_store
"""

EXAMPLES = r"""
- name: Check the bundle's parts agree before sending anything
  gemma_airgap.ollama.bundle_consistency:
    path: /media/bundle/2026.11.25-1
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
models:
  description: The models checked (from C(bundle.json)).
  returned: always
  type: list
  elements: str
  sample: [gemma3n:e4b]
manifests:
  description: Ollama manifests checked under C(models/manifests/).
  returned: always
  type: int
  sample: 2
images:
  description: The images checked (from C(bundle.json)).
  returned: always
  type: list
  elements: str
  sample: [ollama, gateway]
problems:
  description: Each inconsistency, with the file (C(path)) and what is wrong (C(reason)).
  returned: failure
  type: list
  elements: dict
  sample: [{"path": "images/ollama.tar", "reason": "bundle.json records image ID sha256:ab..."}]
"""

import hashlib
import json
import os
import re
import tarfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_bundle import (
    META,
    SUMS,
    parse_sums,
    relative_path,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_files import (
    read_regular,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_ollama import (
    MANIFEST_LIMIT,
    blob_name,
    display_name,
    manifest_entries,
    parse_name,
)

MANIFESTS = "models/manifests/"
BLOBS = "models/blobs/"
BLOB_FILE = re.compile(r"sha256-([0-9a-f]{64})")
IMAGE_ID = re.compile(r"sha256:([0-9a-f]{64})")
# Limits on what is read from a bundle's small files and from inside an image tar.
SMALL_LIMIT = 64 * 1024 * 1024
TAR_INDEX_LIMIT = 1024 * 1024
TAR_CONFIG_LIMIT = 16 * 1024 * 1024
TAR_MEMBERS_LIMIT = 100000


class Inconsistent(Exception):
    """One problem with one file; the module collects them all."""

    def __init__(self, path, reason):
        super(Inconsistent, self).__init__("%s: %s" % (path, reason))
        self.problem = {"path": path, "reason": reason}


def listed_digests(root):
    """{relative path: hex} from SHA256SUMS, just verified against the files."""
    text = read_regular(os.path.join(root, SUMS), SMALL_LIMIT).decode("utf-8")
    listed = {}
    for name, digest in parse_sums(text):
        relative = relative_path(name)
        if relative is not None:
            listed[relative] = digest
    return listed


def records(manifest, key):
    """bundle.json's list under key, each entry an object."""
    value = manifest.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise Inconsistent(META, "%s is not a list of objects" % key)
    return value


def check_blob_names(listed):
    """Every blob's name is the digest SHA256SUMS records for its content."""
    problems = []
    for path in sorted(p for p in listed if p.startswith(BLOBS)):
        name = BLOB_FILE.fullmatch(path[len(BLOBS):])
        if not name:
            problems.append({"path": path, "reason": "a blob not named sha256-<64 hex>"})
        elif name.group(1) != listed[path]:
            problems.append({"path": path, "reason": "named for sha256:%s, but SHA256SUMS "
                             "records its content as sha256:%s" % (name.group(1), listed[path])})
    return problems


def read_manifest(root, path):
    try:
        return manifest_entries(read_regular(os.path.join(root, path), MANIFEST_LIMIT))
    except (OSError, ValueError) as error:
        raise Inconsistent(path, "not a valid Ollama manifest: %s" % error) from None


def check_layers(root, listed, path, entries):
    """Problems of one manifest's blobs: each in the bundle, of its size, as recorded."""
    problems = []
    for entry in entries:
        blob = BLOBS + blob_name(entry["digest"])
        if blob not in listed:
            problems.append({"path": path, "reason": "needs %s (%s, %d bytes), which the "
                             "bundle does not hold" % (blob, entry["digest"], entry["size"])})
            continue
        size = os.lstat(os.path.join(root, blob)).st_size
        if size != entry["size"]:
            problems.append({"path": blob, "reason": "%d bytes, but the manifest %s says %d"
                             % (size, path, entry["size"])})
    return problems


def check_models(root, listed, manifest):
    """Problems of the Ollama store in models/, and of bundle.json's model records."""
    problems = check_blob_names(listed)
    found = {}
    for path in sorted(p for p in listed if p.startswith(MANIFESTS)):
        try:
            found[path] = read_manifest(root, path)
        except Inconsistent as error:
            problems.append(error.problem)
            continue
        problems += check_layers(root, listed, path, found[path])
    for record in records(manifest, "models"):
        try:
            check_model_record(listed, found, record)
        except Inconsistent as error:
            problems.append(error.problem)
    return problems, len(found)


def check_model_record(listed, found, record):
    try:
        parts = parse_name(record.get("name"))
    except ValueError as error:
        raise Inconsistent(META, "a model record has %s" % error) from None
    path = MANIFESTS + "/".join(parts)
    if path not in found:
        raise Inconsistent(path, "bundle.json lists model %s, but the bundle holds no valid "
                           "manifest for it" % display_name(parts))
    if record.get("manifest_digest") != listed[path]:
        raise Inconsistent(path, "bundle.json records manifest sha256 %s for %s, the file is "
                           "sha256 %s" % (record.get("manifest_digest"), display_name(parts),
                                          listed[path]))
    size = sum(entry["size"] for entry in found[path])
    if record.get("size") != size:
        raise Inconsistent(path, "bundle.json records %r bytes for %s, its layers hold %d"
                           % (record.get("size"), display_name(parts), size))


def tar_member(tar, members, name, limit):
    """The bytes of one regular member of an open tar, at most limit of them."""
    member = members.get(name)
    if member is None or not member.isreg():
        raise ValueError("it has no file %s" % name)
    if member.size > limit:
        raise ValueError("its %s has %d bytes, more than %d" % (name, member.size, limit))
    return tar.extractfile(member).read()


def config_ids(tar, members):
    """The sha256 of each image's config that manifest.json names: the classic image ID."""
    index = json.loads(tar_member(tar, members, "manifest.json", TAR_INDEX_LIMIT))
    if not isinstance(index, list) or not all(
            isinstance(item, dict) and isinstance(item.get("Config"), str) for item in index):
        raise ValueError("its manifest.json is not a docker save manifest")
    ids = []
    for item in index:
        if relative_path(item["Config"]) != item["Config"]:
            raise ValueError("its manifest.json names the config %r" % item["Config"])
        config = tar_member(tar, members, item["Config"], TAR_CONFIG_LIMIT)
        ids.append("sha256:" + hashlib.sha256(config).hexdigest())
    return ids


def index_ids(tar, members):
    """The digests index.json lists whose blob in the tar hashes to them.

    An engine with the containerd image store reports an image's ID as the digest of
    its OCI index (or manifest), which docker save lists in index.json.
    """
    if "index.json" not in members:
        return []
    index = json.loads(tar_member(tar, members, "index.json", TAR_INDEX_LIMIT))
    listed = index.get("manifests") if isinstance(index, dict) else None
    ids = []
    for item in listed if isinstance(listed, list) else []:
        digest = item.get("digest") if isinstance(item, dict) else None
        found = IMAGE_ID.fullmatch(digest) if isinstance(digest, str) else None
        if found:
            blob = tar_member(tar, members, "blobs/sha256/" + found.group(1), TAR_CONFIG_LIMIT)
            if hashlib.sha256(blob).hexdigest() == found.group(1):
                ids.append(digest)
    return ids


def tar_image_ids(path):
    """(config IDs, OCI index IDs) of the images in a docker save tar, read in place."""
    with tarfile.open(path, mode="r:") as tar:
        members = {}
        for member in tar:
            if len(members) >= TAR_MEMBERS_LIMIT:
                raise ValueError("it has more than %d members" % TAR_MEMBERS_LIMIT)
            members[member.name] = member
        return config_ids(tar, members), index_ids(tar, members)


def check_image(root, listed, record):
    label = "%s (%s)" % (record.get("name"), record.get("image"))
    path = relative_path(record.get("file")) if isinstance(record.get("file"), str) else None
    if path is None or path not in listed:
        raise Inconsistent(str(record.get("file")), "bundle.json names it as the tar of image %s, "
                           "but SHA256SUMS does not list it" % label)
    expected = record.get("id")
    if not isinstance(expected, str) or not IMAGE_ID.fullmatch(expected):
        raise Inconsistent(META, "image %s has the ID %r, not sha256:<64 hex>" % (label, expected))
    try:
        configs, indexes = tar_image_ids(os.path.join(root, path))
    except (OSError, ValueError, EOFError, tarfile.TarError) as error:
        raise Inconsistent(path, "not a readable docker save archive: %s" % error) from None
    if len(configs) != 1 or expected not in configs + indexes:
        raise Inconsistent(path, "bundle.json records image ID %s for %s, the tar holds %s"
                           % (expected, label, ", ".join(configs) or "no image"))


def check_files(listed, manifest):
    """The vision files and the platforms' package repositories bundle.json names."""
    wanted = []
    for record in records(manifest, "vision"):
        wanted += [(record.get(key), "vision file") for key in ("model_file", "mmproj_file")]
    for record in records(manifest, "platforms"):
        repo = record.get("repo")
        wanted.append(("%s/Packages" % repo if isinstance(repo, str) else repo,
                       "package index of platform %s" % record.get("name")))
    problems = []
    for name, what in wanted:
        path = relative_path(name) if isinstance(name, str) else None
        if path is None or path not in listed:
            problems.append({"path": str(name), "reason": "bundle.json names it as the %s, but "
                             "the bundle does not hold it" % what})
    return problems


def check(root):
    listed = listed_digests(root)
    manifest = json.loads(read_regular(os.path.join(root, META), SMALL_LIMIT).decode("utf-8"))
    if not isinstance(manifest, dict):
        raise Inconsistent(META, "not a JSON object")
    problems, manifests = check_models(root, listed, manifest)
    images = records(manifest, "images")
    for record in images:
        try:
            check_image(root, listed, record)
        except Inconsistent as error:
            problems.append(error.problem)
    problems += check_files(listed, manifest)
    return {"problems": problems, "manifests": manifests,
            "models": [str(m.get("name")) for m in records(manifest, "models")],
            "images": [str(i.get("name")) for i in images]}


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", required=True)),
        supports_check_mode=True,
    )
    root = module.params["path"]
    try:
        result = check(root)
    except Inconsistent as error:
        result = {"problems": [error.problem], "manifests": 0, "models": [], "images": []}
    except (OSError, ValueError) as error:
        module.fail_json(msg="bundle %s cannot be checked: %s. Verify it with bundle_manifest "
                             "(state=verified) first." % (root, error))
    if result["problems"]:
        lines = ["%s: %s" % (p["path"], p["reason"]) for p in result["problems"][:20]]
        module.fail_json(
            msg="bundle %s is not consistent (%d problem(s)): %s. The media is corrupt or "
                "forged: re-make the bundle with prepare.yml, or copy it again from the "
                "original media; nothing was changed." % (root, len(result["problems"]),
                                                          "; ".join(lines)), **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
