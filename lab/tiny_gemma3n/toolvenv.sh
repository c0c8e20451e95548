#!/bin/sh
# The throwaway tool venv that build.py runs in, plus llama.cpp's converter.
# torch is not a project dependency: the GGUFs it makes are committed (lab/models).
#
#   lab/tiny_gemma3n/toolvenv.sh [DIR]      (default /var/cache/gemma-airgap/tiny)
#
# Traps met here: timm pulls torchvision, and the torchvision that pip
# finds beside the CPU torch is a CUDA build whose import fails ("operator
# torchvision::nms does not exist"); its two fake-kernel registrations are made
# conditional. sentencepiece 0.2.0, because newer ones need protobuf >= 5 and the
# converter pins < 5.
set -eu
dir=${1:-/var/cache/gemma-airgap/tiny}
mkdir -p "$dir"
if [ ! -x "$dir/venv/bin/python" ]; then
  python3 -m venv "$dir/venv"
fi
pip="$dir/venv/bin/pip"
"$pip" install --disable-pip-version-check -q torch==2.13.0 torchvision==0.28.0 \
  transformers==4.57.6 tokenizers==0.22.2 timm==1.0.31 safetensors==0.8.0 \
  sentencepiece==0.2.0 protobuf==4.25.9 numpy==2.4.6 pillow==13.0.0
"$dir/venv/bin/python" - <<'PY'
import importlib.util, pathlib
meta = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0]) / "_meta_registrations.py"
text = meta.read_text()
for op in ("nms", "qnms"):
    text = text.replace(f'@torch.library.register_fake("torchvision::{op}")',
                        f'@(torch.library.register_fake("torchvision::{op}") '
                        'if torchvision.extension._has_ops() else (lambda fn: fn))')
meta.write_text(text)
PY
"$dir/venv/bin/python" -c "import timm, transformers, sentencepiece"
if [ ! -f "$dir/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  "$pip" download --disable-pip-version-check -q --no-deps --no-binary :all: \
    llama-cpp-python==0.3.36 -d "$dir"
  tar -xzf "$dir/llama_cpp_python-0.3.36.tar.gz" -C "$dir"
fi
echo "tool venv ready: $dir/venv/bin/python lab/tiny_gemma3n/build.py --llama-cpp $dir/llama_cpp_python-0.3.36/vendor/llama.cpp --out lab/models"
