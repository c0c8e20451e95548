# -*- coding: utf-8 -*-
# Shared by the gemma-airgap modules; stdlib only (it runs on closed-network targets).
"""A bounded reader of a GGUF file's header: the model's shape for the GPU memory estimate.

GGUF (ggml's docs/gguf.md) starts with the magic ``GGUF``, a uint32 version, a uint64
tensor count and a uint64 count of metadata entries; each entry is a key (uint64 length,
UTF-8 bytes), a uint32 value type and the value: a scalar, a string (uint64 length,
bytes) or an array (uint32 element type, uint64 count, elements). Everything is little
endian. Only the metadata is read; the tensor table and the weights are not.

A model blob comes from a bundle or a store, so it is hostile: every count and length is
checked against a limit and against what is left of the file before anything is read or
skipped, the whole header may not run past ``HEADER_LIMIT`` bytes, and arrays of arrays
are refused. A refusal raises GGUFError saying what was wrong, having read at most
``HEADER_LIMIT`` bytes (a forged count is refused before the data it announces).
"""

from __future__ import absolute_import, division, print_function

import io
import os
import re
import struct

from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_files import (
    open_regular,
)

__metaclass__ = type

MAGIC = b"GGUF"
# Version 1 had 32-bit counts (and is long gone); a big-endian file reads as a huge version.
VERSIONS = (2, 3)
# The metadata of a Gemma 3n GGUF, tokenizer included, is about 6 MiB.
HEADER_LIMIT = 64 * 1024 * 1024
# Metadata entries: llama.cpp's converters write a few dozen.
KV_LIMIT = 4096
# A key is a dotted ASCII name (the spec allows 65535 bytes; real ones are under 100).
KEY_LIMIT = 1024
# One string value (a chat template is tens of KiB).
STRING_LIMIT = 1024 * 1024
# Elements of one array (a vocabulary is 262144 tokens, merges about 500000).
ARRAY_LIMIT = 1 << 24
# Arrays kept for the shape (per-layer values) are at most this long.
KEEP_ARRAY = 4096
# Layers, heads and lengths beyond these are not a model's, they are a forgery.
SHAPE_LIMIT = 1 << 20

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_ARCH = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

# The keys kept: general ones by full name, the architecture's by what follows
# "<architecture>." (the architecture is known only once general.architecture is read).
GENERAL = ("general.architecture", "general.file_type")
SHAPE_KEYS = ("block_count", "context_length", "embedding_length", "attention.head_count",
              "attention.head_count_kv", "attention.key_length", "attention.value_length",
              "attention.sliding_window", "attention.shared_kv_layers")


class GGUFError(ValueError):
    """The file is not a GGUF header this reader accepts; the message says why."""


class _Reader(object):
    """Reads within the first min(file size, HEADER_LIMIT) bytes and never past them."""

    def __init__(self, stream, size):
        self.stream = stream
        self.end = min(size, HEADER_LIMIT)
        self.size = size
        self.position = 0

    def _room(self, count, what):
        if count > self.end - self.position:
            if self.position + count > self.size:
                raise GGUFError("truncated: %s needs %d bytes at offset %d, the file has %d"
                                % (what, count, self.position, self.size))
            raise GGUFError("the header runs past %d bytes (%s at offset %d): refused"
                            % (HEADER_LIMIT, what, self.position))

    def read(self, count, what):
        self._room(count, what)
        data = self.stream.read(count)
        if len(data) != count:
            raise GGUFError("truncated: %s at offset %d" % (what, self.position))
        self.position += count
        return data

    def skip(self, count, what):
        self._room(count, what)
        self.stream.seek(count, os.SEEK_CUR)
        self.position += count

    def unpack(self, fmt, what):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt), what))[0]

    def length(self, limit, what):
        value = self.unpack("<Q", what + " length")
        if value > limit:
            raise GGUFError("%s of %d bytes at offset %d is over the limit of %d: refused"
                            % (what, value, self.position - 8, limit))
        return value


def _value(reader, kind, keep, key):
    """The value of one entry (kept when keep, else skipped and None)."""
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        if not keep:
            reader.skip(struct.calcsize(fmt), key)
            return None
        return reader.unpack(fmt, key)
    if kind == _STRING:
        length = reader.length(STRING_LIMIT, "string of " + key)
        if not keep:
            reader.skip(length, key)
            return None
        return reader.read(length, key).decode("utf-8", "replace")
    if kind == _ARRAY:
        item = reader.unpack("<I", "array type of " + key)
        count = reader.unpack("<Q", "array length of " + key)
        if count > ARRAY_LIMIT:
            raise GGUFError("array %s announces %d elements, over the limit of %d: refused"
                            % (key, count, ARRAY_LIMIT))
        if item in _SCALARS:
            width = struct.calcsize(_SCALARS[item])
            if not keep:
                reader.skip(width * count, key)
                return None
            if count > KEEP_ARRAY:
                raise GGUFError("array %s has %d elements, more than a model has layers (%d)"
                                % (key, count, KEEP_ARRAY))
            return [reader.unpack(_SCALARS[item], key) for _index in range(count)]
        if item == _STRING:
            for _index in range(count):
                reader.skip(reader.length(STRING_LIMIT, "string in " + key), key)
            return None
        raise GGUFError("array %s holds value type %d (arrays of arrays are refused)" % (key, item))
    raise GGUFError("entry %s has unknown value type %d" % (key, kind))


