"""gemma-airgap's healer: restarts the stack's containers that stay unhealthy, and loads the
default model again after Ollama restarts.

Docker restarts a container whose process exits (restart: unless-stopped), never one that
runs but fails its healthcheck: a hung Ollama stays hung. After any restart of Ollama, the
model it kept loaded is gone until the first request pays the load time. This daemon, run by
systemd on every target (roles/healer), closes both gaps:

- every `interval` seconds it inspects the compose project's containers through the docker
  CLI; a watched service's container that stays `unhealthy` longer than `grace_seconds` is
  restarted (`docker restart -t`), at most `max_restarts_per_hour` times per service: past
  that it stops and says so (a broken release must not restart for ever);
- when Ollama's container has started again (the healer's restart or anyone's), it waits
  for it to be healthy and asks it to load the default model (POST /api/generate with an
  empty prompt; no keep_alive: OLLAMA_KEEP_ALIVE in the container already says how long);
- it writes the textfile metrics node-exporter serves (healer.prom, replaced atomically) and
  keeps its counters in a small JSON state file, so they survive its own restarts.

Everything docker answers is treated as hostile: bounded in size, parsed with json, checked
field by field; every command and request has a timeout. Standard library only (Python 3.11+):
a target has nothing else. One log line per action on stdout (the journal).

Usage: python3 gemma_airgap_healer.py --config /opt/gemma-airgap/healer/config.json [--once|--check]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG = logging.getLogger("gemma-airgap-healer")

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_ONEOFF = "com.docker.compose.oneoff"
# What we accept from outside before even parsing it: a project's `docker inspect` is tens of
# KiB; a container list a few KiB; Ollama's answer to an empty prompt a few hundred bytes.
MAX_INSPECT_BYTES = 8 * 1024 * 1024
MAX_LIST_BYTES = 256 * 1024
MAX_CONTAINERS = 64
MAX_STATE_BYTES = 256 * 1024
MAX_CONFIG_BYTES = 64 * 1024
MAX_PRELOAD_ANSWER_BYTES = 1024 * 1024
CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
# Compose service names (and thus our metric labels): letters, digits, '.', '_', '-'.
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
HOUR = 3600.0
# A restarted Ollama that never loads the model is tried this many times, then left alone.
PRELOAD_ATTEMPTS = 3


class HealerError(Exception):
    """A check that could not be done; the message says what went wrong."""


class ConfigError(HealerError):
    """A configuration the healer cannot run with."""


def printable(value: object, limit: int = 200) -> str:
    """A string from docker or a server, safe for one journal line: no control characters,
    bounded, so a hostile container name cannot forge or flood log lines."""
    text = str(value)
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


# --- Configuration ---------------------------------------------------------------------------

def _number(raw: dict, key: str, low: float, high: float, default: float | None = None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _path(raw: dict, key: str, default: str | None = None) -> Path:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{key} must be an absolute path, not {value!r}")
    return Path(value)


@dataclass(frozen=True)
class PreloadConfig:
    """Which service is Ollama, where it listens, and what it should keep loaded."""

    model: str
    service: str = "ollama"
    network: str = "gemma-airgap_backend"
    port: int = 11434
    timeout: int = 600

    @classmethod
    def from_dict(cls, raw: object) -> PreloadConfig:
        if not isinstance(raw, dict):
            raise ConfigError("preload must be an object")
        model = raw.get("model", "")
        if not isinstance(model, str) or len(model) > 256:
            raise ConfigError(f"preload.model must be a model name, not {model!r}")
        service = raw.get("service", "ollama")
        network = raw.get("network", "gemma-airgap_backend")
        if not isinstance(service, str) or not SERVICE_NAME.fullmatch(service):
            raise ConfigError(f"preload.service is not a compose service name: {service!r}")
        if not isinstance(network, str) or not 0 < len(network) <= 256:
            raise ConfigError(f"preload.network is not a network name: {network!r}")
        return cls(model=model, service=service, network=network,
                   port=_number(raw, "port", 1, 65535, 11434),
                   timeout=_number(raw, "timeout", 1, 3600, 600))


@dataclass(frozen=True)
class Config:
    """The healer's settings, as roles/healer writes them (config.json)."""

    project: str
    services: tuple[str, ...]
    textfile_dir: Path
    state_file: Path
    preload: PreloadConfig
    interval: int = 15
    grace_seconds: int = 60
    max_restarts_per_hour: int = 3
    restart_timeout: int = 30
    command_timeout: int = 30
    docker: str = "docker"

    @classmethod
    def from_dict(cls, raw: object) -> Config:
        if not isinstance(raw, dict):
            raise ConfigError("the configuration must be a JSON object")
        project = raw.get("project")
        # Compose's own rule for project names.
        if not isinstance(project, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", project):
            raise ConfigError(f"project is not a compose project name: {project!r}")
        services = raw.get("services")
        if (not isinstance(services, list) or not 0 < len(services) <= 32
                or not all(isinstance(s, str) and SERVICE_NAME.fullmatch(s) for s in services)):
            raise ConfigError(f"services must be a list of compose service names, not {services!r}")
        docker = raw.get("docker", "docker")
        if not isinstance(docker, str) or not docker:
            raise ConfigError(f"docker must be the docker CLI's path, not {docker!r}")
        return cls(project=project, services=tuple(dict.fromkeys(services)),
                   textfile_dir=_path(raw, "textfile_dir"), state_file=_path(raw, "state_file"),
                   preload=PreloadConfig.from_dict(raw.get("preload", {})),
                   interval=_number(raw, "interval", 1, 3600, 15),
                   grace_seconds=_number(raw, "grace_seconds", 0, 86400, 60),
                   max_restarts_per_hour=_number(raw, "max_restarts_per_hour", 0, 1000, 3),
                   restart_timeout=_number(raw, "restart_timeout", 0, 600, 30),
                   command_timeout=_number(raw, "command_timeout", 1, 600, 30),
                   docker=docker)

    @classmethod
    def load(cls, path: Path) -> Config:
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_CONFIG_BYTES + 1)
        except OSError as error:
            raise ConfigError(f"cannot read {path}: {error.strerror}") from None
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
        try:
            return cls.from_dict(json.loads(data))
        except ValueError as error:
            raise ConfigError(f"{path} is not JSON: {error}") from None


