#!/usr/bin/python
# -*- coding: utf-8 -*-
# gemma-airgap: the bundle's software bill of materials.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bundle_sbom
short_description: Write a CycloneDX SBOM of a sealed bundle
description:
  - Writes C(sbom.cdx.json), a CycloneDX 1.6 JSON bill of materials of the bundle at O(path),
    from what the seal recorded (C(SHA256SUMS) for every file's SHA-256, C(bundle.json) for the
    images, models and vision files) and from the artifacts' own metadata.
  - "Components: each image (its file's SHA-256, image ID and registry digests, an C(oci) package
    URL), each OS package of each apt repository in O(repositories) (name, version, architecture,
    a C(deb) package URL, and the licences its machine-readable C(copyright) file names, read
    with C(dpkg-deb)), each wheel (a C(pypi) package URL and the licence its metadata declares),
    each Ansible collection (the licences its C(MANIFEST.json) declares), each Ollama model
    (its manifest digest and the titles of its licences in C(LICENSES/)) and each vision GGUF.
    Every other file is a C(file) component with its SHA-256."
  - Every component names its files in the bundle (property C(gemma-airgap:file)), and every
    file of the bundle is named by at least one component, except C(bundle.json),
    C(SHA256SUMS), its signature and keys, and the SBOM itself (a file no other component
    names is a C(file) component). The document is validated against the CycloneDX schema (the
    library's strict JSON validator) before it is written; one that does not validate is not.
  - Run it after a seal and seal again after it (the second seal hashes only the SBOM), so that
    C(SHA256SUMS) lists it and its signature covers it.
  - The SBOM is rebuilt only when what it describes changed (a digest of its inputs is kept in
    it); otherwise it is left as it is, so a second prepare reports no change.
version_added: "0.19.0"
author: gemma-airgap developers (@gemma-airgap)
options:
  path:
    description:
      - The sealed bundle directory (with C(SHA256SUMS) and C(bundle.json)).
      - Required with O(state=present).
    type: path
  state:
    description:
      - V(present) writes the SBOM.
      - V(requirements) only checks that the libraries it needs can be imported here and
        reports their versions (prepare's preflight, before anything is downloaded).
    type: str
    choices: [present, requirements]
    default: present
  repositories:
    description:
      - The bundle's apt repositories (each a directory with a C(Packages) index).
      - The package URLs name the OS by the C(ID) and C(VERSION_CODENAME) of the repository's
        C(os-release) (copied by the container that resolved it) as
        C(pkg:deb/debian/<name>@<version>?arch=...&distro=trixie); without one, by the image's
        name and tag (C(debian:trixie)).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The repository's directory, relative to the bundle.
        type: str
        required: true
      image:
        description: The container image of the OS the repository is for (see above).
        type: str
        required: true
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
requirements:
  - cyclonedx-python-lib with its json-validation extra (requirements-staging.txt).
  - dpkg-deb for the OS packages' licences (without it they are listed without one).
seealso:
  - module: gemma_airgap.ollama.bundle_manifest
"""

EXAMPLES = r"""
- name: Write the bundle's SBOM
  gemma_airgap.ollama.bundle_sbom:
    path: /srv/bundles/2026.11.25-1
    repositories:
      - {path: packages/debian-13-amd64, image: "debian:trixie"}
      - {path: control-node/packages, image: "debian:trixie"}
"""

RETURN = r"""
file:
  description: The SBOM's name in the bundle.
  returned: when O(state=present)
  type: str
  sample: sbom.cdx.json
components:
  description: How many components of each CycloneDX type the SBOM lists.
  returned: when O(state=present)
  type: dict
  sample: {container: 4, library: 187, machine-learning-model: 4, file: 31}
files:
  description: How many of the bundle's files the SBOM names.
  returned: when O(state=present)
  type: int
unlicensed:
  description: Packages, wheels, collections and models whose licence no metadata names.
  returned: when O(state=present)
  type: int
inputs:
  description: The digest of what the SBOM describes; the SBOM is rebuilt when it changes.
  returned: when O(state=present)
  type: str
library:
  description: The version of cyclonedx-python-lib (with O(state=requirements)).
  returned: when O(state=requirements)
  type: str
  sample: 11.12.0
dpkg_deb:
  description:
    - Whether C(dpkg-deb) is here to read the packages' licences (with O(state=requirements)).
  returned: when O(state=requirements)
  type: bool
"""

import datetime
import hashlib
import json
import os
import shutil
import traceback
import uuid

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_bundle import (
    META,
    SBOM,
    SUMS,
    SUMS_LIMIT,
    parse_sums,
    relative_path,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_contents import (
    ContentError,
    apt_packages,
    collection_metadata,
    deb_licenses,
    os_release,
    unique,
    wheel_metadata,
)
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
    parse_name,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_signature import (
    KEYS,
    SIGNATURE,
)

try:
    from cyclonedx.contrib.license.factories import LicenseFactory
    from cyclonedx.contrib.this.builders import this_component
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.license import DisjunctiveLicense
    from cyclonedx.output import make_outputter
    from cyclonedx.schema import OutputFormat, SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename
    CYCLONEDX_IMPORT_ERROR = None
except ImportError:
    CYCLONEDX_IMPORT_ERROR = traceback.format_exc()

# Bump when the SBOM's content changes for the same inputs: it is then rebuilt.
FORMAT = 1
# Files that describe the bundle rather than belong to it: never components.
OWN_FILES = (META, SUMS, SIGNATURE, KEYS, SBOM)
FILE_PROPERTY = "gemma-airgap:file"
INPUTS_PROPERTY = "gemma-airgap:inputs"
MODELS_DIR = "models"
LICENSES_DIR = "LICENSES"
SBOM_LIMIT = 256 * 1024 * 1024
OS_RELEASE_LIMIT = 64 * 1024
# Components whose licence the SBOM states when their metadata names one.
LICENSED_TYPES = ("library", "machine-learning-model")


class SbomError(Exception):
    """The SBOM cannot be written; the message says why and what to do."""


class SealedBundle:
    """A bundle as its seal lists it: {relative path: sha256} and bundle.json."""

    def __init__(self, root):
        self.root = root
        try:
            sums = read_regular(os.path.join(root, SUMS), SUMS_LIMIT).decode("utf-8")
            self.meta = json.loads(read_regular(os.path.join(root, META), SUMS_LIMIT))
            listed = parse_sums(sums)
        except (OSError, UnsafeFile, ValueError) as error:
            raise SbomError("the bundle at %s is not sealed (%s): run the seal "
                            "(bundle_manifest) first" % (root, error)) from None
        if not isinstance(self.meta, dict):
            raise SbomError("%s is not a JSON object: seal the bundle again" % META)
        self.digests = {}
        for name, digest in listed:
            relative = relative_path(name)
            if relative is None:
                raise SbomError("%s lists %r, which is outside the bundle" % (SUMS, name))
            self.digests[relative] = digest

    def records(self, key):
        return [r for r in listed(self.meta.get(key)) if isinstance(r, dict)]

    def content(self):
        """The files an SBOM describes: every listed file but the bundle's own."""
        return sorted(p for p in self.digests if p not in OWN_FILES)

    def digest(self, relative, named_by=META):
        if relative not in self.digests or relative in OWN_FILES:
            raise SbomError("%s names %s, which %s does not list: seal the bundle again"
                            % (named_by, relative, SUMS))
        return self.digests[relative]

    def absolute(self, relative):
        return os.path.join(self.root, relative)

    def inputs(self, repositories, reads_debs):
        """The digest of everything the SBOM is made from."""
        described = dict((k, v) for k, v in self.meta.items()
                         if k not in ("files", "total_bytes", "created_at"))
        # Whether the packages' licences could be read: an SBOM made without dpkg-deb is made
        # again once it is there.
        state = {"format": FORMAT, "library": this_component().version, "debs": reads_debs,
                 "files": [[p, self.digests[p]] for p in self.content()],
                 "meta": described, "repositories": repositories}
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()


def licenses_of(names):
    """CycloneDX licences of names: SPDX ids and expressions where they are, names otherwise.

    CycloneDX takes one expression or a list of licences, never both: with several names,
    an expression among them is kept as a name.
    """
    names = unique(names)
    factory = LicenseFactory()
    made = [factory.make_from_string(name) for name in names]
    if len(made) <= 1:
        return made
    return [m if isinstance(m, DisjunctiveLicense) else DisjunctiveLicense(name=n)
            for m, n in zip(made, names, strict=True)]


def listed(value):
    """value when it is a list, else [] (a bundle.json value of the wrong kind)."""
    return value if isinstance(value, list) else []


def split_tag(reference):
    """(repository, tag) of an image reference (a digest after @ left out); the tag is None
    when there is none."""
    name = reference.split("@", 1)[0]
    repository, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, None
    return repository, tag


class SbomBuilder:
    """The components of one sealed bundle, each naming its files."""

    def __init__(self, bundle, repositories, read_deb_licenses):
        self.bundle = bundle
        self.repositories = repositories
        # False: no dpkg-deb here; the packages are listed without their licences.
        self.read_deb_licenses = read_deb_licenses
        self.components = {}
        self.claimed = set()

    def add(self, ref, files, kind, name, licensed=None, properties=(), **fields):
        if ref in self.components:
            raise SbomError("two components would be %s: the bundle lists it twice" % ref)
        for relative in files:
            self.bundle.digest(relative)
        self.claimed.update(files)
        if licensed is not None:
            fields["licenses"] = licenses_of(licensed)
        if len(files) == 1:
            fields.setdefault("hashes", [self.sha256(files[0])])
        self.components[ref] = Component(
            bom_ref=ref, type=kind, name=name,
            properties=[Property(name=FILE_PROPERTY, value=f) for f in files] + list(properties),
            **fields)

    def sha256(self, relative):
        return HashType(alg=HashAlgorithm.SHA_256, content=self.bundle.digest(relative))

    def build(self):
        self.images()
        for repository in self.repositories:
            self.apt_repository(repository["path"], repository["image"])
        self.models()
        self.vision()
        for relative in self.bundle.content():
            if relative.endswith(".whl"):
                self.wheel(relative)
            elif relative.startswith("control-node/collections/") and relative.endswith(".tar.gz"):
                self.collection(relative)
        for relative in self.bundle.content():
            if relative not in self.claimed:
                self.add("file:" + relative, [relative], ComponentType.FILE, relative)
        return self

    def images(self):
        for record in self.bundle.records("images"):
            reference = str(record.get("image") or record.get("name") or "")
            repository, tag = split_tag(reference)
            if not repository:
                raise SbomError("%s has an image record without a name: seal the bundle "
                                "again" % META)
            digests = [d for d in listed(record.get("repo_digests")) if isinstance(d, str)]
            purl = None
            if digests:
                registry_path, _at, digest = digests[0].partition("@")
                qualifiers = {"repository_url": registry_path}
                if tag:
                    qualifiers["tag"] = tag
                purl = PackageURL(type="oci", name=registry_path.rsplit("/", 1)[-1].lower(),
                                  version=digest, qualifiers=qualifiers)
            properties = [Property(name="gemma-airgap:image-id", value=str(record.get("id", "")))]
            properties += [Property(name="gemma-airgap:repo-digest", value=d) for d in digests]
            self.add("image:" + str(record.get("name")), [str(record.get("file"))],
                     ComponentType.CONTAINER, repository, version=tag, purl=purl,
                     properties=properties)

    def apt_repository(self, path, image):
        repo = relative_path(path)
        index = "%s/Packages" % repo if repo else None
        if index not in self.bundle.digests:
            raise SbomError("the repository %s has no Packages index listed in %s" % (path, SUMS))
        text = read_regular(self.bundle.absolute(index), SUMS_LIMIT).decode("utf-8", "replace")
        vendor, distro = self.operating_system(repo, image)
        for package, version, arch, filename in apt_packages(text):
            relative = relative_path("%s/%s" % (repo, filename))
            if relative is None or not relative.startswith(repo + "/"):
                raise SbomError("%s names %r, outside its repository" % (index, filename))
            qualifiers = dict({"arch": arch}, **({"distro": distro} if distro else {}))
            # Only a file the seal listed is read.
            self.bundle.digest(relative, named_by=index)
            try:
                licensed = (self.read_deb_licenses(self.bundle.absolute(relative), package)
                            if self.read_deb_licenses else [])
            except ContentError as error:
                raise SbomError(str(error)) from None
            self.add("deb:" + relative, [relative],
                     ComponentType.LIBRARY, package, version=version, licensed=licensed,
                     purl=PackageURL(type="deb", namespace=vendor, name=package, version=version,
                                     qualifiers=qualifiers))

    def operating_system(self, repo, image):
        """(vendor, codename) of the OS a repository is for: its os-release, as the resolving
        container of that OS copied it, else the image's name and tag (debian:trixie)."""
        found = "%s/os-release" % repo
        if found in self.bundle.digests:
            vendor, codename = os_release(read_regular(
                self.bundle.absolute(found), OS_RELEASE_LIMIT).decode("utf-8", "replace"))
            if vendor:
                return vendor, codename
        name, tag = split_tag(image)
        return name.rsplit("/", 1)[-1].lower(), tag

    def wheel(self, relative):
        try:
            name, version, _build, _tags = parse_wheel_filename(os.path.basename(relative))
            licensed = wheel_metadata(self.bundle.absolute(relative))["licenses"]
        except (InvalidWheelFilename, ContentError) as error:
            raise SbomError("the wheel %s cannot be described: %s" % (relative, error)) from None
        self.add("wheel:" + relative, [relative], ComponentType.LIBRARY, str(name),
                 version=str(version), licensed=licensed,
                 purl=PackageURL(type="pypi", name=str(name), version=str(version)))

    def collection(self, relative):
        try:
            info = collection_metadata(self.bundle.absolute(relative))
        except ContentError as error:
            raise SbomError(str(error)) from None
        properties = ([Property(name="gemma-airgap:license-file", value=info["license_file"])]
                      if info["license_file"] else [])
        self.add("collection:" + relative, [relative], ComponentType.LIBRARY, info["name"],
                 group=info["namespace"], version=info["version"], licensed=info["licenses"],
                 properties=properties)

    def models(self):
        licenses = dict((str(r.get("model")), r) for r in self.bundle.records("licenses"))
        for record in self.bundle.records("models"):
            parts = parse_name(record.get("name"))
            manifest = "/".join((MODELS_DIR, "manifests", *parts))
            if self.bundle.digest(manifest) != record.get("manifest_digest"):
                raise SbomError("the manifest of %s is not the one %s records: seal again"
                                % (record.get("name"), META))
            manifest_digest = record["manifest_digest"]
            try:
                entries = manifest_entries(
                    read_regular(self.bundle.absolute(manifest), MANIFEST_LIMIT))
            except ValueError as error:
                raise SbomError("the manifest of %s (%s) is not a valid Ollama manifest: %s"
                                % (record.get("name"), manifest, error)) from None
            blobs = set("%s/blobs/%s" % (MODELS_DIR, blob_name(e["digest"])) for e in entries)
            files = [manifest, *sorted(blobs)]
            shown = display_name(parts)
            license_record = licenses.get(shown, {})
            if license_record.get("file"):
                files.append("%s/%s" % (LICENSES_DIR, license_record["file"]))
            titles = [t for t in listed(license_record.get("titles")) if isinstance(t, str)]
            name, _colon, tag = shown.rpartition(":")
            self.add("model:" + shown, files, ComponentType.MACHINE_LEARNING_MODEL,
                     name, version=tag, licensed=titles,
                     hashes=[HashType(alg=HashAlgorithm.SHA_256, content=manifest_digest)],
                     properties=[Property(name="gemma-airgap:manifest-digest",
                                          value="sha256:" + manifest_digest)])

    def vision(self):
        for record in self.bundle.records("vision"):
            for role in ("model_file", "mmproj_file"):
                relative = str(record.get(role))
                self.add("vision:" + relative, [relative], ComponentType.MACHINE_LEARNING_MODEL,
                         os.path.basename(relative), description="%s of the vision backend for %s"
                         % ("the language model" if role == "model_file" else "the projector",
                            record.get("model")))

    def bom(self, inputs, timestamp):
        meta = self.bundle.meta
        root = Component(bom_ref="bundle", type=ComponentType.APPLICATION,
                         name="gemma-airgap bundle", version=str(meta.get("version")))
        metadata = BomMetaData(timestamp=timestamp, component=root, properties=[
            Property(name="gemma-airgap:gemma-terms-accepted",
                     value=str(bool(meta.get("gemma_terms_accepted"))).lower()),
            Property(name=INPUTS_PROPERTY, value=inputs)])
        metadata.tools.components.add(this_component())
        bom = Bom(components=self.components.values(), metadata=metadata,
                  serial_number=uuid.uuid5(uuid.NAMESPACE_URL, "urn:gemma-airgap:sbom:" + inputs))
        bom.register_dependency(root, self.components.values())
        return bom


def render(bom):
    text = make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_6).output_as_string(indent=2)
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text, all_errors=True)
    problems = [str(e)[:300] for e in errors or []]
    if problems:
        raise SbomError("the SBOM does not validate against CycloneDX 1.6 (nothing was "
                        "written): %s" % "; ".join(problems[:5]))
    return text + "\n"


