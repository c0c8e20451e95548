"""bundle_manifest: sealing, incremental re-runs, and verification failures."""

import hashlib
import json
import os
import subprocess

import pytest

import bundle_manifest
from tests.conftest import run_module


@pytest.fixture
def bundle(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ollama.tar").write_bytes(os.urandom(300_000))
    (tmp_path / "models" / "blobs").mkdir(parents=True)
    (tmp_path / "models" / "blobs" / "sha256-aa").write_bytes(b"weights" * 1000)
    (tmp_path / "README").write_text("bundle\n")
    return tmp_path


def test_seal_writes_sums_that_sha256sum_accepts(bundle):
    result = run_module("bundle_manifest", {"path": str(bundle), "version": "v1",
                                            "metadata": {"images": [{"name": "x"}]}})
    assert result["changed"] is True
    assert result["files"] == 4  # three files + bundle.json
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=bundle,
                           text=True, capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "bundle.json: OK" in check.stdout
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["version"] == "v1" and meta["images"] == [{"name": "x"}]
    assert meta["created_at"].endswith("Z")


def test_rerun_with_nothing_changed_reads_nothing_and_reports_unchanged(bundle):
    first = run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    sums = (bundle / "SHA256SUMS").read_bytes()
    meta = (bundle / "bundle.json").read_bytes()
    second = run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    assert first["hashed"] == 3
    assert second["changed"] is False
    assert second["hashed"] == 0 and second["hashed_bytes"] == 0
    assert (bundle / "SHA256SUMS").read_bytes() == sums
    assert (bundle / "bundle.json").read_bytes() == meta  # created_at kept


def test_a_changed_file_is_rehashed_alone(bundle):
    run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    (bundle / "README").write_text("changed\n")
    result = run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    assert result["changed"] is True
    assert result["hashed"] == 1
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle,
                          capture_output=True, check=False).returncode == 0


def test_check_mode_writes_nothing(bundle):
    result = run_module("bundle_manifest", {"path": str(bundle), "version": "v1"}, check=True)
    assert result["changed"] is True
    assert not (bundle / "SHA256SUMS").exists()
    assert not (bundle / "bundle.json").exists()


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda b: (b / "images" / "ollama.tar").write_bytes(b"flipped"), "checksum mismatch"),
    (lambda b: (b / "models" / "blobs" / "sha256-aa").unlink(), "missing"),
    (lambda b: (b / "extra.bin").write_bytes(b"?"), "not listed in SHA256SUMS"),
])
def test_verify_names_each_bad_file(bundle, damage, reason):
    run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    assert run_module("bundle_manifest", {"path": str(bundle), "state": "verified"})[
        "changed"] is False
    damage(bundle)
    result = run_module("bundle_manifest", {"path": str(bundle), "state": "verified"})
    assert result["failed"] is True
    assert reason in result["msg"]
    assert "copy it again from the original media" in result["msg"]
    assert any(bad["reason"] == reason for bad in result["bad_files"])


def test_verify_catches_one_flipped_byte_in_a_large_file(bundle):
    run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    target = bundle / "images" / "ollama.tar"
    data = bytearray(target.read_bytes())
    data[150_000] ^= 0x01
    target.write_bytes(bytes(data))
    result = bundle_manifest.verify(str(bundle), 2)
    assert [b["path"] for b in result["bad_files"]] == ["images/ollama.tar"]


def test_verify_without_sums_fails_clearly(tmp_path):
    result = run_module("bundle_manifest", {"path": str(tmp_path), "state": "verified"})
    assert result["failed"] and "SHA256SUMS: missing" in result["msg"]
    missing = run_module("bundle_manifest", {"path": str(tmp_path / "nope"), "version": "v"})
    assert missing["failed"] and "does not exist" in missing["msg"]


def sums_lines(bundle):
    """[(hex, name)] of a SHA256SUMS that bundle_manifest wrote (plain names only)."""
    return [tuple(line.split("  ", 1)) for line in (bundle / "SHA256SUMS").read_text().splitlines()]


def sha256sum_check(bundle):
    return subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=bundle,
                          text=True, capture_output=True, check=False)


def seal_here(bundle, version="v1"):
    """Seal in this process: a fixture step, not the behaviour under test."""
    return bundle_manifest.seal(str(bundle), version, {}, 1, True, False)


def verify_here(bundle):
    """(passed, what) of a verification in this process, for tables of cases."""
    try:
        result = bundle_manifest.verify(str(bundle), 1)
    except (ValueError, bundle_manifest.Refused) as error:
        return False, str(error)
    return not result["bad_files"], result


def test_seal_refuses_a_hostile_version_and_writes_nothing(bundle):
    result = run_module("bundle_manifest", {"path": str(bundle), "version": "../victim"})
    assert result["failed"] is True
    assert '"../victim" is not a plain name' in result["msg"] and "bundle_version" in result["msg"]
    assert not (bundle / "SHA256SUMS").exists() and not (bundle / "bundle.json").exists()


