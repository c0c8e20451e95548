"""The lab's connection: community.docker.docker_api, with output the engine drops read back.

Docker engines lose the last of a short exec's output now and then: the process exits, the
engine closes the stream before it has copied what the process wrote, and the client sees
nothing (or a cut JSON) with exit code 0 (moby/moby#27289, docker/docker-py#2042,
community.docker#644). Under a loaded CI machine it hit about one exec in 2,500 here, enough
to fail a deploy of ~1,000 execs every few runs ("failed to resolve remote temporary
directory ... returned empty string"). Running the command again is no answer: a module may
not be idempotent, and Ansible's own temporary-directory command fails the second time.

So every command runs inside a wrapper that keeps its output in files on the target, then
prints it followed by an end mark per stream. Output whose mark is missing was cut by the
engine; the plugin then reads the kept files through the engine's archive endpoint (a plain
HTTP download, not an exec stream) and returns what the command really printed. A finished
command's files are removed by a later command after ten minutes; nothing else on the target
changes.

Only the lab uses this (its inventory and the role scenarios); production reaches targets
over SSH, which has no such race.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: lab_docker_api
short_description: The lab's Docker API connection, robust to exec output the engine drops
description:
  - community.docker.docker_api, whose every command keeps its output in files on the target
    so that output the Docker engine drops is read back instead of lost.
extends_documentation_fragment:
  - community.docker.docker.api_documentation
  - community.docker.docker.var_names
options:
  remote_user:
    type: str
    description: The user to run commands as inside the container.
    vars:
      - name: ansible_user
      - name: ansible_docker_user
    ini:
      - section: defaults
        key: remote_user
    env:
      - name: ANSIBLE_REMOTE_USER
    cli:
      - name: user
    keyword:
      - name: remote_user
  remote_addr:
    type: str
    description: The container's name.
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: ansible_docker_host
  container_timeout:
    type: integer
    default: 10
    description: How long to wait for a command's output once it started.
    env:
      - name: ANSIBLE_TIMEOUT
      - name: ANSIBLE_DOCKER_TIMEOUT
    ini:
      - key: timeout
        section: defaults
      - key: timeout
        section: docker_connection
    vars:
      - name: ansible_docker_timeout
    cli:
      - name: timeout
  extra_env:
    type: dict
    description: Extra environment variables for commands in the container.
    vars:
      - name: ansible_docker_extra_env
  working_dir:
    type: string
    description: The directory inside the container to run commands in.
    vars:
      - name: ansible_docker_working_dir
  privileged:
    type: boolean
    default: false
    description: Whether commands run with extended privileges.
    vars:
      - name: ansible_docker_privileged
"""

import os
import secrets
import shlex
import tempfile

from ansible.errors import AnsibleConnectionFailure, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_text
from ansible.utils.display import Display
from ansible_collections.community.docker.plugins.connection.docker_api import (
    Connection as DockerApiConnection,
)

display = Display()

# On the target, on the container's own filesystem: the engine's archive endpoint reads that
# layer and volumes, not a tmpfs (the lab targets' /run and /tmp are tmpfs).
SPOOL = "/var/tmp/gemma-airgap-lab-exec"
# A finished command's files (its .rc written) older than this, in minutes, are removed by a
# later command. A command still running keeps its files however long it is silent: a sweep
# by age alone would unlink the output of a long, quiet module under a concurrent command.
KEEP_MINUTES = 10


class Spool:
    """The files one command's output is kept in on the target, and the wrapper that fills them."""

    def __init__(self) -> None:
        token = secrets.token_hex(8)
        self.base = f"{SPOOL}/{token}"
        self.mark = f"<gemma-airgap-lab-exec:{token}:end>".encode()

    def wrap(self, command: str) -> str:
        """The shell text that runs command with its output kept, then printed and marked.

        The command runs in a subshell with the wrapper's stdin (a pipelined module reads it)
        and nothing else changed: no umask (files a task creates without a mode would change),
        the kept files are private by their directory's mode. Its status is kept before
        anything is printed, so a read-back knows it finished.
        """
        base, mark = shlex.quote(self.base), shlex.quote(self.mark.decode())
        return (
            f"mkdir -p -m 0700 {SPOOL}; "
            f"for kept in $(find {SPOOL} -name '*.rc' -mmin +{KEEP_MINUTES} 2>/dev/null); "
            "do rm -f \"${kept%.rc}\".*; done; "
            f"(\n{command}\n) >{base}.out 2>{base}.err; rc=$?; "
            f"printf %s \"$rc\" >{base}.rc; "
            f"cat {base}.err >&2; printf %s {mark} >&2; "
            f"cat {base}.out; printf %s {mark}; "
            "exit $rc"
        )

    def unmark(self, stream: bytes) -> bytes | None:
        """The stream without its end mark, or None when the mark (and so maybe more) is missing."""
        if stream.endswith(self.mark):
            return stream[:-len(self.mark)]
        return None


class Connection(DockerApiConnection):
    """community.docker.docker_api whose commands' output survives the engine's race."""

    transport = "lab_docker_api"

    def exec_command(self, cmd, in_data=None, sudoable=False):
        spool = Spool()
        rc, stdout, stderr = super().exec_command(spool.wrap(to_text(cmd)), in_data, sudoable)
        out, err = spool.unmark(stdout), spool.unmark(stderr)
        if out is not None and err is not None:
            return rc, out, err
        display.warning(
            f"The Docker engine dropped output of a command on {self.get_option('remote_addr')} "
            f"(got {len(stdout)} + {len(stderr)} bytes without the end mark); reading it back "
            f"from {spool.base}.*")
        return self._read_back(spool)

    def _read_back(self, spool: Spool):
        """The command's status and output from the kept files, through the archive endpoint."""
        kept = {}
        with tempfile.TemporaryDirectory(prefix="lab-exec-") as scratch:
            for part in ("rc", "out", "err"):
                local = os.path.join(scratch, part)
                try:
                    self.fetch_file(f"{spool.base}.{part}", local)
                except AnsibleFileNotFound as exc:
                    raise AnsibleConnectionFailure(
                        f"A command's output on {self.get_option('remote_addr')} was cut and "
                        f"{spool.base}.{part} is not there to read it back: the command did not "
                        f"finish ({exc})") from exc
                with open(local, "rb") as kept_file:
                    kept[part] = kept_file.read()
        try:
            rc = int(kept["rc"])
        except ValueError as exc:
            raise AnsibleConnectionFailure(
                f"{spool.base}.rc on {self.get_option('remote_addr')} holds {kept['rc']!r}, "
                "not an exit status") from exc
        return rc, kept["out"], kept["err"]
