#!/usr/bin/python
# -*- coding: utf-8 -*-
# gemma-airgap: fill a new release on a target from the releases it already holds.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: release_seed
short_description: Take the files a new release shares with earlier ones from the target itself
description:
  - An upgrade bundle mostly repeats the one before it (the same model blobs, most images).
    For each of O(files) that the release directory O(path) lacks, this module looks for a
    file with the same SHA-256 in the other releases under O(root), checks that file's
    content against it (one read), and hard-links it into place, so the file is not sent
    across the network again.
  - The new release's C(SHA256SUMS) says what each file must hold; an earlier release's
    C(SHA256SUMS) only says where to look. A file whose content does not match is skipped
    (and sent as usual), never linked.
  - Only regular files in plain release directories are used (never through a symlink, never
    the C(current) or C(previous) links themselves); a file already present is never replaced.
  - A link is made under a temporary name and renamed into place, so a cut run leaves no
    half-made file under a listed name.
  - Releases on another filesystem cannot be linked; their files are sent as usual.
version_added: "0.14.0"
author: gemma-airgap developers (@gemma-airgap)
options:
  path:
    description: The new release directory; its C(SHA256SUMS) must be there already.
    type: path
    required: true
  root:
    description: The directory holding the releases (one directory per version).
    type: path
    required: true
  files:
    description: Paths relative to O(path) that are missing there, as listed in its C(SHA256SUMS).
    type: list
    elements: str
    required: true
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
notes:
  - Release files are never written after they are verified, so sharing one inode between
    releases shares nothing that changes; removing one release (prune) unlinks its names only.
requirements:
  - Python standard library only.
seealso:
  - module: gemma_airgap.ollama.bundle_manifest
"""

EXAMPLES = r"""
- name: Take what earlier releases already hold
  gemma_airgap.ollama.release_seed:
    path: /opt/gemma-airgap/releases/2026.12.01-1
    root: /opt/gemma-airgap/releases
    files: "{{ missing_paths }}"
  register: seeded
"""

RETURN = r"""
linked:
  description: The paths of O(files) now hard-linked from an earlier release.
  returned: always
  type: list
  elements: str
  sample: ["models/blobs/sha256-4f2a"]
linked_bytes:
  description: Their total size (bytes that need not travel).
  returned: always
  type: int
  sample: 5619863552
not_taken:
  description: Candidates found in an earlier release but not used, each with why.
  returned: always
  type: list
  elements: dict
  sample: [{"path": "images/gateway.tar", "from": "/opt/gemma-airgap/releases/2026.11.25-1",
            "reason": "checksum mismatch"}]