@pytest.mark.parametrize("version", ["../victim", ".", "..", "current", "previous", "a/b",
                                     ".hidden", "-x", "", "v1\n", "v 1"])
def test_seal_refuses_every_version_that_cannot_name_a_release(bundle, version):
    with pytest.raises(bundle_manifest.Refused, match="version"):
        seal_here(bundle, version)
    assert not (bundle / "SHA256SUMS").exists() and not (bundle / "bundle.json").exists()


def test_seal_refuses_metadata_that_would_replace_the_version(bundle):
    result = run_module("bundle_manifest", {"path": str(bundle), "version": "v1",
                                            "metadata": {"version": "../victim"}})
    assert result["failed"] is True and "may not set version" in result["msg"]
    assert not (bundle / "bundle.json").exists()


def forge_version(bundle, version):
    """bundle.json with another version, and a SHA256SUMS that agrees with it."""
    seal_here(bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["version"] = version
    data = json.dumps(meta).encode()
    (bundle / "bundle.json").write_bytes(data)
    lines = [(hashlib.sha256(data).hexdigest() if name == "bundle.json" else digest, name)
             for digest, name in sums_lines(bundle)]
    (bundle / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for d, n in lines))
    assert sha256sum_check(bundle).returncode == 0  # the checksums agree: only the version is bad


def test_verify_refuses_a_forged_version_before_hashing_anything(bundle):
    forge_version(bundle, "../victim")
    result = run_module("bundle_manifest", {"path": str(bundle), "state": "verified"})
    assert result["failed"] is True
    assert 'records the version "../victim"' in result["msg"]
    assert "corrupt or forged" in result["msg"] and "nothing was changed" in result["msg"]
    assert "hashed" not in result  # refused before any other file was read


@pytest.mark.parametrize("version", ["../victim", ".", "current", "previous", "v1\n", 7, None])
def test_verify_refuses_every_forged_version(bundle, version):
    forge_version(bundle, version)
    passed, what = verify_here(bundle)
    assert not passed and f"records the version {json.dumps(version)}" in what


def test_verify_returns_the_version_it_checked(bundle):
    seal_here(bundle, "2026.11.25-1")
    result = run_module("bundle_manifest", {"path": str(bundle), "state": "verified"})
    assert result["version"] == "2026.11.25-1"
    assert result["manifest"]["version"] == "2026.11.25-1"


def test_verify_requires_bundle_json_to_be_listed(bundle):
    seal_here(bundle)
    (bundle / "bundle.json").unlink()
    lines = [(d, n) for d, n in sums_lines(bundle) if n != "bundle.json"]
    (bundle / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for d, n in lines))
    result = run_module("bundle_manifest", {"path": str(bundle), "state": "verified"})
    assert result["failed"] is True and "bundle.json: missing" in result["msg"]


def test_seal_refuses_a_symlink_instead_of_dropping_it(bundle, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "weights").write_bytes(b"w" * 100)
    (bundle / "models" / "linked").symlink_to(outside / "weights")
    result = run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    assert result["failed"] is True
    assert "models/linked (symlink)" in result["msg"] and "cp --dereference" in result["msg"]
    assert not (bundle / "SHA256SUMS").exists()


@pytest.mark.parametrize("kind", ["directory", "dangling", "fifo"])
def test_seal_refuses_linked_directories_dangling_links_and_fifos(bundle, tmp_path_factory,
                                                                   kind):
    outside = tmp_path_factory.mktemp("outside")
    odd = bundle / "models" / "odd"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to(outside if kind == "directory" else outside / "gone")
    with pytest.raises(bundle_manifest.Refused, match="models/odd"):
        seal_here(bundle)
    assert not (bundle / "SHA256SUMS").exists()


def test_verify_never_follows_a_listed_file_that_became_a_symlink(bundle, tmp_path_factory):
    seal_here(bundle)
    outside = tmp_path_factory.mktemp("outside") / "README"
    outside.write_text("bundle\n")  # the same content: following the link would pass
    (bundle / "README").unlink()
    (bundle / "README").symlink_to(outside)
    result = run_module("bundle_manifest", {"path": str(bundle), "state": "verified"})
    assert result["failed"] is True
    assert "README: symlink" in result["msg"]


def test_verify_never_follows_a_directory_that_became_a_symlink(bundle, tmp_path_factory):
    seal_here(bundle)
    outside = tmp_path_factory.mktemp("outside") / "images"
    (bundle / "images").rename(outside)  # same files, now reached through a link
    (bundle / "images").symlink_to(outside)
    passed, result = verify_here(bundle)
    assert not passed
    assert {"path": "images/ollama.tar", "reason": "missing"} in result["bad_files"]
    assert {"path": "images", "reason": "not listed in SHA256SUMS",
            "detail": "a symlink"} in result["bad_files"]


