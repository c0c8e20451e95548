"""A fact one role sets and others read is read by the name it is set under.

The monitoring role once read `host_preflight_gpu`, which nothing set (host_preflight sets
`host_preflight_gpu_present`): with `| default(false)` nothing failed, and GPU targets silently
never got dcgm-exporter. Here every `<role>_*` name read in another role or a playbook must be
one the owning role defines: an input (defaults, argument spec), a set_fact or a register.
"""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(path.name for path in (ROOT / "roles").iterdir() if (path / "tasks").is_dir())


def defined_by(role: str) -> set[str]:
    names: set[str] = set()
    base = ROOT / "roles" / role
    for path in list(base.glob("defaults/*.yml")) + list(base.glob("vars/*.yml")):
        names.update((yaml.safe_load(path.read_text()) or {}).keys())
    spec = yaml.safe_load((base / "meta" / "argument_specs.yml").read_text())
    for entry in (spec.get("argument_specs") or {}).values():
        names.update((entry.get("options") or {}).keys())
    for path in base.glob("tasks/*.yml"):
        text = path.read_text()
        names.update(re.findall(r"^\s+register:\s*([a-z_][a-z0-9_]*)", text, re.M))
        for block in re.findall(r"set_fact:\n((?:\s{4,}.*\n)+)", text):
            names.update(re.findall(r"^\s{4,}([a-z_][a-z0-9_]*):", block, re.M))
    return names


CONDITIONS = ("when", "changed_when", "failed_when", "until", "that")
JINJA = re.compile(r"{{.*?}}|{%.*?%}", re.S)


def expressions(node: object):
    """What Ansible evaluates in a task file or vars file: Jinja in every string, and the
    bare expressions of conditions (when, that, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in CONDITIONS:
                yield from (str(item) for item in (value if isinstance(value, list) else [value]))
            yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)
    elif isinstance(node, str):
        yield from JINJA.findall(node)


def read_in(path: Path) -> str:
    if path.suffix == ".yml":
        return "\n".join(expressions(yaml.safe_load(path.read_text())))
    return "\n".join(JINJA.findall(path.read_text()))


def readers(role: str):
    """Where other roles and the playbooks read variables: tasks, vars, templates, plays.
    (gemma_airgap's vars list settings that moved to new names: they are refused there.)"""
    for pattern in ("roles/*/tasks/*.yml", "roles/*/vars/*.yml", "roles/*/templates/*",
                    "playbooks/*.yml"):
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file() and path.parts[-3] != role \
                    and path != ROOT / "roles/gemma_airgap/vars/main.yml":
                yield path


def owner(name: str) -> str | None:
    """The role whose prefix the name carries (the longest: backup_schedule_ over backup_)."""
    owners = [role for role in ROLES if name.startswith(role + "_")]
    return max(owners, key=len) if owners else None


@pytest.mark.parametrize("role", [role for role in ROLES if role != "gemma_airgap"])
def test_what_other_roles_read_of_a_role_it_defines(role):
    defined = defined_by(role)
    unknown = set()
    for path in readers(role):
        # Module and filter names (gemma_airgap.ollama.bundle_manifest) are not variables.
        for name in re.findall(rf"(?<![.\w]){role}_[a-z0-9_]+\b", read_in(path)):
            if owner(name) == role and name not in defined:
                unknown.add(f"{path.relative_to(ROOT)}: {name}")
    assert not unknown, sorted(unknown)