# --- Docker ----------------------------------------------------------------------------------

def run_bounded(argv: list[str], timeout: float, limit: int) -> bytes:
    """Run a command; its stdout, or HealerError. The output goes to a temporary file, so a
    command that answers gigabytes costs disk for a moment, never the daemon's memory."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            # A session of its own: on a timeout the whole group goes, helpers included.
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                       start_new_session=True)
        except OSError as error:
            raise HealerError(f"cannot run {argv[0]}: {error.strerror}") from None
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise HealerError(f"`{' '.join(argv[:3])}` did not finish in {timeout:g} s") from None
        size = os.fstat(out.fileno()).st_size
        if size > limit:
            raise HealerError(f"`{' '.join(argv[:3])}` answered {size} bytes, over {limit}")
        out.seek(0)
        err.seek(0)
        if returncode != 0:
            detail = printable(err.read(2000).decode("utf-8", "replace").strip())
            raise HealerError(f"`{' '.join(argv[:3])}` failed ({returncode}): {detail}")
        return out.read()


def _field(obj: object, *path: str, kind: type, optional: bool = False) -> Any:
    """obj[path[0]][path[1]]... checked to be of `kind`; None when optional and absent."""
    for key in path:
        if not isinstance(obj, dict):
            raise HealerError(f"docker inspect: {'.'.join(path)} is not inside an object")
        obj = obj.get(key)
        if obj is None:
            if optional:
                return None
            raise HealerError(f"docker inspect: {'.'.join(path)} is missing")
    if not isinstance(obj, kind):
        raise HealerError(f"docker inspect: {'.'.join(path)} is not a {kind.__name__}")
    return obj


@dataclass(frozen=True)
class Container:
    """What the healer needs of one container, checked field by field."""

    id: str
    name: str
    service: str
    running: bool
    paused: bool
    restarting: bool
    health: str | None  # None: the image has no healthcheck
    started_at: str
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """Runs, and its healthcheck (when it has one) passes."""
        up = self.running and not self.paused and not self.restarting
        return up and self.health in (None, "healthy")

    @property
    def stuck(self) -> bool:
        """Runs and fails its healthcheck: a hung or frozen process. A stopped or paused
        container is an operator's choice, never ours to undo (Docker also stops checking a
        paused container's health, so its status says nothing new)."""
        return (self.running and not self.paused and not self.restarting
                and self.health == "unhealthy")

    @classmethod
    def from_inspect(cls, item: object, project: str) -> Container | None:
        """The container, or None when it is not a service container of `project`."""
        cid = _field(item, "Id", kind=str)
        if not CONTAINER_ID.fullmatch(cid):
            raise HealerError(f"docker inspect: {printable(cid, 80)!r} is not a container id")
        labels = _field(item, "Config", "Labels", kind=dict, optional=True) or {}
        service = labels.get(COMPOSE_SERVICE)
        # `docker compose run` leaves one-off containers with the service's label.
        if labels.get(COMPOSE_PROJECT) != project or labels.get(COMPOSE_ONEOFF) == "True":
            return None
        if not isinstance(service, str) or not SERVICE_NAME.fullmatch(service):
            return None
        health = _field(item, "State", "Health", "Status", kind=str, optional=True)
        networks = _field(item, "NetworkSettings", "Networks", kind=dict, optional=True) or {}
        addresses = {}
        for network, settings in list(networks.items())[:MAX_CONTAINERS]:
            address = settings.get("IPAddress") if isinstance(settings, dict) else None
            if isinstance(network, str) and isinstance(address, str) and address:
                addresses[network] = address
        return cls(id=cid, name=printable(_field(item, "Name", kind=str).lstrip("/"), 128),
                   service=service,
                   running=_field(item, "State", "Running", kind=bool),
                   paused=bool(_field(item, "State", "Paused", kind=bool, optional=True)),
                   restarting=bool(_field(item, "State", "Restarting", kind=bool, optional=True)),
                   health=printable(health, 32) if health is not None else None,
                   started_at=printable(_field(item, "State", "StartedAt", kind=str), 64),
                   addresses=addresses)


