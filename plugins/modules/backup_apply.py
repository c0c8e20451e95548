#!/usr/bin/python
# -*- coding: utf-8 -*-
# gemma-airgap: put a target's backup back in place, on the target.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: backup_apply
short_description: Restore a target's models, stack files and Prometheus data from its backup tar
description:
  - Reads O(archive) (what M(gemma_airgap.ollama.backup_collect) wrote, copied back from a
    verified set), refusing any member that is not a regular file or directory, leaves its
    place, or is larger than such a file may be.
  - With O(missing=true), changes nothing and returns which of O(blobs) the model store lacks
    or holds damaged; only those need to travel.
  - Otherwise installs each blob found in O(staged) (those the first call named) after it
    hashed to its name, and requires the others to be in the store (they were hashed by the
    first call; without O(staged) they are hashed again); writes
    the Ollama manifests and the stack's files that differ (each through a temporary file and
    a rename), replaces O(prometheus_data) with the snapshot when given (Prometheus must be
    stopped), and returns the release links and Alertmanager silences the tar holds.
  - Check mode reports what would change and changes nothing.
version_added: "0.16.0"
author: gemma-airgap developers (@gemma-airgap)
options:
  archive:
    description: The backup tar on the target.
    type: path
    required: true
  blobs:
    description: The blob names (C(sha256-<hex>)) the set holds for this target.
    type: list
    elements: str
    default: []
  missing:
    description: Only list the blobs the store lacks.
    type: bool
    default: false
  staged:
    description: The directory the blobs from the set were copied to.
    type: path
  models_dir:
    description: Ollama's model store.
    type: path
    required: true
  stack_dir:
    description: The compose project's directory.
    type: path
    required: true
  prometheus_data:
    description: Prometheus' data directory to replace with the snapshot ("" = leave it).
    type: path
    default: ""
  prometheus_owner:
    description: The uid and gid Prometheus runs as (its data is theirs).
    type: int
    default: 65534
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
requirements:
  - Python standard library only.
"""

EXAMPLES = r"""
- name: Put the models and stack files back
  gemma_airgap.ollama.backup_apply:
    archive: /var/lib/gemma-airgap/backup/restore.tar
    blobs: "{{ set_blobs }}"
    staged: /var/lib/gemma-airgap/backup/blobs
    models_dir: /var/lib/gemma-airgap/ollama
    stack_dir: /opt/gemma-airgap/stack
"""

RETURN = r"""
missing:
  description: The blobs the store lacks or holds damaged.
  returned: always
  type: list
  elements: str
installed:
  description: Blobs, manifests and stack files written (paths under their stores).
  returned: always
  type: list
  elements: str
stack_changed:
  description: Whether a stack file was written (the stack must be restarted).
  returned: always
  type: bool
release:
  description: The release links and bundle.json the backup recorded.
  returned: always
  type: dict
prometheus:
  description: Whether the tar holds a Prometheus snapshot.
  returned: always
  type: bool
silences:
  description: Alertmanager's silences the backup recorded.
  returned: always
  type: list
  elements: dict
