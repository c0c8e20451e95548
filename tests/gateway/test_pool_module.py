"""The gateway_pool module (what deploy.yml drains and resumes inference hosts with), run by
Ansible against a real gateway fronting two stand-in hosts: a drain waits for the host's
requests in flight, a gateway that is down or does not list the host is left alone, a key
without the pool scope or a drain that outlasts its timeout fails saying what to do."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from tests.conftest import run_module
from tests.gateway.conftest import INFERENCE_KEY, POOL_KEY
from tests.gateway.scripted import Scripted
from tests.gateway.test_pool import (  # noqa: F401 (hosts: the fixture)
    backends_state,
    hosts,
    pooled_gateway,
    scripted_pool,
    wait_for,
)
from tests.standin.conftest import MODEL, free_port


@pytest.fixture
def gateway(hosts, tmp_path):  # noqa: F811
    running = pooled_gateway(hosts, tmp_path)
    wait_for(lambda: all(entry["answering"] for entry in backends_state(running).values()), 20)
    yield running
    running.stop()


def pool(gateway, state: str, backend: str = "llm-a", key: str = POOL_KEY, check=False,
         **extra) -> dict:
    return run_module("gateway_pool", {"url": gateway if isinstance(gateway, str) else
                                       gateway.url, "api_key": key, "backend": backend,
                                       "state": state, **extra}, check=check)


class LongStream:
    """A generation of `tokens` tokens (~25 ms each) streamed through the gateway in a thread,
    to one host."""

    def __init__(self, gateway, tokens: int = 64) -> None:
        self.gateway = gateway
        self.tokens = tokens
        self.first = threading.Event()
        self.lines: list[dict] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        assert self.first.wait(60), "the stream never started"

    def run(self) -> None:
        with httpx.stream("POST", f"{self.gateway.url}/api/generate", timeout=120,
                          headers={"Authorization": f"Bearer {INFERENCE_KEY}"},
                          json={"model": MODEL, "prompt": "Count to fifty.",
                                "options": {"num_predict": self.tokens,
                                            "temperature": 0}}) as answer:
            for line in answer.iter_lines():
                self.lines.append(json.loads(line))
                self.first.set()

    def host(self) -> str:
        return next(name for name, entry in backends_state(self.gateway).items()
                    if entry["in_flight"] == 1)


def test_a_drain_waits_for_the_requests_in_flight_and_a_second_changes_nothing(gateway):
    stream = LongStream(gateway)
    busy = stream.host()
    drained = pool(gateway, "drained", busy)
    assert drained.get("failed") is not True, drained
    assert drained["changed"] is True and drained["draining_before"] is False
    # It came back only once the stream had ended on that host.
    assert drained["backend"]["in_flight"] == 0 and drained["backend"]["draining"] is True
    assert drained["waited"] > 0.3
    stream.thread.join(30)
    assert stream.lines[-1]["done"] is True
    again = pool(gateway, "drained", busy)
    assert (again["changed"], again["draining_before"], again["gateway"]) == (False, True, "listed")
    resumed = pool(gateway, "resumed", busy)
    assert resumed["changed"] is True and resumed["backend"]["draining"] is False
    assert pool(gateway, "resumed", busy)["changed"] is False
    assert not any(entry["draining"] for entry in backends_state(gateway).values())


def test_check_mode_says_what_would_change_and_changes_nothing(gateway):
    would = pool(gateway, "drained", check=True)
    assert would["changed"] is True
    assert backends_state(gateway)["llm-a"]["draining"] is False


def test_a_gateway_that_does_not_run_or_does_not_list_the_host_is_left_alone(gateway):
    unlisted = pool(gateway, "drained", "llm-z")
    assert (unlisted["changed"], unlisted["gateway"]) == (False, "unlisted"), unlisted
    down = pool(f"http://127.0.0.1:{free_port()}", "drained")
    assert (down["changed"], down["gateway"]) == (False, "not running"), down
    assert "cannot connect" in down["message"]


def test_a_gateway_that_runs_but_cannot_be_asked_fails_the_drain(gateway):
    """Fail closed: a gateway that may still send the host requests is never skipped."""
    # Its container runs, but nothing listens where the inventory says (its port changed).
    moved = pool(f"http://127.0.0.1:{free_port()}", "drained", running=True)
    assert moved["failed"] is True and "cannot connect" in moved["msg"], moved
    assert "--tags gateway" in moved["msg"]
    # TLS in the inventory, plain HTTP on the port (TLS not applied yet).
    tls = pool(gateway.url.replace("http://", "https://"), "drained")
    assert tls["failed"] is True and "--tags gateway" in tls["msg"], tls
    assert backends_state(gateway)["llm-a"]["draining"] is False


async def holds(writer) -> None:
    await asyncio.sleep(30)  # takes the request and answers nothing for a long while


def test_a_drain_the_gateway_forgets_while_waiting_fails(tmp_path):
    """A gateway that restarts while the deploy waits forgets the drain (and would send the
    host requests again): the wait notices instead of reporting the host idle."""
    with scripted_pool(tmp_path, Scripted(holds), Scripted(holds)) as gateway:
        waiting = threading.Thread(target=lambda: httpx.post(
            f"{gateway.url}/api/generate", timeout=60,
            headers={"Authorization": f"Bearer {INFERENCE_KEY}"},
            json={"model": MODEL, "prompt": "hi"}), daemon=True)
        waiting.start()
        wait_for(lambda: any(entry["in_flight"] for entry in backends_state(gateway).values()),
                 10)
        busy = next(name for name, entry in backends_state(gateway).items()
                    if entry["in_flight"])

        def forget() -> None:  # what a restart does to the drain, once the module made it
            wait_for(lambda: backends_state(gateway)[busy]["draining"], 30)
            httpx.post(f"{gateway.url}/gateway/resume", json={"backend": busy},
                       headers={"Authorization": f"Bearer {POOL_KEY}"})

        forgetting = threading.Thread(target=forget, daemon=True)
        forgetting.start()
        forgotten = pool(gateway, "drained", busy, wait_timeout=60)
        forgetting.join(5)
    assert forgotten.get("failed") is True, forgotten
    assert "forgot the drain" in forgotten["msg"], forgotten


def test_a_key_without_the_pool_scope_fails_naming_the_setting(gateway):
    refused = pool(gateway, "drained", key=INFERENCE_KEY)
    assert refused["failed"] is True
    assert "HTTP 403" in refused["msg"] and "gateway_pool_key" in refused["msg"]
    assert INFERENCE_KEY not in json.dumps(refused)
    assert backends_state(gateway)["llm-a"]["draining"] is False


def test_a_drain_that_outlasts_its_timeout_fails_and_leaves_the_host_drained(gateway):
    stream = LongStream(gateway)
    busy = stream.host()
    late = pool(gateway, "drained", busy, wait_timeout=0)
    assert late["failed"] is True
    assert "still has 1 request(s) in flight" in late["msg"] and "gateway_drain_timeout" in \
        late["msg"]
    assert backends_state(gateway)[busy]["draining"] is True
    stream.thread.join(30)
    pool(gateway, "resumed", busy)
