# -*- coding: utf-8 -*-
# gemma-airgap: a GPU target's driver, its GPUs, and whether the default model fits one.

"""Jinja filters ``nvidia_smi_gpus`` and ``vram_fit`` (host_preflight on GPU targets).

``nvidia_smi_gpus`` reads the registered result of host_preflight's nvidia-smi task;
``vram_fit`` estimates the GPU memory the default model needs with the one formula,
plugins/module_utils/gemma_airgap_gpu.py vram_estimate (its docstring says what it counts
and where it differs from Ollama's own estimate), and words a refusal. Both return a
problem sentence rather than raising, so the preflight puts it in its one report.
"""

from __future__ import absolute_import, division, print_function

from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_gpu import (
    DEFAULT_OVERHEAD_BYTES,
    QUERY_FIELDS,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_gpu import (
    nvidia_smi_gpus as _nvidia_smi_gpus,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_gpu import (
    vram_fit as _vram_fit,
)

__metaclass__ = type


def nvidia_smi_gpus(result, timeout=None, fields=QUERY_FIELDS):
    """{"gpus", "lines", "problem"} from the nvidia-smi task's registered result."""
    return _nvidia_smi_gpus(result, fields=fields, timeout=timeout)


def vram_fit(gpus, models, model, context_length, num_parallel, kv_cache_type="f16",
             overhead_bytes=DEFAULT_OVERHEAD_BYTES, reserved_bytes=0):
    """vram_fit of gemma_airgap_gpu; a bundle.json or setting it cannot use is a problem."""
    try:
        return _vram_fit(gpus, models, model, context_length, num_parallel, kv_cache_type,
                         overhead_bytes, reserved_bytes)
    except ValueError as error:
        return {"estimate": None, "gpu": None, "fits": False, "summary": "",
                "problem": "GPU memory: cannot estimate what %s needs: %s" % (model, error)}


class FilterModule(object):
    def filters(self):
        return {"nvidia_smi_gpus": nvidia_smi_gpus, "vram_fit": vram_fit}
