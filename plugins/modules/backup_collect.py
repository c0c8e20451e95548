#!/usr/bin/python
# -*- coding: utf-8 -*-
# gemma-airgap: what a target's backup holds, gathered on the target.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: backup_collect
short_description: Gather a target's state into one tar, and list the model blobs it needs
description:
  - Writes O(archive), a tar of C(release.json) (the release links C(current) and
    C(previous) and the current release's C(bundle.json)), the stack's rendered files under
    O(stack_dir) (compose files, gateway configuration with key hashes, TLS files), every
    Ollama manifest under O(models_dir)C(/manifests) (models from the bundle and those created
    on site), a Prometheus TSDB snapshot directory when O(snapshot) is given, and
    Alertmanager's silences when O(silences) is given.
  - Returns the blobs those manifests name (C(sha256-<hex>) with their sizes); they are copied
    to the backup location separately, once each, by content.
  - Only regular files and directories are taken, never through a symlink; a manifest that
    is not Ollama's JSON, or names a blob the store lacks, fails the module naming it.
  - The tar is written under a temporary name and renamed when complete.
version_added: "0.16.0"
author: gemma-airgap developers (@gemma-airgap)
options:
  archive:
    description: The tar to write (on the target).
    type: path
    required: true
  release_root:
    description: The directory of the releases and the C(current) and C(previous) links.
    type: path
    required: true
  stack_dir:
    description: The compose project's directory.
    type: path
    required: true
  models_dir:
    description: Ollama's model store (C(manifests/) and C(blobs/)).
    type: path
    required: true
  snapshot:
    description: A Prometheus snapshot directory to include under C(prometheus/) ("" = none).
    type: path
    default: ""
  silences:
    description: Alertmanager's silences (its C(/api/v2/silences) answer) to include.
    type: raw
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
attributes:
  check_mode:
    support: none
    details: It writes the tar a backup is made of; backup.yml does not run in check mode.
  idempotent:
    support: none
    details: Every run writes a new tar (and reports a change).
requirements:
  - Python standard library only.
"""

EXAMPLES = r"""
- name: Gather the target's state
  gemma_airgap.ollama.backup_collect:
    archive: /var/lib/gemma-airgap/backup/20261129T020000Z.tar
    release_root: /opt/gemma-airgap/releases
    stack_dir: /opt/gemma-airgap/stack
    models_dir: /var/lib/gemma-airgap/ollama
  register: collected
"""

RETURN = r"""
blobs:
  description: The blobs the manifests name, each C({name, size}).
  returned: always
  type: list
  elements: dict
release:
  description: The release links, C({current, previous}) (version names, or null).
  returned: always
  type: dict
models:
  description: The models, by manifest path under C(manifests/).
  returned: always
  type: list
  elements: str
size:
  description: Bytes of the tar.
  returned: always
  type: int
"""

import io
import json
import os
import re
import tarfile
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_bundle import (
    SUMS_LIMIT,
    version_problem,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_files import (
    UnsafeFile,
    open_regular,
    read_regular,
)

MANIFEST_LIMIT = 1024 * 1024
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class CollectError(Exception):
    pass


class Collector:
    """Writes one target's backup tar."""

    def __init__(self, params):
        self.params = params
        self.blobs = {}
        self.models = []

    def release(self):
        links = {}
        root = os.path.realpath(self.params["release_root"])
        for link in ("current", "previous"):
            path = os.path.join(self.params["release_root"], link)
            target = None
            if os.path.islink(path):
                resolved = os.path.realpath(path)
                target = os.path.basename(resolved)
                if (os.path.dirname(resolved) != root or version_problem(target)
                        or not os.path.isdir(resolved)):
                    raise CollectError("%s points at %s, which is not a release in %s"
                                       % (path, os.readlink(path), root))
            links[link] = target
        bundle = None
        if links["current"]:
            path = os.path.join(self.params["release_root"], links["current"], "bundle.json")
            bundle = json.loads(read_regular(path, SUMS_LIMIT))
        return dict(links, bundle=bundle)

    def manifests(self, tar):
        top = os.path.join(self.params["models_dir"], "manifests")
        for relative in walk(top):
            data = read_regular(os.path.join(top, relative), MANIFEST_LIMIT)
            for digest in self.digests(relative, data):
                name = "sha256-" + digest
                path = os.path.join(self.params["models_dir"], "blobs", name)
                try:
                    with open_regular(path) as blob:
                        self.blobs[name] = os.fstat(blob.fileno()).st_size
                except (OSError, UnsafeFile) as error:
                    raise CollectError("model %s names blob %s, which the store lacks or "
                                       "holds oddly: %s" % (relative, name, error)) from None
            add_bytes(tar, "models/manifests/" + relative, data)
            self.models.append(relative)

    @staticmethod
    def digests(relative, data):
        try:
            manifest = json.loads(data)
            entries = [manifest["config"], *list(manifest["layers"])]
            found = [DIGEST.fullmatch(entry["digest"]) for entry in entries]
        except (ValueError, KeyError, TypeError) as error:
            raise CollectError("manifest %s is not Ollama's: %s" % (relative, error)) from None
        if not all(found):
            raise CollectError("manifest %s names a digest that is not sha256:<hex>" % relative)
        return [match.group(1) for match in found]

    def run(self):
        archive = self.params["archive"]
        directory = os.path.dirname(archive)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        fd, partial = tempfile.mkstemp(dir=directory, prefix=".partial-")
        try:
            release = self.release()
            with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w",
                                                          format=tarfile.PAX_FORMAT) as tar:
                add_bytes(tar, "release.json", json.dumps(release, indent=2).encode())
                for relative in walk(self.params["stack_dir"]):
                    add_file(tar, "stack/" + relative,
                             os.path.join(self.params["stack_dir"], relative))
                self.manifests(tar)
                if self.params["snapshot"]:
                    for relative in walk(self.params["snapshot"]):
                        add_file(tar, "prometheus/" + relative,
                                 os.path.join(self.params["snapshot"], relative))
                if self.params["silences"] is not None:
                    add_bytes(tar, "alertmanager/silences.json",
                              json.dumps(self.params["silences"]).encode())
            os.chmod(partial, 0o600)
            os.rename(partial, archive)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return dict(release={k: release[k] for k in ("current", "previous")},
                    blobs=[dict(name=name, size=size) for name, size in sorted(self.blobs.items())],
                    models=sorted(self.models), size=os.stat(archive).st_size)


