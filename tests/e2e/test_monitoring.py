"""Monitoring in the deployed lab: the real Prometheus and Alertmanager on target-1 (Debian's
packages, the lab's image), fed by the real gateway, node-exporter and the healer.

Prometheus scrapes every target; probe traffic arrives as the series the recording rules,
dashboards and alerts read, with the counts sent; every dashboard panel shows data; a stopped
Ollama fires BackendDown in Alertmanager and resolves when it is back; a frozen Ollama and
vision service and gateway are restarted by the healer, the model loaded again, images
answered again.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections import defaultdict

import pytest

from tests.unit.test_dashboards import needs, panel_queries

from .test_deploy_refusals import TARGET, on_target
from .test_vision_deployed import VISION, ask_with_image, state, wait_healthy

pytestmark = pytest.mark.e2e

OLLAMA = "gemma-airgap-ollama-1"
GATEWAY = "gemma-airgap-gateway-1"
MODEL = "gemma3:270m"
PROMETHEUS = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
# What the lab cannot show: it has no GPU, and its vision server no metrics of its own.
LAB_LACKS = {"gpu", "vision-metrics"}
GET = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())
"""


def get(url: str) -> dict:
    """A GET from the monitoring host itself (Prometheus and Alertmanager listen on its
    loopback only)."""
    return json.loads(on_target("python3", "-c", GET, url))


