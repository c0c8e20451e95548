"""ollama_stack: what the compose file says for each setting, and the settings it refuses.

The role's own template and checks, rendered and run by Ansible on localhost.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

ROLE = ROOT / "roles" / "ollama_stack"
SHARED = ROOT / "roles" / "gemma_airgap"  # the facts the stack shares with other roles
BUNDLE = {"version": "v1", "images": [
    {"name": "ollama", "image": "ollama/ollama:0.32.15"},
    {"name": "gateway", "image": "gemma-airgap/gateway:v1"},
    {"name": "vision", "image": "llama.cpp:server"}],
    "vision": [{"model": "gemma3n:e4b", "model_file": "vision/m.gguf",
                "mmproj_file": "vision/p.gguf"}]}


def play(tmp_path: Path, tasks: str, **variables) -> subprocess.CompletedProcess:
    extra = {"release_bundle": BUNDLE, "release_dir": "/opt/r/v1", **variables}
    (tmp_path / "vars.json").write_text(json.dumps(extra))
    (tmp_path / "play.yml").write_text(f"""
- hosts: localhost
  gather_facts: false
  vars_files: [{SHARED}/defaults/main.yml, {ROLE}/defaults/main.yml, {ROLE}/vars/main.yml,
               {tmp_path}/vars.json]
  tasks:
{tasks}
""")
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", str(tmp_path / "play.yml")],
        cwd=ROOT, text=True, capture_output=True, check=False)


def compose(tmp_path: Path, **variables) -> dict:
    out = play(tmp_path, f"""
    - ansible.builtin.template:
        src: {ROLE}/templates/compose.yml.j2
        dest: {tmp_path}/compose.yml
        mode: "0644"
""", **variables)
    assert out.returncode == 0, out.stdout + out.stderr
    return yaml.safe_load((tmp_path / "compose.yml").read_text())


def test_defaults_leave_flash_attention_to_ollama_and_keep_blobs(tmp_path):
    env = compose(tmp_path)["services"]["ollama"]["environment"]
    assert "OLLAMA_FLASH_ATTENTION" not in env  # unset: Ollama decides
    assert env["OLLAMA_NOPRUNE"] == "1" and env["OLLAMA_NO_CLOUD"] == "1"
    assert env["OLLAMA_KEEP_ALIVE"] == "-1"
    assert "OLLAMA_GPU_OVERHEAD" not in env


@pytest.mark.parametrize(("setting", "rendered"), [(True, "1"), (False, "0")])
def test_flash_attention_is_rendered_only_when_set(tmp_path, setting, rendered):
    services = compose(tmp_path, ollama_stack_flash_attention=setting)["services"]
    env = services["ollama"]["environment"]
    assert env["OLLAMA_FLASH_ATTENTION"] == rendered


def test_gpus_are_all_by_default_or_the_ids_given(tmp_path):
    services = compose(tmp_path, host_preflight_gpu_present=True)["services"]
    for name in ("ollama", "vision"):
        [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    services = compose(tmp_path, host_preflight_gpu_present=True,
                       ollama_stack_gpu_device_ids=["0"],
                       ollama_stack_vision_gpu_device_ids=["GPU-1234"],
                       ollama_stack_gpu_overhead=12884901888)["services"]
    ollama_gpu = services["ollama"]["deploy"]["resources"]["reservations"]["devices"][0]
    vision_gpu = services["vision"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert ollama_gpu["device_ids"] == ["0"] and "count" not in ollama_gpu
    assert vision_gpu["device_ids"] == ["GPU-1234"]
    assert services["ollama"]["environment"]["OLLAMA_GPU_OVERHEAD"] == "12884901888"
    assert "deploy" not in compose(tmp_path)["services"]["ollama"]  # no GPU, no reservation


CHECKS = f"""
    - ansible.builtin.include_tasks: {ROLE}/tasks/checks.yml
"""


@pytest.mark.parametrize("settings", [
    {},
    {"ollama_stack_kv_cache_type": "q8_0", "ollama_stack_flash_attention": True},
    {"host_preflight_gpu_present": True, "ollama_stack_gpu_overhead": 12884901888},
    {"host_preflight_gpu_present": True, "ollama_stack_gpu_device_ids": ["0"],
     "ollama_stack_vision_gpu_device_ids": ["1"]},
])
def test_workable_settings_pass_the_checks(tmp_path, settings):
    out = play(tmp_path, CHECKS, **settings)
    assert out.returncode == 0, out.stdout


@pytest.mark.parametrize(("settings", "named"), [
    ({"ollama_stack_kv_cache_type": "q8_0"}, "ollama_stack_flash_attention: true"),
    ({"ollama_stack_kv_cache_type": "q4_0", "ollama_stack_flash_attention": False},
     "ollama_stack_flash_attention: true"),
    ({"host_preflight_gpu_present": True}, "ollama_stack_gpu_overhead"),
    ({"host_preflight_gpu_present": True, "ollama_stack_gpu_device_ids": ["0"],
      "ollama_stack_vision_gpu_device_ids": ["0"]}, "different GPUs"),
])
def test_settings_that_cannot_work_are_refused_naming_the_fix(tmp_path, settings, named):
    out = play(tmp_path, CHECKS, **settings)
    assert out.returncode != 0
    assert named in out.stdout


@pytest.mark.parametrize("vision", [None, []])
def test_a_bundle_without_a_vision_service_renders_and_validates(tmp_path, vision):
    """The role's argument spec templates every default, the vision command's too."""
    bundle = {key: value for key, value in BUNDLE.items() if key != "vision"}
    if vision is not None:
        bundle["vision"] = vision
    lab = ROOT / "inventories" / "lab" / "group_vars" / "targets.yml"
    out = play(tmp_path, f"""
    - ansible.builtin.include_vars: {lab}  # the lab's vision command (no defaults in it)
    - ansible.builtin.debug:
        msg: "{{{{ ollama_stack_vision_command }}}}"
    - ansible.builtin.template:
        src: {ROLE}/templates/compose.yml.j2
        dest: {tmp_path}/compose.yml
        mode: "0644"
""", release_bundle=bundle)
    assert out.returncode == 0, out.stdout[-2000:]
    assert "vision" not in yaml.safe_load((tmp_path / "compose.yml").read_text())["services"]


def test_the_vision_servers_arguments_are_strings_compose_accepts(tmp_path):
    """Numbers from variables (ports, context) in the command: compose refuses a non-string."""
    command = compose(tmp_path)["services"]["vision"]["command"]
    assert all(isinstance(argument, str) for argument in command), command
    assert command[command.index("--port") + 1] == "8080"
    assert command[command.index("--ctx-size") + 1] == "8192"


def test_the_vision_healthcheck_asks_the_port_the_server_listens_on(tmp_path):
    """Ours, not the image's (llama.cpp's asks 8080 whatever --port says): on another port
    the image's own check would call a working server unhealthy and the healer restart it."""
    vision = compose(tmp_path, gemma_airgap_vision_port=9191)["services"]["vision"]
    assert vision["command"][vision["command"].index("--port") + 1] == "9191"
    assert vision["healthcheck"]["test"] == [
        "CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9191/health"]


def test_the_gateway_is_not_in_the_stacks_file(tmp_path):
    """The gateway role owns its compose service (gateway.yml); this file: Ollama, vision."""
    rendered = compose(tmp_path)
    assert set(rendered["services"]) == {"ollama", "vision"}
    assert "ports" not in rendered["services"]["ollama"]  # Ollama publishes nothing
    assert rendered["networks"] == {"backend": {"internal": True}}
