# -*- coding: utf-8 -*-
# Shared by the gemma-airgap plugins; stdlib only (it runs on closed-network targets).
"""GPUs as nvidia-smi lists them, and the one estimate of the GPU memory a model needs.

host_preflight asks the driver with ``nvidia-smi --query-gpu=<QUERY_FIELDS>
--format=csv,noheader,nounits``; its answer is read here, and what it can go wrong with
(no driver, a driver that does not match its libraries, a hung GPU, an answer that is not
a GPU list) becomes one sentence saying what is wrong and what to do. vram_estimate is
the single formula for the GPU memory a model takes; vram_fit compares it with the
largest GPU and words the refusal.
"""

from __future__ import absolute_import, division, print_function

import re

__metaclass__ = type

# What host_preflight asks nvidia-smi for (roles/host_preflight/tasks/main.yml asks for
# exactly these, in this order: a unit test holds the two together).
QUERY_FIELDS = ("index", "name", "memory.total", "driver_version", "compute_cap")
MIB = 1024 * 1024
GIB = 1024 * MIB
# Beyond weights and KV cache: the CUDA context and runtime, which Ollama sets aside as
# 457 MiB per GPU, and the compute graph, which Ollama estimated for gemma3n at about
# 2 GiB (batch 512 over a 262144-token vocabulary, x4 for gemma3n). See vram_estimate.
DEFAULT_OVERHEAD_BYTES = 2560 * MIB
# Bytes per cached element by OLLAMA_KV_CACHE_TYPE, as a fraction: ggml's q8_0 block is
# 32 int8 values and one f16 scale (34 bytes), q4_0 32 4-bit values and a scale (18).
KV_CACHE_TYPES = {"f16": (2, 1), "q8_0": (34, 32), "q4_0": (18, 32)}
# The settings a refusal names (what a site sets in its inventory).
SETTINGS = {
    "model": "gemma_airgap_default_model",
    "context": "gemma_airgap_context_length",
    "parallel": "ollama_stack_num_parallel",
    "kv_cache_type": "ollama_stack_kv_cache_type",
    "flash_attention": "ollama_stack_flash_attention",
    "reserved": "ollama_stack_gpu_overhead",
    "offload": "host_preflight_allow_cpu_offload",
}
# An answer longer than this, or listing more GPUs, is not nvidia-smi's.
ANSWER_LIMIT = 64 * 1024
GPU_LIMIT = 64
QUOTE_LIMIT = 300

_MEMORY = re.compile(r"([0-9]{1,9})(?: ?MiB)?")
_DRIVER = re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,4}){1,3}")
_COMPUTE = re.compile(r"[0-9]{1,2}\.[0-9]{1,2}")
_INDEX = re.compile(r"[0-9]{1,4}")
# nvidia-smi's words for a value it cannot give.
_UNAVAILABLE = ("n/a", "[n/a]", "[not supported]", "[unknown error]", "[gpu is lost]",
                "[insufficient permissions]")


class GpuError(ValueError):
    """nvidia-smi's answer is not a GPU list this reader accepts; the message says why."""


