"""The GGUF header reader (plugins/module_utils/gemma_airgap_gguf.py) and what prepare records.

Headers are written here byte by byte as ggml's docs/gguf.md lays them out, so each
hostile case is exactly the lie it tells: a count far beyond the file, a string longer
than the disk, a file cut short. Each is refused having read a few bytes, not the count.
"""

from __future__ import annotations

import io
import json
import struct

import pytest
from ansible_collections.gemma_airgap.ollama.plugins.module_utils import gemma_airgap_gguf as gguf
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_gguf import (
    GGUFError,
    read_metadata,
    read_shape,
)

from tests.conftest import ROOT, run_module
from tests.unit.bundle_parts import model

U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10


def text(value: str) -> bytes:
    data = value.encode()
    return struct.pack("<Q", len(data)) + data


def value(kind: int, item) -> bytes:
    if kind == STRING:
        return text(item)
    if kind == ARRAY:
        inner, items = item
        return struct.pack("<IQ", inner, len(items)) + b"".join(value(inner, i) for i in items)
    return struct.pack({U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q"}[kind], item)


def header(entries, version: int = 3, tensors: int = 0, count: int | None = None) -> bytes:
    """A GGUF header: magic, version, tensor count, metadata count, then the entries."""
    body = b"".join(text(key) + struct.pack("<I", kind) + value(kind, item)
                    for key, kind, item in entries)
    count = len(entries) if count is None else count
    return b"GGUF" + struct.pack("<IQQ", version, tensors, count) + body


def gemma3n(layers: int, shared: int, tokenizer: bool = True):
    """The metadata of a Gemma 3n GGUF as llama.cpp and Ollama write it (shape first)."""
    entries = [
        ("general.architecture", STRING, "gemma3n"),
        ("general.name", STRING, "Gemma 3n"),
        ("general.file_type", U32, 15),
        ("gemma3n.block_count", U32, layers),
        ("gemma3n.context_length", U32, 32768),
        ("gemma3n.embedding_length", U32, 2048),
        ("gemma3n.feed_forward_length", ARRAY, (U32, [16384] * layers)),
        ("gemma3n.attention.head_count", U32, 8),
        ("gemma3n.attention.head_count_kv", U32, 2),
        ("gemma3n.attention.key_length", U32, 256),
        ("gemma3n.attention.value_length", U32, 256),
        ("gemma3n.attention.sliding_window", U32, 512),
        ("gemma3n.attention.sliding_window_pattern", ARRAY, (BOOL, [True, True, True, True, False]
                                                            * (layers // 5))),
    ]
    if tokenizer:  # before the last shape key: the reader must skip a vocabulary to reach it
        tokens = ["<pad>", "<eos>", "하늘"] * 1000
        entries.append(("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)))
        entries.append(("tokenizer.ggml.scores", ARRAY, (F32, [0.0] * 3000)))
    entries.append(("gemma3n.attention.shared_kv_layers", U32, shared))
    return entries


E4B = {"architecture": "gemma3n", "block_count": 35, "context_length": 32768,
       "embedding_length": 2048, "sliding_window": 512, "shared_kv_layers": 15,
       "head_count_kv": 2, "key_length": 256, "value_length": 256, "file_type": 15}


class Counting(io.BytesIO):
    """A stream that counts the bytes handed out (seeks read nothing)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.handed = 0

    def read(self, size=-1):
        data = super().read(size)
        self.handed += len(data)
        return data


def parse(data: bytes, size: int | None = None):
    stream = Counting(data)
    try:
        return read_metadata(stream, len(data) if size is None else size), stream.handed
    except GGUFError as error:
        error.handed = stream.handed
        raise


def test_the_gemma3n_e4b_shape_is_read_past_the_tokenizer(tmp_path):
    path = tmp_path / "e4b.gguf"
    path.write_bytes(header(gemma3n(35, 15)) + b"\0" * 4096)  # the weights would follow
    assert read_shape(str(path)) == E4B


def test_e2b_and_the_reading_stops_once_the_shape_is_known():
    data = header([*gemma3n(30, 10, tokenizer=False),
                   ("tokenizer.ggml.tokens", ARRAY, (STRING, ["x"] * 50_000))])
    (version, metadata), handed = parse(data)
    assert version == 3 and metadata["gemma3n.block_count"] == 30
    assert handed < 2_000  # the 50000 tokens after the shape are never read
    assert gguf.model_shape(metadata)["shared_kv_layers"] == 10


def test_the_committed_tiny_gemma3n_is_read_as_llama_cpp_wrote_it():
    shape = read_shape(str(ROOT / "lab" / "models" / "gemma3n-tiny.gguf"))
    assert shape == {"architecture": "gemma3n", "block_count": 30, "context_length": 4096,
                     "embedding_length": 64, "sliding_window": 512, "shared_kv_layers": 10,
                     "head_count_kv": 1, "key_length": 32, "value_length": 32, "file_type": 1}


def test_lengths_default_to_embedding_over_heads_and_per_layer_kv_heads_are_kept():
    entries = [("general.architecture", STRING, "llama"), ("llama.block_count", U32, 3),
               ("llama.embedding_length", U32, 4096), ("llama.attention.head_count", U32, 32),
               ("llama.attention.head_count_kv", ARRAY, (I32, [8, 0, 8]))]
    (_version, metadata), _handed = parse(header(entries))
    shape = gguf.model_shape(metadata)
    assert shape["head_count_kv"] == [8, 0, 8]
    assert shape["key_length"] == shape["value_length"] == 128


def test_without_head_count_kv_every_head_has_its_own():
    entries = [("general.architecture", STRING, "gemma"), ("gemma.block_count", U32, 2),
               ("gemma.embedding_length", U32, 256), ("gemma.attention.head_count", U32, 4)]
    shape = gguf.model_shape(parse(header(entries))[0][1])
    assert shape["head_count_kv"] == 4 and shape["key_length"] == 64


HUGE = 1 << 62


@pytest.mark.parametrize(("data", "words"), [
    (b"GGML" + b"\0" * 20, "not a GGUF file"),
    (b"GGUF" + struct.pack("<I", 1) + b"\0" * 16, "version 1 is not one"),
    (b"GGUF" + struct.pack(">I", 3) + b"\0" * 16, "version 50331648"),  # big-endian
    (b"GGUF" + struct.pack("<IQQ", 3, 0, HUGE), "metadata entries"),
    (b"GGUF" + struct.pack("<IQQ", 3, HUGE, 1), "tensors"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", HUGE), "key of"),
    (header([])[:-4], "truncated"),
    (header([("general.architecture", STRING, "gemma3n")])[:-3], "truncated"),
    (header([("general.name", STRING, "x")])[:-1] + b"", "truncated"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + text("general.name") + struct.pack("<I", STRING)
     + struct.pack("<Q", HUGE), "over the limit"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + text("tokenizer.ggml.tokens")
     + struct.pack("<IIQ", ARRAY, STRING, HUGE), "elements, over the limit"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + text("tokenizer.ggml.scores")
     + struct.pack("<IIQ", ARRAY, F32, 1 << 24), "truncated"),  # 64 MiB announced, none there
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + text("x.y")
     + struct.pack("<IIQ", ARRAY, ARRAY, 1) + struct.pack("<IQ", U32, 1) + b"\0" * 4,
     "arrays of arrays"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + text("x.y") + struct.pack("<I", 99), "type 99"),
    (header([("gemma3n.block_count", U32, 35)], count=2), "truncated"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + text("gemma3n.attention.head_count_kv")
     + struct.pack("<IIQ", ARRAY, U32, 5000), "more than a model has layers"),
], ids=lambda case: case if isinstance(case, str) else None)
def test_a_hostile_header_is_refused_having_read_next_to_nothing(data, words):
    with pytest.raises(GGUFError, match=words) as refused:
        parse(data)
    assert refused.value.handed <= 128  # the header's own bytes, never what it announces


def test_a_header_past_the_limit_is_refused_before_the_limit(monkeypatch):
    monkeypatch.setattr(gguf, "HEADER_LIMIT", 4096)
    data = header([("tokenizer.ggml.tokens", ARRAY, (STRING, ["token"] * 2000))])
    with pytest.raises(GGUFError, match="runs past 4096 bytes") as refused:
        parse(data)
    assert refused.value.handed <= 4096


@pytest.mark.parametrize(("entries", "words"), [
    ([("general.architecture", STRING, "../x")], "not an architecture name"),
    ([("general.architecture", STRING, "gemma3n")], "gemma3n.block_count is missing"),
    ([("general.architecture", STRING, "gemma3n"), ("gemma3n.block_count", BOOL, True)],
     "not a plausible count"),
    ([("general.architecture", STRING, "gemma3n"), ("gemma3n.block_count", U64, 1 << 40)],
     "not a plausible count"),
    ([("general.architecture", STRING, "gemma3n"), ("gemma3n.block_count", U32, 3),
      ("gemma3n.attention.head_count_kv", ARRAY, (U32, [1, 1]))], "lists 2 layers"),
    ([("general.architecture", STRING, "gemma3n"), ("gemma3n.block_count", U32, 3),
      ("gemma3n.attention.head_count_kv", U32, 2)], "cannot be worked out"),
])
def test_a_shape_that_is_not_a_model_is_refused_naming_the_key(entries, words):
    with pytest.raises(GGUFError, match=words):
        gguf.model_shape(parse(header(entries))[0][1])


def test_a_symlink_is_never_followed(tmp_path):
    real = tmp_path / "real.gguf"
    real.write_bytes(header(gemma3n(35, 15)))
    (tmp_path / "link.gguf").symlink_to(real)
    with pytest.raises(ValueError, match="symlink"):
        read_shape(str(tmp_path / "link.gguf"))


def test_ollama_store_records_the_shape_in_each_model_record(tmp_path):
    source = tmp_path / "src"
    model(source, ("registry.ollama.ai", "library", "gemma3n", "e4b"),
          header(gemma3n(35, 15)) + b"W" * 1000)
    model(source, ("registry.ollama.ai", "library", "gemma3n", "e2b"),
          header(gemma3n(30, 10)) + b"w" * 1000)
    model(source, ("registry.ollama.ai", "lab", "forged", "v1"),
          b"GGUF" + struct.pack("<IQQ", 3, 0, HUGE))
    result = run_module("ollama_store", {"src": str(source), "dest": str(tmp_path / "dest")})
    assert result.get("failed") is not True, result.get("msg")
    records = {m["name"]: m for m in result["models"]}
    assert records["gemma3n:e4b"]["gguf"] == E4B
    assert records["gemma3n:e2b"]["gguf"]["block_count"] == 30
    forged = records["lab/forged:v1"]
    assert "gguf" not in forged and "metadata entries" in forged["gguf_problem"]
    json.dumps(result["models"])  # what bundle.json keeps
