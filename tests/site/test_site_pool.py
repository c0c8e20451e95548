"""Two inference hosts behind every gateway: each gateway lists both hosts; Ollama's site
port answers the other edge host and nobody else; one host's Ollama killed under load costs no
request and the host comes back into the pool."""

from __future__ import annotations

import concurrent.futures
import socket

import httpx
import pytest

from .conftest import (
    FIREWALL_UNIT,
    HOSTS,
    PREFIX,
    SECOND,
    TARGET,
    address,
    backends,
    docker,
    generate,
    wait_for,
)

pytestmark = pytest.mark.site


def test_every_gateway_fronts_both_hosts_and_both_serve(site):
    for host, gateway in site.items():
        pool = wait_for(lambda gateway=gateway: (lambda found: found if all(
            entry["answering"] for entry in found.values()) else None)(backends(gateway)), 60)
        assert sorted(pool) == sorted(HOSTS)
        own = pool[host]
        assert own["url"] == "http://ollama:11434"
        other = pool[next(name for name in HOSTS if name != host)]
        assert other["url"].endswith(":11434") and "ollama" not in other["url"]
    with concurrent.futures.ThreadPoolExecutor(4) as workers:
        answers = list(workers.map(lambda _: generate(site[TARGET]), range(8)))
    assert [answer.status_code for answer in answers] == [200] * 8
    served = backends(site[TARGET])
    assert all(entry["in_flight"] == 0 for entry in served.values())


def reaches(source: str | None, host: str, port: int = 11434) -> bool:
    """Whether a TCP connection from `source` (a lab container; None: this machine) to the
    host's Ollama port on its site address opens within 3 s."""
    script = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])),"
              " timeout=3).close()\nexcept OSError:\n sys.exit(1)")
    if source is None:
        try:
            socket.create_connection((address(host), port), timeout=3).close()
        except OSError:
            return False
        return True
    return docker("exec", source, "python3", "-c", script, address(host), str(port),
                  check=False).returncode == 0


def test_ollama_answers_the_other_edge_host_and_nobody_else(site):
    assert reaches(SECOND, TARGET) and reaches(TARGET, SECOND)
    # This machine and the control node are on the same network, and are not edge hosts.
    assert not reaches(None, TARGET) and not reaches(None, SECOND)
    control = f"{PREFIX}-control"
    if docker("inspect", control, check=False).returncode == 0:
        assert not reaches(control, TARGET)
    # The gateway's own port stays open to everyone (it asks for a key).
    assert reaches(None, TARGET, 8080)
    for host in HOSTS:
        state = docker("exec", host, "systemctl", "is-active", FIREWALL_UNIT, check=False)
        assert state.stdout.strip() == "active", state.stdout + state.stderr
    # A restart of the engine keeps the rule (the unit runs again after it).
    docker("exec", SECOND, "systemctl", "restart", "docker")
    wait_for(lambda: httpx.get(f"{site[SECOND]}/readyz", timeout=5).status_code == 200
             if reaches(None, SECOND, 8080) else False, 120, every=1)
    assert reaches(TARGET, SECOND) and not reaches(None, SECOND)


def test_a_host_whose_ollama_dies_under_load_costs_no_request_and_comes_back(site):
    gateway = site[SECOND]
    served, failed = [], []
    stop = False

    def client() -> None:
        while not stop:
            answer = generate(gateway)
            (served if answer.status_code == 200 else failed).append(answer)

    with concurrent.futures.ThreadPoolExecutor(3) as workers:
        running = [workers.submit(client) for _ in range(3)]
        try:
            wait_for(lambda: len(served) >= 6, 120)
            # A crash, not a stop: its process killed from the host (`docker kill` would count
            # as a stop, which the restart policy leaves stopped).
            docker("exec", TARGET, "sh", "-c",
                   "kill -9 $(docker inspect -f '{{.State.Pid}}' gemma-airgap-ollama-1)")
            killed_at = len(served)
            wait_for(lambda: len(served) >= killed_at + 9, 180)
        finally:
            stop = True
            for worker in running:
                worker.result()
    assert failed == [], [answer.text for answer in failed]
    # Docker restarts the crashed container; the pool takes the host back once it answers.
    wait_for(lambda: backends(gateway)[TARGET]["answering"] and
             backends(gateway)[TARGET]["ejected_seconds"] == 0, 120, every=1)
    with concurrent.futures.ThreadPoolExecutor(3) as workers:
        answers = list(workers.map(lambda _: generate(gateway), range(6)))
    assert [answer.status_code for answer in answers] == [200] * 6
