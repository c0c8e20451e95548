"""Signed bundles: bundle_signature signs SHA256SUMS with real GnuPG, bundle_manifest checks the
signature with gpgv against pinned fingerprints, and what an attacker with write access to
the media can make (a changed file with a consistent SHA256SUMS, a signature of their own,
no signature) is refused before any other file is read, naming what was found and expected."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_module

SIGNATURE, KEYS = "SHA256SUMS.sig", "SHA256SUMS.keys"


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    if not shutil.which("gpg"):
        from labctl import apt_install

        apt_install(["gnupg", "gpgv"])
    done = subprocess.run(["gpg", "--batch", "--no-tty", "--pinentry-mode", "loopback", *args],
                          input=data, env=dict(os.environ, GNUPGHOME=str(home)),
                          capture_output=True, check=True)
    return done.stdout


def make_key(home: Path, uid: str, passphrase: str = "") -> dict:
    gpg(home, "--passphrase", passphrase, "--quick-gen-key", uid, "ed25519", "sign", "never")
    listing = gpg(home, "--with-colons", "--list-keys", uid).decode()
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    secret = gpg(home, "--passphrase", passphrase, "--armor", "--export-secret-keys", fpr)
    return {"fingerprint": fpr, "secret": secret.decode(), "passphrase": passphrase}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The site's key, the next one (a rotation), and an attacker's, in a home of their own."""
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    made = {"site": make_key(home, "site signer <site@lab>"),
            "next": make_key(home, "next signer <next@lab>", passphrase="correct horse"),
            "attacker": make_key(home, "attacker <a@evil>"), "home": home}
    yield made
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=dict(os.environ, GNUPGHOME=str(home)),
                   check=False)


@pytest.fixture
def bundle(tmp_path):
    root = tmp_path / "2026.11.29-1"
    (root / "models" / "blobs").mkdir(parents=True)
    (root / "models" / "blobs" / "sha256-aa").write_bytes(b"weights" * 100)
    (root / "images").mkdir()
    (root / "images" / "ollama.tar").write_bytes(b"layers" * 100)
    sealed = run_module("bundle_manifest", {"path": str(root), "version": root.name})
    assert not sealed.get("failed"), sealed
    return root


def sign(root: Path, key: dict, **extra) -> dict:
    args = {"path": str(root), "fingerprint": key["fingerprint"], "secret_key": key["secret"]}
    if key["passphrase"]:
        args["passphrase"] = key["passphrase"]
    return run_module("bundle_signature", {**args, **extra})


def verify(root: Path, *trusted: str) -> dict:
    return run_module("bundle_manifest", {"path": str(root), "state": "verified",
                                          "trusted_signers": list(trusted)})


def test_a_signed_bundle_verifies_and_a_second_signing_changes_nothing(bundle, keys):
    site = keys["site"]["fingerprint"]
    signed = sign(bundle, keys["site"])
    assert signed["changed"] and signed["signer"] == site, signed
    assert (bundle / SIGNATURE).is_file() and (bundle / KEYS).is_file()
    # The key in the bundle is the public one only.
    assert b"PRIVATE" not in (bundle / KEYS).read_bytes()
    checked = verify(bundle, site.lower()[:20] + " " + site.lower()[20:])  # as people write it
    assert not checked.get("failed") and checked["signer"] == site, checked
    again = sign(bundle, keys["site"])
    assert not again["changed"] and not again.get("failed"), again
    # sha256sum -c still checks the bundle: the signature files are not in SHA256SUMS.
    listed = (bundle / "SHA256SUMS").read_text()
    assert SIGNATURE not in listed and KEYS not in listed
    plain = subprocess.run(["sha256sum", "-c", "--strict", "--quiet", "SHA256SUMS"], cwd=bundle,
                           capture_output=True, check=False)
    assert plain.returncode == 0, plain.stdout


def test_a_changed_file_with_a_consistent_sha256sums_is_refused(bundle, keys):
    """What an attacker with write access to the media makes: a file changed and its line in
    SHA256SUMS changed to match. The checksums agree; the signature does not."""
    sign(bundle, keys["site"])
    (bundle / "images" / "ollama.tar").write_bytes(b"backdoor" * 100)
    resealed = run_module("bundle_manifest", {"path": str(bundle), "version": bundle.name})
    assert resealed["changed"], resealed
    assert verify(bundle).get("failed") is None  # the checksums alone pass
    refused = verify(bundle, keys["site"]["fingerprint"])
    assert refused.get("failed"), refused
    assert "SHA256SUMS.sig does not verify with the key the bundle carries" in refused["msg"]
    assert "SHA256SUMS was changed after it was signed" in refused["msg"]
    assert f"expected a signature by {keys['site']['fingerprint']}" in refused["msg"]
    assert "nothing was changed" in refused["msg"] and "bad_files" not in refused


