"""Write the collections the control-node kit installs offline, as collection tarballs.

- gemma_airgap.ollama: built from this project (galaxy.yml at --project) with
  `ansible-galaxy collection build`, from an allow-list of its paths and, in a git checkout,
  only the files git tracks: a site inventory, a vault file or a key lying in the checkout
  never travels. An existing tarball whose files all have the same checksums is kept, so a
  second prepare changes nothing.
- Its dependencies (collections/requirements.yml, and theirs): built from the copies in the pinned
  `ansible` package this Python runs (PyPI's wheel, pinned in requirements.txt), so a
  staging host needs PyPI only, never Galaxy. The version installed must be the one pinned.

Prints one JSON line: {"changed": bool, "artifacts": [file names], "built": [...]}.
Runs on the staging host with the Python that runs ansible-playbook.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import yaml

GALAXY = str(Path(sys.executable).parent / "ansible-galaxy")
# MANIFEST.json's collection_info keys that galaxy.yml also takes.
GALAXY_KEYS = ("namespace", "name", "version", "readme", "authors", "description", "license",
               "license_file", "tags", "dependencies", "repository", "documentation",
               "homepage", "issues")


# What the collection carries (everything else in the checkout stays there).
# The operator's docs (docs/, README.ko.md) travel too: inside the gap they are all there is.
COLLECTION_PATHS = ("galaxy.yml", "README.md", "README.ko.md", "CHANGELOG.md", "docs/", "meta/",
                    "plugins/", "roles/", "playbooks/", "files/",
                    "inventories/production.example/")


class ArtifactError(Exception):
    """Something the operator must fix; the message says what."""


def artifact_name(namespace: str, name: str, version: str) -> str:
    return f"{namespace}-{name}-{version}.tar.gz"


def read_member(tarball: Path, member: str) -> dict | None:
    """A JSON member of a collection tarball, or None when it cannot be read."""
    try:
        with tarfile.open(tarball) as archive:
            found = archive.extractfile(member)
            return json.load(found) if found else None
    except (OSError, tarfile.TarError, KeyError, ValueError):
        return None


def same_content(left: Path, right: Path) -> bool:
    """Two collection tarballs carry the same files (FILES.json lists every checksum)."""
    files = [read_member(path, "FILES.json") for path in (left, right)]
    infos = [read_member(path, "MANIFEST.json") for path in (left, right)]
    return None not in files and files[0] == files[1] and infos[0] == infos[1]


def galaxy_build(source: Path, output: Path) -> Path:
    """ansible-galaxy collection build; returns the tarball it wrote."""
    result = subprocess.run([GALAXY, "collection", "build", "--force", "--output-path",
                             str(output), str(source)], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise ArtifactError(f"ansible-galaxy collection build {source} failed: "
                            f"{(result.stderr or result.stdout).strip()}")
    built = sorted(output.glob("*.tar.gz"))
    if len(built) != 1:
        raise ArtifactError(f"ansible-galaxy collection build {source} wrote {len(built)} files")
    return built[0]


def place(built: Path, dest: Path, keep_pattern: str) -> bool:
    """Move a fresh build into dest unless an identical one is there; drop other versions
    of the same collection (the bundle carries one). Returns whether dest changed."""
    target = dest / built.name
    changed = False
    if not (target.is_file() and same_content(built, target)):
        partial = dest / f".{built.name}.partial"
        shutil.copyfile(built, partial)
        os.replace(partial, target)
        changed = True
    for stale in dest.glob(keep_pattern):
        if stale.name != built.name:
            stale.unlink()
            changed = True
    return changed


def installed_collection(namespace: str, name: str) -> Path:
    """Where this Python's ansible package keeps a collection."""
    for entry in sys.path:
        candidate = Path(entry or ".") / "ansible_collections" / namespace / name
        if (candidate / "MANIFEST.json").is_file():
            return candidate
    raise ArtifactError(f"collection {namespace}.{name} is not installed for {sys.executable}: "
                        "install the pinned requirements.txt (make setup) on the staging host")