"""

import json
import os
import shutil
import tarfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_backup import (
    BackupError,
    check_blob,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_bundle import (
    relative_path,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_files import (
    ChecksumMismatch,
    UnsafeFile,
    copy_verified,
    read_regular,
    sha256_file,
    write_atomic,
)

# What each part of the tar may be, and how large one member of it may be.
LIMITS = {"release.json": 64 << 20, "stack": 16 << 20, "models/manifests": 1 << 20,
          "prometheus": 64 << 30, "alertmanager/silences.json": 16 << 20}


class Restorer:
    """One target's restore from its tar."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.installed = []

    def members(self, tar):
        """{relative name: member} of the regular files, every member checked first."""
        files = {}
        for member in tar.getmembers():
            name = relative_path(member.name)
            part = next((key for key in LIMITS
                         if name == key or (name or "").startswith(key + "/")), None)
            if name is None or part is None:
                raise BackupError("the backup tar holds %r, which no backup writes" % member.name)
            if member.isdir():
                continue
            if not member.isfile() or member.size > LIMITS[part]:
                raise BackupError("the backup tar's %s is not a regular file of at most %d bytes"
                                  % (name, LIMITS[part]))
            files[name] = member
        return files

    def missing(self):
        lacking = []
        for name in self.params["blobs"]:
            path = os.path.join(self.params["models_dir"], "blobs", check_blob(name))
            try:
                whole = sha256_file(path) == name[len("sha256-"):]
            except (OSError, UnsafeFile):
                whole = False
            if not whole:
                lacking.append(name)
        return lacking

    def lacking(self):
        """The blobs to install. The restore's first call (missing=true) hashed the store and
        only what it named was sent: those are in staged. Hashing every blob of the store a
        second time (GBs) would tell nothing new, so the others need only be there."""
        if self.module.check_mode or not self.params["staged"]:
            return self.missing()
        lacking = []
        for name in self.params["blobs"]:
            if os.path.lexists(os.path.join(self.params["staged"], check_blob(name))):
                lacking.append(name)
            elif not os.path.isfile(os.path.join(self.params["models_dir"], "blobs", name)):
                raise BackupError("blob %s is neither in the model store nor among those sent; "
                                  "run the restore again" % name)
        return lacking

    def install_blobs(self, lacking):
        for name in lacking:
            staged = os.path.join(self.params["staged"] or "", name)
            target = os.path.join(self.params["models_dir"], "blobs", name)
            if not self.module.check_mode:
                try:
                    copy_verified(staged, target, name[len("sha256-"):])
                except ChecksumMismatch:
                    raise BackupError("blob %s was damaged on its way to this target; run the "
                                      "restore again" % name) from None
            self.installed.append("blobs/" + name)

    def write(self, tar, member, target, mode=None):
        """Write a member where it belongs when its content differs; True when it did."""
        data = tar.extractfile(member).read()
        # What is there now is read as the project reads hostile files: never through a
        # symlink, never more than the member's size (a link to /dev/zero must not hang it).
        try:
            if read_regular(target, len(data)) == data:
                return False
        except (OSError, UnsafeFile):
            pass
        if not self.module.check_mode:
            write_atomic(target, data, mode if mode is not None else member.mode & 0o777)
            os.chown(target, member.uid, member.gid)  # the gateway's TLS key is its user's
        return True

    def prometheus(self, tar, files):
        data_dir = self.params["prometheus_data"]
        snapshot = sorted(name for name in files if name.startswith("prometheus/"))
        if not data_dir or not snapshot:
            return False
        if self.module.check_mode:
            return True
        owner = self.params["prometheus_owner"]
        for entry in os.listdir(data_dir):
            path = os.path.join(data_dir, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        for name in snapshot:
            target = os.path.join(data_dir, name[len("prometheus/"):])
            # Streamed: a chunk file of the TSDB is up to 512 MiB.
            write_atomic(target, tar.extractfile(files[name]), 0o640)
        for directory, subdirectories, entries in os.walk(data_dir):
            for entry in subdirectories + entries:
                os.chown(os.path.join(directory, entry), owner, owner)
        return True

    def run(self):
        with tarfile.open(self.params["archive"], mode="r:") as tar:
            files = self.members(tar)
            if "release.json" not in files:
                raise BackupError("the backup tar has no release.json")
            release = json.loads(tar.extractfile(files["release.json"]).read())
            has_snapshot = any(name.startswith("prometheus/") for name in files)
            if self.params["missing"]:
                lacking = self.missing()
                return dict(changed=False, missing=lacking, installed=[], stack_changed=False,
                            release=release, silences=[], prometheus=has_snapshot)
            lacking = self.lacking()
            self.install_blobs(lacking)
            for name in sorted(files):
                if name.startswith("models/manifests/"):
                    target = os.path.join(self.params["models_dir"], name[len("models/"):])
                    if self.write(tar, files[name], target, 0o644):
                        self.installed.append(name[len("models/"):])
            stack_changed = False
            for name in sorted(files):
                if name.startswith("stack/"):
                    target = os.path.join(self.params["stack_dir"], name[len("stack/"):])
                    if self.write(tar, files[name], target):
                        self.installed.append(name)
                        stack_changed = True
            if self.prometheus(tar, files):
                self.installed.append("prometheus/")
            silences = []
            if "alertmanager/silences.json" in files:
                silences = json.loads(tar.extractfile(files["alertmanager/silences.json"]).read())
        return dict(changed=bool(self.installed), missing=lacking, installed=self.installed,
                    stack_changed=stack_changed, release=release, prometheus=has_snapshot,
                    silences=silences if isinstance(silences, list) else [])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            archive=dict(type="path", required=True),
            blobs=dict(type="list", elements="str", default=[]),
            missing=dict(type="bool", default=False),
            staged=dict(type="path"),
            models_dir=dict(type="path", required=True),
            stack_dir=dict(type="path", required=True),
            prometheus_data=dict(type="path", default=""),
            prometheus_owner=dict(type="int", default=65534),
        ),
        supports_check_mode=True,
    )
    try:
        result = Restorer(module).run()
    except (BackupError, UnsafeFile, OSError, ValueError, tarfile.TarError) as error:
        module.fail_json(msg="The restore of this target stopped: %s." % error)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
