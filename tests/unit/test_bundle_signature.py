"""Signed bundles: bundle_signature signs SHA256SUMS with real GnuPG, bundle_manifest checks the
signature with gpgv against pinned fingerprints, and what an attacker with write access to
the media can make (a changed file with a consistent SHA256SUMS, a signature of their own,
no signature) is refused before any other file is read, naming what was found and expected."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_signature import (
    verified_by,
)

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


REPO = "packages/debian-13-amd64"


def flat_repository(directory: Path) -> None:
    """A flat apt repository with one (empty) index and a Release naming its checksum."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Packages").write_bytes(b"")
    digest = hashlib.sha256(b"").hexdigest()
    (directory / "Release").write_text(
        "Origin: gemma-airgap\nDate: Sun, 29 Nov 2026 07:11:22 +0000\n"
        f"SHA256:\n {digest} 0 Packages\n")


def sign_repositories(root: Path, key: dict, *names: str) -> dict:
    return sign(root, key, sign="repositories", repositories=list(names) or [REPO])


def test_package_repositories_are_signed_before_the_seal_and_kept_when_unchanged(bundle, keys):
    flat_repository(bundle / REPO)
    site = keys["site"]["fingerprint"]
    signed = sign_repositories(bundle, keys["site"])
    assert signed["changed"] and signed["signed"] == [f"{REPO}/Release"], signed
    signature = (bundle / REPO / "Release.gpg").read_bytes()
    assert signature.startswith(b"-----BEGIN PGP SIGNATURE-----")
    _kind, good, _seen = verified_by((bundle / REPO / "Release").read_bytes(), signature,
                                     (bundle / KEYS).read_bytes())
    assert good == [site]
    # SHA256SUMS is signed after the seal, by its own call.
    assert not (bundle / SIGNATURE).exists()
    again = sign_repositories(bundle, keys["site"])
    assert not again["changed"] and again["signed"] == [], again
    # A new resolution writes a new Release: signed again.
    with (bundle / REPO / "Release").open("a") as release:
        release.write("Label: resolved again\n")
    renewed = sign_repositories(bundle, keys["site"])
    assert renewed["changed"] and (bundle / REPO / "Release.gpg").read_bytes() != signature


@pytest.mark.parametrize(("name", "says"), [
    ("../elsewhere", "is not a directory inside the bundle"),
    ("/etc/apt", "is not a directory inside the bundle"),
    ("packages/none", "packages/none has no Release"),
])
def test_a_repository_outside_the_bundle_or_without_release_is_refused(bundle, keys, name, says):
    refused = sign_repositories(bundle, keys["site"], name)
    assert refused.get("failed") and says in refused["msg"], refused
    assert not list(bundle.rglob("Release.gpg"))


def test_a_release_that_is_a_link_is_not_signed(bundle, keys, tmp_path):
    flat_repository(tmp_path / "outside")
    (bundle / REPO).mkdir(parents=True)
    (bundle / REPO / "Release").symlink_to(tmp_path / "outside" / "Release")
    refused = sign_repositories(bundle, keys["site"])
    assert refused.get("failed") and f"{REPO} has no Release" in refused["msg"], refused


def apt_update(repo: Path, signed_by: str, work: Path) -> subprocess.CompletedProcess:
    """apt-get update with the repository as its only source and lists of its own."""
    (work / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (work / "sources.list").write_text(f"deb [signed-by={signed_by}] file:{repo} ./\n")
    return subprocess.run(
        ["apt-get", "-q", "-o", f"Dir::Etc::SourceList={work}/sources.list",
         "-o", "Dir::Etc::SourceParts=/dev/null", "-o", f"Dir::State::Lists={work}/lists",
         "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=", "update"],
        capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"), check=False)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("apt-get"),
                    reason="apt-get update needs root and apt")
def test_apt_trusts_the_repository_only_from_the_pinned_signer(keys):
    """The source line the targets and the kit write, with this host's real apt: the key file
    the bundle carries plus the pinned fingerprint; another signer or a changed Release is
    refused. (apt's download sandbox user must read it all: a world-readable directory.)"""
    with tempfile.TemporaryDirectory(prefix="gemma-airgap-apt-") as scratch:
        Path(scratch).chmod(0o755)
        check_apt_refusals(Path(scratch), keys)


def check_apt_refusals(root: Path, keys: dict) -> None:
    flat_repository(root / "bundle" / REPO)
    for key in ("site", "attacker"):
        sign_repositories(root / "bundle", keys[key])
        shutil.copy(root / "bundle" / KEYS, root / f"{key}.keys")
    sign_repositories(root / "bundle", keys["site"])
    both = root / "both.gpg"
    both.write_bytes((root / "site.keys").read_bytes() + (root / "attacker.keys").read_bytes())
    repo = root / "bundle" / REPO
    site, attacker = keys["site"]["fingerprint"], keys["attacker"]["fingerprint"]

    trusted = apt_update(repo, f"{both},{site}", root / "w1")
    assert trusted.returncode == 0 and "E:" not in trusted.stdout + trusted.stderr, trusted
    other = apt_update(repo, f"{both},{attacker}", root / "w2")
    assert other.returncode != 0 and "is not signed" in other.stderr, other
    (repo / "Release").write_text((repo / "Release").read_text().replace("gemma-airgap", "evil"))
    altered = apt_update(repo, f"{both},{site}", root / "w3")
    assert altered.returncode != 0 and "is not signed" in altered.stderr, altered
