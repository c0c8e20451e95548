# -*- coding: utf-8 -*-
# Shared by the gemma-airgap modules; stdlib only (it runs on closed-network targets).
"""The one checksum routine, and copies that are verified in the same read.

A file is read once: hashing and copying happen on the same buffer. Every write
goes to a temporary file on the destination's filesystem and is renamed into
place only after its digest matched, so a half-written or corrupt file never
appears under its final name.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import os
import tempfile

__metaclass__ = type

# Large reads keep hashing near OpenSSL's per-core speed; hashlib releases the
# GIL on buffers this size, so threads hash files on several cores at once.
CHUNK = 4 * 1024 * 1024


class ChecksumMismatch(Exception):
    def __init__(self, path, expected, actual):
        super(ChecksumMismatch, self).__init__(
            "%s: checksum mismatch (expected sha256:%s, got sha256:%s)" % (path, expected, actual))
        self.path = path
        self.expected = expected
        self.actual = actual


def sha256_file(path, chunk=CHUNK):
    """Hex sha256 of a file, read once."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as source:
        while True:
            count = source.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()


def copy_verified(source_path, dest_path, expected_hex, tmp_dir=None, chunk=CHUNK):
    """Copy source to dest, hashing the bytes as they pass; rename only if they match.

    Returns the number of bytes copied. Raises ChecksumMismatch (naming the
    source) and leaves nothing behind when the content is not what it claims.
    """
    tmp_dir = tmp_dir or os.path.dirname(dest_path)
    for directory in (tmp_dir, os.path.dirname(dest_path)):
        if not os.path.isdir(directory):
            os.makedirs(directory)
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    copied = 0
    fd, partial = tempfile.mkstemp(dir=tmp_dir, prefix=".partial-")
    try:
        with open(source_path, "rb", buffering=0) as source, os.fdopen(fd, "wb") as out:
            while True:
                count = source.readinto(buffer)
                if not count:
                    break
                digest.update(view[:count])
                out.write(view[:count])
                copied += count
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != expected_hex:
            raise ChecksumMismatch(source_path, expected_hex, actual)
        os.chmod(partial, 0o644)
        os.rename(partial, dest_path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return copied


def write_atomic(path, data, mode=0o644):
    """Write bytes to path through a temporary file and a rename."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory)
    fd, partial = tempfile.mkstemp(dir=directory, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(partial, mode)
        os.rename(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