def test_an_unsigned_bundle_is_refused_naming_the_key_expected(bundle, keys):
    refused = verify(bundle, keys["site"]["fingerprint"])
    assert refused.get("failed")
    assert (f"is not signed (it has no SHA256SUMS.sig); expected a signature by "
            f"{keys['site']['fingerprint']}") in refused["msg"], refused["msg"]


def test_a_bundle_signed_by_another_key_is_refused_naming_both(bundle, keys):
    """The attacker signs with their own key and puts it in the bundle: the signature is good,
    the signer is not the pinned one."""
    sign(bundle, keys["attacker"])
    refused = verify(bundle, keys["site"]["fingerprint"])
    assert refused.get("failed")
    assert (f"signed by {keys['attacker']['fingerprint']}, which is not a trusted signer; "
            f"expected {keys['site']['fingerprint']}") in refused["msg"], refused["msg"]


def test_a_signature_without_the_signers_key_names_the_key_that_signed(bundle, keys):
    sign(bundle, keys["attacker"])
    shutil.copy(bundle / KEYS, bundle.parent / "attacker.keys")
    sign(bundle, keys["site"])
    # The site's signature beside the attacker's key: gpgv cannot check it and says by whom.
    (bundle / KEYS).write_bytes((bundle.parent / "attacker.keys").read_bytes())
    refused = verify(bundle, keys["site"]["fingerprint"])
    assert refused.get("failed")
    assert f"made by key {keys['site']['fingerprint']}" in refused["msg"], refused["msg"]


def test_during_a_rotation_either_trusted_key_is_accepted(bundle, keys):
    """The inventory trusts the old and the new key while bundles move to the new one; a key
    with a passphrase (from the vault) signs."""
    signed = sign(bundle, keys["next"])
    assert not signed.get("failed"), signed
    assert keys["next"]["passphrase"] not in json.dumps(signed)
    both = verify(bundle, keys["site"]["fingerprint"], keys["next"]["fingerprint"])
    assert not both.get("failed") and both["signer"] == keys["next"]["fingerprint"], both
    assert verify(bundle, keys["site"]["fingerprint"]).get("failed")


@pytest.mark.parametrize(("name", "plant", "says"), [
    (SIGNATURE, lambda p: p.symlink_to("/dev/zero"), "SHA256SUMS.sig is not a regular file"),
    (KEYS, lambda p: p.write_bytes(b"\0" * (2 << 20)), "SHA256SUMS.keys is not a regular file"),
    (SIGNATURE, lambda p: p.write_bytes(b"not a signature"), "does not verify"),
    (KEYS, lambda p: p.write_bytes(b"not a key"), "does not verify"),
])
def test_hostile_signature_files_are_refused(bundle, keys, name, plant, says):
    sign(bundle, keys["site"])
    (bundle / name).unlink()
    plant(bundle / name)
    refused = verify(bundle, keys["site"]["fingerprint"])
    assert refused.get("failed") and says in refused["msg"], refused["msg"]


@pytest.mark.parametrize("pinned", ["0x1234ABCD", "1234567890ABCDEF", "not hex" * 6])
def test_a_key_id_or_garbage_is_no_pin(bundle, keys, pinned):
    sign(bundle, keys["site"])
    refused = verify(bundle, pinned)
    assert refused.get("failed") and "is not an OpenPGP fingerprint" in refused["msg"]


def test_signing_with_a_wrong_passphrase_fails_saying_so_and_signs_nothing(bundle, keys):
    failed = sign(bundle, {**keys["next"], "passphrase": "wrong"})
    assert failed.get("failed") and "was not signed: gpg --local-user failed" in failed["msg"]
    assert "wrong" not in failed["msg"] and not (bundle / SIGNATURE).exists()


def test_the_signature_alone_is_checked_without_reading_the_files(bundle, keys):
    """What a target checks first, before anything is sent: only the three small files."""
    sign(bundle, keys["site"])
    (bundle / "images" / "ollama.tar").unlink()  # not there yet: the sync sends it later
    alone = run_module("bundle_manifest", {"path": str(bundle), "state": "signature_verified",
                                           "trusted_signers": [keys["site"]["fingerprint"]]})
    assert not alone.get("failed") and alone["signer"] == keys["site"]["fingerprint"], alone
    sign(bundle, keys["attacker"])
    refused = run_module("bundle_manifest", {"path": str(bundle), "state": "signature_verified",
                                             "trusted_signers": [keys["site"]["fingerprint"]]})
    assert refused.get("failed") and "which is not a trusted signer" in refused["msg"]
    nothing = run_module("bundle_manifest", {"path": str(bundle), "state": "signature_verified"})
    assert nothing.get("failed") and "no trusted signer is pinned" in nothing["msg"]
