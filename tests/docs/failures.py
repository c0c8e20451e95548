"""Every failure an operator can meet: the failing tasks of the playbooks and roles, and the
modules (each reports its own failures). The troubleshooting docs have an entry for each."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

NESTED = ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers")
ASSERT = ("ansible.builtin.assert", "assert")
FAIL = ("ansible.builtin.fail", "fail")


@dataclass(frozen=True)
class Task:
    file: Path
    name: str
    role: str | None
    body: dict

    @property
    def shown(self) -> str:
        """The task as Ansible prints it: TASK [<role> : <name>], or TASK [<name>] in a play."""
        return f"{self.role} : {self.name}" if self.role else self.name

    @property
    def fails(self) -> bool:
        return any(key in self.body for key in ASSERT + FAIL)

    @property
    def message(self) -> object:
        for key in ASSERT:
            if isinstance(self.body.get(key), dict):
                return self.body[key].get("fail_msg")
        for key in FAIL:
            if key in self.body:
                return (self.body[key] or {}).get("msg")
        return None


def walk(node: object) -> Iterator[dict]:
    if isinstance(node, list):
        for item in node:
            if isinstance(item, dict):
                yield item
                for key in NESTED:
                    yield from walk(item.get(key))


def tasks(root: Path) -> Iterator[Task]:
    for path in sorted(root.glob("roles/*/tasks/*.yml")):
        for body in walk(yaml.safe_load(path.read_text())):
            yield Task(path, body.get("name", ""), path.parts[-3], body)
    for path in sorted(root.glob("playbooks/*.yml")):
        for body in walk(yaml.safe_load(path.read_text())):
            yield Task(path, body.get("name", ""), None, body)


def failing_tasks(root: Path) -> list[Task]:
    return [task for task in tasks(root) if task.fails]


def modules(root: Path) -> list[str]:
    return sorted(path.stem for path in root.glob("plugins/modules/*.py"))
