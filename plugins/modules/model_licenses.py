#!/usr/bin/python
# -*- coding: utf-8 -*-
# gemma-airgap: put each bundled model's licence where people read it.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: model_licenses
short_description: Write each model's licence layers from an Ollama store into a LICENSES directory
description:
  - Reads the named models' manifests in the Ollama store O(store) and writes the text of
    their licence layers (C(application/vnd.ollama.image.license)) to O(dest), one file per
    model (C(gemma3n_e4b.txt) for C(gemma3n:e4b); several licences of one model joined by a
    newline, as C(ollama show --license) shows them). A model without a licence layer gets no
    file and is reported with none.
  - Files in O(dest) that no model of this run produced (a model no longer bundled) are
    removed, so the directory lists exactly what the bundle carries. A file whose content
    is already right is left alone.
  - Each licence blob is read within a limit, checked against its digest, and decoded as
    UTF-8 (bytes that are not are replaced).
  - Reports for each model the licences' first lines (their titles) and whether a licence is
    the Gemma Terms of Use, which prepare.yml lets into a bundle only when the site accepted
    them (C(gemma_terms_accepted)).
version_added: "0.18.0"
author: gemma-airgap developers (@gemma-airgap)
options:
  store:
    description: The Ollama store (with C(manifests/) and C(blobs/)), e.g. the bundle's C(models/).
    type: path
    required: true
  dest:
    description: The directory to write the licence files into (created when missing).
    type: path
    required: true
  models:
    description: Model names as Ollama writes them (C(gemma3n:e4b)).
    type: list
    elements: str
    required: true
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
requirements:
  - Python standard library only.
seealso:
  - module: gemma_airgap.ollama.ollama_store
"""

EXAMPLES = r"""
- name: Put the bundled models' licences into LICENSES/
  gemma_airgap.ollama.model_licenses:
    store: /srv/bundles/2026.11.25-1/models
    dest: /srv/bundles/2026.11.25-1/LICENSES
    models: [gemma3n:e4b, gemma3n:e2b]
"""

RETURN = r"""
licenses:
  description: One entry per model, in the order of O(models).
  returned: always
  type: list
  elements: dict
  sample:
    - model: gemma3n:e4b
      file: gemma3n_e4b.txt
      titles: [Gemma Terms of Use]
      gemma: true
    - model: lab/tiny:v1
      file: null
      titles: []
      gemma: false
removed:
  description: Files removed from O(dest) because no bundled model has them any more.
  returned: always
  type: list
  elements: str
"""

import hashlib
import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_files import (
    UnsafeFile,
    read_regular,
    write_atomic,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_ollama import (
    MANIFEST_LIMIT,
    blob_name,
    display_name,
    manifest_entries,
    manifest_path,
    parse_name,
)

LICENSE_MEDIA = "application/vnd.ollama.image.license"
# A licence is a few KiB to a few hundred; a larger layer is not taken for one.
LICENSE_LIMIT = 4 * 1024 * 1024
TITLE_LIMIT = 120
GEMMA_TERMS = re.compile(r"gemma\s+terms\s+of\s+use", re.IGNORECASE)


class LicenseError(Exception):
    pass


def file_name(parts):
    """gemma3n:e4b -> gemma3n_e4b.txt; lab/tiny:v1 -> lab__tiny_v1.txt (name parts never
    hold '/' or ':', so the name says which model it is)."""
    return display_name(parts).replace("/", "__").replace(":", "_") + ".txt"


def title(text):
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first[:TITLE_LIMIT]


class Store:
    """The licence layers of models in one Ollama store, each checked against its digest."""

    def __init__(self, root):
        self.root = root

    def manifest(self, name):
        try:
            parts = parse_name(name)
        except ValueError as error:
            raise LicenseError(str(error)) from None
        path = manifest_path(self.root, parts)
        try:
            return parts, manifest_entries(read_regular(path, MANIFEST_LIMIT))
        except (OSError, UnsafeFile) as error:
            raise LicenseError("model %s is not in the store at %s (%s)"
                               % (name, self.root, error)) from None
        except ValueError as error:
            raise LicenseError("the manifest of %s is not a valid Ollama manifest: %s"
                               % (name, error)) from None

    def text(self, entry, name):
        path = os.path.join(self.root, "blobs", blob_name(entry["digest"]))
        try:
            data = read_regular(path, LICENSE_LIMIT)
        except (OSError, UnsafeFile) as error:
            raise LicenseError("the licence layer %s of %s cannot be read: %s"
                               % (entry["digest"], name, error)) from None
        if hashlib.sha256(data).hexdigest() != entry["digest"][7:]:
            raise LicenseError("the licence layer %s of %s does not match its digest: the "
                               "store is damaged" % (entry["digest"], name))
        return data.decode("utf-8", "replace")

    def licenses(self, name):
        parts, entries = self.manifest(name)
        texts = [self.text(entry, name) for entry in entries[1:]
                 if entry.get("mediaType") == LICENSE_MEDIA]
        return parts, texts


def write_licenses(store_root, dest, names, check_mode):
    store = Store(store_root)
    results, wanted, changed = [], {}, False
    owners = {}
    for name in names:
        parts, texts = store.licenses(name)
        entry = {"model": display_name(parts), "file": None,
                 "titles": [title(text) for text in texts],
                 "gemma": any(GEMMA_TERMS.search(text) for text in texts)}
        if texts:
            entry["file"] = file_name(parts)
            if owners.get(entry["file"], entry["model"]) != entry["model"]:
                raise LicenseError("%s and %s would share the licence file %s: rename one of "
                                   "them" % (owners[entry["file"]], entry["model"], entry["file"]))
            owners[entry["file"]] = entry["model"]
            wanted[entry["file"]] = "\n".join(texts).encode("utf-8")
        results.append(entry)
    removed = sorted(name for name in (os.listdir(dest) if os.path.isdir(dest) else [])
                     if name not in wanted)
    # Checked before anything is written or removed: a directory there is not ours.
    for name in removed:
        path = os.path.join(dest, name)
        if os.path.isdir(path) and not os.path.islink(path):
            raise LicenseError("%s is a directory; LICENSES holds only the models' licence "
                               "files" % path)
    for file, data in wanted.items():
        path = os.path.join(dest, file)
        try:
            current = read_regular(path, LICENSE_LIMIT * 4)
        except (OSError, UnsafeFile):
            current = None
        if current != data:
            changed = True
            if not check_mode:
                os.makedirs(dest, exist_ok=True)
                write_atomic(path, data)
    if removed:
        changed = True
        if not check_mode:
            for name in removed:
                os.unlink(os.path.join(dest, name))
    return {"changed": changed, "licenses": results, "removed": removed}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            models=dict(type="list", elements="str", required=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        result = write_licenses(params["store"], params["dest"], params["models"],
                                module.check_mode)
    except LicenseError as error:
        module.fail_json(msg="The models' licences were not written: %s." % error)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
