"""GPU targets: nvidia-smi's answer read, and the one estimate of the GPU memory a model needs.

plugins/module_utils/gemma_airgap_gpu.py and its filters (plugins/filter/gpu_fit.py), as
host_preflight uses them. The estimates are worked out by hand here from the models' shapes:
Gemma 3n e4b has 35 layers and e2b 30, each with 2 K/V heads of 256 (key and value).
"""

from __future__ import annotations

import re

import pytest
import yaml
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_gpu import (
    DEFAULT_OVERHEAD_BYTES,
    QUERY_FIELDS,
    GpuError,
    parse_nvidia_smi,
    vram_estimate,
)
from gpu_fit import nvidia_smi_gpus, vram_fit

from tests.conftest import ROOT

MIB, GIB = 1 << 20, 1 << 30
# What a real H200 prints for
# nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
H200 = "NVIDIA H200, 143771 MiB, 580.159.04, 9.0"
H200_FIELDS = ("name", "memory.total", "driver_version", "compute_cap")
TWO = ("0, NVIDIA H200, 143771, 580.159.04, 9.0\n"
       "1, NVIDIA A100-SXM4-80GB, 81920, 580.159.04, 8.0\n")
E4B_SHAPE = {"architecture": "gemma3n", "block_count": 35, "head_count_kv": 2,
             "key_length": 256, "value_length": 256}
E2B_SHAPE = dict(E4B_SHAPE, block_count=30)
E4B = {"name": "gemma3n:e4b", "size": 7_547_579_000, "gguf": E4B_SHAPE}
E2B = {"name": "gemma3n:e2b", "size": 5_621_000_000, "gguf": E2B_SHAPE}


def answer(stdout="", stderr="", rc=0, **more):
    return {"rc": rc, "stdout": stdout, "stderr": stderr, **more}


def test_the_h200_fixture_line_is_read_as_given():
    gpu, = parse_nvidia_smi(H200, H200_FIELDS)
    assert gpu == {"index": 0, "name": "NVIDIA H200", "memory_total_mib": 143771,
                   "memory_total_bytes": 143771 * MIB, "driver_version": "580.159.04",
                   "compute_cap": "9.0"}
    # --format=csv prints a header first
    header = "name, memory.total [MiB], driver_version, compute_cap\n"
    assert parse_nvidia_smi(header + H200 + "\n", H200_FIELDS) == [gpu]


def test_the_h200_as_host_preflight_asks_for_it():
    result = nvidia_smi_gpus(answer("0, NVIDIA H200, 143771, 580.159.04, 9.0\n"))
    assert result["problem"] == ""
    assert result["gpus"][0]["memory_total_bytes"] == 143771 * MIB
    assert result["lines"] == ["GPU 0: NVIDIA H200, 140.4 GiB (143771 MiB), driver 580.159.04, "
                               "compute capability 9.0"]


def test_two_gpus_are_both_listed_and_the_largest_is_the_one_compared():
    result = nvidia_smi_gpus(answer(TWO))
    assert [(g["index"], g["name"], g["memory_total_mib"]) for g in result["gpus"]] == [
        (0, "NVIDIA H200", 143771), (1, "NVIDIA A100-SXM4-80GB", 81920)]
    fit = vram_fit(list(reversed(result["gpus"])), [E4B], "gemma3n:e4b", 8192, 1)
    assert fit["gpu"]["index"] == 0 and fit["fits"]


def test_a_skipped_task_is_no_gpu_and_no_problem():
    assert nvidia_smi_gpus({"skipped": True, "changed": False}) == {
        "gpus": [], "lines": [], "problem": ""}


NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.\n")


