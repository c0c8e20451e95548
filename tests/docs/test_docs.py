"""The operator's documentation against the code it documents (part of `make lint`).

Operators read these files inside the gap with nobody to ask, so what they name must exist:
every command of the README's production section (a playbook, a make target, a script, a
file of the repository), every variable named anywhere in the docs, every relative link, a
troubleshooting entry for every failure a playbook, role or module can stop with, a runbook
entry for every alert, and the Korean README's commands the same as the English ones.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import unicodedata
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.docs.failures import failing_tasks, modules, tasks

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- production:start -->", "<!-- production:end -->"
READMES = {"en": ROOT / "README.md", "ko": ROOT / "README.ko.md"}
TROUBLESHOOTING = {"en": ROOT / "docs" / "troubleshooting.md",
                   "ko": ROOT / "docs" / "ko" / "troubleshooting.md"}
RUNBOOKS = {"en": ROOT / "docs" / "runbooks.md", "ko": ROOT / "docs" / "ko" / "runbooks.md"}
ALERTS = ROOT / "roles" / "monitoring" / "files" / "prometheus" / "rules" / "alerts.yml"

# Commands of other projects an operator types in the production flow (the OS's, GnuPG's,
# Sequoia's, Ansible's): they exist where the README says to run them.
TOOLS = {"cd", "cp", "git", "gpg", "gpgv", "mount", "python3", "sha256sum", "sqv", "umount",
         "ansible-vault", "ansible-playbook", ".", "echo", "sh", "sudo", "tar", "rsync"}
# Our variables begin with a role's or the project's prefix.
PREFIXES = ("gemma_airgap_", "bundle_", "release_", "gateway_", "ollama_stack_",
            "host_preflight_", "monitoring_", "healer_", "backup_", "edge_vip_",
            "nvidia_toolkit_", "docker_engine_", "health_", "serve_", "vault_", "gemma_terms_")
VARIABLE = re.compile(r"`([a-z][a-z0-9_]*)(?:[:=][^`]*)?`")


def markdown_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.md"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    return sorted(ROOT / name for name in tracked
                  if not name.startswith(("collections/", ".venv/")) and (ROOT / name).is_file())


def commands(markdown: str) -> list[str]:
    """The commands of a text's sh blocks, one per line, comments dropped."""
    found = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                found.append(command)
    return found


def production_section(readme: Path) -> str:
    text = readme.read_text()
    assert START in text and END in text, f"{readme.name} has no {START} ... {END} section"
    return text.split(START, 1)[1].split(END, 1)[0]


def production_commands(readme: Path) -> list[str]:
    return commands(production_section(readme))


@cache
def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))


CODE = ("roles/*/defaults/*.yml", "roles/*/vars/*.yml", "roles/*/meta/argument_specs.yml",
        "roles/*/tasks/*.yml", "roles/*/templates/*", "roles/*/files/**/*", "playbooks/*.yml",
        "plugins/**/*.py", "gateway/**/*.py", "inventories/production.example/**/*")


@cache
def known_variables() -> set[str]:
    """Every word of the code and the example inventory: role inputs and internals, module,
    metric and play variable names. A name the docs give that none of them has is invented
    or gone."""
    names: set[str] = set()
    for pattern in CODE:
        for path in ROOT.glob(pattern):
            if path.is_file():
                names.update(re.findall(r"[a-z][a-z0-9_]*", path.read_text(errors="replace")))
    return names


def slug(heading: str) -> str:
    """A heading's anchor as Git servers make it (GitHub, GitLab, Gitea agree on these)."""
    text = re.sub(r"[`*_~]|<[^>]+>", "", heading.strip().lower())
    kept = "".join(char for char in text
                   if char in " -" or unicodedata.category(char)[0] in "LN")
    return kept.replace(" ", "-")


def headings(path: Path, level: str = "#+") -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return re.findall(rf"^{level} (.+?)\s*$", text, re.M)


def check_command(command: str) -> list[str]:
    words = shlex.split(command.replace("&&", " ; ").replace("|", " ; "))
    problems, starts = [], True
    for index, word in enumerate(words):
        if word == ";":
            starts = True
            continue
        if index and words[index - 1] == ".":
            if not word.endswith("/venv/bin/activate"):  # install.sh's venv, nothing else
                problems.append(f"{command}: sources {word}, which install.sh does not make")
            continue
        if starts:
            starts = word == "sudo"
            name = Path(word).name
            if word not in TOOLS and name not in TOOLS and word != ".venv/bin/" + name:
                problems.append(f"{command}: {word} is not a tool the production flow uses")
        if word.startswith("gemma_airgap.ollama."):
            playbook = word.removeprefix("gemma_airgap.ollama.")
            if not (ROOT / "playbooks" / f"{playbook}.yml").is_file():
                problems.append(f"{command}: no playbook {playbook}")
        elif word.endswith(".yml") and word.startswith("playbooks/"):
            if not (ROOT / word).is_file():
                problems.append(f"{command}: no {word}")
        elif word.endswith(".sh") and not list(ROOT.glob(f"roles/*/files/{Path(word).name}")):
            problems.append(f"{command}: the bundle carries no {Path(word).name}")
        elif word.startswith(("inventories/", "requirements")) and "/site" not in word:
            if not (ROOT / word).exists():
                problems.append(f"{command}: no {word} in the repository")
        elif word == "make" and words[index + 1] not in make_targets():
            problems.append(f"{command}: no make target {words[index + 1]}")
    return problems


