# -*- coding: utf-8 -*-
# Shared by the gemma-airgap modules; stdlib (and the packaging library ansible-core needs).
"""What the artifacts inside a bundle say about themselves: names, versions, licences.

Read for the bundle's software bill of materials. Every artifact is hostile input even on
the staging host (a wheel or a package comes from the internet): each is read with a
maintained parser (email.parser for Debian's and Python's RFC 822 style fields, zipfile,
tarfile, dpkg-deb), only up to a limit, and a field that is not what it should be is left
out rather than trusted.
"""

from __future__ import absolute_import, division, print_function

import email.parser
import json
import re
import shlex
import subprocess
import tarfile
import threading
import zipfile
import zlib

__metaclass__ = type

# Metadata files are a few KiB; a Debian copyright file rarely over 100 KiB.
FIELD_LIMIT = 1024 * 1024
# A licence named by more short names than this is listed by its first ones.
LICENSE_NAMES = 32
# dpkg-deb streams one package's files through this process (xz at some 50 MB/s: a 1 GB
# package in 20 s); one that takes longer stops the SBOM, naming it.
DPKG_TIMEOUT = 300
# A copyright file in the machine-readable format (DEP-5) says so on its first line.
DEP5 = re.compile(r"copyright-format/1\.0")
CLASSIFIER = "License :: "


# What reading a damaged or hostile zip or tar can raise besides its own error class.
ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, RuntimeError,
                  NotImplementedError, OSError, ValueError)


class ContentError(ValueError):
    """An artifact whose own description cannot be read; the message names it."""


def paragraphs(text):
    """[{field: value}] of a Debian control-style text (Packages, copyright).

    Paragraphs are separated by blank lines; each is parsed by the standard library's
    RFC 822 header parser, which joins continuation lines. A later duplicate field is
    ignored (the first one is Debian's).
    """
    parser = email.parser.HeaderParser()
    result = []
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        block = block.strip("\n")
        if not block or block.startswith("#"):
            continue
        message = parser.parsestr(block + "\n\n", headersonly=True)
        fields = {}
        for key, value in message.items():
            fields.setdefault(key, str(value))
        result.append(fields)
    return result


def first_line(value):
    return value.strip().split("\n", 1)[0].strip()


def unique(names):
    """Each non-blank name once, stripped, in order; at most LICENSE_NAMES of them."""
    seen = []
    for name in names:
        name = name.strip() if isinstance(name, str) else ""
        if name and name not in seen:
            seen.append(name)
    return seen[:LICENSE_NAMES]


def dep5_licenses(text):
    """The short licence names of a machine-readable Debian copyright file, else []."""
    found = paragraphs(text)
    if not found or not DEP5.search(found[0].get("Format", "")):
        return []
    return unique(first_line(p["License"]) for p in found
                  if "License" in p and ("Files" in p or p is found[0]))


def read_member(stream, limit, what):
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ContentError("%s is larger than %d bytes" % (what, limit))
    return data


def deb_licenses(path, package, timeout=DPKG_TIMEOUT):
    """The licences a .deb's /usr/share/doc/<package>/copyright names, if machine-readable.

    dpkg-deb (the maintained reader of the format) streams the package's files; the
    copyright file is taken from that stream and the rest is not unpacked. [] when the
    package has none, it is a link to another package's, or it is free-form text.
    ContentError when dpkg-deb cannot read the package or takes longer than timeout: a
    package apt could not install either, or a reading that an SBOM must not pass off as
    "no licence".
    """
    wanted = "usr/share/doc/%s/copyright" % package
    process = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", path], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    # Killing dpkg-deb ends the stream, so the read below cannot outlast the timer.
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        found = copyright_member(process.stdout, wanted)
    except (tarfile.TarError, EOFError, zlib.error, OSError):
        found = None
    finally:
        timed_out = not timer.is_alive()
        timer.cancel()
        process.kill()
        process.stdout.close()
        returncode = process.wait()
    if timed_out:
        raise ContentError("dpkg-deb took longer than %d s to read %s" % (timeout, path))
    # A negative code is the kill above, once the member was found; a positive one is
    # dpkg-deb's own failure.
    if found is None or returncode > 0:
        raise ContentError("dpkg-deb cannot read %s (exit %s): it is not a whole Debian "
                           "package" % (path, returncode))
    return dep5_licenses(found.decode("utf-8", "replace")) if found else []


