"""bundle_sbom: a CycloneDX SBOM that validates, names every file of the bundle, describes
each artifact from its own metadata (real .debs built with dpkg-deb, wheels, a collection
tarball, an Ollama store), is rebuilt only when the bundle changed, and refuses a bundle
that names files outside itself."""

from __future__ import annotations

import datetime
import io
import json
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import bundle_sbom
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

import bundle_manifest
from tests.conftest import run_module
from tests.unit.bundle_parts import model, sha256

# The scratch bundle's packages are real .debs, built and read with dpkg-deb.
needs_dpkg = pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb")

VERSION = "2026.11.30-1"
OWN = {"SHA256SUMS", "bundle.json", "sbom.cdx.json"}
DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: hello

Files: *
Copyright: 2026 Somebody
License: GPL-2+
 The licence text, indented.

Files: debian/*
License: MIT

License: GPL-2+
 A standalone licence paragraph: its name is already listed.
"""
GEMMA = "Gemma Terms of Use\n\nLast modified: (a lab text, not the terms)\n"
REPO = "packages/debian-13-amd64"
# The lab's image of the target OS: its name is not the vendor, its os-release says it.
REPOSITORIES = [{"path": REPO, "image": "gemma-airgap-lab/target:trixie"}]
OS_RELEASE = ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\n'
              'VERSION_ID="13"\nVERSION_CODENAME=trixie\nID=debian\n')
WHEN = datetime.datetime(2026, 11, 30, 3, 0, tzinfo=datetime.UTC)


def build_deb(root: Path, package: str, version: str, copyright_text: str | None) -> Path:
    tree = root / f".build-{package}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\n"
        f"Maintainer: Lab <lab@example.invalid>\nDescription: a lab package\n")
    doc = tree / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "README").write_text("read me\n")
    if copyright_text is not None:
        (doc / "copyright").write_text(copyright_text)
    # Debian's file names leave out the version's epoch.
    out = root / f"{package}_{version.split(':')[-1]}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return out


def build_wheel(path: Path, metadata: str) -> None:
    name, version = path.name.split("-")[:2]
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "")
        wheel.writestr(f"{name}-{version}.dist-info/METADATA", metadata)


def build_collection(path: Path) -> None:
    manifest = {"collection_info": {"namespace": "gemma_airgap", "name": "ollama",
                                    "version": "0.18.0", "license": ["Apache-2.0"]}}
    data = json.dumps(manifest).encode()
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("MANIFEST.json")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def bundle(tmp_path) -> Path:
    if not shutil.which("dpkg-deb"):
        pytest.skip("needs dpkg-deb")
    root = tmp_path / VERSION
    repo = root / REPO
    repo.mkdir(parents=True)
    build_deb(repo, "hello", "1:2.0-1", DEP5)
    build_deb(repo, "freeform", "3", "This package is in the public domain.\n")
    (repo / "Packages").write_text(
        "Package: hello\nVersion: 1:2.0-1\nArchitecture: amd64\nFilename: ./hello_2.0-1_amd64.deb\n"
        "Description: a lab package\n continued\n\n"
        "Package: freeform\nVersion: 3\nArchitecture: amd64\nFilename: ./freeform_3_amd64.deb\n")
    (repo / "Release").write_text("Origin: lab\n")
    (repo / "os-release").write_text(OS_RELEASE)
    wheels = root / "control-node" / "wheels"
    wheels.mkdir(parents=True)
    build_wheel(wheels / "demo-1.0-py3-none-any.whl",
                "Metadata-Version: 2.4\nName: demo\nVersion: 1.0\nLicense-Expression: MIT\n")
    build_wheel(wheels / "old_style-2.0-py3-none-any.whl",
                "Metadata-Version: 2.1\nName: old-style\nVersion: 2.0\nLicense: UNKNOWN\n"
                "Classifier: License :: OSI Approved :: BSD License\n")
    collections = root / "control-node" / "collections"
    collections.mkdir()
    build_collection(collections / "gemma_airgap-ollama-0.18.0.tar.gz")
    (root / "control-node" / "install.sh").write_text("#!/bin/sh\n")
    store = root / "models"
    e4b = ("registry.ollama.ai", "library", "gemma3n", "e4b")
    model(store, e4b, b"W" * 1000)
    (root / "LICENSES").mkdir()
    (root / "LICENSES" / "gemma3n_e4b.txt").write_text(GEMMA)
    (root / "images").mkdir()
    (root / "images" / "ollama.tar").write_bytes(b"a docker save tar")
    (root / "vision").mkdir()
    (root / "vision" / "m-model.gguf").write_bytes(b"GGUF model")
    (root / "vision" / "m-mmproj.gguf").write_bytes(b"GGUF mmproj")
    seal(root)
    return root


def metadata(root: Path) -> dict:
    manifest = root / "models/manifests/registry.ollama.ai/library/gemma3n/e4b"
    return {
        "images": [{"name": "ollama", "image": "ollama/ollama:0.12.3", "file": "images/ollama.tar",
                    "id": "sha256:" + "1" * 64,
                    "repo_digests": ["ollama/ollama@sha256:" + "2" * 64]}],
        "models": [{"name": "gemma3n:e4b", "manifest_digest": sha256(manifest.read_bytes())}],
        "licenses": [{"model": "gemma3n:e4b", "file": "gemma3n_e4b.txt",
                      "titles": ["Gemma Terms of Use"], "gemma": True}],
        "vision": [{"model": "gemma3n:e4b", "model_file": "vision/m-model.gguf",
                    "mmproj_file": "vision/m-mmproj.gguf"}],
        "gemma_terms_accepted": True,
    }


def seal(root: Path, meta: dict | None = None) -> dict:
    return bundle_manifest.seal(str(root), VERSION, meta or metadata(root), 1, True, False)


def write(root: Path, check: bool = False, when=WHEN) -> dict:
    return bundle_sbom.write_sbom(str(root), REPOSITORIES, check, now=when)


def document(root: Path) -> dict:
    return json.loads((root / "sbom.cdx.json").read_text())


def by_ref(doc: dict) -> dict:
    return {c["bom-ref"]: c for c in doc["components"]}


def files_of(component: dict) -> list:
    return [p["value"] for p in component.get("properties", []) if p["name"] == "gemma-airgap:file"]


def listed(root: Path) -> set:
    return {line.split("  ", 1)[1] for line in (root / "SHA256SUMS").read_text().splitlines()}


def test_the_sbom_validates_and_names_exactly_the_bundles_files(bundle):
    result = write(bundle)
    assert result["changed"], result
    text = (bundle / "sbom.cdx.json").read_text()
    # The library's own strict validator, as an auditor's tool would check it.
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"
    named = {f for c in doc["components"] for f in files_of(c)}
    assert named == listed(bundle) - OWN
    assert result["files"] == len(named)
    assert result["components"] == {"container": 1, "library": 5, "machine-learning-model": 3,
                                    "file": 4}
    # Sealed again, the SBOM is listed and the bundle verifies.
    seal(bundle)
    assert "sbom.cdx.json" in listed(bundle)
    assert bundle_manifest.verify(str(bundle), 1)["bad_files"] == []
    assert doc["metadata"]["component"]["version"] == VERSION
    assert doc["metadata"]["timestamp"].startswith("2026-11-30T03:00:00")
    accepted = {p["name"]: p["value"] for p in doc["metadata"]["properties"]}
    assert accepted["gemma-airgap:gemma-terms-accepted"] == "true"


def test_each_artifact_is_described_from_its_own_metadata(bundle):
    write(bundle)
    components = by_ref(document(bundle))
    hello = components[f"deb:{REPO}/hello_2.0-1_amd64.deb"]
    assert hello["name"] == "hello" and hello["version"] == "1:2.0-1"
    assert hello["purl"] == "pkg:deb/debian/hello@1:2.0-1?arch=amd64&distro=trixie"
    # The names of the machine-readable copyright file, each once: an SPDX id as an id, a
    # Debian short name as a name (the library sorts them).
    assert hello["licenses"] == [{"license": {"id": "MIT"}}, {"license": {"name": "GPL-2+"}}]
    deb = bundle / REPO / "hello_2.0-1_amd64.deb"
    assert hello["hashes"] == [{"alg": "SHA-256", "content": sha256(deb.read_bytes())}]
    # A free-form copyright file names no licence the SBOM could state.
    assert "licenses" not in components[f"deb:{REPO}/freeform_3_amd64.deb"]
    demo = components["wheel:control-node/wheels/demo-1.0-py3-none-any.whl"]
    assert demo["purl"] == "pkg:pypi/demo@1.0"
    assert demo["licenses"] == [{"license": {"id": "MIT"}}]
    old = components["wheel:control-node/wheels/old_style-2.0-py3-none-any.whl"]
    assert old["licenses"] == [{"license": {"name": "BSD License"}}]
    collection = components["collection:control-node/collections/gemma_airgap-ollama-0.18.0.tar.gz"]
    assert (collection["group"], collection["name"], collection["version"]) == (
        "gemma_airgap", "ollama", "0.18.0")
    assert collection["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    e4b = components["model:gemma3n:e4b"]
    assert (e4b["type"], e4b["name"], e4b["version"]) == (
        "machine-learning-model", "gemma3n", "e4b")
    assert e4b["licenses"] == [{"license": {"name": "Gemma Terms of Use"}}]
    manifest = bundle / "models/manifests/registry.ollama.ai/library/gemma3n/e4b"
    assert e4b["hashes"] == [{"alg": "SHA-256", "content": sha256(manifest.read_bytes())}]
    blobs = {f"models/blobs/{e['digest'].replace(':', '-')}"
             for e in [json.loads(manifest.read_text())["config"],
                       *json.loads(manifest.read_text())["layers"]]}
    assert set(files_of(e4b)) == {"models/manifests/registry.ollama.ai/library/gemma3n/e4b",
                                  "LICENSES/gemma3n_e4b.txt", *blobs}
    image = components["image:ollama"]
    assert (image["type"], image["name"], image["version"]) == (
        "container", "ollama/ollama", "0.12.3")
    assert image["purl"] == ("pkg:oci/ollama@sha256:" + "2" * 64
                             + "?repository_url=ollama/ollama&tag=0.12.3")
    assert components["file:control-node/install.sh"]["type"] == "file"
    assert components["vision:vision/m-mmproj.gguf"]["type"] == "machine-learning-model"


def test_a_second_run_changes_nothing_and_a_changed_bundle_gets_a_new_sbom(bundle):
    first = write(bundle)
    seal(bundle)
    before = (bundle / "sbom.cdx.json").read_bytes()
    again = write(bundle, when=WHEN + datetime.timedelta(hours=1))
    assert not again["changed"] and again["components"] == first["components"], again
    assert (bundle / "sbom.cdx.json").read_bytes() == before
    assert not seal(bundle)["changed"]

    (bundle / "control-node" / "install.sh").write_text("#!/bin/sh\necho changed\n")
    seal(bundle)
    rebuilt = write(bundle, when=WHEN + datetime.timedelta(hours=2))
    assert rebuilt["changed"] and rebuilt["inputs"] != first["inputs"]
    doc = document(bundle)
    assert doc["serialNumber"] != json.loads(before)["serialNumber"]
    assert doc["metadata"]["timestamp"].startswith("2026-11-30T05:00:00")
    script = by_ref(doc)["file:control-node/install.sh"]
    assert script["hashes"][0]["content"] == sha256(b"#!/bin/sh\necho changed\n")


def test_an_sbom_changed_after_the_seal_is_written_again(bundle):
    write(bundle)
    seal(bundle)
    path = bundle / "sbom.cdx.json"
    path.write_text(path.read_text().replace('"hello"', '"forged"'))
    assert write(bundle)["changed"]
    assert '"forged"' not in path.read_text()


def test_without_os_release_the_image_names_the_os(bundle):
    (bundle / REPO / "os-release").unlink()
    seal(bundle)
    bundle_sbom.write_sbom(str(bundle), [{"path": REPO, "image": "ubuntu:noble"}], False)
    hello = by_ref(document(bundle))[f"deb:{REPO}/hello_2.0-1_amd64.deb"]
    assert hello["purl"] == "pkg:deb/ubuntu/hello@1:2.0-1?arch=amd64&distro=noble"


@pytest.mark.parametrize(("reference", "expected"), [
    ("ollama/ollama:0.12.3", ("ollama/ollama", "0.12.3")),
    ("ollama/ollama:0.12.3@sha256:" + "2" * 64, ("ollama/ollama", "0.12.3")),
    # A digest without a tag: the name without the digest, no tag.
    ("ollama/ollama@sha256:" + "2" * 64, ("ollama/ollama", None)),
    # A registry's port is not a tag.
    ("registry.local:5000/lab/image", ("registry.local:5000/lab/image", None)),
    ("registry.local:5000/lab/image:v1", ("registry.local:5000/lab/image", "v1")),
])
def test_an_image_reference_gives_its_name_and_tag(reference, expected):
    assert bundle_sbom.split_tag(reference) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (OS_RELEASE, ("debian", "trixie")),
    ('ID="ubuntu"\nVERSION_CODENAME="noble"\n', ("ubuntu", "noble")),
    ("ID=debian\n", ("debian", None)),
    # What goes into a package URL is a plain lower-case name, or nothing.
    ('ID="Debian/../x"\nVERSION_CODENAME="a b"\n', (None, None)),
    ("ID='unclosed\nVERSION_CODENAME=$(reboot)\n", (None, None)),
])
def test_os_release_gives_a_plain_vendor_and_codename(text, expected):
    assert bundle_sbom.os_release(text) == expected


def test_check_mode_writes_nothing(bundle):
    result = write(bundle, check=True)
    assert result["changed"] and not (bundle / "sbom.cdx.json").exists()


def test_an_index_naming_a_package_the_seal_does_not_list_is_refused_naming_both(bundle):
    (bundle / REPO / "freeform_3_amd64.deb").unlink()
    seal(bundle)
    with pytest.raises(bundle_sbom.SbomError, match=(
            f"{REPO}/Packages names {REPO}/freeform_3_amd64.deb, which SHA256SUMS does not")):
        write(bundle)


def test_an_index_naming_a_file_outside_its_repository_is_refused(bundle):
    packages = bundle / REPO / "Packages"
    packages.write_text(packages.read_text() + "\nPackage: evil\nVersion: 1\nArchitecture: amd64\n"
                        "Filename: ../../../etc/passwd\n")
    seal(bundle)
    with pytest.raises(bundle_sbom.SbomError, match="outside its repository"):
        write(bundle)
    assert not (bundle / "sbom.cdx.json").exists()


def test_a_record_naming_an_unlisted_file_is_refused(bundle):
    meta = metadata(bundle)
    meta["vision"][0]["mmproj_file"] = "../outside.gguf"
    seal(bundle, meta)
    with pytest.raises(bundle_sbom.SbomError, match="does not list"):
        write(bundle)


def test_a_model_whose_manifest_is_not_the_recorded_one_is_refused(bundle):
    meta = metadata(bundle)
    meta["models"][0]["manifest_digest"] = "0" * 64
    seal(bundle, meta)
    with pytest.raises(bundle_sbom.SbomError, match=r"not the one bundle\.json records"):
        write(bundle)


def test_an_unsealed_bundle_is_refused_through_ansible(tmp_path):
    (tmp_path / "file").write_text("x")
    result = run_module("bundle_sbom", {"path": str(tmp_path)})
    assert result.get("failed") and "is not sealed" in result["msg"], result
    assert "bundle_manifest" in result["msg"]


def test_through_ansible_the_sbom_is_written_and_reported(bundle):
    result = run_module("bundle_sbom", {"path": str(bundle), "repositories": REPOSITORIES})
    assert result["changed"] and not result.get("failed"), result
    assert result["file"] == "sbom.cdx.json" and result["unlicensed"] == 3, result
    again = run_module("bundle_sbom", {"path": str(bundle), "repositories": REPOSITORIES})
    # Not sealed after the first run: the SBOM on disk is not the listed one, so it is rebuilt.
    assert again["changed"]
    seal(bundle)
    third = run_module("bundle_sbom", {"path": str(bundle), "repositories": REPOSITORIES})
    assert not third["changed"] and third["unlicensed"] == 3, third


@needs_dpkg
def test_a_free_form_or_missing_copyright_names_no_licence(tmp_path):
    assert bundle_sbom.deb_licenses(str(build_deb(tmp_path, "nocopy", "1", None)), "nocopy") == []
    free = build_deb(tmp_path, "free", "1", "Public domain.\n")
    assert bundle_sbom.deb_licenses(str(free), "free") == []
    assert bundle_sbom.deb_licenses(str(build_deb(tmp_path, "dep", "1", DEP5)), "dep") == [
        "GPL-2+", "MIT"]


@needs_dpkg
def test_a_file_that_is_no_debian_package_is_refused_naming_it(tmp_path):
    fake = tmp_path / "fake_1_amd64.deb"
    fake.write_bytes(b"not an ar archive")
    with pytest.raises(bundle_sbom.ContentError, match=r"fake_1_amd64\.deb.*not a whole Debian"):
        bundle_sbom.deb_licenses(str(fake), "fake")


@needs_dpkg
def test_dpkg_deb_that_takes_too_long_is_stopped(tmp_path, monkeypatch):
    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "dpkg-deb").write_text("#!/bin/sh\nexec sleep 30\n")
    (slow / "dpkg-deb").chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow}:/usr/bin:/bin")
    started = datetime.datetime.now()
    with pytest.raises(bundle_sbom.ContentError, match="took longer than 1 s"):
        bundle_sbom.deb_licenses(str(tmp_path / "any.deb"), "any", timeout=1)
    assert (datetime.datetime.now() - started).total_seconds() < 10


def test_an_sbom_made_without_dpkg_deb_is_made_again_once_it_is_there(bundle):
    without = bundle_sbom.write_sbom(str(bundle), REPOSITORIES, False, now=WHEN,
                                     read_deb_licenses=False)
    assert without["changed"] and without["unlicensed"] == 4, without
    seal(bundle)
    again = write(bundle)
    assert again["changed"] and again["unlicensed"] == 3, again
    hello = by_ref(document(bundle))[f"deb:{REPO}/hello_2.0-1_amd64.deb"]
    assert hello["licenses"]


def test_a_broken_package_stops_the_sbom_naming_it(bundle):
    deb = bundle / REPO / "freeform_3_amd64.deb"
    deb.write_bytes(deb.read_bytes()[:200])
    seal(bundle)
    with pytest.raises(bundle_sbom.SbomError, match=r"freeform_3_amd64\.deb"):
        write(bundle)
    assert not (bundle / "sbom.cdx.json").exists()


@pytest.mark.parametrize(("name", "payload", "reason"), [
    ("truncated-1.0-py3-none-any.whl", "truncate", "cannot be read as a wheel"),
    ("corrupt-1.0-py3-none-any.whl", "corrupt", "cannot be read as a wheel"),
    ("empty-1.0-py3-none-any.whl", "no-metadata", "0 METADATA files"),
])
def test_a_damaged_wheel_stops_the_sbom_naming_it(bundle, name, payload, reason):
    path = bundle / "control-node" / "wheels" / name
    build_wheel(path, "Metadata-Version: 2.1\nName: x\nVersion: 1.0\n" + "License: MIT\n" * 999)
    data = path.read_bytes()
    if payload == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif payload == "corrupt":
        # The deflated METADATA's bytes, damaged inside the stream.
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
            wheel.writestr(f"{name.split('-')[0]}-1.0.dist-info/METADATA", "License: MIT\n" * 999)
        data = bytearray(path.read_bytes())
        data[60:80] = b"\xff" * 20
        path.write_bytes(bytes(data))
    else:
        with zipfile.ZipFile(path, "w") as wheel:
            wheel.writestr("x/__init__.py", "")
    seal(bundle)
    escaped = re.escape(name)
    with pytest.raises(bundle_sbom.SbomError, match=f"{escaped}.*{reason}|{reason}.*{escaped}"):
        write(bundle)


def test_a_wheels_non_ascii_licence_and_a_blank_expression_are_read(bundle):
    wheels = bundle / "control-node" / "wheels"
    build_wheel(wheels / "utf-1.0-py3-none-any.whl", "Metadata-Version: 2.1\nName: utf\n"
                "Version: 1.0\nLicense: Copyright \u00a9 Ünïcode\n")
    build_wheel(wheels / "blank-1.0-py3-none-any.whl",
                "Metadata-Version: 2.4\nName: blank\nVersion: 1.0\nLicense-Expression:  \n"
                "Classifier: License :: OSI Approved :: Apache Software License\n")
    seal(bundle)
    write(bundle)
    components = by_ref(document(bundle))
    utf = components["wheel:control-node/wheels/utf-1.0-py3-none-any.whl"]
    assert utf["licenses"] == [{"license": {"name": "Copyright \u00a9 Ünïcode"}}]
    blank = components["wheel:control-node/wheels/blank-1.0-py3-none-any.whl"]
    assert blank["licenses"] == [{"license": {"name": "Apache Software License"}}]


@pytest.mark.parametrize("damage", ["truncate", "not-an-object"])
def test_a_damaged_collection_stops_the_sbom_naming_it(bundle, damage):
    path = bundle / "control-node" / "collections" / "gemma_airgap-ollama-0.18.0.tar.gz"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:40])
    else:
        data = json.dumps({"collection_info": ["a", "list"]}).encode()
        with tarfile.open(path, "w:gz") as archive:
            info = tarfile.TarInfo("MANIFEST.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    seal(bundle)
    with pytest.raises(bundle_sbom.SbomError, match=r"gemma_airgap-ollama-0\.18\.0\.tar\.gz"):
        write(bundle)


def test_records_of_the_wrong_kind_and_blank_licences_give_a_valid_sbom(bundle):
    meta = metadata(bundle)
    meta["licenses"][0]["titles"] = "Gemma"  # a string, not a list
    meta["images"][0]["repo_digests"] = 5
    # An image pinned by digest: the digest is not part of its tag.
    meta["images"][0]["image"] = "ollama/ollama:0.12.3@sha256:" + "2" * 64
    seal(bundle, meta)
    write(bundle)
    text = (bundle / "sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    components = by_ref(json.loads(text))
    assert "licenses" not in components["model:gemma3n:e4b"]
    image = components["image:ollama"]
    assert (image["name"], image["version"]) == ("ollama/ollama", "0.12.3")
    assert "purl" not in image


def test_the_same_package_file_name_in_two_repositories_is_two_components(bundle):
    kit = bundle / "control-node" / "packages"
    kit.mkdir()
    for name in ("hello_2.0-1_amd64.deb", "freeform_3_amd64.deb", "Packages"):
        shutil.copy(bundle / REPO / name, kit)
    (kit / "os-release").write_text(OS_RELEASE)
    seal(bundle)
    repositories = [*REPOSITORIES, {"path": "control-node/packages", "image": "debian:trixie"}]
    bundle_sbom.write_sbom(str(bundle), repositories, False, now=WHEN)
    refs = by_ref(document(bundle))
    assert {f"deb:{REPO}/hello_2.0-1_amd64.deb",
            "deb:control-node/packages/hello_2.0-1_amd64.deb"} <= set(refs)


def test_requirements_state_reports_the_library_through_ansible():
    result = run_module("bundle_sbom", {"state": "requirements"})
    assert not result.get("failed") and not result["changed"], result
    assert result["library"] == "11.12.0"
    assert result["dpkg_deb"] is bool(shutil.which("dpkg-deb"))
