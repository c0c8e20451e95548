"""Read a GGUF file's metadata and tensor table (stdlib only).

Enough of the format for what Ollama reports about a model: its architecture,
parameter count, file type and the key/value metadata shown by /api/show.
Large arrays (the tokenizer's vocabulary) are skipped, not kept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

MAGIC = b"GGUF"

# value type -> struct format of a scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays longer than this are skipped (the tokenizer's tokens, scores, merges).
_KEEP_ARRAY = 64

# llama.cpp's general.file_type values, as Ollama names them.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}


class GGUFError(ValueError):
    """The file is not a GGUF file we can read."""


# ggml's tensor type ids, as Ollama names them in /api/show "tensors".
TENSOR_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}


@dataclass
class GGUFInfo:
    version: int
    metadata: dict = field(default_factory=dict)
    parameter_count: int = 0
    tensors: list = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def file_type(self) -> str:
        value = self.metadata.get("general.file_type")
        return FILE_TYPES.get(value, "unknown") if value is not None else "unknown"

    @property
    def is_projector(self) -> bool:
        return self.architecture == "clip" or self.metadata.get("general.type") == "mmproj"

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if value is not None else None

    @property
    def parameter_size(self) -> str:
        return human_count(self.parameter_count)

    def kv_bytes_per_token(self) -> int:
        """f16 K and V bytes one token takes in every layer (0 when the metadata is silent)."""
        arch, meta = self.architecture, self.metadata
        layers = meta.get(f"{arch}.block_count")
        heads = meta.get(f"{arch}.attention.head_count")
        kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
        embedding = meta.get(f"{arch}.embedding_length")
        if not layers or not heads or kv_heads is None or not embedding:
            return 0
        key = meta.get(f"{arch}.attention.key_length") or embedding // heads
        value = meta.get(f"{arch}.attention.value_length") or embedding // heads
        per_layer = kv_heads if isinstance(kv_heads, list) else [kv_heads] * layers
        return sum(2 * count * (key + value) for count in per_layer[:layers])


def human_count(count: int) -> str:
    """Format a parameter count the way Ollama shows it (268.10M, 4.3B)."""
    if count >= 1_000_000_000:
        return f"{count / 1e9:.1f}B"
    if count >= 1_000_000:
        return f"{count / 1e6:.2f}M"
    if count >= 1_000:
        return f"{count / 1e3:.2f}K"
    return str(count)


def _read(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF file")
    return data


def _unpack(stream: BinaryIO, fmt: str):
    return struct.unpack(fmt, _read(stream, struct.calcsize(fmt)))[0]


def _string(stream: BinaryIO) -> str:
    length = _unpack(stream, "<Q")
    if length > 1 << 30:
        raise GGUFError("implausible string length in GGUF metadata")
    return _read(stream, length).decode("utf-8", errors="replace")


def _value(stream: BinaryIO, kind: int, keep_arrays: int | None):
    if kind in _SCALARS:
        return _unpack(stream, _SCALARS[kind])
    if kind == _STRING:
        return _string(stream)
    if kind == _ARRAY:
        item_kind = _unpack(stream, "<I")
        count = _unpack(stream, "<Q")
        if keep_arrays is None or count <= keep_arrays:
            return [_value(stream, item_kind, keep_arrays) for _ in range(count)]
        if item_kind in _SCALARS:
            stream.seek(struct.calcsize(_SCALARS[item_kind]) * count, 1)
        else:
            for _ in range(count):
                _value(stream, item_kind, 0)
        return []  # as Ollama's /api/show empties arrays longer than it shows
    raise GGUFError(f"unknown GGUF value type {kind}")


def read_gguf(path, keep_arrays: int | None = _KEEP_ARRAY, tensors: bool = False) -> GGUFInfo:
    """Parse the header, metadata and tensor shapes of a GGUF file.

    Arrays longer than `keep_arrays` come back empty (None keeps them all);
    `tensors` also lists each tensor's name, type and shape.
    """
    with open(path, "rb") as stream:
        if stream.read(4) != MAGIC:
            raise GGUFError(f"{path} is not a GGUF file (bad magic)")
        version = _unpack(stream, "<I")
        if version < 2:
            raise GGUFError(f"GGUF version {version} is too old")
        tensor_count = _unpack(stream, "<Q")
        kv_count = _unpack(stream, "<Q")
        info = GGUFInfo(version=version)
        for _ in range(kv_count):
            key = _string(stream)
            info.metadata[key] = _value(stream, _unpack(stream, "<I"), keep_arrays)
        for _ in range(tensor_count):
            name = _string(stream)
            dims = _unpack(stream, "<I")
            shape = [_unpack(stream, "<Q") for _ in range(dims)]
            kind = _unpack(stream, "<I")
            _unpack(stream, "<Q")  # offset
            elements = 1
            for size in shape:
                elements *= size
            info.parameter_count += elements
            if tensors:
                info.tensors.append({"name": name, "type": TENSOR_TYPES.get(kind, str(kind)),
                                     "shape": shape})
    return info