@pytest.mark.parametrize(("result", "words"), [
    (answer(NO_DRIVER, rc=9), r"^GPU: the NVIDIA driver is not loaded: nvidia-smi said "
                              r"\"NVIDIA-SMI has failed because it couldn't communicate.*"
                              r"\(exit 9\); install the NVIDIA driver on the host"),
    (answer(stderr="timeout: failed to run command 'nvidia-smi': No such file or directory",
            rc=127), r"^GPU: /dev/nvidia0 exists but nvidia-smi is missing .*install the NVIDIA"),
    (answer(rc=2, failed=True, msg="[Errno 2] No such file or directory: b'timeout'"),
     r"nvidia-smi is missing"),
    (answer(stderr="Failed to initialize NVML: Driver/library version mismatch\n", rc=18),
     r"different versions .*reboot the host"),
    (answer(rc=124), r"did not answer within 20 s.*Xid errors"),
    (answer(rc=137), r"did not answer within 20 s"),
    (answer('Field "compute_cap" is not a valid field to query.\n', rc=2), r"too old to report"),
    (answer("No devices were found\n", rc=6),
     r"not loaded: nvidia-smi said \"No devices were found\""),
    (answer(""), r"not a GPU list: it lists no GPU"),
    (answer("\x1b[31mgarbage\x00\x07 here\n"), r"not a GPU list: line 1 has 1 comma-separated"),
    (answer("0, NVIDIA H200, [N/A], 580.159.04, 9.0"), r"memory.total \"\[N/A\]\" \(nvidia-smi"),
    (answer("0, NVIDIA H200, -1, 580.159.04, 9.0"), r"memory.total \"-1\" is not a size"),
    (answer("0, NVIDIA H200, 0, 580.159.04, 9.0"), r"memory.total \"0\" is not a size"),
    (answer("0, NVIDIA H200, 99999999999, 580.159.04, 9.0"), r"is not a size"),
    (answer("x, NVIDIA H200, 143771, 580.159.04, 9.0"), r"index \"x\" is not a number"),
    (answer("0, NVIDIA H200, 143771, 580.159.04; rm -rf /, 9.0"),
     r"driver_version .* not a version"),
    (answer("0, NVIDIA H200, 143771, 580.159.04, nine"), r"compute_cap \"nine\" is not"),
    (answer("0, , 143771, 580.159.04, 9.0"), r"name \"\" is not a GPU's name"),
    (answer("0, NVIDIA H200, 143771, 580.159.04, 9.0, extra"), r"6 comma-separated values"),
    (answer("0, NVIDIA H200, 143771, 580.159.04, 9.0\n" * 100), r"100 lines"),
    (answer("x" * 100_000), r"100000 bytes long"),
    (answer(b"\xff\xfe".decode("latin-1") * 10), r"not a GPU list"),
], ids=lambda case: None)
def test_a_failing_or_hostile_answer_is_one_clear_bounded_problem(result, words):
    found = nvidia_smi_gpus(result, timeout=20)
    assert found["gpus"] == []
    assert re.search(words, found["problem"]), found["problem"]
    assert len(found["problem"]) < 1200 and found["problem"].isprintable()


def test_parse_names_its_refusal():
    with pytest.raises(GpuError, match="it lists no GPU"):
        parse_nvidia_smi("\n\n")
    with pytest.raises(GpuError, match="not text"):
        parse_nvidia_smi(None)


