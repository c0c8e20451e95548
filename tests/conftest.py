"""Shared test setup.

Makes the project's Python importable the way Ansible and the lab see it:
lab/ and the stand-in as top-level modules, library/ modules and filter_plugins/ by name, and
module_utils/ under ``ansible.module_utils`` (as Ansible ships them to a host).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parent.parent
for sub in ("lab", "lab/standin", "library", "filter_plugins", "gateway"):
    path = str(ROOT / sub)
    if path not in sys.path:
        sys.path.insert(0, path)
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))


def run_module(module: str, args: dict, check: bool = False) -> dict:
    """Run one of our modules through Ansible itself on localhost; return its result."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
               ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.json")
    command = [str(Path(sys.executable).parent / "ansible"), "localhost", "-m", module,
               "-a", json.dumps(args), "-i", "localhost,", "-c", "local",
               "-e", f"ansible_python_interpreter={sys.executable}"]
    if check:
        command.append("--check")
    out = subprocess.run(command, env=env, cwd=ROOT, text=True, capture_output=True,
                         check=False)
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"ansible output was not JSON:\n{out.stdout}\n{out.stderr}") from None
    return data["plays"][0]["tasks"][0]["hosts"]["localhost"]
