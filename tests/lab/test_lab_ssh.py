"""A deploy from inside the gap: SSH-ready targets and the control node (`labctl.py control`).

The lab tests use their own LAB_PREFIX and a scratch bundle, so they never touch a lab you
have running. The control node has no SSH client (the bundle's kit brings one), so the logins
are made from a throwaway container of the targets' image (which has one, with sshd) on the
same internal network, with the key, known_hosts and inventory taken out of the control node.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import labctl

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "gemma-airgap-labssh"
VERSION = "lab-ssh-1"
CONTROL = f"{PREFIX}-control"
TARGETS = [f"{PREFIX}-target-1", f"{PREFIX}-target-2"]
STATE = Path(os.environ.get("LAB_CACHE", "/var/cache/gemma-airgap")) / "labs" / PREFIX


def labctl_run(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, LAB_PREFIX=PREFIX, **env)
    return subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), *args],
                          env=environment, text=True, capture_output=True, check=False)


def docker(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], text=True, capture_output=True, check=check,
                          **kwargs)


# --- decisions (no Docker engine needed) ------------------------------------------------

def test_control_node_is_on_the_internal_network_only_with_the_bundle_read_only():
    config = labctl.LabConfig(prefix="site", bundle=Path("/srv/bundles/2026.11.25-1"))
    args = labctl.control_run_command(config)
    assert args.count("--network") == 1 and args[args.index("--network") + 1] == "site"
    assert args[args.index("--mount") + 1] == (
        "type=bind,source=/srv/bundles/2026.11.25-1,"
        "target=/media/bundle/2026.11.25-1,readonly")
    labels = [args[i + 1] for i, arg in enumerate(args) if arg == "--label"]
    # role=control: the lab inventory's plugin takes only role=target.
    assert labels == [f"{labctl.LABEL}=site", f"{labctl.ROLE_LABEL}=control"]
    assert args[-3:] == [labctl.CONTROL_IMAGE.tag, "sleep", "infinity"]
    assert not {"-p", "--publish", "--privileged", "-v"} & set(args)


def test_control_image_is_a_fresh_debian_and_the_target_adds_only_sshd_and_sudo():
    control, target = labctl.CONTROL_IMAGE, labctl.TARGET_IMAGE
    assert control.suite == target.suite == "trixie"
    assert set(target.packages) - set(control.packages) == {"openssh-server", "sudo"}
    assert not control.setup
    for absent in ("openssh", "rsync", "python3-venv", "ansible", "docker"):
        assert not any(absent in package for package in control.packages)


def test_a_changed_recipe_is_a_new_root_filesystem():
    changed = labctl.BaseImage(tag=labctl.TARGET_IMAGE.tag, suite="trixie",
                               packages=(*labctl.TARGET_IMAGE.packages, "less"),
                               purpose="", setup=labctl.TARGET_IMAGE.setup)
    assert changed.recipe != labctl.TARGET_IMAGE.recipe
    assert changed.cache_name != labctl.TARGET_IMAGE.cache_name
    assert labctl.TARGET_IMAGE.cache_name.startswith("gemma-airgap-lab_target_trixie-")


def test_target_image_bakes_no_host_keys_and_allows_key_logins_only():
    setup = labctl.TARGET_IMAGE.setup
    assert "rm -f /etc/ssh/ssh_host_*" in setup
    assert "PasswordAuthentication no" in setup and "PermitRootLogin no" in setup
    assert "NOPASSWD: ALL" in setup


def test_known_hosts_names_each_host_key_by_address_and_container_name():
    printed = ("ssh-ed25519 AAAAC3Nza root@target-1\n"
               "ecdsa-sha2-nistp256 AAAAE2Vj root@target-1\n\n")
    assert labctl.known_hosts_lines("172.20.0.2", "lab-target-1", printed) == [
        "172.20.0.2,lab-target-1 ssh-ed25519 AAAAC3Nza",
        "172.20.0.2,lab-target-1 ecdsa-sha2-nistp256 AAAAE2Vj"]


def test_inside_inventory_is_an_operators_ssh_inventory_with_the_bundle_on_media(tmp_path):
    config = labctl.LabConfig(prefix="site", bundle=Path("/var/lib/x/lab-7"), cache_dir=tmp_path)
    files = labctl.inside_inventory(config, [("site-target-1", "172.20.0.2"),
                                             ("site-target-2", "172.20.0.3")])
    hosts = yaml.safe_load(files["hosts.yml"])["all"]["children"]["targets"]
    assert hosts["hosts"] == {"site-target-1": {"ansible_host": "172.20.0.2"},
                              "site-target-2": {"ansible_host": "172.20.0.3"}}
    assert hosts["vars"] == {"ansible_user": "deploy", "ansible_become": True,
                             "ansible_ssh_private_key_file": "/root/.ssh/id_ed25519",
                             "ansible_python_interpreter": "/usr/bin/python3"}
    lab_vars = ROOT / "inventories" / "lab" / "group_vars"
    targets = yaml.safe_load(files["group_vars/targets.yml"])
    assert targets["release_source"] == "/media/bundle/lab-7"
    assert targets | {"release_source": None} == (
        yaml.safe_load((lab_vars / "targets.yml").read_text()) | {"release_source": None})
    # The lab's settings, but the signing key pinned by its fingerprint: the control node has
    # no lab cache to read it from (the key is made in this lab's cache on the way).
    fingerprint = (tmp_path / "signing" / "fingerprint").read_text().strip()
    inside = files["group_vars/all.yml"].splitlines()
    outside = (lab_vars / "all.yml").read_text().splitlines()
    assert [a for a, b in zip(inside, outside, strict=True) if a != b] == [
        f'gemma_airgap_bundle_signers: ["{fingerprint}"]']
    assert yaml.safe_load(files["group_vars/all.yml"])["gemma_airgap_bundle_signers"] == [
        fingerprint]


# --- the lab, against the real engine ------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    bundle = tmp_path_factory.mktemp("bundles") / VERSION
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({"version": VERSION}))
    labctl_run("down")
    up = labctl_run("control", LAB_TARGETS="2", LAB_BUNDLE=str(bundle))
    assert up.returncode == 0, up.stdout + up.stderr
    yield bundle
    labctl_run("down")


@pytest.fixture(scope="module")
def from_control(lab, tmp_path_factory):
    """The control node's ~/.ssh and inventory, taken out of it."""
    out = tmp_path_factory.mktemp("from-control")
    docker("cp", f"{CONTROL}:/root/.ssh", str(out / "ssh"))
    docker("cp", f"{CONTROL}:/root/inventory", str(out / "inventory"))
    return out


