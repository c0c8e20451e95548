"""prepare.yml in the lab: the bundle it builds, its idempotence, and its refusals.

Uses its own bundle root, staging container and port, so it never touches the
bundle `make lab` uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import labctl
from tests.tiny_gemma3n.test_tiny_gemma3n import recorded

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
VERSION = "test-1"
PLATFORM = "debian-13-amd64"


def prepare(root: Path, *extra: str, version: str = VERSION) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    command = [str(Path(sys.executable).parent / "ansible-playbook"),
               str(ROOT / "playbooks" / "prepare.yml"),
               "-e", f"bundle_root={root}", "-e", f"bundle_version={version}",
               "-e", "bundle_staging_container=gemma-airgap-labtest-staging",
               "-e", "bundle_staging_port=11535", *extra]
    return subprocess.run(command, cwd=ROOT, env=env, text=True, capture_output=True,
                          check=False)


def recap(result: subprocess.CompletedProcess) -> dict:
    match = re.search(r"localhost\s+: ok=(\d+)\s+changed=(\d+).*failed=(\d+)", result.stdout)
    assert match, result.stdout[-3000:]
    return {"ok": int(match[1]), "changed": int(match[2]), "failed": int(match[3])}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), "standin"], check=True,
                   capture_output=True)
    for command in ("vision", "prometheus", "model"):
        subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), command], check=True,
                       capture_output=True)
    root = tmp_path_factory.mktemp("bundles")
    first = prepare(root)
    assert first.returncode == 0, first.stdout[-4000:]
    return root, first


def test_bundle_passes_sha256sum_and_records_what_it_holds(built):
    root, _first = built
    bundle = root / VERSION
    check = subprocess.run(["sha256sum", "-c", "--strict", "--quiet", "SHA256SUMS"], cwd=bundle,
                           text=True, capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["version"] == VERSION
    assert [m["name"] for m in meta["models"]] == ["gemma3:270m", "gemma3n:tiny"]
    assert [i["name"] for i in meta["images"]] == ["ollama", "gateway", "vision", "prometheus"]
    assert meta["images"][1]["image"] == f"gemma-airgap/gateway:{VERSION}"  # built by prepare
    assert meta["vision"] == [{"model": "gemma3n:tiny",
                               "model_file": "vision/gemma3n-tiny-model.gguf",
                               "mmproj_file": "vision/gemma3n-tiny-mmproj.gguf"}]
    pinned = recorded()
    assert hashlib.sha256((bundle / "vision" / "gemma3n-tiny-mmproj.gguf").read_bytes()
                          ).hexdigest() == pinned["gemma3n-tiny-mmproj.gguf"]
    assert meta["images"][0]["id"].startswith("sha256:")
    assert meta["platforms"][0]["name"] == PLATFORM
    listed = {line.split("  ", 1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()}
    # SHA256SUMS lists every file but itself, its signature and the signer's public key.
    signature = {"SHA256SUMS", "SHA256SUMS.sig", "SHA256SUMS.keys"}
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*")
               if p.is_file() and p.name not in (*signature, ".hashcache.json")}
    assert listed == on_disk
    assert all((bundle / name).is_file() for name in signature)
    assert any(p.startswith("control-node/wheels/ansible_core-") for p in listed)


def test_each_models_licence_is_in_licenses_and_the_acceptance_in_bundle_json(built):
    """The models' licence layers (the lab's Gemma notice) as files under LICENSES/, listed in
    SHA256SUMS; bundle.json records them and that the site accepted the Gemma Terms of Use;
    prepare's summary names them."""
    root, first = built
    bundle = root / VERSION
    notice = (ROOT / "lab" / "gemma-notice.txt").read_text().rstrip("\n")
    files = sorted(p.name for p in (bundle / "LICENSES").iterdir())
    assert files == ["gemma3_270m.txt", "gemma3n_tiny.txt"]
    assert all((bundle / "LICENSES" / name).read_text() == notice for name in files)
    listed = (bundle / "SHA256SUMS").read_text()
    assert all(f"  LICENSES/{name}\n" in listed for name in files)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["gemma_terms_accepted"] is True
    assert meta["licenses"] == [
        {"model": "gemma3:270m", "file": "gemma3_270m.txt",
         "titles": ["Gemma Terms of Use (notice)"], "gemma": True},
        {"model": "gemma3n:tiny", "file": "gemma3n_tiny.txt",
         "titles": ["Gemma Terms of Use (notice)"], "gemma": True}]
    printed = " ".join(first.stdout.split())
    assert (f"Licences: gemma3:270m: Gemma Terms of Use (notice) ({bundle}/LICENSES/"
            "gemma3_270m.txt)") in printed, first.stdout[-3000:]