def quote(text, limit=QUOTE_LIMIT):
    """Text from a target made safe to repeat in a message: one line, printable, bounded."""
    text = text if isinstance(text, str) else repr(text)
    text = " ".join("".join(c if c.isprintable() else " " for c in text[:limit * 4]).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _cell(value, field, line):
    def refuse(what):
        return GpuError('GPU line %d: %s "%s" %s' % (line, field, quote(value), what))

    if value.lower() in _UNAVAILABLE:
        raise refuse("(nvidia-smi cannot tell)")
    if field == "index":
        if not _INDEX.fullmatch(value):
            raise refuse("is not a number")
        return int(value)
    if field == "memory.total":
        found = _MEMORY.fullmatch(value)
        if not found or int(found.group(1)) == 0:
            raise refuse("is not a size in MiB")
        return int(found.group(1))
    if field == "driver_version" and not _DRIVER.fullmatch(value):
        raise refuse("is not a version")
    if field == "compute_cap" and not _COMPUTE.fullmatch(value):
        raise refuse("is not major.minor")
    if field == "name" and (not value or len(value) > 96 or not value.isprintable()):
        raise refuse("is not a GPU's name")
    return value


def parse_nvidia_smi(text, fields=QUERY_FIELDS):
    """The GPUs of nvidia-smi's CSV answer to ``--query-gpu=<fields>``.

    Takes ``--format=csv,noheader,nounits`` (what host_preflight asks for) and also plain
    ``--format=csv`` (a header line, sizes with " MiB"). Each GPU is a dict: index (its
    position when the query has no index), name, memory_total_mib, memory_total_bytes,
    driver_version, compute_cap (those asked for). GpuError names the first thing wrong.
    """
    if not isinstance(text, str):
        raise GpuError("the answer is not text")
    if len(text) > ANSWER_LIMIT:
        raise GpuError("the answer is %d bytes long, not a GPU list" % len(text))
    fields = tuple(fields)
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if lines and lines[0][1].lower().split(",")[0].strip() == fields[0]:
        lines = lines[1:]  # the header of --format=csv
    if not lines:
        raise GpuError("it lists no GPU")
    if len(lines) > GPU_LIMIT:
        raise GpuError("it lists %d lines, more GPUs than a host has" % len(lines))
    gpus = []
    for position, (number, line) in enumerate(lines):
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(fields):
            raise GpuError('line %d has %d comma-separated values, the query asked for %d '
                           '(%s): "%s"' % (number, len(cells), len(fields), ",".join(fields),
                                           quote(line)))
        values = dict((field, _cell(cells[i], field, number)) for i, field in enumerate(fields))
        gpu = {"index": values.pop("index", position)}
        if "name" in values:
            gpu["name"] = values.pop("name")
        if "memory.total" in values:
            gpu["memory_total_mib"] = values.pop("memory.total")
            gpu["memory_total_bytes"] = gpu["memory_total_mib"] * MIB
        gpu.update((field.replace(".", "_"), value) for field, value in values.items())
        gpus.append(gpu)
    return gpus


def describe_gpu(gpu):
    """One line of the preflight report for a GPU of parse_nvidia_smi."""
    parts = ["GPU %s: %s" % (gpu.get("index"), gpu.get("name", "?"))]
    if "memory_total_mib" in gpu:
        parts.append("%s (%d MiB)" % (gib(gpu["memory_total_bytes"]), gpu["memory_total_mib"]))
    if "driver_version" in gpu:
        parts.append("driver " + gpu["driver_version"])
    if "compute_cap" in gpu:
        parts.append("compute capability " + gpu["compute_cap"])
    return ", ".join(parts)


def _output(result):
    return "\n".join(str(result.get(key) or "") for key in ("stderr", "stdout", "msg")).strip()


def nvidia_smi_gpus(result, fields=QUERY_FIELDS, timeout=None):
    """What host_preflight makes of its nvidia-smi task: {"gpus", "lines", "problem"}.

    result is the registered result of running ``timeout <s> nvidia-smi --query-gpu=...``
    with failed_when: false on a host that has /dev/nvidia0 (a skipped task: no GPU, no
    problem). gpus is parse_nvidia_smi's list and lines a report line per GPU; problem is ""
    when the driver answered with a GPU list, else one sentence: what is wrong, what to do.
    """
    if not isinstance(result, dict) or result.get("skipped"):
        return {"gpus": [], "lines": [], "problem": ""}
    rc = result.get("rc")
    said = quote(_output(result)) or "nothing"
    driver = ("install the NVIDIA driver on the host (it is the site's: the bundle carries the "
              "container toolkit, not the driver), check that `nvidia-smi` lists the GPU, then "
              "run the preflight again")
    if rc == 124 or rc == 137:
        problem = ("GPU: nvidia-smi did not answer within %s s: /dev/nvidia0 exists but the "
                   "driver hangs; look for Xid errors in `dmesg` and run `nvidia-smi` on the "
                   "host, reboot it if that hangs too" % (timeout or "the allowed"))
    elif rc in (126, 127) or ("No such file or directory" in said and rc not in (0, None)):
        problem = ("GPU: /dev/nvidia0 exists but nvidia-smi is missing (%s): %s"
                   % (said, driver))
    elif "version mismatch" in said.lower():
        problem = ("GPU: the NVIDIA driver is not loaded: nvidia-smi said \"%s\" (exit %s); the "
                   "kernel module and the driver's libraries are of different versions (an "
                   "upgrade without a reboot): reboot the host" % (said, rc))
    elif "not a valid field" in said.lower():
        problem = ("GPU: the NVIDIA driver is too old to report %s: nvidia-smi said \"%s\"; "
                   "install a current driver on the host (the bundle does not carry it)"
                   % (", ".join(fields), said))
    elif rc != 0:
        problem = ("GPU: the NVIDIA driver is not loaded: nvidia-smi said \"%s\" (exit %s); %s"
                   % (said, rc, driver))
    else:
        try:
            gpus = parse_nvidia_smi(result.get("stdout", ""), fields)
            return {"gpus": gpus, "lines": [describe_gpu(g) for g in gpus], "problem": ""}
        except GpuError as error:
            problem = ("GPU: nvidia-smi's answer is not a GPU list: %s; run `nvidia-smi "
                       "--query-gpu=%s --format=csv,noheader,nounits` on the host and check its "
                       "driver" % (error, ",".join(fields)))
    return {"gpus": [], "lines": [], "problem": problem}


def _whole(value, name, least=0):
    if isinstance(value, bool):
        raise ValueError("%s is %r, not a whole number" % (name, value))
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("%s is %r, not a whole number" % (name, value)) from None
    if number != float(value) or number < least:
        raise ValueError("%s is %r, not a whole number of at least %d" % (name, value, least))
    return number


def kv_cache_type_bytes(kv_cache_type):
    """(numerator, denominator) of the bytes per cached element of an OLLAMA_KV_CACHE_TYPE."""
    kind = (kv_cache_type or "f16").lower()
    if kind not in KV_CACHE_TYPES:
        raise ValueError("KV cache type %r is not one Ollama takes (%s)"
                         % (kv_cache_type, ", ".join(sorted(KV_CACHE_TYPES))))
    return KV_CACHE_TYPES[kind]


def _per_element(kv_cache_type):
    numerator, denominator = kv_cache_type_bytes(kv_cache_type)
    return numerator / denominator


def vram_estimate(weights_bytes, shape, context_length, num_parallel, kv_cache_type="f16",
                  overhead_bytes=DEFAULT_OVERHEAD_BYTES, reserved_bytes=0):
    """The GPU memory, in bytes, that Ollama needs to hold a model wholly on one GPU.

    total = weights + KV cache + overhead + reserved, where

    - weights is the model's size as bundle.json records it (every blob of the model:
      the GGUF file, with its header and every tensor, and its small template/params);
    - KV cache = sum over the model's layers of 2 (K and V) x head_count_kv x head_dim
      x bytes per element x context_length x num_parallel; written out, per layer
      head_count_kv x (key_length + value_length) x bytes x context x parallel, which is
      the same when key_length == value_length == head_dim (Gemma 3n: 256). The shape
      (block_count, head_count_kv, key_length, value_length) comes from the GGUF header,
      recorded by prepare in bundle.json's ``gguf`` (gemma_airgap_gguf.model_shape).
      Bytes per element by OLLAMA_KV_CACHE_TYPE: f16 2, q8_0 34/32 (1.0625), q4_0 18/32
      (0.5625). Ollama gives each of its num_parallel slots a context of its own;
    - overhead is fixed (DEFAULT_OVERHEAD_BYTES, 2.5 GiB: runtime and compute graph);
    - reserved is what the site keeps free per GPU for another service
      (OLLAMA_GPU_OVERHEAD, ollama_stack_gpu_overhead).

    Without a shape (a bundle made before prepare recorded it) the KV cache is None and
    not counted. Worked example, gemma3n:e4b (35 layers, 2 K/V heads of 256) at 8192
    tokens, 1 slot, f16: 35 x 2 x (256 + 256) x 2 x 8192 x 1 = 587202560 bytes (560 MiB).

    Where Ollama differs (its estimate: fs/ggml/ggml.go GraphSize and the former
    llm/memory.go estimateGPULayers; newer releases measure the allocations instead):

    - quantised caches: Ollama counts q8_0 as 1 and q4_0 as 0.5 byte per element, leaving
      out the block scales; and it quantises the cache only with flash attention on
      (ollama_stack refuses a quantised type without it, so this estimate assumes it);
    - weights: Ollama sums the tensors it places (per layer, the output layer, any
      projector) from the GGUF tensor table; the blob sizes here are a little more;
    - layers: like Ollama for gemma3n, every layer is counted at full context. Gemma 3n's
      last shared_kv_layers reuse earlier layers' cache and most of its layers attend
      over a sliding window (Ollama counts windows for gemma3 only), so the real cache
      can be smaller: the estimate errs on the side of refusing;
    - overhead: Ollama sets aside 457 MiB per CUDA GPU (ml/device.go MinimumMemory) and
      a compute graph that depends on batch, vocabulary and context; here it is one fixed
      figure, close to Ollama's for gemma3n at batch 512 and a few thousand tokens;
    - placement: Ollama compares with each GPU's free memory at load time and can split
      a model across GPUs; vram_fit compares with the largest GPU's total memory.
    """
    weights = _whole(weights_bytes, "the model's size", 1)
    context = _whole(context_length, "context_length", 1)
    parallel = _whole(num_parallel, "num_parallel", 1)
    overhead = _whole(overhead_bytes, "overhead_bytes")
    reserved = _whole(reserved_bytes, "reserved_bytes")
    numerator, denominator = kv_cache_type_bytes(kv_cache_type)
    kv_cache = None
    if shape:
        layers = _whole(shape.get("block_count"), "block_count", 1)
        heads = shape.get("head_count_kv")
        per_layer = heads if isinstance(heads, list) else [heads] * layers
        if len(per_layer) != layers:
            raise ValueError("head_count_kv lists %d layers, block_count is %d"
                             % (len(per_layer), layers))
        width = (_whole(shape.get("key_length"), "key_length", 1)
                 + _whole(shape.get("value_length"), "value_length", 1))
        elements = sum(_whole(h, "head_count_kv") for h in per_layer) * width
        # Whole bytes, rounded up: elements x numerator / denominator per token.
        kv_cache = -(-elements * context * parallel * numerator // denominator)
    total = weights + (kv_cache or 0) + overhead + reserved
    return {"weights": weights, "kv_cache": kv_cache, "overhead": overhead,
            "reserved": reserved, "total": total, "context_length": context,
            "num_parallel": parallel, "kv_cache_type": (kv_cache_type or "f16").lower()}


def gib(count):
    return "%.1f GiB" % (count / GIB)


def _normal(name):
    name = str(name)
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _breakdown(estimate):
    parts = ["weights " + gib(estimate["weights"])]
    if estimate["kv_cache"] is not None:
        parts.append("KV cache %s for %d tokens x %d parallel at %s"
                     % (gib(estimate["kv_cache"]), estimate["context_length"],
                        estimate["num_parallel"], estimate["kv_cache_type"]))
    parts.append("overhead " + gib(estimate["overhead"]))
    if estimate["reserved"]:
        parts.append("reserved %s (%s)" % (gib(estimate["reserved"]), SETTINGS["reserved"]))
    return " + ".join(parts)


def vram_fit(gpus, models, model, context_length, num_parallel, kv_cache_type="f16",
             overhead_bytes=DEFAULT_OVERHEAD_BYTES, reserved_bytes=0):
    """Whether the default model fits the largest GPU, estimated by vram_estimate.

    gpus: nvidia_smi_gpus' list; models: bundle.json's model records (name, size, gguf);
    model: the default model's name. Returns estimate (None when the model is not in the
    bundle), gpu (the largest), fits, summary (a line for the report) and problem ("" or
    the refusal, with the numbers and the ways out).
    """
    records = dict((_normal(m.get("name")), m) for m in models or [] if isinstance(m, dict))
    record = records.get(_normal(model))
    gpu = max(gpus or [], key=lambda g: g.get("memory_total_bytes", 0), default=None)
    result = {"estimate": None, "gpu": gpu, "fits": True, "summary": "", "problem": ""}
    if gpu is None:
        return result
    if record is None:
        result.update(fits=False, problem="GPU memory: the default model %s is not in the bundle "
                      "(it has: %s); set %s to one of them"
                      % (model, ", ".join(sorted(records)) or "none", SETTINGS["model"]))
        return result

    def estimate(entry, **changes):
        args = dict(context_length=context_length, num_parallel=num_parallel,
                    kv_cache_type=kv_cache_type, overhead_bytes=overhead_bytes,
                    reserved_bytes=reserved_bytes)
        args.update(changes)
        return vram_estimate(entry.get("size"), entry.get("gguf"), **args)

    found = result["estimate"] = estimate(record)
    available = gpu["memory_total_bytes"]
    where = "GPU %s (%s, %s)" % (gpu.get("index"), gpu.get("name", "?"), gib(available))
    unknown = ("" if found["kv_cache"] is not None else
               "; KV cache not counted: bundle.json records no GGUF shape for %s (prepare the "
               "bundle again to count it)" % record.get("name"))
    result["fits"] = found["total"] <= available
    result["summary"] = "%s needs about %s of GPU memory (%s): %s %s%s" % (
        record.get("name"), gib(found["total"]), _breakdown(found),
        "fits" if result["fits"] else "does NOT fit", where, unknown)
    if result["fits"]:
        return result
    ways = []
    smaller = [name for name, entry in sorted(records.items())
               if entry is not record and estimate(entry)["total"] <= available]
    if smaller:
        ways.append("a smaller model of this bundle's as %s: %s"
                    % (SETTINGS["model"], ", ".join(smaller)))
    elif _normal(model) != "gemma3n:e2b":
        ways.append("a bundle with a smaller model (none of this one's fits), such as gemma3n:e2b")
    at_one = ""
    if found["kv_cache"] is not None and found["num_parallel"] > 1:
        at_one = "; at 1: about %s" % gib(estimate(record, num_parallel=1)["total"])
    ways.append("a lower %s (now %d%s) or %s (now %d)" % (
        SETTINGS["parallel"], found["num_parallel"], at_one, SETTINGS["context"],
        found["context_length"]))
    if found["kv_cache"] is not None:
        cheaper = [kind for kind in ("q8_0", "q4_0")
                   if _per_element(kind) < _per_element(found["kv_cache_type"])]
        if cheaper:
            ways.append("%s %s with %s: true" % (SETTINGS["kv_cache_type"], " or ".join(
                "%s (about %s)" % (kind, gib(estimate(record, kv_cache_type=kind)["total"]))
                for kind in cheaper), SETTINGS["flash_attention"]))
    ways.append("or accept that Ollama runs part of it on the CPU, much slower: %s: true"
                % SETTINGS["offload"])
    result["problem"] = ("GPU memory: %s needs about %s (%s), more than the largest GPU has, "
                         "%s%s. Options: %s" % (
                             record.get("name"), gib(found["total"]), _breakdown(found), where,
                             unknown, " ".join("(%d) %s" % (n, way)
                                               for n, way in enumerate(ways, 1))))
    return result
