#!/usr/bin/python
# -*- coding: utf-8 -*-
# gemma-airgap: what an Ollama server runs, checked against what was deployed.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ollama_info
short_description: Read an Ollama server's version, models and loaded models, and check them
description:
  - Queries C(/api/version), C(/api/tags), C(/api/show) for each model and C(/api/ps).
  - With O(expected_models), fails unless every expected model is present, with the
    expected manifest digest when one is given (the digest C(/api/tags) reports is the
    sha256 of the model's manifest, as recorded in the bundle's C(bundle.json)).
  - With O(min_version), fails when the server is older.
  - With O(on_gpu), fails unless each of those models is loaded (C(/api/ps)) with part of
    it in GPU memory (C(size_vram) > 0). On a GPU host, a model wholly in system memory
    means Ollama found no usable GPU. A model split between GPU and CPU passes, and
    RV(gpu) says how much of it is on the GPU.
  - Read-only; never changes anything.
version_added: "0.1.0"
author: gemma-airgap developers (@gemma-airgap)
options:
  url:
    description: Base URL of the Ollama API.
    type: str
    default: http://127.0.0.1:11434
  expected_models:
    description:
      - Models that must be present; each a name, or a dict with name and digest.
      - C(manifest_digest) is accepted for digest, so bundle.json's model records can be
        passed as they are.
    type: list
    elements: raw
    default: []
  min_version:
    description: Oldest acceptable server version (gemma3n needs 0.9.3).
    type: str
  on_gpu:
    description:
      - Models that must be loaded and (at least partly) in GPU memory, for GPU hosts.
      - Run after a request to the model (the health role runs it after its probes), so
        that it is loaded.
    type: list
    elements: str
    default: []
  wait:
    description: Seconds to keep retrying while the server does not answer yet.
    type: int
    default: 0
  timeout:
    description: Seconds for each HTTP request.
    type: int
    default: 30
  hint:
    description: Appended to failure messages (e.g. the command that shows the server's logs).
    type: str
    default: ""
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
requirements:
  - Python standard library only.
seealso:
  - module: gemma_airgap.ollama.ollama_probe
"""

EXAMPLES = r"""
- name: Check that the deployed models are served, with the bundle's digests
  gemma_airgap.ollama.ollama_info:
    url: http://172.30.0.2:11434
    expected_models:
      - {name: gemma3n:e4b, digest: 8d1b3c...}
    min_version: "0.9.3"
    wait: 60

- name: On a GPU host, check the default model runs on the GPU (after a request loaded it)
  gemma_airgap.ollama.ollama_info:
    url: http://172.30.0.2:11434
    on_gpu: [gemma3n:e4b]
"""

RETURN = r"""
version:
  description: The server's version.
  returned: always
  type: str
  sample: 0.12.6
models:
  description: Every model with its digest, size, details and capabilities.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "gemma3n:e4b", "digest": "8d1b...", "size": 7547579000,
            "capabilities": ["completion"], "details": {"family": "gemma3n"}}]
loaded:
  description: Models loaded in memory (C(/api/ps)), with expiry, size and the bytes in GPU memory.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "gemma3n:e4b", "size": 8200000000, "size_vram": 8200000000,
            "expires_at": "2318-01-01T00:00:00Z", "context_length": 8192}]
gpu:
  description: Each loaded model of O(on_gpu), with its size, bytes in GPU memory and their share.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "gemma3n:e4b", "size": 8200000000, "size_vram": 8200000000, "percent": 100,
            "summary": "gemma3n:e4b: 100% in GPU memory (8200000000 of 8200000000 bytes)"}]
missing:
  description: Expected models the server does not have.
  returned: always
  type: list
  elements: str
mismatched:
  description: Expected models present with another digest.
  returned: always
  type: list
  elements: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_http import (
    ApiError,
    OllamaClient,
)