"""

import os
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_bundle import (
    SUMS,
    SUMS_LIMIT,
    parse_sums,
    relative_path,
    version_problem,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_files import (
    UnsafeFile,
    open_regular,
    read_regular,
    sha256_reader,
)


def listed(directory):
    """[(relative path, hex)] of directory's SHA256SUMS; names that would leave it are dropped.

    Raises OSError, UnsafeFile, UnicodeDecodeError or ValueError when it cannot be read."""
    text = read_regular(os.path.join(directory, SUMS), SUMS_LIMIT).decode("utf-8")
    pairs = ((relative_path(name), digest) for name, digest in parse_sums(text))
    return [(path, digest) for path, digest in pairs if path is not None]


class Release:
    """One release directory on the target and what its SHA256SUMS lists."""

    def __init__(self, directory):
        self.directory = directory
        self.by_digest = {}

    @classmethod
    def read(cls, directory):
        """The release, or None when its list cannot be read or parsed (it is then not used)."""
        release = cls(directory)
        try:
            entries = listed(directory)
        except (OSError, UnsafeFile, UnicodeDecodeError, ValueError):
            return None
        for path, digest in entries:
            release.by_digest.setdefault(digest, path)
        return release

    def candidate(self, digest):
        path = self.by_digest.get(digest)
        return None if path is None else os.path.join(self.directory, path)


class Seeder:
    """Links the missing files of one release from the others under the same root."""

    def __init__(self, module):
        self.module = module
        self.path = os.path.realpath(module.params["path"])
        self.root = os.path.realpath(module.params["root"])
        self.device = None  # the release's filesystem: only its files can be linked
        self.linked = []
        self.linked_bytes = 0
        self.skipped = []

    def expected(self):
        """{relative path: digest} from this release's own SHA256SUMS."""
        try:
            entries = listed(self.path)
        except (OSError, UnsafeFile, UnicodeDecodeError, ValueError) as error:
            self.module.fail_json(msg="%s/%s cannot be read (%s): copy the bundle's %s there "
                                      "first (the release role does)."
                                      % (self.path, SUMS, error, SUMS))
        return dict(entries)

    def others(self):
        """The other plain release directories under root, newest first (by mtime)."""
        found = []
        for name in os.listdir(self.root):
            directory = os.path.join(self.root, name)
            if version_problem(name) is not None or directory == self.path:
                continue
            info = os.lstat(directory)
            if stat.S_ISDIR(info.st_mode):
                found.append((info.st_mtime, directory))
        releases = (Release.read(directory) for _mtime, directory in sorted(found, reverse=True))
        return [release for release in releases if release is not None]

    def run(self):
        expected = self.expected()
        self.device = os.stat(self.path).st_dev
        releases = self.others()
        for wanted in self.module.params["files"]:
            path = relative_path(wanted)
            digest = expected.get(path) if path else None
            if digest is None:
                self.module.fail_json(msg="%s is not listed in %s/%s: only listed files are "
                                          "taken from earlier releases."
                                          % (wanted, self.path, SUMS))
            if os.path.lexists(os.path.join(self.path, path)):
                continue
            for release in releases:
                source = release.candidate(digest)
                if source and self.link(source, path, digest, release.directory):
                    break

    def link(self, source, path, digest, release):
        """Link source to path in this release once its content is checked; True when done.

        The file hashed is the file linked: it is opened once (never through a symlink, and
        only when no link on its way leads out of its release), hashed from that descriptor,
        and the new name must then be that same inode.
        """
        if not os.path.realpath(source).startswith(os.path.realpath(release) + os.sep):
            self.skip(path, release, "a link on its way leads out of its release")
            return False
        try:
            with open_regular(source) as reader:
                info = os.fstat(reader.fileno())
                if info.st_dev != self.device:
                    self.skip(path, release, "another filesystem")
                    return False
                actual = sha256_reader(reader)
        except (OSError, UnsafeFile) as error:
            self.skip(path, release, str(error))
            return False
        if actual != digest:
            self.skip(path, release, "checksum mismatch")
            return False
        if not self.module.check_mode and not self.place(source, path, release, info):
            return False
        self.linked.append(path)
        self.linked_bytes += info.st_size
        return True

    def place(self, source, path, release, checked):
        dest = os.path.join(self.path, path)
        temporary = os.path.join(os.path.dirname(dest),
                                 ".seed-%d-%s" % (os.getpid(), os.path.basename(dest)))
        try:
            if not os.path.isdir(os.path.dirname(dest)):
                os.makedirs(os.path.dirname(dest), 0o755)
            os.link(source, temporary, follow_symlinks=False)
            made = os.lstat(temporary)
            if (made.st_dev, made.st_ino) != (checked.st_dev, checked.st_ino):
                os.unlink(temporary)
                self.skip(path, release, "replaced while it was checked")
                return False
            os.rename(temporary, dest)
        except OSError as error:
            if os.path.lexists(temporary):
                os.unlink(temporary)
            self.module.fail_json(msg="Linking %s from %s failed: %s" % (path, release, error))
        return True

    def skip(self, path, release, reason):
        self.skipped.append({"path": path, "from": release, "reason": reason})


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            root=dict(type="path", required=True),
            files=dict(type="list", elements="str", required=True),
        ),
        supports_check_mode=True,
    )
    seeder = Seeder(module)
    if not os.path.isdir(seeder.root):
        module.fail_json(msg="%s is not a directory: no releases to take files from." % seeder.root)
    seeder.run()
    module.exit_json(changed=bool(seeder.linked), linked=seeder.linked,
                     linked_bytes=seeder.linked_bytes, not_taken=seeder.skipped)


if __name__ == "__main__":
    main()
