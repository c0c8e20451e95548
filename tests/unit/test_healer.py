"""The healer daemon (roles/healer/files/gemma_airgap_healer.py) against a real Docker engine.

Each test starts containers labelled as a compose project of its own (never gemma-airgap's),
named gemma-airgap-healertest-*, from the lab's Debian 12 base image, with a healthcheck the
test flips through a file in a bind-mounted directory; the "Ollama" is a tiny HTTP server in
such a container that records what it is asked. Everything started is removed again.
Docker's own garbage is played by a fake docker CLI, the one thing a real engine will not do.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import labctl

ROOT = Path(__file__).resolve().parents[2]
HEALER_PATH = ROOT / "roles" / "healer" / "files" / "gemma_airgap_healer.py"
PREFIX = "gemma-airgap-healertest-"
IMAGE = labctl.BUILDER_IMAGE.tag  # Debian 12 + python3, built by the lab from Debian's packages
MODEL = "gemma3n:tiny"
PORT = 11434  # where molecule/healer/files/fake_ollama.py listens


def _load_healer():
    spec = importlib.util.spec_from_file_location("gemma_airgap_healer", HEALER_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


healer = _load_healer()

# The stand-in Ollama the role scenario uses too (it listens on PORT).
FAKE_OLLAMA = (ROOT / "molecule" / "healer" / "files" / "fake_ollama.py").read_text()


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], text=True, capture_output=True, check=check,
                          timeout=120)


def inspect(name: str) -> dict:
    return json.loads(docker("inspect", "--type", "container", name).stdout)[0]


def wait_for(predicate, what: str, timeout: float = 40.0, step: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_health(name: str, status: str) -> None:
    wait_for(lambda: inspect(name)["State"].get("Health", {}).get("Status") == status,
             f"{name} to be {status}")


def read_metrics(textfile_dir: Path) -> dict[str, float]:
    """healer.prom as {'name{labels}': value}."""
    samples = {}
    for line in (textfile_dir / "healer.prom").read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@pytest.fixture(scope="module")
def engine() -> str:
    """A running engine and the base image (both made by the lab when missing)."""
    labctl.ensure_engine()
    labctl.ensure_base_images(labctl.LabConfig.from_env(), (labctl.BUILDER_IMAGE,))
    return IMAGE


class Project:
    """A compose project of the test's own: its containers, network and flag directories."""

    def __init__(self, tmp_path: Path) -> None:
        self.name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
        self.tmp = tmp_path
        self.network = f"{self.name}_backend"
        self.textfile_dir = tmp_path / "textfile"
        self.textfile_dir.mkdir()
        self.state_file = tmp_path / "state.json"
        self.has_network = False

    def flags(self, service: str) -> Path:
        path = self.tmp / f"flags-{service}"
        path.mkdir(exist_ok=True)
        return path

    def container(self, service: str) -> str:
        return f"{self.name}-{service}-1"

    def start(self, service: str, ollama: bool = False) -> str:
        """A service container; healthy while flags-<service>/sick is absent."""
        name = self.container(service)
        check = "test ! -e /flags/sick"
        command = ["sleep", "infinity"]
        network: list[str] = []
        if ollama:
            if not self.has_network:
                docker("network", "create", "--label", f"com.docker.compose.project={self.name}",
                       self.network)
                self.has_network = True
            check += (f" && python3 -c \"import urllib.request; "
                      f"urllib.request.urlopen('http://127.0.0.1:{PORT}/', timeout=2)\"")
            command = ["python3", "-c", FAKE_OLLAMA]
            network = ["--network", self.network]
        # --init: a PID 1 that stops on SIGTERM, so a restart takes no stop timeout.
        docker("run", "-d", "--init", "--name", name, *network,
               "--label", f"com.docker.compose.project={self.name}",
               "--label", f"com.docker.compose.service={service}",
               "-v", f"{self.flags(service)}:/flags",
               "--health-cmd", check, "--health-interval", "1s", "--health-retries", "1",
               "--health-timeout", "3s", IMAGE, *command)
        wait_health(name, "healthy")
        return name

    def sicken(self, service: str, sick: bool = True) -> None:
        flag = self.flags(service) / "sick"
        if sick:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def config(self, **overrides) -> dict:
        config = {"project": self.name, "services": ["ollama", "vision", "gateway"],
                  "interval": 1, "grace_seconds": 2, "max_restarts_per_hour": 1,
                  "restart_timeout": 1, "command_timeout": 20,
                  "textfile_dir": str(self.textfile_dir), "state_file": str(self.state_file),
                  "preload": {"model": "", "network": self.network, "port": PORT,
                              "timeout": 10}}
        config.update(overrides)
        return config

    def healer(self, **overrides):
        return healer.Healer(healer.Config.from_dict(self.config(**overrides)))

    def metrics(self) -> dict[str, float]:
        return read_metrics(self.textfile_dir)

    def remove(self) -> None:
        found = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.name}",
                       check=False).stdout.split()
        if found:
            docker("rm", "-f", *found, check=False)
        if self.has_network:
            docker("network", "rm", self.network, check=False)