def test_the_sbom_validates_and_names_exactly_the_bundles_files(built):
    """The lab bundle's sbom.cdx.json: valid CycloneDX 1.6 (the library's strict validator),
    sealed in SHA256SUMS, naming every file of the bundle but the bundle's own, with the
    real artifacts described: Docker's .debs with their package URLs, the kit's wheels, the
    collection, the models with their manifest digests and licences, the images' IDs."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    root, first = built
    bundle = root / VERSION
    text = (bundle / "sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    listed = {line.split("  ", 1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()}
    assert "sbom.cdx.json" in listed
    named = {p["value"] for c in doc["components"] for p in c.get("properties", [])
             if p["name"] == "gemma-airgap:file"}
    assert named == listed - {"bundle.json", "sbom.cdx.json"}
    meta = json.loads((bundle / "bundle.json").read_text())
    components = {c["bom-ref"]: c for c in doc["components"]}
    for image in meta["images"]:
        component = components[f"image:{image['name']}"]
        assert {"name": "gemma-airgap:image-id", "value": image["id"]} in component["properties"]
    for model in meta["models"]:
        component = components[f"model:{model['name']}"]
        assert component["hashes"][0]["content"] == model["manifest_digest"]
        assert component["licenses"] == [{"license": {"name": "Gemma Terms of Use (notice)"}}]
    debs = [c for c in doc["components"] if c.get("purl", "").startswith("pkg:deb/debian/")]
    docker = [c for c in debs if c["name"] == "docker.io"]
    assert docker and docker[0]["purl"].endswith("?arch=amd64&distro=trixie"), docker
    # Debian's own packages mostly carry machine-readable copyright files.
    assert sum(1 for c in debs if c.get("licenses")) > len(debs) // 2, len(debs)
    wheels = {c["name"] for c in doc["components"] if c.get("purl", "").startswith("pkg:pypi/")}
    assert {"ansible-core", "jinja2"} <= {w.lower() for w in wheels}
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    ours = [c for c in doc["components"]
            if (c.get("group"), c["name"]) == ("gemma_airgap", "ollama")]
    assert len(ours) == 1 and ours[0]["version"] == galaxy["version"], ours
    assert ours[0]["licenses"] == [{"license": {"id": galaxy["license"][0]}}]
    printed = " ".join(first.stdout.split())
    assert f"SBOM: sbom.cdx.json (CycloneDX 1.6), {len(named)} files in" in printed, printed[-3000:]


def test_a_bundle_with_gemma_needs_the_terms_accepted_and_names_the_variable(built):
    root, _first = built
    result = prepare(root, "-e", "gemma_terms_accepted=false", version="no-terms")
    assert result.returncode != 0
    printed = " ".join(result.stdout.split())
    assert ("bundle_models has Gemma models (gemma3:270m, gemma3n:tiny), which are provided "
            "under and subject to the Gemma Terms of Use") in printed, result.stdout[-3000:]
    assert "set gemma_terms_accepted: true in the inventory" in printed
    assert not (root / "no-terms").exists()


def test_a_model_whose_licence_is_gemmas_needs_the_terms_accepted_whatever_its_name(built):
    """A model whose name does not say Gemma, carrying the Gemma notice as its licence: refused
    after the pull, by its licence text, and the bundle is not sealed."""
    root, _first = built
    models = json.dumps({"bundle_models": (
        "{{ [lab_model_text | combine({'name': 'lab/renamed:v1'})] }}"),
        "bundle_vision": [], "gemma_terms_accepted": False})
    result = prepare(root, "-e", models, version="renamed")
    assert result.returncode != 0
    printed = " ".join(result.stdout.split())
    assert ("The licence of lab/renamed:v1 is the Gemma Terms of Use "
            "(https://ai.google.dev/gemma/terms), though the name does not say Gemma") in printed, \
        result.stdout[-3000:]
    assert not (root / "renamed" / "SHA256SUMS").exists()


def test_every_model_layer_is_present_with_its_digest(built):
    root, _first = built
    models = root / VERSION / "models"
    manifest_path = models / "manifests/registry.ollama.ai/library/gemma3/270m"
    manifest = json.loads(manifest_path.read_text())
    kinds = {layer["mediaType"].rsplit(".", 1)[-1] for layer in manifest["layers"]}
    assert kinds == {"model", "template", "params", "license"}
    for entry in [manifest["config"], *manifest["layers"]]:
        blob = models / "blobs" / ("sha256-" + entry["digest"][7:])
        assert blob.stat().st_size == entry["size"]
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == entry["digest"][7:]


def pinned_models(digests: dict) -> str:
    """bundle_models as the lab inventory has them, each with a digest pinned (extra vars
    are templated, so the inventory's own entries are reused)."""
    text, gemma3n = digests["gemma3:270m"], digests["gemma3n:tiny"]
    return json.dumps({"bundle_models": (
        f"{{{{ [lab_model_text | combine({{'digest': '{text}'}}), "
        f"lab_model_gemma3n | combine({{'digest': '{gemma3n}'}})] }}}}")})


def test_second_prepare_pinning_the_printed_digests_reports_zero_changed(built):
    """The operator's way: the first prepare prints each model's manifest digest; they are
    pinned in bundle_models (as sha256:<hex>, or the bare hex /api/tags shows), and the next
    prepare checks them, changes nothing and hashes nothing."""
    root, first = built
    meta = json.loads((root / VERSION / "bundle.json").read_text())
    digests = {model["name"]: model["manifest_digest"] for model in meta["models"]}
    printed = " ".join(first.stdout.split())  # the summary's lines are wrapped
    for name, digest in digests.items():
        assert f"{name} sha256:{digest} (not pinned)" in printed, first.stdout[-3000:]
    pins = {"gemma3:270m": "sha256:" + digests["gemma3:270m"],
            "gemma3n:tiny": digests["gemma3n:tiny"].upper()}
    second = prepare(root, "-e", pinned_models(pins))
    assert second.returncode == 0, second.stdout[-3000:]
    assert recap(second)["changed"] == 0
    assert "hashed this run: 0.00 Bytes (0 files)" in second.stdout
    printed = " ".join(second.stdout.split())
    for name, digest in digests.items():
        assert f"{name} sha256:{digest} (pinned)" in printed, second.stdout[-3000:]


def test_a_model_that_is_not_the_pinned_build_stops_prepare_and_the_bundle_is_untouched(built):
    """The tag now serves another build than the one checked: prepare refuses, naming both
    digests, before any file of the model is written; the sealed bundle still verifies."""
    root, _first = built
    bundle = root / VERSION
    sums_before = (bundle / "SHA256SUMS").read_bytes()
    meta = json.loads((bundle / "bundle.json").read_text())
    digests = {model["name"]: model["manifest_digest"] for model in meta["models"]}
    wrong = "ab" * 32
    result = prepare(root, "-e", pinned_models({**digests, "gemma3:270m": wrong}))
    assert result.returncode != 0
    assert (f"model gemma3:270m has the manifest digest sha256:{digests['gemma3:270m']}, but "
            f"sha256:{wrong} is pinned for it") in " ".join(result.stdout.split()), \
        result.stdout[-3000:]
    assert (bundle / "SHA256SUMS").read_bytes() == sums_before
    check = subprocess.run(["sha256sum", "-c", "--strict", "--quiet", "SHA256SUMS"], cwd=bundle,
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout
    short = prepare(root, "-e", pinned_models({**digests, "gemma3:270m": wrong[:12]}),
                    version="short-pin")
    assert short.returncode != 0
    assert "the 12-digit ID `ollama list` shows is too short" in " ".join(short.stdout.split())
    assert not (root / "short-pin").exists()


def signer_fingerprint() -> str:
    cache = Path(os.environ.get("LAB_CACHE", "/var/cache/gemma-airgap"))
    return (cache / "signing" / "fingerprint").read_text().strip()


def test_packages_install_docker_offline_and_images_load_into_the_clean_engine(built, tmp_path):
    """A pristine Debian 13 target with --network none: apt from the bundle alone, trusting its
    repository only as signed by the pinned key (no trusted=yes): the source line
    docker_engine writes. A Release changed after prepare, or a fingerprint of another key, is
    refused by apt itself before anything is installed."""
    root, _first = built
    bundle = root / VERSION
    assert (bundle / "packages" / PLATFORM / "Release.gpg").is_file()
    listed = (bundle / "SHA256SUMS").read_text()
    assert f"  packages/{PLATFORM}/Release.gpg\n" in listed
    assert "  control-node/packages/Release.gpg\n" in listed
    name = "gemma-airgap-labtest-offline"
    args = ["docker", "run", "-d", "--name", name, "--network", "none", "--cgroupns=host",
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
            "-v", f"{bundle}:/bundle:ro", "-v", f"{tmp_path}:/var/lib/docker"]
    for cap in labctl.TARGET_CAPABILITIES:
        args += ["--cap-add", cap]
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    subprocess.run([*args, labctl.TARGET_IMAGE.tag, "/sbin/init"], check=True,
                   capture_output=True)
    signer = signer_fingerprint()
    other = "0123456789ABCDEF0123456789ABCDEF01234567"
    script = f"""
set -e
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
use_repo() {{
  echo "deb [signed-by=/bundle/SHA256SUMS.keys,$2] file:$1 ./" > /etc/apt/sources.list.d/bundle.list
  rm -rf /var/lib/apt/lists/*
}}
# Refused: another key pinned; a Release changed after prepare (the index below is ours).
use_repo /bundle/packages/{PLATFORM} {other}
if apt-get update -q >/root/apt.log 2>&1; then echo "ACCEPTED another signer"; exit 1; fi
grep -q 'No good signature from required signer: {other}' /root/apt.log
# The index alone (apt update reads no .deb); the target's root lacks CAP_DAC_OVERRIDE, and
# its /tmp becomes a tmpfs while systemd boots.
mkdir -m 755 /root/altered
cp /bundle/packages/{PLATFORM}/Release* /bundle/packages/{PLATFORM}/Packages* /root/altered/
chmod u+w /root/altered/Release
sed -i 's/^Origin: gemma-airgap$/Origin: someone-else/' /root/altered/Release
use_repo /root/altered {signer}
if apt-get update -q >/root/apt.log 2>&1; then echo "ACCEPTED an altered Release"; exit 1; fi
grep -q 'is not signed' /root/apt.log
echo refusals-ok
use_repo /bundle/packages/{PLATFORM} {signer}
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-cli docker-compose \
  python3-apt python3-requests >/dev/null
systemctl start docker
docker load -q -i /bundle/images/ollama.tar
docker image inspect -f '{{{{.Id}}}}' gemma-airgap-lab/ollama-standin:latest
docker compose version --short
"""
    try:
        out = subprocess.run(["docker", "exec", name, "bash", "-c", script], text=True,
                             capture_output=True, check=False, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        lines = out.stdout.strip().splitlines()
        assert "refusals-ok" in lines
        meta = json.loads((bundle / "bundle.json").read_text())
        assert lines[-2] == meta["images"][0]["id"]
        assert lines[-1].startswith("2.")  # compose v2
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, check=False)
        # The nested engine wrote files as root into tmp_path; pytest removes them.


def test_an_unknown_model_fails_naming_it(built):
    root, _first = built
    models = json.dumps({"bundle_models": [{"name": "gemma3n:e8b"}]})
    result = prepare(root, "-e", models, version="unknown-model")
    assert result.returncode != 0
    assert "Model gemma3n:e8b could not be pulled" in result.stdout


def test_parameters_ollama_would_refuse_stop_prepare_in_preflight(built):
    # Ollama stores these as they come and then answers every request with a 500.
    root, _first = built
    models = json.dumps({"bundle_models": [
        {"name": "gemma3:270m", "parameters": {"stop": "<end_of_turn>", "num_ctx": "4096",
                                               "temprature": 0.5}}]})
    result = prepare(root, "-e", models, version="bad-parameters")
    assert result.returncode != 0
    assert 'option "stop" must be of type array' in result.stdout
    assert 'option "num_ctx" must be of type integer' in result.stdout
    assert "unknown option 'temprature'" in result.stdout
    assert not (root / "bad-parameters").exists()


def test_a_missing_local_image_fails_before_any_work(built):
    root, _first = built
    images = json.dumps({"bundle_images": [
        {"name": "ollama", "image": "gemma-airgap-lab/ollama-standin:latest", "source": "local"},
        {"name": "gateway", "image": "gemma-airgap-lab/nope:1", "source": "local"}],
        "bundle_vision": []})
    result = prepare(root, "-e", images, version="missing-image")
    assert result.returncode != 0
    assert "Image gemma-airgap-lab/nope:1 (gateway) is not in the staging host's Docker engine" \
        in result.stdout
    assert not (root / "missing-image").exists()


def test_not_enough_disk_fails_in_preflight_with_the_numbers(built):
    root, _first = built
    result = prepare(root, "-e", "bundle_preflight_margin_bytes=1000000000000000",
                     version="no-space")
    assert result.returncode != 0
    assert re.search(r"Not enough disk space at .*: [\d.]+ \w+ free, this bundle needs about "
                     r"[\d.]+ \w+", result.stdout)
    assert not (root / "no-space").exists()


def test_a_corrupt_blob_in_the_staging_store_fails_naming_it(built):
    root, _first = built
    blobs = root / ".staging" / "ollama" / "blobs"
    weights = max(blobs.iterdir(), key=lambda p: p.stat().st_size)
    original = weights.read_bytes()
    damaged = bytearray(original)
    damaged[1000] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    try:
        result = prepare(root, version="corrupt-staging")
    finally:
        weights.write_bytes(original)
    assert result.returncode != 0
    assert f"blob sha256:{weights.name[7:]} of model 'gemma3:270m' is corrupt" in result.stdout
    assert not list((root / "corrupt-staging" / "models").glob("manifests/**/270m"))


def test_media_tar_carries_the_bundle_with_its_checksum(built, tmp_path):
    root, _first = built
    result = prepare(root, "-e", "bundle_media_tar=true")
    assert result.returncode == 0, result.stdout[-3000:]
    tar, digest = root / f"{VERSION}.tar", root / f"{VERSION}.tar.sha256"
    check = subprocess.run(["sha256sum", "-c", digest.name], cwd=root, text=True,
                           capture_output=True, check=False)
    assert check.returncode == 0 and f"{VERSION}.tar: OK" in check.stdout
    subprocess.run(["tar", "-C", str(tmp_path), "-xf", str(tar)], check=True)
    unpacked = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"],
                              cwd=tmp_path / VERSION, capture_output=True, check=False)
    assert unpacked.returncode == 0
    assert not (tmp_path / VERSION / ".hashcache.json").exists()
    again = prepare(root, "-e", "bundle_media_tar=true")
    assert recap(again)["changed"] == 0  # the tar is newer than the seal: not rewritten
    tar.unlink()
    digest.unlink()


def test_gpu_bundle_without_nvidias_repository_fails_with_what_to_do(built):
    root, _first = built
    result = prepare(root, "-e", "bundle_gpu=true", version="gpu")
    assert result.returncode != 0
    assert "bundle_gpu is true but NVIDIA's repository (nvidia.github.io) cannot be reached" \
        in result.stdout
    assert "set bundle_gpu: false for a CPU-only site" in result.stdout
    assert not (root / "gpu").exists()  # refused in preflight, before any work


def test_an_interrupted_export_is_finished_by_the_next_run(built):
    root, _first = built
    bundle = root / VERSION
    weights = max((bundle / "models" / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    weights.write_bytes(weights.read_bytes()[: 1 << 20])  # a copy cut short
    again = prepare(root)
    assert again.returncode == 0, again.stdout[-3000:]
    assert recap(again)["changed"] >= 1
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=bundle,
                           capture_output=True, check=False)
    assert check.returncode == 0


def test_a_vision_file_that_does_not_match_its_pin_never_enters_the_bundle(built, tmp_path):
    root, _first = built
    impostor = tmp_path / "mmproj.gguf"
    impostor.write_bytes((ROOT / "lab" / "models" / "gemma3n-tiny-mmproj.gguf").read_bytes()
                         + b"tampered")
    models = ROOT / "lab" / "models"
    pinned = recorded()
    vision = json.dumps({"bundle_vision": [{"model": "gemma3n:tiny", "files": [
        {"kind": "model", "url": f"file://{models}/gemma3n-tiny.gguf",
         "sha256": pinned["gemma3n-tiny.gguf"]},
        {"kind": "mmproj", "url": f"file://{impostor}",
         "sha256": pinned["gemma3n-tiny-mmproj.gguf"]}]}]})
    result = prepare(root, "-e", vision, version="bad-vision")
    assert result.returncode != 0
    assert f"The mmproj file of gemma3n:tiny from file://{impostor}" in result.stdout
    assert "if the source changed on purpose, pin the new sha256" in result.stdout
    assert not (root / "bad-vision" / "vision" / "gemma3n-tiny-mmproj.gguf").exists()
    assert not (root / "bad-vision" / "SHA256SUMS").exists()
    unpinned = json.dumps({"bundle_vision": [{"model": "gemma3n:tiny", "files": [
        {"kind": "model", "url": f"file://{models}/gemma3n-tiny.gguf", "sha256": "abc"}]}]})
    refused = prepare(root, "-e", unpinned, version="unpinned-vision")
    assert refused.returncode != 0
    assert "bundle_vision entry" in refused.stdout and "is invalid" in refused.stdout
    assert not (root / "unpinned-vision").exists()
    twice = json.loads(vision)["bundle_vision"] * 2
    two = prepare(root, "-e", json.dumps({"bundle_vision": twice}), version="two-vision")
    assert two.returncode != 0
    assert "the stack runs one vision service" in two.stdout
    assert not (root / "two-vision").exists()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real registry on loopback (Debian's docker-registry, Distribution 2.8) holding the
    stand-in's image; Docker talks plain HTTP to 127.0.0.0/8 registries. Yields the pinned
    reference name:tag@digest that prepare is given."""
    import shutil
    import time

    from tests.standin.conftest import free_port

    if not shutil.which("docker-registry"):
        labctl.apt_install(["docker-registry"])
    store = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = store / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {store}/data\n"
                      f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n")
    server = subprocess.Popen(["docker-registry", "serve", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = f"127.0.0.1:{port}/lab/standin:v1"
    try:
        subprocess.run(["docker", "tag", "gemma-airgap-lab/ollama-standin:latest", name],
                       check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while True:
            pushed = subprocess.run(["docker", "push", name], text=True, capture_output=True,
                                    check=False)
            if pushed.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # the registry is still starting
        assert pushed.returncode == 0, pushed.stderr
        digest = re.search(r"digest: (sha256:[0-9a-f]{64})", pushed.stdout)[1]
        # Only the pinned pull may put the name back: prepare must tag it itself.
        subprocess.run(["docker", "rmi", name], check=True, capture_output=True)
        yield f"{name}@{digest}"
    finally:
        subprocess.run(["docker", "rmi", name], check=False, capture_output=True)
        server.terminate()
        server.wait(10)


def pinned_images(reference: str) -> str:
    return json.dumps({"bundle_images": [
        {"name": "ollama", "image": reference, "source": "pull"},
        {"name": "gateway", "image": "gemma-airgap-lab/ollama-standin:latest", "source": "local"}],
        "bundle_vision": []})


def test_an_image_pinned_by_digest_is_pulled_by_it_and_named_by_its_tag(built, registry):
    """name:tag@sha256: pulled from a real registry by its digest, saved under name:tag
    (docker load keeps tags, not registry digests), the digest recorded in bundle.json."""
    import tarfile

    root, _first = built
    result = prepare(root, "-e", pinned_images(registry), version="pinned")
    assert result.returncode == 0, result.stdout[-4000:]
    name, digest = registry.split("@")
    bundle = json.loads((root / "pinned" / "bundle.json").read_text())
    ollama = next(image for image in bundle["images"] if image["name"] == "ollama")
    assert ollama["image"] == name and ollama["pinned"] == digest
    assert any(found.endswith("@" + digest) for found in ollama["repo_digests"])
    with tarfile.open(root / "pinned" / ollama["file"]) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == [name]
    identity = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", name], text=True,
                              capture_output=True, check=True).stdout.strip()
    assert ollama["id"] == identity
    again = prepare(root, "-e", pinned_images(registry), version="pinned")
    assert again.returncode == 0 and recap(again)["changed"] == 0, again.stdout[-3000:]


def test_a_pin_the_registry_does_not_have_or_without_a_tag_is_refused(built, registry):
    root, _first = built
    name, _digest = registry.split("@")
    wrong = prepare(root, "-e", pinned_images(f"{name}@sha256:{'0' * 64}"), version="wrong-pin")
    assert wrong.returncode != 0
    assert f"Image {name.rsplit(':', 1)[0]}@sha256:{'0' * 64} (ollama) could not be pulled" \
        in wrong.stdout
    assert not (root / "wrong-pin" / "SHA256SUMS").exists()
    untagged = f"{name.rsplit(':', 1)[0]}@{registry.split('@')[1]}"
    refused = prepare(root, "-e", pinned_images(untagged), version="untagged-pin")
    assert refused.returncode != 0
    assert f"bundle_images entry ollama: {untagged} cannot be pinned as written" in refused.stdout
    assert not (root / "untagged-pin").exists()
