# -*- coding: utf-8 -*-
# Shared by the gemma-airgap bundle modules; stdlib only (it runs on closed-network targets).
"""Who signed a bundle: SHA256SUMS.sig, checked with the system's own OpenPGP verifier.

SHA256SUMS proves a bundle arrived as it left; only a signature proves it left from the
site's staging host. prepare signs SHA256SUMS (a detached OpenPGP signature,
``SHA256SUMS.sig``) and puts the signer's public key beside it (``SHA256SUMS.keys``). The
key in the bundle is only a carrier: what is trusted is a fingerprint pinned in the
inventory, and a fingerprint is a hash of the key itself, so a key of an attacker's cannot
pass for it.

The signature is checked by a maintained verifier that every apt system has, never by a
parser of ours: ``gpgv`` (GnuPG) or ``sqv`` (Sequoia; Debian 13's apt uses it). Both report
the primary key's fingerprint of a good signature. The three files are read once, as
regular files within limits, and the verifier sees those bytes; the caller parses the same
SHA256SUMS bytes it was given back, so nothing can be swapped between the check and the use.

The bundle's apt repositories are signed by the same key (``Release.gpg`` beside each
``Release``, listed in SHA256SUMS); apt checks those itself, with ``signed-by=`` the bundle's
key file and the pinned fingerprints.
"""

from __future__ import absolute_import, division, print_function

import os
import re
import shutil
import subprocess
import tempfile