def test_host_preflight_asks_for_exactly_the_fields_the_parser_reads():
    tasks = yaml.safe_load((ROOT / "roles/host_preflight/tasks/main.yml").read_text())
    task = next(t for t in tasks if t["name"] == "Ask the NVIDIA driver for its GPUs")
    argv = task["ansible.builtin.command"]["argv"]
    assert argv[:2] == ["timeout", "--kill-after=5"] and "nvidia-smi" in argv
    assert "--query-gpu=" + ",".join(QUERY_FIELDS) in argv
    assert "--format=csv,noheader,nounits" in argv
    defaults = yaml.safe_load((ROOT / "roles/host_preflight/defaults/main.yml").read_text())
    assert defaults["host_preflight_gpu_overhead_bytes"] == DEFAULT_OVERHEAD_BYTES
    assert defaults["host_preflight_allow_cpu_offload"] is False
    specs = yaml.safe_load((ROOT / "roles/host_preflight/meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    for name in ("host_preflight_allow_cpu_offload", "host_preflight_gpu_overhead_bytes",
                 "host_preflight_nvidia_smi_timeout"):
        assert options[name]["default"] == defaults[name]


# The KV cache by hand: layers x K/V heads x (key + value length) x bytes x context x parallel.
E4B_KV_F16 = 35 * 2 * (256 + 256) * 2 * 8192 * 1
E2B_KV_F16 = 30 * 2 * (256 + 256) * 2 * 8192 * 1


def test_the_e4b_and_e2b_estimates_worked_out_by_hand():
    assert E4B_KV_F16 == 587_202_560  # 560 MiB
    assert E2B_KV_F16 == 503_316_480  # 480 MiB
    e4b = vram_estimate(E4B["size"], E4B_SHAPE, 8192, 1)
    assert e4b["kv_cache"] == E4B_KV_F16
    assert e4b["overhead"] == 2560 * MIB
    assert e4b["total"] == 7_547_579_000 + 587_202_560 + 2_684_354_560 == 10_819_136_120
    e2b = vram_estimate(E2B["size"], E2B_SHAPE, 8192, 1)
    assert e2b["total"] == 5_621_000_000 + 503_316_480 + 2_684_354_560


def test_parallel_context_cache_type_and_the_reserved_share_count_as_they_should():
    # 4 slots of 32768 tokens: 35 x 2 x 512 x 2 x 32768 x 4 bytes = 8.75 GiB
    assert vram_estimate(1, E4B_SHAPE, 32768, 4)["kv_cache"] == 35 * 2 * 512 * 2 * 32768 * 4
    # q8_0: 34 bytes per 32 elements; q4_0: 18 per 32 (ggml's blocks, scales included)
    elements = 35 * 2 * 512 * 8192 * 4
    assert vram_estimate(1, E4B_SHAPE, 8192, 4, "q8_0")["kv_cache"] == elements * 34 // 32
    assert vram_estimate(1, E4B_SHAPE, 8192, 4, "q4_0")["kv_cache"] == elements * 18 // 32
    assert elements * 34 // 32 == 1_247_805_440
    found = vram_estimate(100, E4B_SHAPE, 8192, 1, overhead_bytes=10, reserved_bytes=12 * GIB)
    assert found["total"] == 100 + E4B_KV_F16 + 10 + 12 * GIB


def test_per_layer_kv_heads_are_summed_and_a_missing_shape_counts_no_cache():
    shape = {"block_count": 3, "head_count_kv": [8, 0, 8], "key_length": 128, "value_length": 128}
    assert vram_estimate(1, shape, 1000, 1)["kv_cache"] == (8 + 0 + 8) * 256 * 2 * 1000
    bare = vram_estimate(1000, None, 8192, 1, overhead_bytes=0)
    assert bare["kv_cache"] is None and bare["total"] == 1000


@pytest.mark.parametrize(("args", "words"), [
    ((0, E4B_SHAPE, 8192, 1), "the model's size"),
    ((1, E4B_SHAPE, 0, 1), "context_length"),
    ((1, E4B_SHAPE, 8192, "many"), "num_parallel"),
    ((1, E4B_SHAPE, 8192, 1, "q5_1"), "not one Ollama takes"),
    ((1, dict(E4B_SHAPE, block_count=True), 8192, 1), "block_count"),
    ((1, dict(E4B_SHAPE, head_count_kv=[1, 2]), 8192, 1), "lists 2 layers"),
])
def test_values_that_are_not_numbers_are_refused(args, words):
    with pytest.raises(ValueError, match=words):
        vram_estimate(*args)


H200_GPU = parse_nvidia_smi(H200, H200_FIELDS)
SMALL = [{"index": 0, "name": "NVIDIA GeForce RTX 4060", "memory_total_mib": 8188,
          "memory_total_bytes": 8188 * MIB}]


def test_e4b_fits_an_h200_and_says_so():
    fit = vram_fit(H200_GPU, [E4B, E2B], "gemma3n:e4b", 8192, 1)
    assert fit["fits"] and fit["problem"] == ""
    assert fit["summary"] == (
        "gemma3n:e4b needs about 10.1 GiB of GPU memory (weights 7.0 GiB + KV cache 0.5 GiB for "
        "8192 tokens x 1 parallel at f16 + overhead 2.5 GiB): fits GPU 0 (NVIDIA H200, 140.4 GiB)")


def test_a_model_too_big_for_the_gpu_is_refused_with_the_numbers_and_the_ways_out():
    fit = vram_fit(SMALL, [E4B, E2B], "gemma3n:e4b", 8192, 4)
    assert not fit["fits"]
    problem = fit["problem"]
    assert problem.startswith("GPU memory: gemma3n:e4b needs about 11.7 GiB (weights 7.0 GiB + "
                              "KV cache 2.2 GiB for 8192 tokens x 4 parallel at f16 + overhead "
                              "2.5 GiB), more than the largest GPU has, GPU 0 (NVIDIA GeForce "
                              "RTX 4060, 8.0 GiB)")
    assert "ollama_stack_num_parallel (now 4; at 1: about 10.1 GiB)" in problem
    assert "gemma_airgap_context_length (now 8192)" in problem
    assert "ollama_stack_kv_cache_type q8_0 (about 10.7 GiB) or q4_0" in problem
    assert "ollama_stack_flash_attention: true" in problem
    assert "host_preflight_allow_cpu_offload: true" in problem
    # e2b does not fit 8 GiB either at these settings: no smaller model of this bundle fits
    assert "a bundle with a smaller model (none of this one's fits), such as gemma3n:e2b" in problem


def test_a_smaller_model_of_the_bundle_that_fits_is_named():
    roomy = [dict(SMALL[0], memory_total_mib=10240, memory_total_bytes=10 * GIB)]
    fit = vram_fit(roomy, [E4B, E2B], "gemma3n:e4b", 8192, 1)
    assert not fit["fits"]
    assert ("a smaller model of this bundle's as gemma_airgap_default_model: gemma3n:e2b"
            in fit["problem"])


def test_an_old_bundle_without_shapes_is_estimated_without_the_cache_and_says_so():
    old = {"name": "gemma3n:e4b", "size": 7_547_579_000}
    fit = vram_fit(H200_GPU, [old], "gemma3n:e4b", 8192, 1)
    assert fit["fits"] and fit["estimate"]["kv_cache"] is None
    assert ("KV cache not counted: bundle.json records no GGUF shape for gemma3n:e4b"
            in fit["summary"])


def test_a_default_model_the_bundle_lacks_and_bad_records_are_problems_not_crashes():
    fit = vram_fit(H200_GPU, [E4B], "gemma3n:e2b", 8192, 1)
    assert fit["problem"] == (
        "GPU memory: the default model gemma3n:e2b is not in the bundle (it has: gemma3n:e4b); "
        "set gemma_airgap_default_model to one of them")
    fit = vram_fit(H200_GPU, [{"name": "gemma3n:e4b", "size": "big"}], "gemma3n:e4b", 8192, 1)
    assert fit["problem"].startswith("GPU memory: cannot estimate what gemma3n:e4b needs: ")
    assert vram_fit([], [E4B], "gemma3n:e4b", 8192, 1)["problem"] == ""  # no GPU, no check
    # a name without a tag is Ollama's :latest
    assert vram_fit(H200_GPU, [dict(E4B, name="lab/m:latest")], "lab/m", 8192, 1)["fits"]
