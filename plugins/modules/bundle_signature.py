#!/usr/bin/python
# -*- coding: utf-8 -*-
# gemma-airgap: sign a sealed bundle's SHA256SUMS on the staging host.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bundle_signature
short_description: Sign a sealed bundle's SHA256SUMS with the site's OpenPGP key
description:
  - Writes C(SHA256SUMS.sig), a detached OpenPGP signature of the bundle's C(SHA256SUMS)
    made with GnuPG, and C(SHA256SUMS.keys), the signer's public key, beside it.
    M(gemma_airgap.ollama.bundle_manifest) checks them (its option C(trusted_signers)) on
    the control node and on every target.
  - The secret key comes from O(secret_key) (an armored key, from the vault), imported into
    a temporary GnuPG home that is removed afterwards, or from the GnuPG home O(gnupg_home)
    (a key on a smartcard, or in an agent). It is never written into the bundle.
  - With O(sign=repositories), signs each apt repository's C(Release) of O(repositories) into
    C(Release.gpg) (a detached, armored signature) instead, before the seal lists those
    signatures; targets and the control-node kit then use the repositories with C(signed-by=)
    the signer's key and the pinned fingerprints, never C([trusted=yes]).
  - A signature that already verifies with O(fingerprint) over the current C(SHA256SUMS) (or
    C(Release)) is kept, so a second run over an unchanged bundle changes nothing.
version_added: "0.17.0"
author: gemma-airgap developers (@gemma-airgap)
options:
  path:
    description: The sealed bundle directory.
    type: path
    required: true
  fingerprint:
    description: The signing key's primary fingerprint (40 or 64 hex digits).
    type: str
    required: true
  secret_key:
    description: The armored secret key (C(gpg --armor --export-secret-keys)); from a vault.
    type: str
  passphrase:
    description: The secret key's passphrase, when it has one.
    type: str
  gnupg_home:
    description: A GnuPG home that holds the secret key, used when O(secret_key) is not given.
    type: path
  sign:
    description:
      - V(sums) signs C(SHA256SUMS), after the seal.
      - V(repositories) signs the C(Release) of each of O(repositories), before the seal.
    type: str
    choices: [sums, repositories]
    default: sums
    version_added: "0.18.0"
  repositories:
    description:
      - Directories of apt repositories in the bundle (relative to O(path)) whose C(Release)
        to sign with O(sign=repositories).
    type: list
    elements: str
    default: []
    version_added: "0.18.0"
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
requirements:
  - GnuPG (gpg) on the staging host, and gpgv or sqv to check the signature.
"""

EXAMPLES = r"""
- name: Sign the bundle's package repositories (before the seal)
  gemma_airgap.ollama.bundle_signature:
    path: /srv/bundles/2026.11.25-1
    fingerprint: "{{ bundle_signing_fingerprint }}"
    secret_key: "{{ vault_bundle_signing_key }}"
    sign: repositories
    repositories: [packages/debian-13-amd64, control-node/packages]

- name: Sign the bundle (after the seal)
  gemma_airgap.ollama.bundle_signature:
    path: /srv/bundles/2026.11.25-1
    fingerprint: "{{ bundle_signing_fingerprint }}"
    secret_key: "{{ vault_bundle_signing_key }}"
"""

RETURN = r"""
signer:
  description: The fingerprint of the key that signed the bundle.
  returned: success
  type: str
