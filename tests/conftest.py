"""Shared test setup.

Makes the project's Python importable the way Ansible and the lab see it:
lab/ and the stand-in as top-level modules, the collection's modules and filters by name, and
the collection itself (this checkout, through collections/) under ``ansible_collections``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for sub in ("lab", "lab/standin", "plugins/modules", "plugins/filter", "gateway", "collections"):
    path = str(ROOT / sub)
    if path not in sys.path:
        sys.path.insert(0, path)


def run_module(module: str, args: dict, check: bool = False) -> dict:
    """Run one of our modules through Ansible itself on localhost; return its result."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
               ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.json")
    if "." not in module:
        module = f"gemma_airgap.ollama.{module}"
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


@pytest.fixture(scope="session")
def prometheus_tools() -> Path:
    """The directory of promtool and amtool, unpacked from Debian's packages into the lab
    cache (lab/labctl.py prometheus-tools): the real tools, never a parser of our own."""
    out = subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), "prometheus-tools"],
                         text=True, capture_output=True, check=False)
    assert out.returncode == 0, out.stderr + out.stdout
    return Path(out.stdout.strip().splitlines()[-1])