@pytest.fixture
def project(engine, tmp_path):
    made = Project(tmp_path)
    yield made
    made.remove()


def started_at(name: str) -> str:
    return inspect(name)["State"]["StartedAt"]


def test_a_healthy_container_is_left_alone(project):
    name = project.start("gateway")
    before = started_at(name)
    watcher = project.healer()
    watcher.check_once()
    time.sleep(2.5)  # past the grace
    watcher.check_once()
    assert started_at(name) == before
    metrics = project.metrics()
    assert metrics['gemma_airgap_container_healthy{service="gateway"}'] == 1
    assert metrics['gemma_airgap_healer_restarts_total{service="gateway"}'] == 0
    # Services without a container (not deployed here) are not reported as unhealthy.
    assert 'gemma_airgap_container_healthy{service="vision"}' not in metrics
    assert metrics["gemma_airgap_healer_last_check_timestamp_seconds"] == pytest.approx(
        time.time(), abs=10)


def test_unhealthy_past_the_grace_is_restarted_once_then_capped(project, caplog):
    caplog.set_level(logging.INFO, logger="gemma-airgap-healer")
    name = project.start("gateway")
    first = started_at(name)
    watcher = project.healer()
    project.sicken("gateway")
    wait_health(name, "unhealthy")
    watcher.check_once()
    assert project.metrics()['gemma_airgap_container_healthy{service="gateway"}'] == 0
    assert started_at(name) == first, "restarted within the grace"

    time.sleep(2.5)
    watcher.check_once()
    second = started_at(name)
    assert second != first
    metrics = project.metrics()
    assert metrics['gemma_airgap_healer_restarts_total{service="gateway"}'] == 1
    assert metrics['gemma_airgap_healer_gave_up{service="gateway"}'] == 0
    restarts = [r.message for r in caplog.records if r.message.startswith("restarting")]
    assert len(restarts) == 1
    assert restarts[0].startswith(f"restarting {name} (service gateway): unhealthy for ")
    assert restarts[0].endswith(" s, over the 2 s grace; restart 1 of at most 1 this hour")

    # Still sick after its restart: the one restart of the hour is spent.
    wait_health(name, "unhealthy")
    watcher.check_once()
    time.sleep(2.5)
    watcher.check_once()
    assert started_at(name) == second
    metrics = project.metrics()
    assert metrics['gemma_airgap_healer_restarts_total{service="gateway"}'] == 1
    assert metrics['gemma_airgap_healer_gave_up{service="gateway"}'] == 1
    assert any("not restarting" in r.message and "healer_max_restarts_per_hour=1" in r.message
               for r in caplog.records)

    # The healer itself restarts: the counter and the hour's restarts are kept.
    again = project.healer()
    again.check_once()
    time.sleep(2.5)
    again.check_once()
    assert started_at(name) == second
    assert project.metrics()['gemma_airgap_healer_restarts_total{service="gateway"}'] == 1

    project.sicken("gateway", False)
    wait_health(name, "healthy")
    again.check_once()
    metrics = project.metrics()
    assert metrics['gemma_airgap_container_healthy{service="gateway"}'] == 1
    assert metrics['gemma_airgap_healer_gave_up{service="gateway"}'] == 0


def test_the_cap_counts_per_service(project):
    gateway, vision = project.start("gateway"), project.start("vision")
    watcher = project.healer(max_restarts_per_hour=2, grace_seconds=1)
    for service in ("gateway", "vision"):
        project.sicken(service)
    starts = {name: {started_at(name)} for name in (gateway, vision)}
    for _ in range(3):
        for name in (gateway, vision):
            wait_health(name, "unhealthy")
        watcher.check_once()
        time.sleep(1.3)
        watcher.check_once()
        for name in (gateway, vision):
            starts[name].add(started_at(name))
    metrics = project.metrics()
    for service, name in (("gateway", gateway), ("vision", vision)):
        assert len(starts[name]) == 3, f"{service}: the first start and two restarts"
        assert metrics[f'gemma_airgap_healer_restarts_total{{service="{service}"}}'] == 2
        assert metrics[f'gemma_airgap_healer_gave_up{{service="{service}"}}'] == 1