def sealed_sbom(bundle):
    """The SBOM in the bundle as a document, when it is the one the seal listed; else None."""
    try:
        data = read_regular(bundle.absolute(SBOM), SBOM_LIMIT)
        if hashlib.sha256(data).hexdigest() != bundle.digests.get(SBOM):
            return None
        document = json.loads(data)
        return document if isinstance(document, dict) else None
    except (OSError, UnsafeFile, ValueError):
        return None


def inputs_of(document):
    try:
        return next(p.get("value") for p in document["metadata"]["properties"]
                    if p.get("name") == INPUTS_PROPERTY)
    except (KeyError, TypeError, AttributeError, StopIteration):
        return None


def summary(document, inputs, changed):
    """What the module reports, read from the document itself (written now or before)."""
    kinds, files, unlicensed = {}, set(), 0
    for component in document.get("components") or []:
        kinds[component["type"]] = kinds.get(component["type"], 0) + 1
        files.update(p["value"] for p in component.get("properties") or []
                     if p.get("name") == FILE_PROPERTY)
        if component["type"] in LICENSED_TYPES and not component.get("licenses"):
            unlicensed += 1
    return {"changed": changed, "file": SBOM, "components": kinds, "files": len(files),
            "unlicensed": unlicensed, "inputs": inputs}