def walk(top):
    """Regular files under top, relative and sorted; symlinks are never followed."""
    found = []
    if not os.path.isdir(top):
        return found
    for directory, subdirectories, files in os.walk(top):
        subdirectories[:] = sorted(d for d in subdirectories
                                   if not os.path.islink(os.path.join(directory, d)))
        for entry in files:
            path = os.path.join(directory, entry)
            if os.path.isfile(path) and not os.path.islink(path):
                found.append(os.path.relpath(path, top))
    return sorted(found)


def add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def add_file(tar, name, path):
    """A regular file, read through one descriptor (never a symlink), with its mode."""
    with open_regular(path) as source:
        status = os.fstat(source.fileno())
        info = tarfile.TarInfo(name)
        info.size, info.mode = status.st_size, status.st_mode & 0o7777
        info.mtime = int(status.st_mtime)
        info.uid, info.gid = status.st_uid, status.st_gid
        tar.addfile(info, source)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            archive=dict(type="path", required=True),
            release_root=dict(type="path", required=True),
            stack_dir=dict(type="path", required=True),
            models_dir=dict(type="path", required=True),
            snapshot=dict(type="path", default=""),
            silences=dict(type="raw"),
        ),
        supports_check_mode=False,
    )
    try:
        result = Collector(module.params).run()
    except (CollectError, UnsafeFile, OSError, ValueError) as error:
        module.fail_json(msg="The backup of this target stopped: %s. Nothing was sealed." % error)
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
