"""The committed tiny Gemma 3n runs llama.cpp's real gemma3n and gemma3nv code.

Images go through llama-cpp-python's MTMDChatHandler in a subprocess: a bad mmproj
aborts the whole process (a C assert), it does not raise.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "lab" / "models"
TEXT, MMPROJ = MODELS / "gemma3n-tiny.gguf", MODELS / "gemma3n-tiny-mmproj.gguf"
TOOLS = Path(os.environ.get("GEMMA_AIRGAP_TINY_TOOLS", "/var/cache/gemma-airgap/tiny"))

CHAT = r'''
import base64, io, json, sys
from llama_cpp import Llama
from llama_cpp.llama_chat_format import MTMDChatHandler
from PIL import Image

text, mmproj, with_image = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
buffer = io.BytesIO()
Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "PNG")
uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
llm = Llama(model_path=text, n_ctx=1024, n_threads=2, verbose=False,
            chat_handler=MTMDChatHandler(clip_model_path=mmproj, verbose=False))
content = [{"type": "text", "text": "What is in the picture?"}]
if with_image:
    content.insert(0, {"type": "image_url", "image_url": {"url": uri}})
answer = llm.create_chat_completion(messages=[{"role": "user", "content": content}],
                                    max_tokens=6, temperature=0)
print(json.dumps({"usage": answer["usage"], "text": answer["choices"][0]["message"]["content"]}))
'''


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded() -> dict[str, str]:
    """lab/models/SHA256SUMS as {file name: sha256}."""
    sums = {}
    for line in (MODELS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    return sums


def test_the_committed_files_match_their_recorded_sha256():
    assert recorded() == {TEXT.name: sha256(TEXT), MMPROJ.name: sha256(MMPROJ)}


def test_llama_cpp_loads_it_as_gemma3n_and_generates_text():
    from llama_cpp import Llama

    llm = Llama(model_path=str(TEXT), n_ctx=512, n_threads=2, verbose=False)
    assert llm.metadata["general.architecture"] == "gemma3n"
    assert "<start_of_turn>" in llm.metadata["tokenizer.chat_template"]
    answer = llm.create_completion("the sea is", max_tokens=8, temperature=0)
    assert answer["usage"]["completion_tokens"] == 8


def chat(with_image: bool) -> dict:
    result = subprocess.run([sys.executable, "-c", CHAT, str(TEXT), str(MMPROJ),
                             "1" if with_image else "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_an_image_goes_through_the_gemma3nv_projector():
    plain, pictured = chat(False), chat(True)
    # MobileNetV5 + the fusion adapter give 16x16 = 256 soft tokens, framed by
    # <start_of_image> and <end_of_image>.
    added = pictured["usage"]["prompt_tokens"] - plain["usage"]["prompt_tokens"]
    assert added == 256 + 2, (plain, pictured)
    assert pictured["usage"]["completion_tokens"] == 6


def test_rebuilding_gives_byte_identical_files(tmp_path):
    """Slow and optional: needs the tool venv (lab/tiny_gemma3n/toolvenv.sh; torch)."""
    python = TOOLS / "venv" / "bin" / "python"
    converter = TOOLS / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    if not python.exists() or not converter.exists():
        pytest.skip(f"no tool venv at {TOOLS}: run lab/tiny_gemma3n/toolvenv.sh to check this")
    subprocess.run([str(python), str(ROOT / "lab" / "tiny_gemma3n" / "build.py"),
                    "--llama-cpp", str(converter), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=600)
    assert {path.name: sha256(path) for path in tmp_path.glob("*.gguf")} == recorded()
