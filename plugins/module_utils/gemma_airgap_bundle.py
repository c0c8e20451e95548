# -*- coding: utf-8 -*-
# Shared by the gemma-airgap bundle modules; stdlib only (it runs on closed-network targets).
"""What a bundle is: its own file names, the rule for its version, and SHA256SUMS.

Everything in a bundle is hostile until checked. SHA256SUMS is read the way GNU
``sha256sum -c --strict`` reads it (so any list that tool accepts is accepted),
and then every name in it must be a path inside the bundle.
"""

from __future__ import absolute_import, division, print_function

import re

__metaclass__ = type

SUMS = "SHA256SUMS"
META = "bundle.json"
# The bundle's software bill of materials (CycloneDX JSON), listed in SHA256SUMS.
SBOM = "sbom.cdx.json"
# A bundle's own small files are read whole: never more than this.
SUMS_LIMIT = 64 * 1024 * 1024

# The version names a directory on every target (<release_root>/<version>), beside the
# current and previous links: a plain name (no "/", not "." or "..", no leading dot),
# and never one of those links. roles/bundle/vars/main.yml holds the same rule for
# prepare's preflight; a unit test keeps the two equal.
VERSION_PATTERN = "[A-Za-z0-9][A-Za-z0-9._-]*"
RESERVED_VERSIONS = ("current", "previous")

_HEX64 = re.compile("[0-9A-Fa-f]{64}")
_BLANKS = " \t"
_ESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


def version_problem(version):
    """Why version cannot name a release directory ("is ..."), or None when it can."""
    if not isinstance(version, str) or not re.fullmatch(VERSION_PATTERN, version):
        return ("is not a plain name (letters, digits, '.', '_' and '-', starting with a "
                "letter or digit)")
    if version in RESERVED_VERSIONS:
        return "is reserved: it is the name of a release link"
    return None


def relative_path(name):
    """name as a normalised path inside the bundle, or None when it would leave it.

    sha256sum itself follows absolute names and ".." components; a bundle never does.
    A name that merely starts with ".." (like "..notes") stays inside and is fine.
    """
    if not name or "\0" in name or name.startswith("/"):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def sums_line(digest, name):
    """One SHA256SUMS line as GNU sha256sum writes it.

    A name holding a backslash, newline or carriage return is escaped and the line
    marked with a leading backslash; any other name is written as it is.
    """
    if any(char in name for char in "\\\n\r"):
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return "\\%s  %s\n" % (digest, escaped)
    return "%s  %s\n" % (digest, name)


def parse_sums(text):
    """[(name, lower-case hex)] of a SHA256SUMS text; ValueError names a malformed line.

    Accepted as GNU coreutils accepts them: "<hex>  <name>", "<hex> *<name>" (binary
    marker), "<hex> <name>" when the first such line uses it, "SHA256 (<name>) = <hex>",
    either case of hex, leading blanks, a leading backslash for escaped names, CRLF,
    "#" comment lines and empty lines.
    """
    entries = []
    bare = None  # GNU fixes the "<hex> <name>" form (or not) on the first line that decides
    for number, line in enumerate(text.split("\n"), 1):
        if line.startswith("#"):
            continue
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            continue
        parsed = _parse_line(line, bare)
        if parsed is None:
            raise ValueError("%s line %d is not in sha256sum format" % (SUMS, number))
        name, digest, form = parsed
        bare = bare if form is None else form
        entries.append((name, digest.lower()))
    return entries


def _parse_line(line, bare):
    """(name, hex, bare form or None) of one line, or None when it is malformed."""
    start = len(line) - len(line.lstrip(_BLANKS))
    escaped = line.startswith("\\", start)
    start += escaped
    if line.startswith("SHA256", start):
        return _parse_tagged(line[start + 6:], escaped)
    digest, blank, rest = line[start:start + 64], line[start + 64:start + 65], line[start + 65:]
    if not _HEX64.fullmatch(digest) or not blank or blank not in _BLANKS or not rest:
        return None
    if len(rest) == 1 or rest[0] not in " *":
        if bare is False:
            return None
        form = True
    elif bare:
        form = True  # in the bare form a leading space or star belongs to the name
    else:
        rest, form = rest[1:], False
    name = _unescape(rest) if escaped else rest
    return None if name is None else (name, digest, form)


def _parse_tagged(rest, escaped):
    """The BSD form after its "SHA256": " (<name>) = <hex>", the name up to the last ")"."""
    if rest.startswith(" "):
        rest = rest[1:]
    close = rest.rfind(")")
    if not rest.startswith("(") or close < 1:
        return None
    name, tail = rest[1:close], rest[close + 1:].lstrip(_BLANKS)
    digest = tail[1:].lstrip(_BLANKS)
    if not tail.startswith("=") or not _HEX64.fullmatch(digest):
        return None
    if escaped:
        name = _unescape(name)
    return None if name is None else (name, digest, None)


def _unescape(name):
    """A name with GNU's escapes (\\\\, \\n, \\r) undone, or None for any other escape."""
    out = []
    chars = iter(name)
    for char in chars:
        if char == "\\":
            char = _ESCAPES.get(next(chars, ""))
            if char is None:
                return None
        out.append(char)
    return "".join(out)
