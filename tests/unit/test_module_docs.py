"""Every module in plugins/modules/ documents itself in a form ansible-doc reads.

`ansible-doc bundle_manifest` once failed on invalid DOCUMENTATION YAML. Here each
module must be read by ansible-doc, its EXAMPLES must be YAML tasks that call it,
and the options it documents must be exactly the options it takes (asked of the
module itself, which names them when given one it does not know).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_module

MODULES = sorted(path.stem for path in (ROOT / "plugins" / "modules").glob("*.py"))


COLLECTION = "gemma_airgap.ollama"


def ansible_doc(module: str) -> dict:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-doc"), "-t", "module",
                          "--json", f"{COLLECTION}.{module}"], cwd=ROOT, env=env, text=True,
                         capture_output=True, check=False)
    assert out.returncode == 0, f"ansible-doc cannot read module {module}: {out.stderr}"
    return json.loads(out.stdout)[f"{COLLECTION}.{module}"]


def test_every_module_is_checked():
    assert {"bundle_manifest", "bundle_consistency", "ollama_store", "ollama_info",
            "ollama_probe"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_reads_the_module_and_its_examples_call_it(module):
    found = ansible_doc(module)
    assert found["doc"]["module"] == module
    assert found["doc"]["short_description"] and found["doc"]["description"]
    assert found["return"], f"{module} documents no RETURN values"
    examples = yaml.safe_load(found["examples"])
    assert examples, f"{module} has no EXAMPLES"
    assert all(f"{COLLECTION}.{module}" in task for task in examples), \
        f"an example of {module} does not call it by its full name"


def a_value(spec: dict):
    """Some valid value of a documented option, so only the unknown one is wrong.

    Never a short string: a no_log value is masked wherever it appears in the answer.
    """
    if spec.get("choices") and spec.get("type", "str") == "str":
        return spec["choices"][0]
    return {"path": "/nonexistent", "int": 1, "bool": False, "list": [],
            "dict": {}}.get(spec.get("type"), "a-test-value")


@pytest.mark.parametrize("module", MODULES)
def test_the_documented_options_are_the_options_the_module_takes(module):
    options = ansible_doc(module)["doc"]["options"]
    every = {name: a_value(spec) for name, spec in options.items()}
    result = run_module(module, {**every, "no_such_option_": 1})
    marker = "Supported parameters include: "
    assert marker in result["msg"], result["msg"]
    taken = result["msg"].split(marker, 1)[1].rstrip(".").split(", ")
    assert sorted(taken) == sorted(options)


@pytest.mark.parametrize("module", MODULES)
def test_the_attributes_are_documented_and_check_mode_is_what_the_module_declares(module):
    """The attributes come from plugins/doc_fragments/gemma_airgap.py: ansible-doc must find it."""
    attributes = ansible_doc(module)["doc"].get("attributes") or {}
    assert {"check_mode", "diff_mode", "idempotent"} <= set(attributes), attributes
    for name, attribute in attributes.items():
        assert attribute.get("description"), f"{module}: attribute {name} is not described"
        assert attribute.get("support") in ("full", "partial", "none", "N/A"), (module, name)
    source = (ROOT / "plugins" / "modules" / f"{module}.py").read_text()
    declares = "supports_check_mode=True" in source
    assert declares == (attributes["check_mode"]["support"] != "none"), module