def copyright_member(stream, wanted):
    """The bytes of the member named wanted in a tar stream; b"" when it is absent or not a
    regular file (a link to another package's)."""
    with tarfile.open(fileobj=stream, mode="r|*") as archive:
        for member in archive:
            if member.name.lstrip("./") == wanted:
                if not member.isfile():
                    return b""
                return read_member(archive.extractfile(member), FIELD_LIMIT, wanted)
    return b""


def apt_packages(text):
    """[(package, version, architecture, file name)] of an apt repository's Packages index."""
    found = []
    for fields in paragraphs(text):
        entry = tuple(first_line(fields.get(key, ""))
                      for key in ("Package", "Version", "Architecture", "Filename"))
        if all(entry):
            found.append(entry)
    return found


def os_release(text):
    """(ID, codename) of an os-release file (shell-style KEY=value lines); None where absent.

    Only plain lower-case names are taken: they go into package URLs.
    """
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_]+", key):
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        fields[key] = words[0] if len(words) == 1 else ""
    plain = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
    found = [fields.get(k, "") for k in ("ID", "VERSION_CODENAME")]
    return tuple(value if plain.fullmatch(value) else None for value in found)


def wheel_metadata(path):
    """{name, version, licenses} of a wheel, from its .dist-info/METADATA.

    licenses: the SPDX expression of License-Expression (PEP 639) when there is one,
    else the License field when it is a short name, else the names of the License ::
    classifiers.
    """
    try:
        with zipfile.ZipFile(path) as wheel:
            names = [n for n in wheel.namelist()
                     if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            if len(names) != 1:
                raise ContentError("%s has %d METADATA files, not one" % (path, len(names)))
            with wheel.open(names[0]) as member:
                raw = read_member(member, FIELD_LIMIT, names[0])
    except ARCHIVE_ERRORS as error:
        raise ContentError("%s cannot be read as a wheel: %s" % (path, error)) from None
    # As text: the bytes parser hands non-ASCII values (a licence naming its author) back as
    # Header objects rather than strings.
    message = email.parser.HeaderParser().parsestr(raw.decode("utf-8", "replace"))
    licenses = []
    expression = message.get("License-Expression")
    short = first_line(message.get("License") or "")
    if expression and first_line(str(expression)):
        licenses = [first_line(str(expression))]
    elif short and len(short) <= 80 and short.upper() not in ("UNKNOWN", "NONE"):
        licenses = [short]
    else:
        licenses = unique(str(c).rsplit(" :: ", maxsplit=1)[-1].strip()
                          for c in message.get_all("Classifier") or []
                          if str(c).startswith(CLASSIFIER))
    return {"name": str(message.get("Name", "")), "version": str(message.get("Version", "")),
            "licenses": licenses}


def collection_metadata(path):
    """{namespace, name, version, licenses} of an Ansible collection tarball's MANIFEST.json."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            member = archive.getmember("MANIFEST.json")
            if not member.isfile():
                raise ContentError("%s: MANIFEST.json is not a file" % path)
            raw = read_member(archive.extractfile(member), FIELD_LIMIT, "MANIFEST.json")
        info = json.loads(raw.decode("utf-8"))["collection_info"]
    except (*ARCHIVE_ERRORS, KeyError, TypeError) as error:
        raise ContentError("%s is not a collection tarball with a MANIFEST.json: %s"
                           % (path, error)) from None
    if not isinstance(info, dict):
        raise ContentError("%s: MANIFEST.json's collection_info is not an object" % path)
    fields = dict((key, info.get(key)) for key in ("namespace", "name", "version"))
    if not all(isinstance(value, str) and value for value in fields.values()):
        raise ContentError("%s: MANIFEST.json lacks namespace, name or version" % path)
    declared = info.get("license") or []
    fields["licenses"] = unique(x for x in declared if isinstance(x, str)) \
        if isinstance(declared, list) else []
    # A collection names either SPDX identifiers or a licence file it carries.
    license_file = info.get("license_file")
    fields["license_file"] = license_file if isinstance(license_file, str) else None
    return fields