def repack(namespace: str, name: str, version: str, dest: Path) -> bool:
    """Build a tarball of a dependency from the ansible package's copy of it."""
    target = dest / artifact_name(namespace, name, version)
    info = (read_member(target, "MANIFEST.json") or {}).get("collection_info", {})
    if target.is_file() and info.get("version") == version:
        return False
    source = installed_collection(namespace, name)
    manifest = json.loads((source / "MANIFEST.json").read_text())["collection_info"]
    if manifest["version"] != version:
        raise ArtifactError(
            f"collections/requirements.yml pins {namespace}.{name} {version}, but the ansible "
            f"package here has {manifest['version']}: change the pin or requirements.txt so "
            "they agree")
    with tempfile.TemporaryDirectory() as work:
        copy = Path(work) / "src"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(
            "__pycache__", "*.pyc", "MANIFEST.json", "FILES.json"))
        galaxy = {key: manifest[key] for key in GALAXY_KEYS if manifest.get(key)}
        (copy / "galaxy.yml").write_text(yaml.safe_dump(galaxy))
        output = Path(work) / "out"
        output.mkdir()
        return place(galaxy_build(copy, output), dest, f"{namespace}-{name}-*.tar.gz")


def project_files(project: Path) -> list[str]:
    """The project's files the collection may carry: tracked by git when it is a checkout."""
    listed = subprocess.run(["git", "-C", str(project), "ls-files", "-z"], capture_output=True,
                            check=False)
    if listed.returncode == 0:
        names = [name for name in listed.stdout.decode().split("\0") if name]
    else:
        names = [str(path.relative_to(project)) for path in project.rglob("*") if path.is_file()]
    return sorted(name for name in names
                  if name.startswith(COLLECTION_PATHS) and "__pycache__" not in name)


def build_project(project: Path, dest: Path) -> tuple[str, bool]:
    meta = yaml.safe_load((project / "galaxy.yml").read_text())
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "src"
        for name in project_files(project):
            target = source / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / name, target)
        output = Path(work) / "out"
        output.mkdir()
        built = galaxy_build(source, output)
        changed = place(built, dest, f"{meta['namespace']}-{meta['name']}-*.tar.gz")
        return built.name, changed


def dependencies(namespace: str, name: str) -> list[tuple[str, str, str]]:
    """A dependency's own dependencies, at the versions the ansible package carries
    (community.docker needs community.library_inventory_filtering_v1, for one)."""
    manifest = json.loads((installed_collection(namespace, name) / "MANIFEST.json").read_text())
    found = []
    for full_name in manifest["collection_info"].get("dependencies") or {}:
        dep_namespace, dep_name = full_name.split(".")
        dep = json.loads((installed_collection(dep_namespace, dep_name) / "MANIFEST.json")
                         .read_text())["collection_info"]
        found.append((dep_namespace, dep_name, dep["version"]))
    return found


def build_all(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    ours, changed = build_project(args.project, args.dest)
    artifacts, built = [ours], [ours] if changed else []
    pending = [(*entry["name"].split("."), str(entry["version"]))
               for entry in yaml.safe_load(args.requirements.read_text())["collections"]]
    seen = set()
    while pending:
        namespace, name, version = pending.pop(0)
        if (namespace, name) in seen:
            continue
        seen.add((namespace, name))
        artifacts.append(artifact_name(namespace, name, version))
        if repack(namespace, name, version, args.dest):
            built.append(artifacts[-1])
        pending.extend(dependencies(namespace, name))
    return artifacts, built


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--requirements", type=Path, required=True)
    parser.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    try:
        artifacts, built = build_all(args)
    except ArtifactError as error:
        print(json.dumps({"failed": True, "msg": str(error)}))
        return 1
    print(json.dumps({"changed": bool(built), "artifacts": artifacts, "built": built}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
