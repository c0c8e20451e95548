#!/usr/bin/env python3
"""Build a tiny random-weight Gemma 3n (text GGUF + vision mmproj GGUF) for the lab.

No Gemma 3n weights can be downloaded here, so the lab makes its own model with
the real architecture: transformers' Gemma3nForConditionalGeneration in miniature,
a small SentencePiece tokenizer with Gemma 3n's special tokens and a Gemma turn
chat template, converted by llama.cpp's own convert_hf_to_gguf.py (from the
llama-cpp-python sdist). llama.cpp's gemma3n text code and its gemma3nv
(MobileNetV5) vision code then run on it. Its answers are noise.

Run inside the tool venv that lab/tiny_gemma3n/toolvenv.sh makes (torch is not a
project dependency); the same command gives byte-identical files:

    lab/tiny_gemma3n/toolvenv.sh DIR && DIR/venv/bin/python lab/tiny_gemma3n/build.py \
        --llama-cpp DIR/llama_cpp_python-0.3.36/vendor/llama.cpp --out lab/models

Sizes llama.cpp forces (it ignores these config values): altup_num_inputs 4,
laurel_rank 64, hidden_size_per_layer_input 256; layers >= 20 share KV and the first
10 use activation sparsity, hence the E2B layout of 30 layers with 10 KV-shared.
The text width must equal the vision output width, so the MobileNetV5 tower is
built small (stem 16, stages of 16/24/32/48 channels) with a 64-wide fusion output.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path

SEED = 20251125
TEXT_WIDTH = 64
SPECIALS = ["<mask>", "[multimodal]", "<start_of_turn>", "<end_of_turn>",
            "<start_of_image>", "<start_of_audio>"]  # ids 4..9
VOCAB_TEXT = 512     # SentencePiece pieces (text), = vocab_size_per_layer_input
VOCAB = 768          # + 128 vision tokens (512..639) + 128 audio tokens (640..767)
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] -%}"
    "{%- set system = first + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "<start_of_turn>{{ role }}\n{{ system if loop.first else '' }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}<start_of_image>"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<end_of_turn>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>model\n{%- endif -%}")
WORDS = ("the sea sky light image picture cat dog house tree river stone red blue green "
         "small large bright dark a an of on in under over near far describe what is this "
         "shows there are two one many colour shape model answer question please you I we "
         "it they see look here now time day night sun moon water fire earth air").split()


def corpus(path: Path) -> None:
    rng = random.Random(SEED)
    with path.open("w") as out:
        for _ in range(4000):
            out.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) + ".\n")


def tokenizer(work: Path, model_dir: Path) -> None:
    import sentencepiece as spm

    corpus(work / "corpus.txt")
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(model_dir / "tokenizer"),
        model_type="bpe", vocab_size=VOCAB_TEXT, byte_fallback=True, add_dummy_prefix=False,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=SPECIALS,
        num_threads=1, character_coverage=1.0, minloglevel=2, seed_sentencepiece_size=10000,
        shuffle_input_sentence=False)
    (model_dir / "tokenizer.vocab").unlink()
    added = {str(i): {"content": piece, "special": True} for i, piece in
             enumerate(["<pad>", "<eos>", "<bos>", "<unk>", *SPECIALS])}
    names = {512: "<end_of_image>", 513: "<image_soft_token>", 640: "<end_of_audio>",
             641: "<audio_soft_token>"}
    for token_id in range(VOCAB_TEXT, VOCAB):
        kind = "image" if token_id < 640 else "audio"
        added[str(token_id)] = {"content": names.get(token_id, f"<{kind}_unused{token_id}>"),
                                "special": True}
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": True,
        "add_eos_token": False, "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE}, indent=1, sort_keys=True))
    (model_dir / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>"}, sort_keys=True))
    (model_dir / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessorFast", "size": {"height": 768,
                                                                       "width": 768},
        "image_seq_length": 256, "do_normalize": False, "do_rescale": True,
        "rescale_factor": 1 / 255, "resample": 2}, sort_keys=True))


def vision_tower(torch):
    """A MobileNetV5 encoder with the stock block kinds, small, fusing to TEXT_WIDTH."""
    from timm.layers import RmsNorm2d
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.mobilenetv5 import (
        _GELU,
        MobileNetV5Encoder,
        MobileNetV5MultiScaleFusionAdapter,
    )

    arch = [["er_r1_k3_s2_e4_c16"],
            ["uir_r1_a3_k5_s2_e6_c24", "uir_r1_a5_k0_s1_e4_c24"],
            ["uir_r1_a5_k5_s2_e6_c32", "mqa_r1_k3_h2_v2_s1_d16_c32", "uir_r1_a0_k0_s1_e2_c32"],
            ["uir_r1_a5_k5_s2_e6_c48", "mqa_r1_k3_h2_s1_d16_c48", "uir_r1_a0_k0_s1_e2_c48"]]
    encoder = MobileNetV5Encoder(block_args=decode_arch_def(arch), stem_size=16,
                                 round_chs_fn=partial(round_channels, multiplier=1.0),
                                 norm_layer=RmsNorm2d, act_layer=_GELU,
                                 layer_scale_init_value=1e-5)
    encoder.num_features = encoder.head_hidden_size = TEXT_WIDTH
    encoder.msfa = MobileNetV5MultiScaleFusionAdapter(
        in_chs=encoder.msfa_in_chs, out_chs=TEXT_WIDTH, output_resolution=16,
        norm_layer=RmsNorm2d, act_layer=_GELU)
    return encoder


def checkpoint(model_dir: Path) -> None:
    import torch
    from transformers import (
        Gemma3nAudioConfig,
        Gemma3nConfig,
        Gemma3nForConditionalGeneration,
        Gemma3nTextConfig,
        Gemma3nVisionConfig,
    )

    torch.manual_seed(SEED)
    layers = 30
    text = Gemma3nTextConfig(
        vocab_size=VOCAB, vocab_size_per_layer_input=VOCAB_TEXT, hidden_size=TEXT_WIDTH,
        intermediate_size=[128] * layers, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, hidden_size_per_layer_input=256,
        altup_num_inputs=4, laurel_rank=64, num_kv_shared_layers=10, sliding_window=512,
        max_position_embeddings=4096,
        layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * (layers // 5),
        activation_sparsity_pattern=[0.95] * 10 + [0.0] * (layers - 10))
    vision = Gemma3nVisionConfig(hidden_size=TEXT_WIDTH, vocab_size=128, vocab_offset=512,
                                 model_args=None)
    audio = Gemma3nAudioConfig(vocab_size=128, vocab_offset=640, hidden_size=32,
                               conf_num_attention_heads=2, conf_num_hidden_layers=1,
                               sscp_conv_channel_size=[8, 8])
    config = Gemma3nConfig(text_config=text, vision_config=vision, audio_config=audio,
                           boi_token_id=8, eoi_token_id=512, image_token_id=513,
                           boa_token_id=9, eoa_token_id=640, audio_token_id=641,
                           vision_soft_tokens_per_image=256)
    model = Gemma3nForConditionalGeneration(config)  # with the stock tower, replaced below
    torch.manual_seed(SEED + 1)
    model.model.vision_tower.timm_model = vision_tower(torch)
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)


def patch_converter() -> None:
    """The vendored converter's two Gemma 3n mmproj bugs, fixed in this process only.

    1. It tries to map the audio tower and stops at "Can not map tensor
       'model.audio_tower.subsample_conv_projection...'" (llama.cpp has no Gemma 3n
       audio anyway): the mmproj is written vision-only.
    2. It writes the MobileNetV5 blocks' layer_scale.gamma as [C], which later aborts
       llama.cpp in build_inverted_residual (GGML_ASSERT(ggml_can_repeat(b, a))): the
       blocks' gammas get the [1, C, 1, 1] shape it already gives the other gammas.
    """
    import gguf
    from conversion.base import MmprojModel
    from conversion.gemma import ConformerAudioModel
    from conversion.gemma import Gemma3nVisionAudioModel as Vision

    original_init, original_modify = Vision.__init__, Vision.modify_tensors

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.has_audio_encoder = False

    def set_gguf_parameters(self):
        MmprojModel.set_gguf_parameters(self)
        self.gguf_writer.add_clip_vision_projector_type(gguf.VisionProjectorType.GEMMA3NV)
        self.gguf_writer.add_vision_attention_layernorm_eps(
            self.hparams.get("layer_norm_eps", 1e-6))

    def modify_tensors(self, data_torch, name, bid):
        if ConformerAudioModel.is_audio_tensor(name):
            return
        if name.startswith("model.vision_tower.timm_model.blocks.") and \
                name.endswith("layer_scale.gamma"):
            yield self.custom_map(name), data_torch.reshape(1, -1, 1, 1)
            return
        yield from original_modify(self, data_torch, name, bid)

    Vision.__init__ = init
    Vision.set_gguf_parameters = set_gguf_parameters
    Vision.modify_tensors = modify_tensors


def convert(llama_cpp: Path, model_dir: Path, out: Path) -> None:
    sys.path.insert(0, str(llama_cpp))
    sys.path.insert(1, str(llama_cpp / "gguf-py"))
    import convert_hf_to_gguf

    patch_converter()
    for extra, name in (([], "gemma3n-tiny.gguf"), (["--mmproj"], "gemma3n-tiny-mmproj.gguf")):
        sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outtype", "f16", "--outfile",
                    str(out / name), *extra]
        convert_hf_to_gguf.main()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, required=True,
                        help="vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = work / "tiny-gemma3n"
        model_dir.mkdir()
        tokenizer(work, model_dir)
        checkpoint(model_dir)
        convert(args.llama_cpp, model_dir, args.out)
        shutil.rmtree(model_dir)


if __name__ == "__main__":
    main()