class DockerCli:
    """The docker CLI, each call with a timeout and a bound on what it may answer."""

    def __init__(self, binary: str, timeout: float) -> None:
        self.binary = binary
        self.timeout = timeout

    def containers(self, project: str) -> list[Container]:
        """Every service container of the compose project, running or not."""
        listed = run_bounded([self.binary, "ps", "--all", "--quiet", "--no-trunc", "--filter",
                              f"label={COMPOSE_PROJECT}={project}"], self.timeout, MAX_LIST_BYTES)
        ids = listed.decode("ascii", "replace").split()
        bad = [cid for cid in ids if not CONTAINER_ID.fullmatch(cid)]
        if bad:
            raise HealerError(f"docker ps: {printable(bad[0], 80)!r} is not a container id")
        if len(ids) > MAX_CONTAINERS:
            raise HealerError(f"docker ps: {len(ids)} containers, more than {MAX_CONTAINERS}")
        if not ids:
            return []
        answer = run_bounded([self.binary, "inspect", "--type", "container", "--", *ids],
                             self.timeout, MAX_INSPECT_BYTES)
        try:
            items = json.loads(answer)
        except ValueError as error:
            raise HealerError(f"docker inspect did not answer JSON: {error}") from None
        if not isinstance(items, list):
            raise HealerError("docker inspect did not answer a list")
        found = (Container.from_inspect(item, project) for item in items)
        return [container for container in found if container is not None]

    def restart(self, container: Container, timeout: int) -> None:
        """Restart by id (checked hex, after `--`: a name could pose as an option)."""
        run_bounded([self.binary, "restart", "-t", str(timeout), "--", container.id],
                    timeout + self.timeout, MAX_LIST_BYTES)