from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_bundle import (
    SUMS,
    SUMS_LIMIT,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_files import (
    UnsafeFile,
    read_regular,
)

__metaclass__ = type

SIGNATURE = SUMS + ".sig"
KEYS = SUMS + ".keys"
# An apt repository's index and its detached signature (apt reads Release.gpg beside Release
# when there is no InRelease).
RELEASE = "Release"
RELEASE_SIGNATURE = "Release.gpg"
SIGNATURE_LIMIT = 64 * 1024
KEYS_LIMIT = 1024 * 1024
# OpenPGP v4 (SHA-1, 40 hex) and v6 (SHA-256, 64 hex) fingerprints.
FINGERPRINT = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")
VERIFY_TIMEOUT = 120


class SignatureRefused(Exception):
    """The bundle's signature is missing, bad or not by a trusted key; the message says so."""


def fingerprint(text):
    """A fingerprint as written by people (spaces, lower case, 0x) in its one form."""
    if not isinstance(text, str):
        raise SignatureRefused("%r is not an OpenPGP fingerprint" % (text,))
    normal = re.sub(r"\s+", "", text).upper()
    normal = normal[2:] if normal.startswith("0X") else normal
    if not FINGERPRINT.fullmatch(normal):
        raise SignatureRefused(
            "%r is not an OpenPGP fingerprint (40 or 64 hex digits, as gpg --fingerprint "
            "prints it); a key ID is too short to pin" % text)
    return normal


def verifier():
    """(kind, path) of the OpenPGP verifier on this machine."""
    for kind in ("gpgv", "sqv"):
        path = shutil.which(kind) or next(
            (p for p in ("/usr/bin/" + kind, "/bin/" + kind) if os.access(p, os.X_OK)), None)
        if path:
            return kind, path
    raise SignatureRefused(
        "this machine has no OpenPGP verifier (gpgv or sqv): install the package gpgv "
        "(every apt system has it or sqv)")


def _run(argv, env=None):
    try:
        return subprocess.run(argv, env=env, capture_output=True, timeout=VERIFY_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired:
        raise SignatureRefused("%s did not answer within %d s" % (argv[0], VERIFY_TIMEOUT)) \
            from None


def _gpgv(path, work, sums, signature, keys):
    """([primary fingerprints of the good signatures], the key that signed when known)."""
    env = dict(os.environ, GNUPGHOME=work, LC_ALL="C")
    done = _run([path, "--status-fd", "1", "--keyring", keys, signature, sums], env)
    status = done.stdout.decode("utf-8", "replace").splitlines()
    # gpgv exits 0 only when every signature in the file is good.
    fields_of = [line.split() for line in status]
    good = [fields[-1] for fields in fields_of
            if fields[:2] == ["[GNUPG:]", "VALIDSIG"] and len(fields) > 2]
    if done.returncode == 0 and good:
        return good, good[0]
    for fields in fields_of:
        if fields[:2] == ["[GNUPG:]", "ERRSIG"]:
            # ERRSIG <keyid> <algo> <hash> <class> <time> <rc> [<fingerprint>]
            return [], fields[8] if len(fields) > 8 else fields[2]
        if fields[:2] == ["[GNUPG:]", "BADSIG"] and len(fields) > 2:
            return [], fields[2]
    return [], None


def _sqv(path, sums, signature, keys):
    done = _run([path, "--keyring", keys, "--signature-file", signature, sums],
                dict(os.environ, LC_ALL="C"))
    found = [line.strip() for line in done.stdout.decode("utf-8", "replace").splitlines()
             if FINGERPRINT.fullmatch(line.strip())]
    if done.returncode == 0 and found:
        return found, found[0]
    missing = re.search(r"Missing key ([0-9A-F]{16,64})", done.stderr.decode("utf-8", "replace"))
    return [], missing.group(1) if missing else None


def _read(root, name, limit):
    try:
        return read_regular(os.path.join(root, name), limit)
    except FileNotFoundError:
        return None
    except (OSError, UnsafeFile) as error:
        raise SignatureRefused("%s is not a regular file of at most %d bytes (%s)"
                               % (name, limit, error)) from None


def verified_by(data, signature, keys):
    """(verifier, [primary fingerprints of the good signatures], the key that signed when
    known) of signature over data (bytes), with the keys (bytes) as the only keyring."""
    kind, path = verifier()
    work = tempfile.mkdtemp(prefix="gemma-airgap-verify-")
    try:
        os.chmod(work, 0o700)
        files = {}
        for name, content in (("data", data), ("signature", signature), ("keys", keys)):
            files[name] = os.path.join(work, name)
            with open(files[name], "wb") as out:
                out.write(content)
        if kind == "gpgv":
            good, seen = _gpgv(path, work, files["data"], files["signature"], files["keys"])
        else:
            good, seen = _sqv(path, files["data"], files["signature"], files["keys"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return kind, good, seen


def check(root, trusted):
    """The SHA256SUMS bytes of the bundle at root and the fingerprint of its signer, when
    a trusted key signed them; SignatureRefused, naming what was found and what was
    expected, otherwise. trusted: the pinned fingerprints."""
    pinned = [fingerprint(item) for item in trusted or []]
    if not pinned:
        raise SignatureRefused("no trusted signer is pinned: set gemma_airgap_bundle_signers "
                               "(trusted_signers) to the fingerprint of the site's bundle "
                               "signing key")
    expected = " or ".join(pinned)
    sums = _read(root, SUMS, SUMS_LIMIT)
    signature = _read(root, SIGNATURE, SIGNATURE_LIMIT)
    keys = _read(root, KEYS, KEYS_LIMIT)
    if sums is None:
        raise SignatureRefused("the bundle has no %s" % SUMS)
    if signature is None:
        raise SignatureRefused("the bundle is not signed (it has no %s); expected a signature "
                               "by %s" % (SIGNATURE, expected))
    if keys is None:
        raise SignatureRefused("the bundle carries no %s, the signer's public key; expected "
                               "a signature by %s" % (KEYS, expected))
    kind, good, seen = verified_by(sums, signature, keys)
    if not good:
        raise SignatureRefused(
            "%s does not verify with the key the bundle carries (%s: %s): SHA256SUMS was "
            "changed after it was signed, or another key signed it; expected a signature by %s"
            % (SIGNATURE, kind, "made by key %s" % seen if seen else "no good signature", expected))
    trusted_good = [item for item in good if item in pinned]
    if not trusted_good:
        raise SignatureRefused("the bundle is signed by %s, which is not a trusted signer; "
                               "expected %s" % (" and ".join(good), expected))
    return sums, trusted_good[0]


def repository_signed_by(root, repository, key):
    """Whether the apt repository at root/repository has a Release.gpg over its current
    Release made by key, checked with the bundle's KEYS."""
    try:
        release = _read(root, repository + "/" + RELEASE, SUMS_LIMIT)
        signature = _read(root, repository + "/" + RELEASE_SIGNATURE, SIGNATURE_LIMIT)
        keys = _read(root, KEYS, KEYS_LIMIT)
    except SignatureRefused:
        return False
    if release is None or signature is None or keys is None:
        return False
    return key in verified_by(release, signature, keys)[1]