def version_tuple(text):
    parts = []
    for piece in str(text).split("-", maxsplit=1)[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def normalise(name):
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else name + ":latest"


def gather(client, wait):
    deadline = time.monotonic() + wait
    while True:
        try:
            version = client.get("/api/version").get("version", "")
            break
        except ApiError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1)
    models = []
    for entry in client.get("/api/tags").get("models", []):
        shown = client.post("/api/show", {"model": entry["name"]})
        models.append({
            "name": entry["name"],
            "digest": entry.get("digest", ""),
            "size": entry.get("size", 0),
            "details": entry.get("details", {}),
            "capabilities": shown.get("capabilities", []),
            "context_length": next((v for k, v in shown.get("model_info", {}).items()
                                    if k.endswith(".context_length")), None),
        })
    loaded = [{"name": m.get("name"), "size": m.get("size"), "size_vram": m.get("size_vram"),
               "expires_at": m.get("expires_at"), "context_length": m.get("context_length")}
              for m in client.get("/api/ps").get("models", [])]
    return version, models, loaded


def compare(models, expected):
    by_name = dict((normalise(m["name"]), m) for m in models)
    missing, mismatched = [], []
    for item in expected:
        if isinstance(item, str):
            name, digest = item, None
        else:
            name, digest = item["name"], item.get("digest") or item.get("manifest_digest")
        found = by_name.get(normalise(name))
        if found is None:
            missing.append(name)
        elif digest and found["digest"] != digest:
            mismatched.append({"name": name, "expected": digest, "actual": found["digest"]})
    return missing, mismatched


def _bytes(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def gpu_check(loaded, names):
    """(what each model has in GPU memory, problems) for the models that must be on the GPU."""
    by_name = dict((normalise(str(m.get("name"))), m) for m in loaded)
    found, problems = [], []
    for name in names:
        entry = by_name.get(normalise(name))
        if entry is None:
            problems.append(
                "model %s is not loaded (/api/ps lists: %s), so where it runs cannot be checked; "
                "a request to it should have loaded it: is OLLAMA_KEEP_ALIVE 0?"
                % (name, ", ".join(str(m.get("name")) for m in loaded) or "none"))
            continue
        size, vram = _bytes(entry.get("size")), _bytes(entry.get("size_vram"))
        percent = int(100 * vram / size) if size else 0
        found.append({"name": name, "size": size, "size_vram": vram, "percent": percent,
                      "summary": "%s: %d%% in GPU memory (%d of %d bytes)"
                                 % (name, percent, vram, size)})
        if vram == 0:
            problems.append(
                "the model runs on the CPU: %s is loaded with 0 of its %d bytes in GPU memory "
                "(/api/ps size_vram 0), so Ollama found no GPU it can use. Check that the host's "
                "driver works (nvidia-smi), that the Ollama container was given the GPU (the "
                "NVIDIA container toolkit: the nvidia_toolkit role; `docker exec <ollama> "
                "nvidia-smi`), and what Ollama's log says at start about the GPU it found"
                % (name, size))
    return found, problems


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", default="http://127.0.0.1:11434"),
            expected_models=dict(type="list", elements="raw", default=[]),
            min_version=dict(type="str"),
            on_gpu=dict(type="list", elements="str", default=[]),
            wait=dict(type="int", default=0),
            timeout=dict(type="int", default=30),
            hint=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    params = module.params
    hint = (" " + params["hint"]) if params["hint"] else ""
    client = OllamaClient(params["url"], timeout=params["timeout"])
    try:
        version, models, loaded = gather(client, params["wait"])
    except ApiError as error:
        module.fail_json(msg="Ollama is not answering: %s.%s" % (error, hint))
    missing, mismatched = compare(models, params["expected_models"])
    on_gpu, gpu_problems = gpu_check(loaded, params["on_gpu"])
    result = dict(changed=False, version=version, models=models, loaded=loaded,
                  missing=missing, mismatched=mismatched, gpu=on_gpu)
    problems = []
    if params["min_version"] and version_tuple(version) < version_tuple(params["min_version"]):
        problems.append("Ollama %s is older than the required %s"
                        % (version, params["min_version"]))
    if missing:
        problems.append("models missing: %s (present: %s)" % (
            ", ".join(missing), ", ".join(m["name"] for m in models) or "none"))
    for item in mismatched:
        problems.append("model %s has digest %s, the bundle says %s" % (
            item["name"], item["actual"], item["expected"]))
    problems += gpu_problems
    if problems:
        module.fail_json(msg="Ollama at %s: %s.%s" % (params["url"], "; ".join(problems), hint),
                         **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