# --- State and metrics -----------------------------------------------------------------------

def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace path with text in one rename (same directory, so the same filesystem): a
    reader sees the old file or the new one, never half of one."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass
class State:
    """What must survive the healer's own restarts: counters (Prometheus counters must not go
    back to 0 without a reason), recent restarts (so the hourly cap holds across a crash loop),
    and the Ollama start it last saw (so a restart while the healer was down is noticed)."""

    restarts_total: dict[str, int] = field(default_factory=dict)
    recent_restarts: dict[str, list[float]] = field(default_factory=dict)
    preloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    errors_total: int = 0
    ollama_start: str | None = None
    preload_pending: str | None = None

    @classmethod
    def load(cls, path: Path) -> State:
        """The saved state; a fresh one (logged) when it is missing or unreadable."""
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return cls()
        except OSError as error:
            LOG.error("cannot read state %s (%s); counting from 0", path, error.strerror)
            return cls()
        try:
            if len(data) > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
            raw = json.loads(data)
            if not isinstance(raw, dict):
                raise ValueError("not an object")
        except ValueError as error:
            LOG.error("state %s is unreadable (%s); counting from 0", path, error)
            return cls()
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict) -> State:
        def mapping(key: str) -> dict:
            value = raw.get(key)
            return value if isinstance(value, dict) else {}

        def text(key: str) -> str | None:
            value = raw.get(key)
            return value[:256] if isinstance(value, str) else None

        def moment(value: object) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool)

        recent = {
            name: [t for t in times if moment(t)][-1000:]
            for name, times in mapping("recent_restarts").items()
            if isinstance(name, str) and SERVICE_NAME.fullmatch(name) and isinstance(times, list)
        }
        preloads = mapping("preloads")
        return cls(
            restarts_total={name: _count(count) for name, count in mapping("restarts_total").items()
                            if isinstance(name, str) and SERVICE_NAME.fullmatch(name)},
            recent_restarts=recent,
            preloads={"ok": _count(preloads.get("ok")), "failed": _count(preloads.get("failed"))},
            errors_total=_count(raw.get("errors_total")),
            ollama_start=text("ollama_start"), preload_pending=text("preload_pending"))

    def save(self, path: Path) -> None:
        write_atomically(path, json.dumps(self.__dict__, sort_keys=True) + "\n", 0o600)

    def restarts_last_hour(self, service: str, now: float) -> int:
        """Restarts (attempted) in the last hour; forgets older ones."""
        recent = [t for t in self.recent_restarts.get(service, []) if now - HOUR < t <= now]
        self.recent_restarts[service] = recent
        return len(recent)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> list[str]:
    """One metric family in Prometheus's text format; nothing at all when it has no sample."""
    if not samples:
        return []
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}",
            *(f"{name}{labels} {value if isinstance(value, int) else f'{value:.3f}'}"
              for labels, value in samples)]


