# -*- coding: utf-8 -*-
# Shared by the gemma-airgap modules; stdlib only (it runs on closed-network targets).
"""The one checksum routine, copies that are verified in the same read, and safe reads.

A file is read once: hashing and copying happen on the same buffer. Every write
goes to a temporary file on the destination's filesystem and is renamed into
place only after its digest matched, so a half-written or corrupt file never
appears under its final name. Files from a bundle or a store are hostile input:
they are read only when they are regular files (never through a symlink), and
small ones only up to a limit.
"""

from __future__ import absolute_import, division, print_function

import errno
import hashlib
import os
import shutil
import stat
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


class UnsafeFile(ValueError):
    """A file from hostile input that is a symlink, not a regular file, or too large."""


def open_regular(path):
    """An unbuffered reader of the regular file at path; never follows a final symlink.

    O_NONBLOCK keeps a FIFO planted where a file should be from hanging the open.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeFile("%s is a symlink (never followed)" % path) from None
        raise
    reader = os.fdopen(fd, "rb", buffering=0)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        reader.close()
        raise UnsafeFile("%s is not a regular file" % path)
    return reader


def read_regular(path, limit):
    """The bytes of the regular file at path, refused (UnsafeFile) beyond limit bytes."""
    data = bytearray()
    with open_regular(path) as source:
        while len(data) <= limit:
            piece = source.read(limit + 1 - len(data))
            if not piece:
                break
            data += piece
    if len(data) > limit:
        raise UnsafeFile("%s is larger than the %d bytes such a file may have" % (path, limit))
    return bytes(data)


def sha256_file(path, chunk=CHUNK):
    """Hex sha256 of a regular file (never through a final symlink), read once."""
    with open_regular(path) as source:
        return sha256_reader(source, chunk)


def sha256_reader(source, chunk=CHUNK):
    """Hex sha256 of what an open (unbuffered) reader holds from where it stands."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
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
        with open_regular(source_path) as source, os.fdopen(fd, "wb") as out:
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


def write_atomic(path, data, mode=0o644, chunk=CHUNK):
    """Write bytes, or what a binary reader yields (in chunks: a file of GBs never sits in
    memory), to path through a temporary file and a rename."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory)
    fd, partial = tempfile.mkstemp(dir=directory, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            if hasattr(data, "read"):
                shutil.copyfileobj(data, out, chunk)
            else:
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(partial, mode)
        os.rename(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