def left_alone_after(project: Project, *operator_action: str) -> str:
    """An unhealthy gateway the healer has seen, then what an operator did to it, then the
    grace passed and two more checks: the healer must not have restarted it."""
    name = project.start("gateway")
    project.sicken("gateway")
    wait_health(name, "unhealthy")
    watcher = project.healer()
    watcher.check_once()
    docker(*operator_action, name)
    time.sleep(2.5)
    watcher.check_once()
    watcher.check_once()
    metrics = project.metrics()
    assert metrics['gemma_airgap_container_healthy{service="gateway"}'] == 0
    assert metrics['gemma_airgap_healer_restarts_total{service="gateway"}'] == 0
    return name


def test_a_stopped_container_is_not_started_again(project):
    name = left_alone_after(project, "stop", "-t", "1")  # an operator stopped it: not ours
    assert inspect(name)["State"]["Running"] is False


def test_a_paused_container_is_left_to_the_operator_who_paused_it(project):
    # Someone looks at the hung process: not ours to destroy.
    name = left_alone_after(project, "pause")
    try:
        assert inspect(name)["State"]["Paused"] is True
    finally:
        docker("unpause", name)


def requests_seen(project: Project) -> list[dict]:
    log = project.flags("ollama") / "requests.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def preloads(project: Project) -> tuple[float, float]:
    metrics = project.metrics()
    return (metrics['gemma_airgap_model_preloads_total{result="ok"}'],
            metrics['gemma_airgap_model_preloads_total{result="failed"}'])


def check_until(watcher, project: Project, wanted: tuple[int, int]) -> None:
    def done() -> bool:
        watcher.check_once()
        watcher.preloader.join(10)
        watcher.check_once()
        return preloads(project) == wanted

    wait_for(done, f"preloads (ok, failed) = {wanted}", step=0.5)


def test_a_restarted_ollama_gets_its_model_again(project, caplog):
    caplog.set_level(logging.INFO, logger="gemma-airgap-healer")
    name = project.start("ollama", ollama=True)
    watcher = project.healer(preload={"model": MODEL, "network": project.network, "port": PORT,
                                      "timeout": 10})
    watcher.check_once()  # the first sight: deploy has preloaded already
    watcher.check_once()
    assert requests_seen(project) == []

    docker("restart", "-t", "1", name)  # anyone's restart
    check_until(watcher, project, (1, 0))
    seen = requests_seen(project)
    assert [request["path"] for request in seen] == ["/api/generate"]
    body = json.loads(seen[0]["body"])
    assert body == {"model": MODEL, "prompt": ""}
    assert "keep_alive" not in body  # Ollama wants a Go duration there; the environment says it

    # The healer's own restart of a hung Ollama is followed by a preload too.
    project.sicken("ollama")
    wait_health(name, "unhealthy")
    watcher.check_once()
    time.sleep(2.5)
    watcher.check_once()
    assert project.metrics()['gemma_airgap_healer_restarts_total{service="ollama"}'] == 1
    project.sicken("ollama", False)
    check_until(watcher, project, (2, 0))
    assert len(requests_seen(project)) == 2

    # Ollama refusing: tried a few times, counted, then left alone.
    (project.flags("ollama") / "fail").touch()
    docker("restart", "-t", "1", name)
    check_until(watcher, project, (2, healer.PRELOAD_ATTEMPTS))
    for _ in range(3):
        watcher.check_once()
    assert preloads(project) == (2, healer.PRELOAD_ATTEMPTS)
    assert any(r.message.startswith("giving up preloading") for r in caplog.records)


def test_an_ollama_off_the_network_counts_failed_preloads_then_stops(project, caplog):
    name = project.start("ollama", ollama=True)
    watcher = project.healer(preload={"model": MODEL, "network": "elsewhere", "port": PORT})
    watcher.check_once()
    docker("restart", "-t", "1", name)
    check_until(watcher, project, (0, healer.PRELOAD_ATTEMPTS))
    assert f"{name} has no address on network elsewhere" in caplog.text
    assert requests_seen(project) == []