# Each form rewrites every line of a sealed SHA256SUMS: (digest, name) -> line.
ACCEPTED_FORMS = {
    "two spaces": lambda d, n: f"{d}  {n}",
    "upper-case digest": lambda d, n: f"{d.upper()}  {n}",
    "binary marker": lambda d, n: f"{d} *{n}",
    "bsd tag": lambda d, n: f"SHA256 ({n}) = {d}",
    "bsd tag, upper, no space": lambda d, n: f"SHA256({n})= {d.upper()}",
    "leading blanks": lambda d, n: f" \t{d}  {n}",
    "crlf": lambda d, n: f"{d}  {n}\r",
    "one space on every line": lambda d, n: f"{d} {n}",
    "tab then marker": lambda d, n: f"{d}\t*{n}",
    "backslash marker on a plain name": lambda d, n: f"\\{d}  {n}",
    "comment and empty lines": lambda d, n: f"# {n}\n\n{d}  {n}",
}
REFUSED_FORMS = {
    "63 hex": lambda d, n: f"{d[:63]}  {n}",
    "no blank after the digest": lambda d, n: f"{d}{n}",
    "lower-case tag": lambda d, n: f"sha256 ({n}) = {d}",
    "text after a tagged digest": lambda d, n: f"SHA256 ({n}) = {d} x",
    "blank line with spaces": lambda d, n: f"   \n{d}  {n}",
    "bad escape": lambda d, n: f"\\{d}  {n}\\t",
    "one space after two": lambda d, n: f"{d}  {n}" if n == "bundle.json" else f"{d} {n}",
}


@pytest.fixture
def odd_names(bundle):
    (bundle / "..notes").write_text("a name that starts with two dots\n")
    seal_here(bundle)
    return bundle


def rewrite_sums(bundle, form):
    lines = sorted(sums_lines(bundle), key=lambda line: line[1] != "bundle.json")
    (bundle / "SHA256SUMS").write_text("".join(form(d, n) + "\n" for d, n in lines))


def test_verify_accepts_upper_case_binary_markers_and_dot_dot_names(odd_names):
    lines = sums_lines(odd_names)
    (odd_names / "SHA256SUMS").write_text("".join(
        f"{d.upper()} *{n}\n" if n == "..notes" else f"{d}  {n}\n" for d, n in lines))
    assert sha256sum_check(odd_names).returncode == 0
    result = run_module("bundle_manifest", {"path": str(odd_names), "state": "verified"})
    assert result.get("failed") is not True, result.get("msg")
    assert result["files"] == 5 and result["hashed"] == 5


@pytest.mark.parametrize("form", ACCEPTED_FORMS, ids=list(ACCEPTED_FORMS))
def test_verify_accepts_what_sha256sum_accepts(odd_names, form):
    rewrite_sums(odd_names, ACCEPTED_FORMS[form])
    assert sha256sum_check(odd_names).returncode == 0
    passed, result = verify_here(odd_names)
    assert passed, result
    assert result["files"] == 5 and result["hashed"] == 5


@pytest.mark.parametrize("form", REFUSED_FORMS, ids=list(REFUSED_FORMS))
def test_verify_refuses_what_sha256sum_refuses(odd_names, form):
    rewrite_sums(odd_names, REFUSED_FORMS[form])
    assert sha256sum_check(odd_names).returncode != 0
    passed, _what = verify_here(odd_names)
    assert not passed


def test_seal_escapes_names_as_sha256sum_does(bundle):
    for name in ("back\\slash", "new\nline", "carriage\rreturn", "..notes", " lead space"):
        (bundle / name).write_text(name)
    run_module("bundle_manifest", {"path": str(bundle), "version": "v1"})
    assert sha256sum_check(bundle).returncode == 0, sha256sum_check(bundle).stdout
    sums = (bundle / "SHA256SUMS").read_text()
    assert "  back\\\\slash\n" in sums and "  new\\nline\n" in sums
    result = run_module("bundle_manifest", {"path": str(bundle), "state": "verified"})
    assert result.get("failed") is not True, result.get("msg")
    assert result["files"] == 9


@pytest.mark.parametrize("name", ["../outside", "/abs/outside", "models/../../outside",
                                  "models/../README"])
def test_verify_refuses_a_path_that_leaves_the_bundle_though_sha256sum_follows_it(bundle, name):
    seal_here(bundle)
    outside = bundle.parent / "outside"
    outside.write_text("x")
    if name.startswith("/"):
        name = str(outside)
    digest = hashlib.sha256((bundle / name).resolve().read_bytes()).hexdigest()
    with open(bundle / "SHA256SUMS", "a") as sums:
        sums.write(f"{digest}  {name}\n")
    assert sha256sum_check(bundle).returncode == 0  # the tool itself follows it
    passed, result = verify_here(bundle)
    assert not passed
    assert {"path": name, "reason": "path outside the bundle"} in result["bad_files"]


def test_verify_reads_a_release_through_its_current_link(bundle):
    """verify.yml checks <release_root>/current: the root itself may be a link."""
    seal_here(bundle)
    current = bundle.parent / "current"
    current.symlink_to(bundle)
    passed, result = verify_here(current)
    assert passed, result
    assert result["version"] == "v1" and result["hashed"] == 4