def _wanted(key):
    if key in GENERAL:
        return True
    _prefix, _dot, rest = key.partition(".")
    return rest in SHAPE_KEYS


def read_metadata(stream, size):
    """The header's version and the kept metadata entries of an open binary stream.

    size is the file's length; reading stops once every key of the model's shape is
    known (llama.cpp's converters write them before the tokenizer's large arrays).
    """
    reader = _Reader(stream, size)
    if reader.read(4, "magic") != MAGIC:
        raise GGUFError("not a GGUF file (its first bytes are not GGUF)")
    version = reader.unpack("<I", "version")
    if version not in VERSIONS:
        raise GGUFError("GGUF version %d is not one this reader knows (%s)"
                        % (version, ", ".join(str(v) for v in VERSIONS)))
    tensors = reader.unpack("<Q", "tensor count")
    entries = reader.unpack("<Q", "metadata count")
    if tensors > SHAPE_LIMIT or entries > KV_LIMIT:
        raise GGUFError("the header announces %d tensors and %d metadata entries (limits %d and "
                        "%d): refused" % (tensors, entries, SHAPE_LIMIT, KV_LIMIT))
    metadata = {}
    for _entry in range(entries):
        key = reader.read(reader.length(KEY_LIMIT, "key"), "key").decode("utf-8", "replace")
        kind = reader.unpack("<I", "value type of " + key)
        keep = _wanted(key)
        value = _value(reader, kind, keep, key)
        if keep:
            metadata[key] = value
        arch = metadata.get("general.architecture")
        if isinstance(arch, str) and all(
                g in metadata for g in GENERAL) and all(
                "%s.%s" % (arch, k) in metadata for k in SHAPE_KEYS):
            break
    return version, metadata


def _count(value, name, allow_zero=False):
    if value is None:
        raise GGUFError("%s is missing" % name)
    if isinstance(value, bool) or not isinstance(value, int) or value > SHAPE_LIMIT \
            or value < (0 if allow_zero else 1):
        raise GGUFError("%s is %r, not a plausible count" % (name, value))
    return value


def model_shape(metadata):
    """The record of a model's shape that bundle.json keeps, from its GGUF metadata.

    block_count, head_count_kv (one number, or one per layer), key_length and
    value_length are what the KV cache estimate needs (gemma_airgap_gpu.vram_estimate);
    the lengths default as llama.cpp's do, to embedding_length / head_count.
    """
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not _ARCH.fullmatch(arch):
        raise GGUFError("general.architecture is %r, not an architecture name" % (arch,))

    def get(key):
        return metadata.get("%s.%s" % (arch, key))

    shape = {"architecture": arch}
    layers = shape["block_count"] = _count(get("block_count"), arch + ".block_count")
    for key, name in (("context_length", "context_length"),
                      ("embedding_length", "embedding_length"),
                      ("attention.sliding_window", "sliding_window"),
                      ("attention.shared_kv_layers", "shared_kv_layers")):
        if get(key) is not None:
            shape[name] = _count(get(key), "%s.%s" % (arch, key), allow_zero=True)
    heads = get("attention.head_count")
    kv_heads = get("attention.head_count_kv")
    if kv_heads is None:
        kv_heads = heads  # no grouped-query attention: a K/V head per query head
    if isinstance(kv_heads, list):
        if len(kv_heads) != layers:
            raise GGUFError("%s.attention.head_count_kv lists %d layers, block_count is %d"
                            % (arch, len(kv_heads), layers))
        shape["head_count_kv"] = [_count(v, arch + ".attention.head_count_kv", True)
                                  for v in kv_heads]
    else:
        shape["head_count_kv"] = _count(kv_heads, arch + ".attention.head_count_kv")
    for key in ("key_length", "value_length"):
        value = get("attention." + key)
        if value is None:
            most = max(heads) if isinstance(heads, list) and heads else heads
            width = shape.get("embedding_length")
            if not isinstance(most, int) or isinstance(most, bool) or most < 1 or not width:
                raise GGUFError("%s.attention.%s is missing and cannot be worked out from "
                                "embedding_length / head_count" % (arch, key))
            value = width // most
        shape[key] = _count(value, "%s.attention.%s" % (arch, key))
    file_type = metadata.get("general.file_type")
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        shape["file_type"] = file_type
    return shape


def read_shape(path):
    """model_shape of the GGUF file at path (a regular file, never through a symlink)."""
    with io.BufferedReader(open_regular(path), 1024 * 1024) as stream:
        size = os.fstat(stream.fileno()).st_size
        return model_shape(read_metadata(stream, size)[1])
