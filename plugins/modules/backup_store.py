#!/usr/bin/python
# -*- coding: utf-8 -*-
# gemma-airgap: the backup location on the control node (or a backup host).

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: backup_store
short_description: Begin, fill, seal, verify and prune dated backup sets with one pool of blobs
description:
  - The backup location holds dated sets (C(sets/<YYYYmmddTHHMMSSZ>/)), each sealed with a
    C(SHA256SUMS) and a C(backup.json) like a bundle, so C(sha256sum -c) checks one, and one
    pool of model blobs (C(blobs/sha256-<hex>)) that every set hard-links to.
  - O(action=begin) makes the set's C(.partial-) directory; O(action=adopt) takes into the pool
    the O(blobs) that a bundle under O(bundle_roots) already holds (each hashed against its
    name) and returns those still to fetch from the targets; O(action=receive) moves the
    fetched O(blobs) from C(incoming/) into the pool once each hashed to its name;
    O(action=seal) links each host's blobs into the set, writes C(backup.json) and
    C(SHA256SUMS), and makes the set visible with one rename; O(action=verify) reads every
    file of a set and fails naming each one that is damaged, missing or not listed;
    O(action=prune) applies retention and removes cut sets and unreferenced blobs;
    O(action=latest) returns the newest sealed set.
  - One run writes at a time. O(action=begin) takes the store for the run (the
    C(ansible-playbook) process it runs under) and fails while another live run holds it;
    O(action=prune), a run's last write, gives it back. The lock of a run that died is taken
    over.
version_added: "0.16.0"
author: gemma-airgap developers (@gemma-airgap)
options:
  root:
    description: The backup location.
    type: path
    required: true
  action:
    description: What to do.
    type: str
    required: true
    choices: [begin, adopt, receive, seal, verify, prune, latest]
  name:
    description: The set (C(YYYYmmddTHHMMSSZ)); for O(action=begin), O(action=seal),
      O(action=verify), and for O(action=prune) the set being written, which it keeps.
    type: str
  blobs:
    description: Blob names (C(sha256-<hex>)), for O(action=adopt) and O(action=receive).
    type: list
    elements: str
    default: []
  bundle_roots:
    description: Directories holding bundles (one directory per version), for O(action=adopt).
    type: list
    elements: path
    default: []
  hosts:
    description: For O(action=seal), per host what its set holds (C(blobs) and anything more
      to record in C(backup.json)).
    type: dict
    default: {}
  meta:
    description: For O(action=seal), more for C(backup.json) (when, by whom, bytes copied).
    type: dict
    default: {}
  keep_daily:
    description: For O(action=prune), the days whose newest set is kept.
    type: int
    default: 7
  keep_weekly:
    description: For O(action=prune), the ISO weeks whose newest set is kept.
    type: int
    default: 4
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
attributes:
  check_mode:
    support: partial
    details: O(action=verify) and O(action=latest) run in check mode; the others change
      nothing there.
  idempotent:
    support: partial
    details: O(action=verify), O(action=latest), O(action=adopt) and O(action=prune) are;
      a set is begun and sealed once.
requirements:
  - Python standard library only.
"""

EXAMPLES = r"""
- name: Verify a set before restoring from it
  gemma_airgap.ollama.backup_store:
    root: /var/lib/gemma-airgap/backups
    action: verify
    name: 20261129T020000Z
"""

RETURN = r"""
path:
  description: The set's directory (begin, seal, verify, latest).
  returned: when there is one
  type: str
name:
  description: The set's name (latest).
  returned: when there is one
  type: str
missing:
  description: The blobs the pool still lacks (adopt).
  returned: action=adopt
  type: list
  elements: str
adopted:
  description: The blobs taken from bundles on the location (adopt).
  returned: action=adopt
  type: list
  elements: str
received_bytes:
  description: Bytes of blobs moved into the pool (receive).
  returned: action=receive
  type: int
manifest:
  description: The set's backup.json (verify, latest).
  returned: action=verify or latest
  type: dict
removed:
  description: Sets removed (prune), cut ones as C(.partial-<name>).
  returned: action=prune
  type: list
  elements: str
freed_bytes:
  description: Bytes of pool blobs removed (prune).
  returned: action=prune
  type: int
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_backup import (
    BackupError,
    Store,
    check_blob,
    run_owner,
)


class Action:
    """One request on the store; each method returns the module's result."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.store = Store(self.params["root"])

    def begin(self):
        return dict(changed=True, path=self.store.begin(self.params["name"], run_owner()))

    def adopt(self):
        self.store.ensure()
        adopted, missing = self.store.adopt([check_blob(b) for b in self.params["blobs"]],
                                            self.params["bundle_roots"])
        return dict(changed=bool(adopted), adopted=adopted, missing=missing)

    def receive(self):
        total = 0
        for name in self.params["blobs"]:
            total += self.store.receive(os.path.join(self.store.incoming, check_blob(name)), name)
        return dict(changed=bool(self.params["blobs"]), received_bytes=total)

    def seal(self):
        path = self.store.seal(self.params["name"], self.params["hosts"], self.params["meta"])
        return dict(changed=True, path=path)

    def verify(self):
        problems = self.store.verify(self.params["name"])
        if problems:
            self.module.fail_json(
                msg="Backup set %s is damaged; nothing was restored: %s. Restore from another "
                    "set (-e backup_set=...), or copy this one again from where it was kept."
                    % (self.params["name"], "; ".join(problems[:20])), problems=problems)
        return dict(changed=False, path=self.store.set_path(self.params["name"]),
                    manifest=self.store.manifest(self.params["name"]))

    def prune(self):
        owner = run_owner()
        self.store.acquire(owner, self.params["name"])
        removed, freed = self.store.prune(self.params["keep_daily"], self.params["keep_weekly"],
                                          current=self.params["name"])
        self.store.release(owner)  # a run's last write
        return dict(changed=bool(removed or freed), removed=removed,
                    freed_bytes=sum(size for _name, size in freed))

    def latest(self):
        names = self.store.sets()
        if not names:
            self.module.fail_json(msg="There is no backup set in %s: run backup.yml first, or "
                                      "give -e backup_root= where the sets are." % self.store.root)
        return dict(changed=False, name=names[-1], path=self.store.set_path(names[-1]),
                    manifest=self.store.manifest(names[-1]))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            action=dict(type="str", required=True,
                        choices=["begin", "adopt", "receive", "seal", "verify", "prune", "latest"]),
            name=dict(type="str"),
            blobs=dict(type="list", elements="str", default=[]),
            bundle_roots=dict(type="list", elements="path", default=[]),
            hosts=dict(type="dict", default={}),
            meta=dict(type="dict", default={}),
            keep_daily=dict(type="int", default=7),
            keep_weekly=dict(type="int", default=4),
        ),
        required_if=[("action", "begin", ["name"]), ("action", "seal", ["name"]),
                     ("action", "verify", ["name"])],
        supports_check_mode=True,
    )
    if module.check_mode and module.params["action"] not in ("verify", "latest"):
        module.exit_json(changed=True, msg="check mode: the store is left as it is")
    try:
        result = getattr(Action(module), module.params["action"])()
    except BackupError as error:
        module.fail_json(msg=str(error))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