def render_metrics(services: tuple[str, ...], healthy: dict[str, bool] | None,
                   gave_up: set[str], state: State, last_check: float | None) -> str:
    """The textfile, in Prometheus's text format (monitoring contract, issue 15).

    A service with no container at all is left out of gemma_airgap_container_healthy (it is
    not deployed on this target, as vision on a site without it); when docker could not be
    asked (healthy is None) that metric is left out entirely: unknown is not unhealthy, and
    the errors counter and the old last-check timestamp say what happened."""
    def by_service(values: dict[str, float]) -> list[tuple[str, float]]:
        return [(f'{{service="{_escape(s)}"}}', v) for s, v in values.items()]

    lines = _family("gemma_airgap_container_healthy", "gauge",
                    "1 when the compose service's container runs and is healthy, else 0.",
                    by_service({s: int(up) for s, up in (healthy or {}).items()}))
    lines += _family("gemma_airgap_healer_restarts_total", "counter",
                     "Restarts the healer did of a container that stayed unhealthy.",
                     by_service({s: state.restarts_total.get(s, 0) for s in services}))
    lines += _family("gemma_airgap_healer_gave_up", "gauge",
                     "1 while a service stays unhealthy and the healer has used its restarts "
                     "for the hour.", by_service({s: int(s in gave_up) for s in services}))
    lines += _family("gemma_airgap_model_preloads_total", "counter",
                     "Default-model preloads after Ollama (re)started, by result.",
                     [(f'{{result="{r}"}}', state.preloads[r]) for r in ("ok", "failed")])
    lines += _family("gemma_airgap_healer_errors_total", "counter",
                     "Checks that failed (docker unreachable or answering what it should not).",
                     [("", state.errors_total)])
    lines += _family("gemma_airgap_healer_last_check_timestamp_seconds", "gauge",
                     "When the healer last checked the containers successfully.",
                     [("", round(last_check, 3))] if last_check is not None else [])
    return "\n".join(lines) + "\n"


# --- Preload ---------------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Ollama never redirects; whatever does is not Ollama, and is not followed."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