def write_sbom(root, repositories, check_mode, now=None, read_deb_licenses=None):
    """Write the SBOM unless the one sealed in describes the same inputs.

    read_deb_licenses: how to read a package's licences (False: not at all); by default
    dpkg-deb's reading when dpkg-deb is here, else not at all.
    """
    if read_deb_licenses is None:
        read_deb_licenses = deb_licenses if shutil.which("dpkg-deb") else False
    bundle = SealedBundle(root)
    inputs = bundle.inputs(repositories, bool(read_deb_licenses))
    document = sealed_sbom(bundle)
    if document is not None and inputs_of(document) == inputs:
        return summary(document, inputs, False)
    # build() names every listed file: what no other component claims is a file component.
    builder = SbomBuilder(bundle, repositories, read_deb_licenses).build()
    timestamp = now or datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    text = render(builder.bom(inputs, timestamp))
    if not check_mode:
        write_atomic(bundle.absolute(SBOM), text.encode("utf-8"))
    return summary(json.loads(text), inputs, True)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            state=dict(type="str", choices=["present", "requirements"], default="present"),
            repositories=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="str", required=True),
                image=dict(type="str", required=True))),
        ),
        required_if=[("state", "present", ["path"])],
        supports_check_mode=True,
    )
    if CYCLONEDX_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib(
            "cyclonedx-python-lib[json-validation]",
            reason="to write the bundle's SBOM; install requirements-staging.txt on the staging "
                   "host (pip install -r requirements-staging.txt)"),
            exception=CYCLONEDX_IMPORT_ERROR)
    if module.params["state"] == "requirements":
        module.exit_json(changed=False, library=this_component().version,
                         dpkg_deb=bool(shutil.which("dpkg-deb")))
    repositories = [{"path": r["path"], "image": r["image"]} for r in module.params["repositories"]]
    try:
        result = write_sbom(module.params["path"], repositories, module.check_mode)
    except (SbomError, OSError, UnsafeFile, ValueError) as error:
        module.fail_json(msg="The SBOM was not written: %s." % error)
    # Whatever else a hostile artifact makes a library raise: a failure that says so, never
    # a bare traceback.
    except Exception as error:
        module.fail_json(msg="The SBOM was not written: %s: %s (a bug: please report it with "
                             "the traceback)." % (type(error).__name__, error),
                         exception=traceback.format_exc())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
