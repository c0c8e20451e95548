"""The lab's connection (lab/connection_plugins/lab_docker_api.py) against a real container.

The engine's race (output dropped when a short command exits) cannot be called up at will:
a loop under load hits it about once in 2,500 execs. So these tests cut the output where the
engine would, between the parent plugin and ours, and check that what comes back is what the
command printed, read from the target through the real engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import labctl

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "gemma-airgap-labexec"
NAME = f"{PREFIX}-target-1"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], text=True, capture_output=True, check=check)


@pytest.fixture(scope="module")
def container():
    """A target started as the lab starts one (systemd, a tmpfs on /run and /tmp), on no
    network: the read-back must work where the lab's commands really run."""
    config = labctl.LabConfig(prefix=PREFIX)
    args = labctl.target_run_command(config, 1)
    args[args.index("--network") + 1] = "none"
    docker("rm", "-f", "-v", NAME, check=False)
    started = subprocess.run(args, text=True, capture_output=True, check=False)
    assert started.returncode == 0, f"{started.stderr} (make lab-up builds the lab's images)"
    labctl.wait_for_systemd(NAME)
    yield NAME
    docker("rm", "-f", "-v", NAME, check=False)
    docker("volume", "rm", "-f", f"{NAME}-docker", check=False)


@pytest.fixture(scope="module")
def plugin():
    """The plugin module and its parent class, loaded as Ansible loads them."""
    from ansible.plugins.loader import connection_loader, init_plugin_loader
    init_plugin_loader()
    connection_loader.add_directory(str(ROOT / "lab" / "connection_plugins"))
    loaded = connection_loader.get("lab_docker_api", class_only=True)
    assert loaded is not None, "lab_docker_api is not found where ansible.cfg says"
    return sys.modules[loaded.__module__], loaded


def connect(plugin, name: str):
    from ansible.playbook.play_context import PlayContext
    _, cls = plugin
    context = PlayContext()
    context.executable = "/bin/sh"
    conn = cls(context, None)
    conn.set_options(direct={"remote_addr": name})
    conn._connect()
    return conn


def cut_by_the_engine(monkeypatch, plugin, keep: int, after=None) -> None:
    """From now on the parent plugin returns only the first `keep` bytes of stdout and nothing
    of stderr, as the engine does when it closes the stream early; `after` runs then."""
    module, _ = plugin
    parent = module.DockerApiConnection
    real = parent.exec_command

    def dropping(self, cmd, in_data=None, sudoable=False):
        rc, out, _ = real(self, cmd, in_data, sudoable)
        if after is not None:
            after()
        return rc, out[:keep], b""
    monkeypatch.setattr(parent, "exec_command", dropping)


def test_output_status_and_stdin_come_through_unmarked(container, plugin):
    conn = connect(plugin, container)
    rc, out, err = conn.exec_command("cat; echo to-stderr >&2; exit 3", in_data=b"from stdin\n")
    assert (rc, out, err) == (3, b"from stdin\n", b"to-stderr\n")
    rc, out, err = conn.exec_command("true")
    assert (rc, out, err) == (0, b"", b"")


def test_a_command_runs_as_it_would_without_the_wrapper(container, plugin):
    """Same umask, directory and user as a plain exec (a umask of the wrapper's once made the
    files tasks create without a mode unreadable); the kept files are private all the same."""
    module, _ = plugin
    probe = "umask; pwd; id -u"
    plain = docker("exec", container, "sh", "-c", probe).stdout
    rc, out, _ = connect(plugin, container).exec_command(probe)
    assert (rc, out.decode()) == (0, plain)
    assert docker("exec", container, "stat", "-c", "%a %U", module.SPOOL).stdout == "700 root\n"


@pytest.mark.parametrize("keep", [0, 70_000])
def test_output_the_engine_cuts_is_read_back_whole(container, plugin, monkeypatch, keep):
    # 100 kB, so a cut can fall in the middle as well as take everything.
    command = "head -c 100000 /dev/zero | tr '\\0' a; echo; echo warned >&2; exit 5"
    expected_out = b"a" * 100_000 + b"\n"
    cut_by_the_engine(monkeypatch, plugin, keep)
    rc, out, err = connect(plugin, container).exec_command(command)
    assert (rc, len(out), out == expected_out, err) == (5, len(expected_out), True, b"warned\n")


def test_a_cut_command_whose_files_are_gone_fails_naming_them(container, plugin, monkeypatch):
    module, _ = plugin
    cut_by_the_engine(monkeypatch, plugin, 0,
                      after=lambda: docker("exec", container, "sh", "-c",
                                           f"rm -f {module.SPOOL}/*.rc"))
    from ansible.errors import AnsibleConnectionFailure
    with pytest.raises(AnsibleConnectionFailure, match=r"\.rc is not there .* did not finish"):
        connect(plugin, container).exec_command("echo lost")


def test_kept_files_older_than_ten_minutes_are_removed_by_the_next_command(container, plugin):
    """Those of a finished command (its .rc written); a command still running keeps its
    files, however long it has been silent."""
    module, _ = plugin
    spool = module.SPOOL
    docker("exec", container, "sh", "-c",
           f"mkdir -p {spool} && cd {spool} && touch -d '11 minutes ago' old.rc old.out old.err "
           f"&& touch -d '9 minutes ago' young.rc young.out "
           f"&& touch -d '11 minutes ago' running.out running.err")
    connect(plugin, container).exec_command("true")
    kept = set(docker("exec", container, "ls", spool).stdout.split())
    assert not {"old.rc", "old.out", "old.err"} & kept
    assert {"young.rc", "young.out", "running.out", "running.err"} <= kept


def test_the_lab_inventory_reaches_targets_through_it(container):
    """Real Ansible, the lab's inventory file and ansible.cfg: the connection it names, and a
    copy task (a module and a file sent) through it."""
    env = dict(os.environ, LAB_PREFIX=PREFIX, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    inventory = str(ROOT / "inventories" / "lab" / "02-targets.docker.yml")
    bin_dir = Path(sys.executable).parent
    host = json.loads(subprocess.run(
        [str(bin_dir / "ansible-inventory"), "-i", inventory, "--host", container],
        env=env, text=True, capture_output=True, check=True).stdout)
    assert host["ansible_connection"] == "lab_docker_api"
    copied = subprocess.run(
        [str(bin_dir / "ansible"), "-i", inventory, container, "-m", "ansible.builtin.copy",
         "-a", "content=through-the-lab-connection dest=/tmp/lab-exec-check mode=0600"],
        env=env, text=True, capture_output=True, check=False)
    assert copied.returncode == 0, copied.stdout + copied.stderr
    assert docker("exec", container, "cat", "/tmp/lab-exec-check").stdout == (
        "through-the-lab-connection")
