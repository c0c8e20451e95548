"""prepare's check of bundle_models parameters: Ollama's option types, in Ollama's words."""

import subprocess
import sys
from pathlib import Path

import pytest

from ollama_options import KNOWN, ollama_option_problems
from tests.conftest import ROOT


@pytest.mark.parametrize(("parameters", "problem"), [
    ({"stop": "<end_of_turn>"}, 'option "stop" must be of type array'),
    ({"stop": ["a", 1]}, 'option "stop" must be of an array of strings'),
    ({"num_ctx": "8192"}, 'option "num_ctx" must be of type integer'),
    ({"num_ctx": True}, 'option "num_ctx" must be of type integer'),
    ({"temperature": "0.7"}, 'option "temperature" must be of type float32'),
    ({"use_mmap": "yes"}, 'option "use_mmap" must be of type boolean'),
])
def test_a_value_of_the_wrong_type_is_named_as_ollama_names_it(parameters, problem):
    assert ollama_option_problems(parameters) == [problem]


def test_an_unknown_option_is_refused_since_ollama_would_ignore_it():
    [problem] = ollama_option_problems({"temprature": 0.7})
    assert problem.startswith("unknown option 'temprature': Ollama ignores it")


def test_well_typed_parameters_pass():
    good = {"stop": ["<end_of_turn>"], "temperature": 0, "num_ctx": 8192, "top_p": 1,
            "use_mmap": False, "seed": 42, "min_p": 0.05}
    assert ollama_option_problems(good) == []
    assert ollama_option_problems(None) == []
    assert set(good) <= set(KNOWN)


def test_prepare_stops_in_preflight_naming_the_model_and_the_option(tmp_path):
    """The preflight assert itself, run by Ansible against a throwaway inventory."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n")
    playbook = tmp_path / "check.yml"
    playbook.write_text(f"""
- hosts: localhost
  gather_facts: false
  vars:
    bundle_models:
      - {{name: "lab/ok:v1", parameters: {{stop: ["x"]}}}}
      - {{name: "lab/bad:v1", parameters: {{stop: "<end_of_turn>"}}}}
  tasks:
    - ansible.builtin.include_tasks: {ROOT}/roles/bundle/tasks/preflight_parameters.yml
""")
    ansible_playbook = Path(sys.executable).parent / "ansible-playbook"
    out = subprocess.run([str(ansible_playbook), "-i", str(inventory),
                          str(playbook)], cwd=ROOT, text=True, capture_output=True, check=False)
    assert out.returncode != 0
    assert 'bundle_models entry lab/bad:v1: option "stop" must be of type array' in out.stdout
    assert "lab/ok:v1" in out.stdout and "ok: [localhost] => (item=lab/ok:v1)" in out.stdout