def preload(url: str, model: str, timeout: float) -> None:
    """Ask Ollama to load `model`; HealerError when it did not say it did. No keep_alive in
    the request: Ollama wants a Go duration there ("-1" is a 400), and OLLAMA_KEEP_ALIVE in
    the container already keeps the model loaded as long as the site wants."""
    body = json.dumps({"model": model, "prompt": ""}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    # No proxy: Ollama is on the stack's internal network, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(request, timeout=timeout) as answer:
            data = answer.read(MAX_PRELOAD_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as error:
        detail = printable(error.read(500).decode("utf-8", "replace").strip())
        raise HealerError(f"Ollama answered {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise HealerError(f"Ollama did not answer: {printable(reason)}") from None
    if len(data) > MAX_PRELOAD_ANSWER_BYTES:
        raise HealerError(f"Ollama's answer is over {MAX_PRELOAD_ANSWER_BYTES} bytes")
    # One JSON object, or several (one per line) when Ollama streams: any error fails it.
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            message = json.loads(line) if line.strip() else {}
        except ValueError:
            raise HealerError(f"Ollama's answer is not JSON: {printable(line, 100)}") from None
        if isinstance(message, dict) and message.get("error"):
            raise HealerError(f"Ollama refused: {printable(message['error'])}")


class Preloader:
    """One preload at a time, in a thread: loading a large model takes minutes, and meanwhile
    the other services must still be watched."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._result: tuple[str, str | None] | None = None  # (start key, error or None)
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        """Preloading, or done with a result nobody has taken yet: either way, not again."""
        return self._thread is not None

    def start(self, key: str, url: str, model: str, timeout: float) -> None:
        def work() -> None:
            try:
                preload(url, model, timeout)
                outcome = None
            except HealerError as error:
                outcome = str(error)
            with self._lock:
                self._result = (key, outcome)

        self._thread = threading.Thread(target=work, name="preload", daemon=True)
        self._thread.start()

    def take_result(self) -> tuple[str, str | None] | None:
        """The finished preload's (key, error), once; None while none has finished."""
        with self._lock:
            result, self._result = self._result, None
        if result is not None:
            self._thread = None
        return result

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


# --- The healer ------------------------------------------------------------------------------

class Healer:
    """One check: inspect, restart what stays unhealthy (within the cap), preload after an
    Ollama start, write the metrics and the state."""

    def __init__(self, config: Config, docker: DockerCli | None = None) -> None:
        self.config = config
        self.docker = docker or DockerCli(config.docker, config.command_timeout)
        self.state = State.load(config.state_file)
        self.preloader = Preloader()
        self.unhealthy_since: dict[str, float] = {}  # container id -> monotonic time first seen
        self.gave_up: set[str] = set()
        self.last_health: dict[str, bool] = {}
        self.preload_attempts = 0
        self.last_check: float | None = None
        self.healthy: dict[str, bool] | None = None

    def check_once(self) -> None:
        """One pass. A failure to ask docker is logged and counted; it never stops the loop."""
        self._collect_preload()
        try:
            containers = self.docker.containers(self.config.project)
        except HealerError as error:
            LOG.error("check failed: %s", error)
            self.state.errors_total += 1
            self.healthy = None
        else:
            watched = [c for c in containers if c.service in self.config.services]
            self.healthy = self._health(watched)
            self._heal(watched)
            self._watch_ollama(watched)
            self.last_check = time.time()
        self._collect_preload()
        self._save()

    def _health(self, watched: list[Container]) -> dict[str, bool]:
        """Per service: healthy when it has containers and every one is; changes logged."""
        healthy: dict[str, bool] = {}
        for service in self.config.services:
            mine = [c for c in watched if c.service == service]
            if not mine:
                continue
            healthy[service] = all(c.healthy for c in mine)
            if self.last_health.get(service) != healthy[service]:
                states = ", ".join(f"{c.name} {self._describe(c)}" for c in mine)
                LOG.info("%s is %s (%s)", service,
                         "healthy" if healthy[service] else "not healthy", states)
            self.last_health[service] = healthy[service]
        return healthy

    @staticmethod
    def _describe(container: Container) -> str:
        if not container.running:
            return "stopped"
        if container.paused:
            return f"paused, {container.health or 'no healthcheck'}"
        return container.health or "running, no healthcheck"

    def _heal(self, watched: list[Container]) -> None:
        now = time.monotonic()
        seen = {c.id for c in watched}
        # Forget containers that are gone (recreated by a deploy, removed).
        self.unhealthy_since = {k: v for k, v in self.unhealthy_since.items() if k in seen}
        for container in watched:
            if not container.stuck:
                self.unhealthy_since.pop(container.id, None)
                continue
            since = self.unhealthy_since.setdefault(container.id, now)
            if now - since > self.config.grace_seconds:
                self._restart(container, now - since)
        # A service that is healthy again (or gone) is no longer given up on.
        self.gave_up = {s for s in self.gave_up if (self.healthy or {}).get(s) is False}

    def _restart(self, container: Container, unhealthy_for: float) -> None:
        service, cap = container.service, self.config.max_restarts_per_hour
        done = self.state.restarts_last_hour(service, time.time())
        if done >= cap:
            if service not in self.gave_up:
                LOG.error("not restarting %s (service %s), unhealthy for %.0f s: %d restart(s) in "
                          "the last hour, the most allowed (healer_max_restarts_per_hour=%d); it "
                          "needs someone to look at it", container.name, service, unhealthy_for,
                          done, cap)
                self.gave_up.add(service)
            return
        self.gave_up.discard(service)
        LOG.warning("restarting %s (service %s): unhealthy for %.0f s, over the %d s grace; "
                    "restart %d of at most %d this hour", container.name, service, unhealthy_for,
                    self.config.grace_seconds, done + 1, cap)
        # Counted in the hour before it is tried: a restart that fails still uses one.
        self.state.recent_restarts.setdefault(service, []).append(time.time())
        self.unhealthy_since.pop(container.id, None)
        try:
            self.docker.restart(container, self.config.restart_timeout)
        except HealerError as error:
            LOG.error("restart of %s failed: %s", container.name, error)
            self.state.errors_total += 1
            return
        self.state.restarts_total[service] = self.state.restarts_total.get(service, 0) + 1
        LOG.info("restarted %s (service %s); %d restart(s) by the healer in all", container.name,
                 service, self.state.restarts_total[service])

    def _watch_ollama(self, watched: list[Container]) -> None:
        """Notice every new start of Ollama's container; preload once it is healthy."""
        settings = self.config.preload
        if not settings.model:
            return
        ollama = next((c for c in watched if c.service == settings.service), None)
        if ollama is None or not ollama.running:
            return
        key = f"{ollama.id}@{ollama.started_at}"
        if self.state.ollama_start is None:
            # The first sight of it: deploy has just preloaded, or it has run for a while.
            self.state.ollama_start = key
        elif key != self.state.ollama_start:
            LOG.info("%s started again (at %s); the model %s will be preloaded once it is healthy",
                     ollama.name, ollama.started_at, settings.model)
            self.state.ollama_start = key
            self.state.preload_pending = key
            self.preload_attempts = 0
        if self.state.preload_pending == key and ollama.healthy and not self.preloader.busy:
            self._start_preload(ollama, key)

    def _start_preload(self, ollama: Container, key: str) -> None:
        settings = self.config.preload
        self.preload_attempts += 1
        raw = ollama.addresses.get(settings.network, "")
        try:
            address = ipaddress.ip_address(raw)
        except ValueError:
            self._preload_done(key, f"{ollama.name} has no address on network {settings.network}")
            return
        host = f"[{address}]" if address.version == 6 else str(address)
        url = f"http://{host}:{settings.port}/api/generate"
        LOG.info("preloading %s on %s (%s), attempt %d", settings.model, ollama.name, url,
                 self.preload_attempts)
        self.preloader.start(key, url, settings.model, settings.timeout)

    def _collect_preload(self) -> None:
        result = self.preloader.take_result()
        if result is not None:
            self._preload_done(*result)

    def _preload_done(self, key: str, error: str | None) -> None:
        model = self.config.preload.model
        if error is None:
            self.state.preloads["ok"] += 1
            LOG.info("preloaded %s", model)
        else:
            self.state.preloads["failed"] += 1
            LOG.error("preload of %s failed: %s", model, error)
        if self.state.preload_pending != key:
            return  # Ollama started again meanwhile: that start has its own preload.
        if error is None or self.preload_attempts >= PRELOAD_ATTEMPTS:
            if error is not None:
                LOG.error("giving up preloading %s after %d attempts: the first request will "
                          "load it", model, self.preload_attempts)
            self.state.preload_pending = None

    def _save(self) -> None:
        """The state, then the metrics; a failure to write is logged, and retried next time."""
        try:
            self.state.save(self.config.state_file)
        except OSError as error:
            LOG.error("cannot write state %s: %s", self.config.state_file, error.strerror)
        text = render_metrics(self.config.services, self.healthy, self.gave_up, self.state,
                              self.last_check)
        try:
            write_atomically(self.config.textfile_dir / "healer.prom", text)
        except OSError as error:
            LOG.error("cannot write metrics in %s: %s", self.config.textfile_dir, error.strerror)

    def run(self, stop: threading.Event) -> None:
        """Check every interval until stop is set (SIGTERM)."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.check_once()
            except Exception:  # a bug must not stop the healing; systemd would restart us anyway
                LOG.exception("unexpected error in a check; going on")
            stop.wait(max(0.0, self.config.interval - (time.monotonic() - started)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--config", type=Path, required=True, help="config.json (roles/healer)")
    parser.add_argument("--once", action="store_true", help="one check, then exit")
    parser.add_argument("--check", action="store_true",
                        help="check the configuration and exit (the role validates with it)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        config = Config.load(args.config)
    except ConfigError as error:
        LOG.error("%s", error)
        return 2
    if args.check:
        return 0
    healer = Healer(config)
    if args.once:
        healer.check_once()
        healer.preloader.join(config.preload.timeout)
        healer._collect_preload()
        healer._save()
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    LOG.info("watching %s of project %s every %d s (grace %d s, at most %d restarts per hour "
             "per service; preload: %s)", ", ".join(config.services), config.project,
             config.interval, config.grace_seconds, config.max_restarts_per_hour,
             config.preload.model or "off")
    healer.run(stop)
    LOG.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
