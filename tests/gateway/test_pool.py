"""The gateway in front of several inference hosts: choice, retry, ejection, drain.

The hosts are two live Ollama stand-ins (the Go front and real llama.cpp) sharing one
store, and, where a host must misbehave on purpose, scripted backends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gemma_gateway.config import ConfigError, Settings
from gemma_gateway.metrics import Metrics
from gemma_gateway.pool import BackendPool, BackendSpec, NoMember, model_key
from tests.gateway.conftest import ADMIN_KEY, INFERENCE_KEY, METRICS_KEY, POOL_KEY, Gateway
from tests.gateway.scripted import Scripted
from tests.standin.conftest import MODEL, StandIn

QUICK = {"num_predict": 4, "temperature": 0}


# --- the choice, on its own --------------------------------------------------------------------

def pool_of(*specs: tuple[str, int]) -> BackendPool:
    return BackendPool(tuple(BackendSpec(name, f"http://127.0.0.1:{9 + i}", parallel)
                             for i, (name, parallel) in enumerate(specs)), Metrics())


def test_a_warm_host_with_a_free_slot_comes_first():
    pool = pool_of(("a", 1), ("b", 1))
    pool.by_name["b"].loaded = {model_key("gemma3n:e4b")}
    assert {pool.choose("gemma3n:e4b").name for _ in range(10)} == {"b"}


def test_a_free_cold_host_is_chosen_over_queueing_behind_a_busy_warm_one():
    pool = pool_of(("a", 1), ("b", 1))
    pool.by_name["b"].loaded = {model_key("m")}
    pool.acquire(pool.by_name["b"])
    assert pool.choose("m").name == "a"


def test_when_every_slot_is_busy_the_request_queues_where_the_model_is():
    pool = pool_of(("a", 1), ("b", 2))
    pool.by_name["b"].loaded = {model_key("m")}
    for name in ("a", "b", "b", "b"):
        pool.acquire(pool.by_name[name])
    # b has 3 outstanding, a only 1, but only b has the model loaded.
    assert pool.choose("m").name == "b"
    # A request about no model goes to the least busy.
    assert pool.choose("").name == "a"


def test_equal_hosts_share_requests_round_robin():
    pool = pool_of(("a", 1), ("b", 1), ("c", 1))
    assert sorted(pool.choose("m").name for _ in range(6)) == ["a", "a", "b", "b", "c", "c"]


def test_a_host_whose_store_lacks_the_model_is_passed_over():
    pool = pool_of(("a", 4), ("b", 4))
    pool.by_name["a"].store = {model_key("other:1b")}
    pool.by_name["b"].store = {model_key("gemma3n:e4b")}
    assert {pool.choose("GEMMA3N:e4b").name for _ in range(6)} == {"b"}
    # A model nobody lists goes anywhere: the host's own 404 then says so.
    assert {pool.choose("nobody:has").name for _ in range(6)} == {"a", "b"}


def test_model_names_compare_as_ollama_compares_them():
    assert model_key("Gemma3") == "gemma3:latest"
    assert model_key("library/gemma3n:e4b") == "library/gemma3n:e4b"
    assert model_key("registry.local:5000/ns/m") == "registry.local:5000/ns/m:latest"


def test_drained_hosts_get_nothing_and_a_pool_with_none_left_says_why():
    pool = pool_of(("a", 1), ("b", 1))
    pool.drain("a", True)
    assert {pool.choose("m").name for _ in range(4)} == {"b"}
    pool.drain("b", True)
    with pytest.raises(NoMember, match="2 configured, 2 drained"):
        pool.choose("m")
    pool.drain("a", False)
    assert pool.choose("m").name == "a"


def test_a_retry_never_goes_back_to_a_host_already_tried():
    pool = pool_of(("a", 1), ("b", 1))
    first = pool.choose("m")
    second = pool.choose("m", frozenset({first.name}))
    assert second.name != first.name
    with pytest.raises(NoMember, match="2 already tried"):
        pool.choose("m", frozenset({"a", "b"}))
    assert not pool.has_other("m", frozenset({"a", "b"}))


@pytest.mark.parametrize("backends, message", [
    ([], "1 to 64"),
    ("http://x:1", "1 to 64"),
    ([{"name": "a", "url": "http://x:1"}] * 2, "every name must be different"),
    ([{"name": "a b", "url": "http://x:1"}], "backend name"),
    ([{"name": "a", "url": "https://x:1"}], "url must be http://host:port"),
    ([{"name": "a", "url": "http://x:1/api"}], "url must be http://host:port"),
    ([{"name": "a", "url": "http://user@x:1"}], "url must be http://host:port"),
    ([{"name": "a", "url": "http://x:1", "parallel": True}], "parallel"),
    ([{"name": "a", "url": "http://x:1", "parallel": 0}], "parallel"),
    ([{"name": "a", "url": "http://x:1", "weight": 2}], "give 'name', 'url'"),
    ([{"name": f"h{i}", "url": "http://x:1"} for i in range(65)], "1 to 64"),
])
def test_a_malformed_backend_list_is_refused(backends, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_dict({"backends": backends})


def test_backends_and_backend_url_are_one_or_the_other():
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_dict({"backends": [{"name": "a", "url": "http://x:1"}],
                            "backend_url": "http://y:2"})
    assert Settings.from_dict({"backend_url": "http://y:2"}).backends == (
        BackendSpec("ollama", "http://y:2", 1),)
    assert Settings.from_dict({"backends": [{"name": "a", "url": "http://[fd00::1]:11434",
                                             "parallel": 4}]}).backends[0].parallel == 4


# --- live: two stand-ins ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def hosts(standin):
    """Two inference hosts: the session's stand-in's store, served by two fresh stand-ins."""
    running = {"llm-a": StandIn(standin.models), "llm-b": StandIn(standin.models)}
    yield running   # a test may replace one (a host restarted on its port)
    for host in running.values():
        host.stop()


def pooled_gateway(hosts, tmp_path, parallel=1, **overrides) -> Gateway:
    backends = [{"name": name, "url": host.url, "parallel": parallel}
                for name, host in hosts.items()]
    return Gateway("", tmp_path, backends=backends, poll_seconds=0.5, **overrides)


def metric(gateway: Gateway, name: str, **labels) -> float:
    answer = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert answer.status_code == 200
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def requests_to(gateway: Gateway, backend: str) -> float:
    return metric(gateway, "gateway_pool_backend_requests_total", backend=backend)


def loaded(host: StandIn) -> list[str]:
    return [model.model for model in host.client().ps().models]


def unload(host: StandIn) -> None:
    if loaded(host):
        host.client().generate(model=MODEL, prompt="", keep_alive=0)
    wait_for(lambda: not loaded(host), 20)


def wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def generate(gateway: Gateway, **extra) -> httpx.Response:
    return httpx.post(f"{gateway.url}/api/generate", timeout=120,
                      headers={"Authorization": f"Bearer {INFERENCE_KEY}"},
                      json={"model": MODEL, "prompt": "Say hi.", "stream": False,
                            "options": QUICK, **extra})


def backends_state(gateway: Gateway) -> dict:
    answer = httpx.get(f"{gateway.url}/gateway/backends",
                       headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert answer.status_code == 200, answer.text
    return {entry["name"]: entry for entry in answer.json()["backends"]}


def test_the_warm_host_gets_the_requests_while_the_other_stays_cold(hosts, tmp_path):
    warm, cold = hosts["llm-a"], hosts["llm-b"]
    unload(cold)
    warm.client().generate(model=MODEL, prompt="", keep_alive="10m")
    gateway = pooled_gateway(hosts, tmp_path)
    try:
        wait_for(lambda: MODEL in backends_state(gateway)["llm-a"]["loaded"], 10)
        for _ in range(6):
            assert generate(gateway).status_code == 200
        assert requests_to(gateway, "llm-a") == 6
        assert requests_to(gateway, "llm-b") == 0
        assert loaded(cold) == [], "a cold load happened while the warm host was free"
        # Both serve: with more requests at once than the warm host's one slot, the other
        # host takes some (it loads the model rather than queue them all on one host).
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: generate(gateway), range(8)))
        assert [answer.status_code for answer in answers] == [200] * 8
        assert requests_to(gateway, "llm-b") > 0
        assert loaded(cold) == [MODEL]
    finally:
        gateway.stop()


def test_a_host_killed_under_load_costs_no_request_and_comes_back(hosts, standin, tmp_path):
    victim, survivor = hosts["llm-a"], hosts["llm-b"]
    gateway = pooled_gateway(hosts, tmp_path)
    failures, served = [], []
    stop = False

    def client() -> None:
        while not stop:
            answer = generate(gateway)
            (served if answer.status_code == 200 else failures).append(answer)

    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            workers = [pool.submit(client) for _ in range(3)]
            wait_for(lambda: len(served) >= 6, 60)
            os.killpg(victim.process.pid, signal.SIGKILL)  # no goodbye to requests in flight
            victim.stop()
            killed_at = len(served)
            wait_for(lambda: len(served) >= killed_at + 9, 60)
            stop = True
            for worker in workers:
                worker.result()
        assert failures == [], [answer.text for answer in failures]
        # Out of the pool: ejected by a request that failed there (retried elsewhere: none
        # failed), or found down by a check first.
        state = backends_state(gateway)["llm-a"]
        assert state["answering"] is False or state["ejected_seconds"] > 0, state
        # Back on its port: the checks find it, and it serves again.
        hosts["llm-a"] = victim = StandIn(standin.models, port=victim.port)
        wait_for(lambda: backends_state(gateway)["llm-a"]["answering"] and
                 backends_state(gateway)["llm-a"]["ejected_seconds"] == 0, 60)
        before = requests_to(gateway, "llm-a")
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: generate(gateway), range(6)))
        assert [answer.status_code for answer in answers] == [200] * 6
        assert requests_to(gateway, "llm-a") > before
        assert survivor.process.poll() is None
    finally:
        stop = True
        gateway.stop()


def test_a_drained_host_finishes_its_requests_and_gets_no_new_one(hosts, tmp_path):
    gateway = pooled_gateway(hosts, tmp_path)
    # The key deploy.yml drains with: the pool scope alone.
    deployer = {"Authorization": f"Bearer {POOL_KEY}"}
    try:
        wait_for(lambda: all(entry["answering"] for entry in backends_state(gateway).values()), 20)
        # A long stream goes to one host; that host is then drained under it.
        with httpx.stream("POST", f"{gateway.url}/api/generate", timeout=120,
                          headers={"Authorization": f"Bearer {INFERENCE_KEY}"},
                          json={"model": MODEL, "prompt": "Count to fifty.",
                                "options": {"num_predict": 64, "temperature": 0}}) as stream:
            lines = stream.iter_lines()
            first = json.loads(next(lines))
            assert first["done"] is False
            busy = next(name for name, entry in backends_state(gateway).items()
                        if entry["in_flight"] == 1)
            other = next(name for name in hosts if name != busy)
            drained = httpx.post(f"{gateway.url}/gateway/drain", headers=deployer,
                                 json={"backend": busy})
            assert drained.status_code == 200, drained.text
            assert drained.json()["backend"]["draining"] is True
            assert drained.json()["backend"]["in_flight"] == 1
            before = requests_to(gateway, busy)
            for _ in range(3):
                assert generate(gateway).status_code == 200
            assert requests_to(gateway, busy) == before
            *rest, = lines
        assert json.loads(rest[-1])["done"] is True
        assert backends_state(gateway)[busy]["in_flight"] == 0
        assert metric(gateway, "gateway_pool_backend_draining", backend=busy) == 1
        assert requests_to(gateway, other) >= 3
        resumed = httpx.post(f"{gateway.url}/gateway/resume", headers=deployer,
                             json={"backend": busy})
        assert resumed.status_code == 200 and resumed.json()["backend"]["draining"] is False
        # Every host drained: the gateway is not ready (a load balancer moves on).
        for name in hosts:
            httpx.post(f"{gateway.url}/gateway/drain", headers=deployer, json={"backend": name})
        time.sleep(1.1)  # past the readiness answer's one-second cache
        assert httpx.get(f"{gateway.url}/readyz").status_code == 503
        refused = generate(gateway)
        assert refused.status_code == 503
        assert "2 drained" in refused.json()["error"] and refused.headers["retry-after"] == "5"
        for name in hosts:
            httpx.post(f"{gateway.url}/gateway/resume", headers=deployer, json={"backend": name})
        time.sleep(1.1)
        assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    finally:
        gateway.stop()


@pytest.mark.parametrize("method, path, key, body, status, says", [
    ("POST", "/gateway/drain", INFERENCE_KEY, {"backend": "llm-a"}, 403, "lacks the pool"),
    ("POST", "/gateway/drain", METRICS_KEY, {"backend": "llm-a"}, 403, "lacks the pool"),
    ("POST", "/gateway/drain", None, {"backend": "llm-a"}, 401, "missing API key"),
    ("GET", "/gateway/backends", INFERENCE_KEY, None, 403, "lacks the pool"),
    # The pool key: the pool's endpoints and nothing else.
    ("POST", "/api/generate", POOL_KEY, {"model": MODEL, "prompt": "hi"}, 403,
     "lacks the inference"),
    ("GET", "/api/tags", POOL_KEY, None, 403, "lacks the inference"),
    ("DELETE", "/api/delete", POOL_KEY, {"model": MODEL}, 403, "lacks the admin"),
    ("GET", "/metrics", POOL_KEY, None, 403, "lacks the metrics"),
    ("POST", "/gateway/drain", POOL_KEY, {"backend": "nobody"}, 404, "no backend named"),
    ("GET", "/gateway/drain", ADMIN_KEY, None, 405, "takes POST"),
    ("POST", "/gateway/drain", ADMIN_KEY, {"backend": "nobody"}, 404, "no backend named"),
    ("POST", "/gateway/drain", ADMIN_KEY, {"backend": "llm-a", "all": True}, 400, "nothing else"),
    ("POST", "/gateway/drain", ADMIN_KEY, {"backend": ["llm-a"]}, 400, "nothing else"),
    ("POST", "/gateway/drain", ADMIN_KEY, "llm-a", 400, "must be JSON"),
    ("POST", "/gateway/resume", ADMIN_KEY, ["llm-a"], 400, "nothing else"),
    ("POST", "/api/pull", ADMIN_KEY, {"model": MODEL}, 409, "fronts 2 inference hosts"),
    ("DELETE", "/api/delete", ADMIN_KEY, {"model": MODEL}, 409, "deploy.yml"),
])
def test_the_pool_admin_api_refuses_what_it_should(hosts, tmp_path, method, path, key, body,
                                                   status, says):
    gateway = pooled_gateway(hosts, tmp_path)
    try:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        content = body.encode() if isinstance(body, str) else \
            (json.dumps(body).encode() if body is not None else b"")
        answer = httpx.request(method, f"{gateway.url}{path}", headers=headers, content=content)
        assert answer.status_code == status, answer.text
        assert says in answer.json()["error"]
        assert not any(entry["draining"] for entry in backends_state(gateway).values())
    finally:
        gateway.stop()


# --- hosts that misbehave: retry only before the first byte -------------------------------------

def ollama_like(generate_reply, warm: bool = True):
    """A scripted Ollama: /api/tags and (when `warm`) /api/ps list the lab model, and so does
    anything else but generate (/api/show too), which answers as `generate_reply`."""
    tags = json.dumps({"models": [{"name": MODEL}]}).encode()

    def answer(body: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%b" % (len(body), body))

    def reply_for(scripted: Scripted):
        async def reply(writer) -> None:
            last = scripted.requests[-1]
            if last.startswith(b"POST /api/generate"):
                await generate_reply(writer)
            elif last.startswith(b"GET /api/ps") and not warm:
                writer.write(answer(b'{"models": []}'))   # nothing loaded until it generates
                await writer.drain()
            else:
                writer.write(answer(tags))
                await writer.drain()
        return reply
    return answer, reply_for


def scripted_host(generate_reply, warm: bool = True) -> Scripted:
    _answer, reply_for = ollama_like(generate_reply, warm)
    scripted = Scripted()
    scripted.reply = reply_for(scripted)
    return scripted


async def busy(writer) -> None:
    body = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
    await writer.drain()


async def hangs(writer) -> None:
    await asyncio.sleep(30)


async def dies_mid_stream(writer) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    line = b'{"model":"gemma3:270m","response":"Hel","done":false}\n'
    writer.write(b"%x\r\n%b\r\n" % (len(line), line))
    await writer.drain()
    writer.transport.abort()


async def answers(writer) -> None:
    body = json.dumps({"model": MODEL, "response": "hi", "done": True}).encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
                 b"\r\n\r\n%b" % (len(body), body))
    await writer.drain()


def generated(scripted: Scripted) -> int:
    return len(scripted.bodies("/api/generate"))


@contextlib.contextmanager
def scripted_pool(tmp_path, first: Scripted, second: Scripted, **overrides):
    """A gateway in front of two scripted hosts ("one" and "two"), all three stopped after."""
    try:
        first_url, second_url = first.__enter__(), second.__enter__()
        gateway = Gateway("", tmp_path, backends=[{"name": "one", "url": first_url},
                                                  {"name": "two", "url": second_url}],
                          poll_seconds=3600, **overrides)
        try:
            yield gateway
        finally:
            gateway.stop()
    finally:
        first.__exit__()
        second.__exit__()


def test_a_full_queue_sends_the_request_to_the_other_host(tmp_path):
    full, good = scripted_host(busy), scripted_host(answers)
    with scripted_pool(tmp_path, full, good) as gateway:
        for _ in range(4):
            answer = generate(gateway)
            assert answer.status_code == 200, answer.text
        assert generated(good) == 4 and generated(full) >= 1
        assert metric(gateway, "gateway_pool_backend_retries_total", backend="one") == \
            generated(full)
        assert metric(gateway, "gateway_pool_backend_errors_total", backend="one",
                      reason="busy") == generated(full)


def test_a_host_too_slow_is_a_504_never_a_second_generation(tmp_path):
    slow, good = scripted_host(hangs), scripted_host(answers)
    with scripted_pool(tmp_path, slow, good, limits={"generation_timeout": 1}) as gateway:
        statuses = [generate(gateway).status_code for _ in range(4)]
        assert sorted(statuses) == [200, 200, 504, 504]
        assert generated(good) == 2, "a timed-out request was sent again to another host"


def test_an_answer_broken_after_its_first_byte_is_reported_not_retried(tmp_path):
    broken, good = scripted_host(dies_mid_stream), scripted_host(answers)
    with scripted_pool(tmp_path, broken, good) as gateway:
        texts = []
        for _ in range(4):
            answer = generate(gateway, stream=True)
            assert answer.status_code == 200
            texts.append(answer.text)
        cut = [text for text in texts if "broke the answer" in text]
        assert len(cut) == 2 and all(text.startswith('{"model"') for text in cut)
        assert generated(good) == 2, "a request whose answer had begun was sent again"
        assert metric(gateway, "gateway_pool_backend_errors_total", backend="one",
                      reason="broke_stream") == 2


def test_a_host_that_stops_answering_is_ejected_and_its_requests_go_elsewhere(tmp_path):
    leaving, good = scripted_host(answers), scripted_host(answers)
    with scripted_pool(tmp_path, leaving, good) as gateway:
        assert [generate(gateway).status_code for _ in range(2)] == [200, 200]
        assert generated(leaving) == 1
        leaving.__exit__()   # its port now refuses connections
        assert [generate(gateway).status_code for _ in range(6)] == [200] * 6
        assert generated(good) == 7
        # One request found it gone and was sent on; then it was out of the choice.
        assert metric(gateway, "gateway_pool_backend_retries_total", backend="one") == 1
        assert metric(gateway, "gateway_pool_backend_ejections_total", backend="one") == 1
        assert metric(gateway, "gateway_pool_backend_up", backend="one") == 0
        assert backends_state(gateway)["one"]["ejected_seconds"] > 0


def test_a_host_that_never_answered_its_check_gets_nothing(tmp_path):
    good = scripted_host(answers)
    good_url = good.__enter__()
    gateway = Gateway("", tmp_path, backends=[{"name": "gone", "url": "http://127.0.0.1:9"},
                                              {"name": "good", "url": good_url}],
                      poll_seconds=3600)
    try:
        wait_for(lambda: backends_state(gateway)["gone"]["answering"] is False, 10)
        assert [generate(gateway).status_code for _ in range(4)] == [200] * 4
        assert requests_to(gateway, "gone") == 0
        assert metric(gateway, "gateway_pool_backend_up", backend="gone") == 0
    finally:
        gateway.stop()
        good.__exit__()


# --- what a hostile review found ----------------------------------------------------------------

def test_a_burst_of_failures_is_one_short_ejection_and_a_good_check_forgives_it():
    async def scenario():
        good = scripted_host(answers)
        url = good.__enter__()
        metrics = Metrics()
        pool = BackendPool((BackendSpec("a", url), BackendSpec("b", "http://127.0.0.1:9")),
                           metrics)
        member = pool.by_name["a"]
        for _ in range(20):   # every request that was in flight fails at once
            pool.failed(member, "unreachable", retried=True)
        ejected_for = member.ejected_until - time.monotonic()
        assert 0 < ejected_for <= 2.0
        count = metrics.pool_ejections.labels("a")._value.get()
        await asyncio.sleep(2.5)   # the recheck finds it answering
        back = member.usable(time.monotonic()), member.ejections
        await pool.close()
        good.__exit__()
        return count, back

    count, back = asyncio.run(scenario())
    assert count == 1
    assert back == (True, 0)


def test_the_model_metrics_count_models_not_hosts():
    metrics = Metrics()
    tags = [{"name": "a:1"}, {"name": "b:1"}]
    metrics.record_models([model["name"] for model in tags * 3],
                          {"models": [{"name": "a:1", "size": 10}, {"name": "a:1", "size": 5}]})
    assert metrics.available._value.get() == 2
    assert metrics.loaded.labels("a:1")._value.get() == 1
    assert metrics.loaded_bytes.labels("a:1")._value.get() == 15


def test_a_retry_goes_only_where_the_model_is():
    pool = pool_of(("a", 1), ("b", 1))
    pool.by_name["a"].store = {model_key("m")}
    pool.by_name["b"].store = {model_key("other")}
    assert pool.choose("m").name == "a"
    assert not pool.has_other("m", frozenset({"a"}))
    with pytest.raises(NoMember):
        pool.choose("m", frozenset({"a"}))


@pytest.mark.parametrize("url", ["http://x:99999", "http://x:0", "http://[1.2.3.4]:1",
                                 "http://[:]:1", "http://-x:1", "http://x:1?q", "http://x:1#f",
                                 "http://x:a", "http://:1"])
def test_a_backend_url_that_would_fail_later_is_refused_now(url):
    with pytest.raises(ConfigError, match="url must be http://host:port"):
        Settings.from_dict({"backends": [{"name": "a", "url": url}]})


@pytest.mark.parametrize("url", ["http://ollama_1:11434", "http://10.0.0.1", "http://[fd00::1]:8",
                                 "http://llm-01.example.internal:11434/"])
def test_the_urls_a_site_uses_are_taken(url):
    assert Settings.from_dict({"backends": [{"name": "a", "url": url}]}).backends[0].name == "a"


async def slow_tags(writer) -> None:
    await asyncio.sleep(1.5)
    body = json.dumps({"models": [{"name": MODEL}]}).encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
                 b"\r\n\r\n%b" % (len(body), body))
    await writer.drain()


def test_anonymous_readiness_checks_are_shared_not_multiplied(tmp_path):
    first, second = Scripted(slow_tags), Scripted(slow_tags)
    with scripted_pool(tmp_path, first, second) as gateway:
        time.sleep(2)  # past the poller's first checks

        async def burst():
            async with httpx.AsyncClient(timeout=30) as http:
                return await asyncio.gather(*(http.get(f"{gateway.url}/readyz")
                                              for _ in range(60)))

        answers = asyncio.run(burst())
        assert {answer.status_code for answer in answers} == {200}
        for host in (first, second):
            tags = [request for request in host.requests if request.startswith(b"GET /api/tags")]
            assert len(tags) <= 3, len(tags)  # the poller's, and one or two shared checks


async def takes_and_drops(writer) -> None:
    writer.transport.abort()   # read the request, then died without a word


def test_a_request_that_may_kill_its_host_is_sent_again_once_not_to_every_host(tmp_path):
    hosts = [scripted_host(takes_and_drops) for _ in range(3)]
    urls = [host.__enter__() for host in hosts]
    gateway = Gateway("", tmp_path, poll_seconds=3600,
                      backends=[{"name": f"h{index}", "url": url}
                                for index, url in enumerate(urls)])
    try:
        answer = generate(gateway)
        assert answer.status_code == 502, answer.text
        assert sum(generated(host) for host in hosts) == 2
    finally:
        gateway.stop()
        for host in hosts:
            host.__exit__()


def test_hosts_that_cannot_be_reached_cost_no_request_however_many(tmp_path):
    leaving = [scripted_host(answers) for _ in range(2)]
    good = scripted_host(answers)
    urls = [host.__enter__() for host in (*leaving, good)]
    gateway = Gateway("", tmp_path, poll_seconds=3600, backends=[
        {"name": name, "url": url} for name, url in zip(("gone-1", "gone-2", "good"), urls,
                                                         strict=True)])
    try:
        wait_for(lambda: all(entry["answering"] for entry in backends_state(gateway).values()),
                 10)
        for host in leaving:
            host.__exit__()   # both refuse connections from now on
        assert [generate(gateway).status_code for _ in range(6)] == [200] * 6
        assert generated(good) == 6
        for name in ("gone-1", "gone-2"):
            assert metric(gateway, "gateway_pool_backend_ejections_total", backend=name) == 1
        assert sum(metric(gateway, "gateway_pool_backend_retries_total", backend=name)
                   for name in ("gone-1", "gone-2")) == 2
    finally:
        gateway.stop()
        good.__exit__()


def test_generation_marks_a_host_warm_and_a_show_does_not(tmp_path):
    first, second = scripted_host(answers, warm=False), scripted_host(answers, warm=False)
    with scripted_pool(tmp_path, first, second) as gateway:
        shown = httpx.post(f"{gateway.url}/api/show", json={"model": "n"},
                           headers={"Authorization": f"Bearer {INFERENCE_KEY}"})
        assert shown.status_code == 200
        assert all(entry["loaded"] == [] for entry in backends_state(gateway).values())
        assert generate(gateway).status_code == 200
        assert sorted(entry["loaded"] != [] for entry in backends_state(gateway).values()) == \
            [False, True]


@pytest.mark.parametrize("content, says", [
    (b"[" * 100000, "must be JSON"),
    (b'{"backend": "one", "backend": "two"}', "each key once"),
])
def test_the_drain_api_refuses_hostile_bodies(tmp_path, content, says):
    first, second = scripted_host(answers), scripted_host(answers)
    with scripted_pool(tmp_path, first, second) as gateway:
        answer = httpx.post(f"{gateway.url}/gateway/drain", content=content,
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert answer.status_code == 400 and says in answer.json()["error"]
        assert not any(entry["draining"] for entry in backends_state(gateway).values())


def test_show_for_a_vision_model_with_every_host_drained_is_a_503(tmp_path):
    first, second = scripted_host(answers), scripted_host(answers)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with scripted_pool(tmp_path, first, second,
                       vision_backends=[{"model": MODEL, "url": "http://127.0.0.1:9"}]) as gateway:
        for name in ("one", "two"):
            httpx.post(f"{gateway.url}/gateway/drain", headers=admin, json={"backend": name})
        shown = httpx.post(f"{gateway.url}/api/show", json={"model": MODEL},
                           headers={"Authorization": f"Bearer {INFERENCE_KEY}"})
        assert shown.status_code == 503 and shown.headers["retry-after"] == "5"
        assert "2 drained" in shown.json()["error"]


async def never_answers(writer) -> None:
    await asyncio.sleep(60)


def test_readiness_answers_with_the_first_ready_host_not_the_slowest(tmp_path):
    """A host that takes a request and never answers (powered off behind a switch that still
    takes the connection, or hung) must not make /readyz late: keepalived's check gives the
    site's address up after 1.5 s."""
    with scripted_pool(tmp_path, Scripted(never_answers), Scripted(slow_tags)) as gateway:
        time.sleep(1.1)  # no answer kept from the start-up
        started = time.monotonic()
        answer = httpx.get(f"{gateway.url}/readyz", timeout=30)
        took = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert took < 3.5, took  # the good host's 1.5 s, not the silent one's timeout