def test_every_production_command_exists():
    commands = production_commands(READMES["en"])
    assert len(commands) >= 10, commands
    problems = [problem for command in commands for problem in check_command(command)]
    assert not problems, "\n".join(problems)


def test_the_korean_readme_lists_the_same_commands():
    assert production_commands(READMES["ko"]) == production_commands(READMES["en"])


@pytest.mark.parametrize("name", ["sizing.md", "runbooks.md", "troubleshooting.md"])
def test_the_korean_docs_list_the_same_commands(name):
    english, korean = ROOT / "docs" / name, ROOT / "docs" / "ko" / name
    assert commands(korean.read_text()) == commands(english.read_text())


@pytest.mark.parametrize("language", sorted(READMES))
def test_the_production_flow_names_only_declared_settings(language):
    """Stricter than the docs at large: what the operator sets in the production flow is a
    role input (an argument spec) or a secret of the example vault, nothing internal."""
    declared: set[str] = set()
    for spec in ROOT.glob("roles/*/meta/argument_specs.yml"):
        for entry in (yaml.safe_load(spec.read_text()).get("argument_specs") or {}).values():
            declared.update((entry.get("options") or {}).keys())
    vault = ROOT / "inventories" / "production.example" / "group_vars" / "all" / "vault.yml.example"
    declared.update(yaml.safe_load(vault.read_text()).keys())
    named = {name for name in VARIABLE.findall(production_section(READMES[language]))
             if name.startswith(PREFIXES)}
    assert named and not named - declared, sorted(named - declared)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_variable_named_exists(path):
    named = {name for name in VARIABLE.findall(path.read_text()) if name.startswith(PREFIXES)}
    # A counter's series as Prometheus shows it: the client library adds _total.
    unknown = sorted(name for name in named - known_variables()
                     if name.removesuffix("_total") not in known_variables())
    assert not unknown, f"{path.relative_to(ROOT)} names variables nothing defines: {unknown}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_resolves(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a URL: the docs name few, and none is needed inside the gap
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.is_relative_to(ROOT) or not linked.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and anchor not in {slug(heading) for heading in headings(linked)}:
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


# A relative path anywhere in a text (a link, code, a sentence): ../ and what follows.
RELATIVE = re.compile(r"(?<![\w./])((?:\.\./)+[\w.-][\w./-]*)")


def test_nothing_refers_outside_the_repository():
    """Inside the gap the repository is all there is: no path a document names leads out."""
    outside = [f"{path.relative_to(ROOT)}: {named}" for path in markdown_files()
               for named in RELATIVE.findall(path.read_text())
               if not (path.parent / named).resolve().is_relative_to(ROOT)]
    assert not outside, outside


@pytest.mark.parametrize("language", sorted(TROUBLESHOOTING))
def test_every_failure_has_a_troubleshooting_entry(language):
    wanted = {f"TASK [{task.shown}]" for task in failing_tasks(ROOT)}
    wanted |= {f"Module {name}" for name in modules(ROOT)}
    present = set(headings(TROUBLESHOOTING[language], "###"))
    missing, stale = sorted(wanted - present), sorted(present - wanted)
    assert not missing, f"no entry in {TROUBLESHOOTING[language].name} ({language}) for: {missing}"
    assert not stale, f"entries for failures that no longer exist ({language}): {stale}"


@cache
def shown_tasks() -> frozenset[str]:
    return frozenset(task.shown for task in tasks(ROOT))


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_task_named_exists(path):
    """`TASK [...]` in a text is what the operator searches a run's output for: it must be the
    task as Ansible prints it (with its role), even where the line wraps inside it."""
    named = re.findall(r"`TASK \[([^`]+?)\]`", " ".join(path.read_text().split()))
    # Placeholders (<role> : <task name>, ...) stand for any task.
    unknown = sorted(name for name in set(named) - shown_tasks()
                     if "<" not in name and "..." not in name)
    assert not unknown, f"{path.relative_to(ROOT)} names tasks the code does not have: {unknown}"


@pytest.mark.parametrize("language", sorted(RUNBOOKS))
def test_every_alert_has_a_runbook_entry(language):
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]
              if "alert" in rule}
    present = set(headings(RUNBOOKS[language], "###"))
    missing = sorted(alerts - present)
    assert not missing, f"alerts without a runbook entry ({language}): {missing}"


def test_every_failing_task_says_what_failed():
    silent = [f"{task.file.relative_to(ROOT)}: {task.shown}" for task in failing_tasks(ROOT)
              if not task.message]
    assert not silent, f"asserts without fail_msg, fails without msg: {silent}"