def probe(ssh_dir: Path, script: str) -> subprocess.CompletedProcess:
    """A shell in a throwaway container with an SSH client, on the lab's internal network,
    with ssh_dir as root's ~/.ssh."""
    return docker("run", "--rm", "--network", PREFIX, "--label", f"{labctl.LABEL}={PREFIX}",
                  "--label", f"{labctl.ROLE_LABEL}=probe", "-v", f"{ssh_dir}:/root/.ssh:ro",
                  labctl.TARGET_IMAGE.tag, "sh", "-c", script, check=False, timeout=120)


def ssh_command(host: str, user: str, key: str, command: str) -> str:
    return (f"ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=10 "
            f"-i {key} {user}@{host} {command}")


@pytest.mark.lab
def test_every_target_runs_sshd_with_its_own_host_keys_and_the_lab_key(lab):
    public = (STATE / "id_ed25519.pub").read_text()
    host_keys = []
    for name in TARGETS:
        assert docker("exec", name, "systemctl", "is-active", "ssh").stdout.strip() == "active"
        assert docker("exec", name, "cat", "/home/deploy/.ssh/authorized_keys").stdout == public
        host_keys.append(docker("exec", name, "cat",
                                "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1])
    assert host_keys[0] != host_keys[1]
    known = (STATE / "known_hosts").read_text().splitlines()
    for name, key in zip(TARGETS, host_keys, strict=True):
        address = labctl.container_address(labctl.LabConfig(prefix=PREFIX), name)
        assert f"{address},{name} ssh-ed25519 {key}" in known


@pytest.mark.lab
def test_control_node_logs_in_to_every_target_as_deploy_with_sudo_and_host_keys_checked(
        from_control):
    inventory = yaml.safe_load((from_control / "inventory" / "hosts.yml").read_text())
    targets = inventory["all"]["children"]["targets"]
    assert sorted(targets["hosts"]) == TARGETS
    settings = targets["vars"]
    key = settings["ansible_ssh_private_key_file"]
    assert key.startswith("/root/.ssh/")
    script = "set -e\n" + "".join(
        ssh_command(host["ansible_host"], settings["ansible_user"], key,
                    "'sudo -n id -u; hostname'") + "\n"
        for host in targets["hosts"].values())
    out = probe(from_control / "ssh", script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "target-1", "0", "target-2"]
    # By name too, and never as root.
    by_name = probe(from_control / "ssh", ssh_command(TARGETS[0], "deploy", key, "true"))
    assert by_name.returncode == 0, by_name.stderr
    root = probe(from_control / "ssh", ssh_command(TARGETS[0], "root", key, "true"))
    assert root.returncode == 255 and "Permission denied" in root.stderr


@pytest.mark.lab
def test_host_key_checking_refuses_an_unknown_or_changed_host_key(from_control, tmp_path):
    known = (from_control / "ssh" / "known_hosts").read_text().splitlines()
    first, second = ([line for line in known if f",{name} " in line] for name in TARGETS)
    address = first[0].split(",")[0]
    cases = {
        "unknown": [],
        # target-1's address with target-2's keys: what a changed or spoofed host looks like.
        "changed": [f"{address},{TARGETS[0]} {line.split(' ', 1)[1]}" for line in second],
    }
    for case, lines in cases.items():
        ssh_dir = tmp_path / case
        ssh_dir.mkdir(mode=0o700)
        for entry in ("id_ed25519", "id_ed25519.pub"):
            (ssh_dir / entry).write_bytes((from_control / "ssh" / entry).read_bytes())
            (ssh_dir / entry).chmod(0o600)
        (ssh_dir / "known_hosts").write_text("".join(f"{line}\n" for line in lines))
        out = probe(ssh_dir, ssh_command(address, "deploy", "/root/.ssh/id_ed25519", "true"))
        assert out.returncode == 255, (case, out.stdout)
        assert "Host key verification failed" in out.stderr, (case, out.stderr)


@pytest.mark.lab
def test_control_node_is_fresh_debian_on_the_internal_network_with_no_route_out(lab):
    info = json.loads(docker("inspect", CONTROL).stdout)[0]
    assert list(info["NetworkSettings"]["Networks"]) == [PREFIX]
    assert json.loads(docker("network", "inspect", PREFIX).stdout)[0]["Internal"] is True
    assert info["Config"]["Labels"][labctl.ROLE_LABEL] == "control"
    # Nothing a deploy needs is there before the kit: no ssh, rsync, Ansible or venv.
    found = docker("exec", CONTROL, "sh", "-c",
                   "for c in ssh rsync ansible-playbook sudo; do command -v $c; done; "
                   "python3 -c 'import ensurepip' 2>/dev/null && echo ensurepip; true")
    assert found.stdout == ""
    # Debian's mirror, by the address this machine resolves it to (this machine reaches
    # it: the control), and by name; a target's sshd answers (the network works).
    mirror = socket.getaddrinfo("deb.debian.org", 80, socket.AF_INET)[0][4][0]
    socket.create_connection((mirror, 80), timeout=10).close()
    connect = ("import socket, sys\n"
               "try:\n"
               "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
               "except OSError as error:\n"
               "    sys.exit(f'refused: {error}')\n")
    for host, port in ((mirror, 80), ("1.1.1.1", 443), ("deb.debian.org", 80)):
        out = docker("exec", CONTROL, "python3", "-c", connect, host, str(port), check=False)
        assert out.returncode == 1 and "refused" in out.stderr, (host, out.stderr)
    out = docker("exec", CONTROL, "python3", "-c", connect, TARGETS[0], "22", check=False)
    assert out.returncode == 0, out.stderr


@pytest.mark.lab
def test_control_node_sees_the_bundle_read_only_and_the_inventory_points_there(
        lab, from_control):
    assert docker("exec", CONTROL, "cat", f"/media/bundle/{VERSION}/bundle.json").stdout == (
        lab / "bundle.json").read_text()
    touch = docker("exec", CONTROL, "touch", f"/media/bundle/{VERSION}/x", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr
    targets = yaml.safe_load((from_control / "inventory" / "group_vars" / "targets.yml")
                             .read_text())
    assert targets["release_source"] == f"/media/bundle/{VERSION}"


@pytest.mark.lab
def test_lab_inventory_lists_the_targets_and_not_the_control_node(lab):
    env = dict(os.environ, LAB_PREFIX=PREFIX, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i",
                          str(ROOT / "inventories" / "lab" / "02-targets.docker.yml"),
                          "--list"], cwd=ROOT, env=env, text=True, capture_output=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)["targets"]["hosts"]) == TARGETS


@pytest.mark.lab
def test_control_again_keeps_everything_and_down_removes_it_with_the_key(lab):
    ids = [docker("inspect", "-f", "{{.Id}}", name).stdout for name in [CONTROL, *TARGETS]]
    again = labctl_run("control", LAB_TARGETS="2", LAB_BUNDLE=str(lab))
    assert again.returncode == 0, again.stderr
    assert "starting" not in again.stdout
    assert [docker("inspect", "-f", "{{.Id}}", name).stdout
            for name in [CONTROL, *TARGETS]] == ids

    down = labctl_run("down")
    assert down.returncode == 0, down.stderr
    assert "removed 3 container(s), 2 volume(s), 1 network(s)" in down.stdout
    assert docker("inspect", CONTROL, check=False).returncode != 0
    assert not STATE.exists()


@pytest.mark.lab
def test_control_without_a_bundle_says_what_to_do(tmp_path):
    try:
        out = labctl_run("control", LAB_BUNDLE=str(tmp_path / "nothing"))
        assert out.returncode == 1
        assert "has no bundle.json" in out.stderr and "make prepare" in out.stderr
        assert docker("inspect", CONTROL, check=False).returncode != 0
    finally:
        labctl_run("down")