def test_the_daemon_heals_as_a_process_and_stops_on_sigterm(project):
    name = project.start("gateway")
    first = started_at(name)
    config = project.tmp / "config.json"
    config.write_text(json.dumps(project.config()))
    project.sicken("gateway")
    daemon = subprocess.Popen([sys.executable, "-I", str(HEALER_PATH), "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: started_at(name) != first, "the daemon to restart the container")
        wait_for(lambda: (project.textfile_dir / "healer.prom").exists() and project.metrics().get(
            'gemma_airgap_healer_restarts_total{service="gateway"}') == 1, "the counter")
    finally:
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, output
    lines = output.splitlines()
    assert lines[0].startswith("INFO watching ollama, vision, gateway of project gemma-airgap-")
    assert sum(line.startswith("WARNING restarting") for line in lines) == 1, output
    assert lines[-1] == "INFO stopped"
    # Only the textfile node-exporter reads, never a temporary file left behind.
    assert sorted(os.listdir(project.textfile_dir)) == ["healer.prom"]


FAKE_ID = "a" * 64


@pytest.mark.parametrize(("ps", "inspect_answer", "error"), [
    ("echo '<html>not ids</html>'", "", "is not a container id"),
    (f"echo {FAKE_ID}", "printf '[{\"Id\": '", "did not answer JSON"),
    (f"echo {FAKE_ID}", "echo '{\"Id\": \"x\"}'", "did not answer a list"),
    (f"echo {FAKE_ID}", "echo '[{\"Id\": 5}]'", "Id is not a str"),
    (f"echo {FAKE_ID}", "echo '[\"text\"]'", "Id is not inside an object"),
    (f"echo {FAKE_ID}", f"echo '[{{\"Id\": \"{FAKE_ID}\", \"Name\": \"/x\", \"Config\": "
     '{"Labels": {"com.docker.compose.project": "p", "com.docker.compose.service": "gateway"}}, '
     "\"State\": {\"Running\": \"yes\"}}]'", "State.Running is not a bool"),
    (f"echo {FAKE_ID}", "head -c 9000000 /dev/zero", "answered 9000000 bytes"),
    ("echo 'Cannot connect to the Docker daemon' >&2; exit 1", "", "failed (1): Cannot connect"),
    ("sleep 30", "", "did not finish in 1 s"),
], ids=["ps-not-ids", "cut-json", "not-a-list", "id-not-text", "item-not-object",
        "running-not-bool", "too-large", "engine-down", "hangs"])
def test_garbage_from_docker_is_logged_never_a_crash(tmp_path, caplog, ps, inspect_answer, error):
    calls = tmp_path / "calls"
    fake = tmp_path / "docker"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n"
                    f"case \"$1\" in ps) {ps} ;; inspect) {inspect_answer} ;; esac\n")
    fake.chmod(0o755)
    (tmp_path / "textfile").mkdir()
    config = healer.Config.from_dict({
        "project": "p", "services": ["gateway"], "docker": str(fake), "command_timeout": 1,
        "grace_seconds": 0, "textfile_dir": str(tmp_path / "textfile"),
        "state_file": str(tmp_path / "state.json"), "preload": {"model": MODEL}})
    watcher = healer.Healer(config)
    caplog.set_level(logging.INFO, logger="gemma-airgap-healer")
    watcher.check_once()
    watcher.check_once()
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR"]
    assert error in caplog.records[0].message
    metrics = read_metrics(tmp_path / "textfile")
    assert metrics["gemma_airgap_healer_errors_total"] == 2
    assert "gemma_airgap_healer_last_check_timestamp_seconds" not in metrics
    assert not any(key.startswith("gemma_airgap_container_healthy") for key in metrics)
    assert "restart" not in calls.read_text()


def test_an_unreadable_state_starts_from_zero(tmp_path, caplog):
    state = tmp_path / "state.json"
    state.write_text("{not json")
    assert healer.State.load(state) == healer.State()
    assert "unreadable" in caplog.text
    state.write_text(json.dumps({"restarts_total": {"gateway": 3, "../x": 9, "vision": -1},
                                 "preloads": {"ok": "many"},
                                 "recent_restarts": {"gateway": [1, "x"]}}))
    loaded = healer.State.load(state)
    assert loaded.restarts_total == {"gateway": 3, "vision": 0}
    assert loaded.preloads == {"ok": 0, "failed": 0}
    assert loaded.recent_restarts == {"gateway": [1]}


@pytest.mark.parametrize(("change", "error"), [
    ({"project": "Not A Project"}, "project is not a compose project name"),
    ({"services": ["ok", "bad name"]}, "services must be a list of compose service names"),
    ({"interval": 0}, "interval must be a whole number from 1 to 3600"),
    ({"max_restarts_per_hour": True}, "max_restarts_per_hour must be a whole number"),
    ({"textfile_dir": "relative"}, "textfile_dir must be an absolute path"),
    ({"preload": {"model": "m", "port": 70000}}, "port must be a whole number from 1 to 65535"),
])
def test_a_bad_configuration_is_refused(change, error):
    config = {"project": "gemma-airgap", "services": ["ollama"], "textfile_dir": "/t",
              "state_file": "/s.json", **change}
    with pytest.raises(healer.ConfigError, match=error):
        healer.Config.from_dict(config)