def query(expr: str) -> list[dict]:
    answer = get(f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def value(expr: str) -> float | None:
    result = query(expr)
    return float(result[0]["value"][1]) if result else None


def wait_for(what: str, check, timeout: float, every: float = 2.0):
    """check() until it returns something truthy; fails naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)


def firing(alertname: str) -> list[dict]:
    alerts = get(f"{ALERTMANAGER}/api/v2/alerts?active=true&silenced=false&inhibited=false")
    return [a for a in alerts if a["labels"].get("alertname") == alertname
            and a["labels"].get("instance") == TARGET]


def test_prometheus_scrapes_every_target_and_evaluates_every_rule():
    targets = get(f"{PROMETHEUS}/api/v1/targets?state=active")["data"]["activeTargets"]
    jobs = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
    assert {("gateway", TARGET), ("node", TARGET), ("prometheus", TARGET),
            ("alertmanager", TARGET)} <= set(jobs), jobs
    assert set(jobs.values()) == {"up"}, [t for t in targets if t["health"] != "up"]
    groups = get(f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) > 20 and {r["health"] for r in rules} == {"ok"}, rules


def own_counts() -> dict[str, float]:
    """The gateway's own counts of generate requests, first tokens and tokens for MODEL, read
    from its /metrics: what Prometheus must come to agree with."""
    from prometheus_client.parser import text_string_to_metric_families

    from .test_gateway_deployed import call

    status, text = call("http://127.0.0.1:8080/metrics", "gk_lab-metrics-key-not-a-secret")
    assert status == 200, text
    wanted = {"gateway_request_duration_seconds_count": {"endpoint": "/api/generate"},
              "gateway_time_to_first_token_seconds_count": {"endpoint": "/api/generate"},
              "gateway_completion_tokens_total": {}}
    counts = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = wanted.get(sample.name)
            if labels is not None and sample.labels.get("model") == MODEL and all(
                    sample.labels.get(key) == want for key, want in labels.items()):
                counts[sample.name] += sample.value
    return counts


def test_probe_traffic_arrives_with_the_counts_sent_and_every_panel_shows_data(client):
    selector = f'endpoint="/api/generate",model="{MODEL}",instance="{TARGET}"'
    exprs = {"gateway_request_duration_seconds_count":
             f"sum(gateway_request_duration_seconds_count{{{selector}}})",
             "gateway_time_to_first_token_seconds_count":
             f"sum(gateway_time_to_first_token_seconds_count{{{selector}}})",
             "gateway_completion_tokens_total":
             f'sum(gateway_completion_tokens_total{{model="{MODEL}",instance="{TARGET}"}})'}

    def in_prometheus() -> dict[str, float]:
        return {name: value(expr) or 0.0 for name, expr in exprs.items()}

    # From the gateway itself, and Prometheus caught up with it: a gateway restarted by an
    # earlier suite starts its counters again, and Prometheus may still hold the old ones.
    before = own_counts()
    wait_for("Prometheus agreeing with the gateway's own counts",
             lambda: in_prometheus() == before, timeout=60)
    sent = [client.generate(model=MODEL, prompt="Count to three:", raw=True,
                            options={"num_predict": 6}).eval_count for _ in range(5)]
    expected = {"gateway_request_duration_seconds_count":
                before["gateway_request_duration_seconds_count"] + 5,
                "gateway_time_to_first_token_seconds_count":
                before["gateway_time_to_first_token_seconds_count"] + 5,
                "gateway_completion_tokens_total":
                before["gateway_completion_tokens_total"] + sum(sent)}
    wait_for("the five requests and their tokens in Prometheus",
             lambda: in_prometheus() == expected, timeout=60)
    # The recording rules need two samples of the new counts in their 5 m windows.
    wait_for("the latency quantiles recorded",
             lambda: query(f'instance_endpoint_model:gateway_request_duration_seconds:p95_5m'
                           f'{{{selector}}}'), timeout=60)

    panels: dict[tuple[str, str], list[str]] = defaultdict(list)
    for uid, title, expr in panel_queries():
        if not needs(expr) & LAB_LACKS:
            panels[(uid, title)].append(expr)
    empty = [panel for panel, exprs in panels.items() if not any(query(e) for e in exprs)]
    assert not empty, f"panels that show nothing after probe traffic: {empty}"
    assert len(panels) > 25


def test_a_stopped_ollama_fires_backend_down_in_alertmanager_and_resolves(client):
    on_target("docker", "stop", OLLAMA)
    try:
        alert = wait_for("BackendDown firing in Alertmanager", lambda: firing("BackendDown"),
                         timeout=240, every=5)
        assert alert[0]["labels"]["severity"] == "critical"
        assert "docker compose" in alert[0]["annotations"]["description"]
    finally:
        on_target("docker", "start", OLLAMA)
    wait_healthy(OLLAMA)
    wait_for("BackendDown resolved", lambda: not firing("BackendDown"), timeout=180, every=5)


def freeze(container: str) -> None:
    """Every process of the container stopped: it runs, answers nothing, fails its
    healthcheck, and Docker alone would never restart it."""
    pids = on_target("docker", "top", container, "-eo", "pid").split()[1:]
    assert pids, f"{container} has no processes"
    assert all(pid.isdigit() for pid in pids), pids
    on_target("sh", "-c", "kill -STOP " + " ".join(pids))


def restarts(service: str) -> str:
    return f'gemma_airgap_healer_restarts_total{{service="{service}",instance="{TARGET}"}}'


def test_a_frozen_stack_is_restarted_by_the_healer_and_serves_again(client):
    """Ollama, the vision service and the gateway frozen at once: each is restarted, the
    model loaded again, images answered again, each restart counted."""
    frozen_ones = {"ollama": OLLAMA, "vision": VISION, "gateway": GATEWAY}
    started = {name: state(name)["StartedAt"] for name in frozen_ones.values()}
    before = {service: value(restarts(service)) or 0.0 for service in frozen_ones}
    frozen = time.monotonic()
    for name in frozen_ones.values():
        freeze(name)
    took = {}
    for name in frozen_ones.values():
        wait_for(f"the healer restarting the frozen {name}",
                 lambda name=name: state(name)["StartedAt"] != started[name],
                 timeout=300, every=5)
        took[name] = time.monotonic() - frozen
        wait_healthy(name)
    loaded = wait_for("the default model loaded again",
                      lambda: [m.model for m in client.ps().models if m.model == MODEL],
                      timeout=120)
    assert loaded
    assert ask_with_image(client).done  # the vision service answers images again
    for service in frozen_ones:
        wait_for(f"the {service} restart counted",
                 lambda service=service: (value(restarts(service)) or 0.0) == before[service] + 1,
                 timeout=60)
    wait_for("the gateway seeing the vision service again",
             lambda: value(f'gateway_backend_up{{backend="vision",instance="{TARGET}"}}') == 1,
             timeout=60)
    print("frozen, restarted by the healer after: "
          + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in took.items()))