signed:
  description: The files this run signed (C(SHA256SUMS), or each repository's C(Release)).
  returned: success
  type: list
  elements: str
  sample: [packages/debian-13-amd64/Release]
"""

import os
import shutil
import subprocess
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_bundle import (
    SUMS,
    relative_path,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_files import (
    write_atomic,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_signature import (
    KEYS,
    RELEASE,
    RELEASE_SIGNATURE,
    SIGNATURE,
    SignatureRefused,
    check,
    fingerprint,
    repository_signed_by,
)

GPG_TIMEOUT = 300


class Signer:
    """gpg in a GnuPG home of its own (with the vault's key) or in the operator's."""

    def __init__(self, module, key):
        self.module = module
        self.key = key
        self.params = module.params
        self.home = None

    def gpg(self, *args, data=None, unlock=False):
        argv = [self.module.get_bin_path("gpg", required=True), "--batch", "--no-tty",
                "--pinentry-mode", "loopback"]
        home = self.home or self.params["gnupg_home"]
        env = dict(os.environ, LC_ALL="C", **({"GNUPGHOME": home} if home else {}))
        if unlock and self.params["passphrase"] is not None:
            argv += ["--passphrase-fd", "0"]
            data = self.params["passphrase"].encode() + b"\n" + (data or b"")
        try:
            done = subprocess.run(argv + list(args), input=data, env=env, capture_output=True,
                                  timeout=GPG_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise SignatureRefused("gpg did not finish within %d s" % GPG_TIMEOUT) from None
        if done.returncode != 0:
            raise SignatureRefused("gpg %s failed: %s" % (
                args[0], done.stderr.decode("utf-8", "replace").strip()[-800:]))
        return done.stdout

    def __enter__(self):
        if self.params["secret_key"]:
            self.home = tempfile.mkdtemp(prefix="gemma-airgap-sign-")
            os.chmod(self.home, 0o700)
            self.gpg("--import", data=self.params["secret_key"].encode())
        return self

    def __exit__(self, *_exc):
        if self.home:
            # The agent this home started holds the key in memory: stop it with the home.
            subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=dict(
                os.environ, GNUPGHOME=self.home), capture_output=True, check=False, timeout=30)
            shutil.rmtree(self.home, ignore_errors=True)

    def detach_sign(self, path):
        return self.gpg("--local-user", self.key, "--armor", "--detach-sign", "--output", "-",
                        path, unlock=True)

    def write_keys(self, root):
        keys = self.gpg("--export", "--export-options", "export-minimal", self.key)
        if not keys:
            raise SignatureRefused("gpg has no public key %s to put beside the signature"
                                   % self.key)
        write_atomic(os.path.join(root, KEYS), keys)

    def sign(self, root):
        signature = self.detach_sign(os.path.join(root, SUMS))
        self.write_keys(root)
        write_atomic(os.path.join(root, SIGNATURE), signature)

    def sign_repository(self, root, repository):
        """Release.gpg for the repository's Release (and the key beside SHA256SUMS, which
        the targets' signed-by= names)."""
        signature = self.detach_sign(os.path.join(root, repository, RELEASE))
        self.write_keys(root)
        write_atomic(os.path.join(root, repository, RELEASE_SIGNATURE), signature)


def repositories(root, names):
    """The repository directories, checked to lie inside the bundle and hold a Release."""
    found = []
    for name in names:
        relative = relative_path(name)
        if relative is None:
            raise SignatureRefused("%r is not a directory inside the bundle" % name)
        release = os.path.join(root, relative, RELEASE)
        if os.path.islink(release) or not os.path.isfile(release):
            raise SignatureRefused("%s has no %s: resolve its packages again (remove %s/"
                                   "packages.list, then run prepare.yml)"
                                   % (relative, RELEASE, relative))
        found.append(relative)
    return found


def sign_repositories(module, root, key):
    names = repositories(root, module.params["repositories"])
    stale = [name for name in names if not repository_signed_by(root, name, key)]
    if stale and not module.check_mode:
        with Signer(module, key) as signer:
            for name in stale:
                signer.sign_repository(root, name)
        unsigned = [name for name in stale if not repository_signed_by(root, name, key)]
        if unsigned:
            raise SignatureRefused("the signature of %s does not verify after signing"
                                   % ", ".join(unsigned))
    return [name + "/" + RELEASE for name in stale]


def sign_sums(module, root, key):
    if not os.path.isfile(os.path.join(root, SUMS)):
        raise SignatureRefused("%s has no %s: seal the bundle first" % (root, SUMS))
    try:
        check(root, [key])
        return []
    except SignatureRefused:
        pass  # not signed yet, or SHA256SUMS changed since: sign it
    if not module.check_mode:
        with Signer(module, key) as signer:
            signer.sign(root)
        check(root, [key])
    return [SUMS]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            fingerprint=dict(type="str", required=True),
            secret_key=dict(type="str", no_log=True),
            passphrase=dict(type="str", no_log=True),
            gnupg_home=dict(type="path"),
            sign=dict(type="str", choices=["sums", "repositories"], default="sums"),
            repositories=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    root = module.params["path"]
    try:
        key = fingerprint(module.params["fingerprint"])
        if module.params["sign"] == "repositories":
            signed = sign_repositories(module, root, key)
        else:
            signed = sign_sums(module, root, key)
    except SignatureRefused as error:
        module.fail_json(msg="The bundle at %s was not signed: %s." % (root, error))
    module.exit_json(changed=bool(signed), signer=key, signed=signed)


if __name__ == "__main__":
    main()
