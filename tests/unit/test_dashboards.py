"""Grafana dashboards (roles/monitoring/files/grafana/dashboards) as code.

Grafana cannot run here (no image, no package), so everything around it is checked:
- each file is JSON valid against a schema of Grafana's dashboard model
  (grafana_dashboard.schema.json, beside this file), plus what a schema cannot say: ids,
  the 24-column grid, uids and titles across the files;
- every query parses as Prometheus parses it: the real promtool reads them as rules;
- every metric and recording-rule name a query uses is one the monitoring contract names
  (the gateway's names are read from the gateway's own registry), so a typo fails here and
  not as an empty panel on a site;
- every panel draws something from the metrics the contract promises: promtool's rule unit
  tests feed it those series, run the monitoring role's recording rules on them, and an
  alert fires for any panel query that comes back empty.

panel_queries() is the list of queries, with the template variables replaced as Grafana
replaces them, that the e2e tests evaluate against the lab's Prometheus.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from gemma_gateway.metrics import Metrics
from tests.unit.test_prometheus_rules import CONTRACT_RECORDS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "roles" / "monitoring" / "files" / "grafana" / "dashboards"
SCHEMA = Path(__file__).with_name("grafana_dashboard.schema.json")
RECORDING_RULES = ROOT / "roles" / "monitoring" / "files" / "prometheus" / "rules" / "recording.yml"

# The files and their uids: links and bookmarks use the uids, so they never change.
UIDS = {"overview.json": "gemma-airgap-overview", "host.json": "gemma-airgap-host",
        "vision.json": "gemma-airgap-vision"}
# 41 rather than Grafana 13's 42: Grafana migrates a dashboard upward when it loads it (the
# step to 42 touches only hidden-series overrides, which these do not have), but the
# dashboard API of Grafana 12.0/12.1 (latest 41) refuses a version it does not know, and
# older ones are indifferent. So 41 loads the same everywhere from 11.x on.
SCHEMA_VERSION = 41
# Enough panels to answer "what is wrong", few enough to read on one screen or two.
PANELS_PER_DASHBOARD = range(8, 17)

# What Grafana puts in for its own variables: $__rate_interval is at least four scrape
# intervals (15 s here), and the lab evaluates the queries over 5 minutes like the rules.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
# A template variable without an "All" value stands for any value when the queries are
# checked; Grafana sends the value the user picked.
ANY_VALUE = ".+"

# --- names the monitoring contract (issue 15) promises ------------------------------------------

RECORDING_NAMES = frozenset(CONTRACT_RECORDS)  # one list, the rules test's
# Textfile metrics on each target (the healer's; backup and TLS arrive with later issues).
TEXTFILE_NAMES = frozenset({
    "gemma_airgap_container_healthy", "gemma_airgap_healer_restarts_total",
    "gemma_airgap_healer_last_check_timestamp_seconds", "gemma_airgap_model_preloads_total",
    "gemma_airgap_backup_last_success_timestamp_seconds",
    "gemma_airgap_tls_certificate_expiry_timestamp_seconds",
})
# Standard exporters' names, listed rather than matched by prefix so that a typo fails.
NODE_NAMES = frozenset({
    "node_cpu_seconds_total", "node_load1", "node_load5", "node_load15",
    "node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes",
    "node_memory_SwapTotal_bytes", "node_memory_SwapFree_bytes",
    "node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_filesystem_free_bytes",
    "node_disk_read_bytes_total", "node_disk_written_bytes_total",
    "node_network_receive_bytes_total", "node_network_transmit_bytes_total",
    "node_textfile_scrape_error",
})
DCGM_NAMES = frozenset({  # dcgm-exporter's default counters; frame buffer in MiB
    "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
})
LLAMACPP_NAMES = frozenset(f"llamacpp:{name}" for name in (  # llama-server --metrics
    "prompt_tokens_total", "prompt_seconds_total", "tokens_predicted_total",
    "tokens_predicted_seconds_total", "n_decode_total", "n_busy_slots_per_decode",
    "n_tokens_max", "prompt_tokens_seconds", "predicted_tokens_seconds",
    "requests_processing", "requests_deferred",
    # Exported by builds before mid-2025 only: the KV cache panel says so.
    "kv_cache_usage_ratio", "kv_cache_tokens",
))
PROMETHEUS_NAMES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})


@functools.cache
def gateway_names() -> frozenset[str]:
    """The series names the gateway exposes, read from its own registry (its families exist
    before the first observation, their samples do not)."""
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count", "_created")}
    return frozenset(family.name + suffix for family in Metrics().registry.collect()
                     for suffix in suffixes[family.type])


def known_names() -> frozenset[str]:
    return (gateway_names() | RECORDING_NAMES | TEXTFILE_NAMES | NODE_NAMES | DCGM_NAMES
            | LLAMACPP_NAMES | PROMETHEUS_NAMES)


# --- reading the dashboards --------------------------------------------------------------------

@functools.cache
def _load(name: str) -> str:
    return (DASHBOARDS / name).read_text(encoding="utf-8")


def dashboards() -> dict[str, dict]:
    """Each file's dashboard, freshly parsed (a test may change its copy)."""
    return {name: json.loads(_load(name)) for name in sorted(UIDS)}


def items(dashboard: dict) -> list[dict]:
    """Rows and panels, those inside rows included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []) if panel.get("type") == "row" else [])
    return found


def panels(dashboard: dict) -> list[dict]:
    """The panels that query (everything but rows)."""
    return [item for item in items(dashboard) if item.get("type") != "row"]


_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))|\[\[(\w+)\]\]")


def substitutions(dashboard: dict) -> dict[str, str]:
    """What each variable becomes: its "All" value where it has one (the query Grafana sends
    with All selected), else any value."""
    values = dict(GRAFANA_VARIABLES)
    for variable in dashboard["templating"]["list"]:
        values[variable["name"]] = variable.get("allValue") or ANY_VALUE
    return values


def substitute(expr: str, dashboard: dict) -> str:
    values = substitutions(dashboard)

    def replace(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise ValueError(f"{dashboard['uid']}: undefined variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def panel_queries() -> list[tuple[str, str, str]]:
    """[(dashboard uid, panel title, PromQL)] for every query of every panel, the variables
    replaced (All, or any value; $__rate_interval 5m), in the dashboards' order.

    One entry per query: a panel with several queries shows something when any of them
    returns data. needs() says which queries only a GPU host or a vision server with metrics
    can answer."""
    return [(dashboard["uid"], panel["title"], substitute(target["expr"], dashboard))
            for dashboard in dashboards().values()
            for panel in panels(dashboard) for target in panel["targets"]]


def needs(expr: str) -> frozenset[str]:
    """What a query needs beyond the gateway and node-exporter: "gpu" (dcgm-exporter's
    DCGM_* metrics) or "vision-metrics" (llama-server's own /metrics, which the lab's vision
    server does not have)."""
    names = metric_names(expr)
    found = set()
    if any(name.startswith("DCGM_") for name in names):
        found.add("gpu")
    if any(name.startswith("llamacpp:") for name in names) or 'job="vision"' in expr:
        found.add("vision-metrics")
    return frozenset(found)


def variable_selector(variable: dict) -> str | None:
    """The series selector of a label_values(selector, label) variable query."""
    query = variable.get("query")
    text = query.get("query") if isinstance(query, dict) else query
    match = re.fullmatch(r"\s*label_values\((.+),\s*\w+\s*\)\s*", text or "")
    return match.group(1) if match else None


def all_queries() -> list[tuple[str, str, str]]:
    """Every PromQL text of the dashboards, the variables replaced: panels' queries,
    annotations, and the selectors of the variables' label_values()."""
    found = list(panel_queries())
    for dashboard in dashboards().values():
        for annotation in dashboard["annotations"]["list"]:
            if "expr" in annotation:
                found.append((dashboard["uid"], f"annotation {annotation['name']}",
                              substitute(annotation["expr"], dashboard)))
        for variable in dashboard["templating"]["list"]:
            selector = variable_selector(variable)
            if selector:
                found.append((dashboard["uid"], f"variable {variable['name']}",
                              substitute(selector, dashboard)))
    return found


# --- metric names in a query -------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                       "group_right", "offset", "bool", "inf", "nan", "atan2"})


def metric_names(expr: str) -> set[str]:
    """The metric (and recording-rule) names a query reads. Not a parser (promtool judges the
    syntax): strings, label matchers, ranges and grouping labels are cut out, and what is
    left that is neither a function, an aggregation nor a keyword is a name."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


# --- 1. Grafana's model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_the_dashboards_are_the_three_files():
    assert sorted(path.name for path in DASHBOARDS.glob("*.json")) == sorted(UIDS)


@pytest.mark.parametrize("name", sorted(UIDS))
def test_dashboard_is_valid_against_grafanas_model(name, validator):
    dashboard = dashboards()[name]
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
              for error in validator.iter_errors(dashboard)]
    assert not errors, "\n".join(errors)
    assert dashboard["uid"] == UIDS[name]
    assert dashboard["schemaVersion"] == SCHEMA_VERSION


def test_uids_and_titles_are_unique_across_dashboards():
    found = list(dashboards().values())
    assert len({d["uid"] for d in found}) == len({d["title"] for d in found}) == len(found)


@pytest.mark.parametrize("name", sorted(UIDS))
def test_panel_ids_titles_and_ref_ids_are_unique(name):
    dashboard = dashboards()[name]
    ids = [item["id"] for item in items(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    # panel_queries() names a panel by its title: two of one name could not be told apart.
    titles = [panel["title"] for panel in panels(dashboard)]
    assert len(titles) == len(set(titles)), f"duplicate titles: {sorted(titles)}"
    for panel in panels(dashboard):
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: duplicate refIds {refs}"


@pytest.mark.parametrize("name", sorted(UIDS))
def test_panels_fit_the_grid_without_overlapping(name):
    """Grafana's grid is 24 columns wide; a panel past it or on top of another is moved by
    Grafana at load time, and the layout is no longer the one in the file."""
    taken: dict[tuple[int, int], str] = {}
    for item in items(dashboard := dashboards()[name]):
        pos = item["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{item['title']}: past column 24 ({pos})"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, \
                    f"{dashboard['uid']}: {item['title']} overlaps {taken[(x, y)]} at {x},{y}"
                taken[(x, y)] = item["title"]


@pytest.mark.parametrize("name", sorted(UIDS))
def test_every_datasource_is_the_provisioned_prometheus(name):
    """Anywhere in the file (panels, queries, variables, annotations): the datasource the
    monitoring role provisions with uid "prometheus", never a name or an import placeholder
    like ${DS_PROMETHEUS} that only Grafana's import dialog fills in."""
    def walk(node, path):
        if isinstance(node, dict):
            if "datasource" in node:
                assert node["datasource"] == {"type": "prometheus", "uid": "prometheus"}, path
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(dashboards()[name], name)


@pytest.mark.parametrize("name", sorted(UIDS))
def test_panels_have_a_unit_and_say_what_to_do(name):
    dashboard = dashboards()[name]
    assert len(panels(dashboard)) in PANELS_PER_DASHBOARD
    for panel in panels(dashboard):
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        # A description says what the panel shows and what to do when it looks bad.
        assert len(panel.get("description", "")) >= 80, panel["title"]


@pytest.mark.parametrize(("what", "change"), [
    ("a panel wider than the grid", lambda d: d["panels"][1]["gridPos"].update(w=25)),
    ("a panel without queries", lambda d: d["panels"][1].update(targets=[])),
    ("a query without expr", lambda d: d["panels"][1]["targets"][0].pop("expr")),
    ("another datasource", lambda d: d["panels"][1]["datasource"].update(uid="other")),
    ("a misspelt key", lambda d: d["panels"][1].update(gridpos={})),
    ("a unit Grafana does not have", lambda d: d["panels"][1]["fieldConfig"]["defaults"]
     .update(unit="percent_unit")),
    ("no uid", lambda d: d.pop("uid")),
    ("a database id", lambda d: d.update(id=7)),
    ("an All value without All", lambda d: d["templating"]["list"][0].update(includeAll=False)),
])
def test_the_schema_refuses(what, change, validator):
    """The schema is real: each of these breaks it."""
    dashboard = copy.deepcopy(dashboards()["overview.json"])
    change(dashboard)
    assert not validator.is_valid(dashboard), what


# --- 2. the queries parse as Prometheus parses them ----------------------------------------------

def _promtool(prometheus_tools: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(prometheus_tools / "promtool"), *args], cwd=cwd, text=True,
                          capture_output=True, check=False, timeout=120)


def _as_rules(queries: list[tuple[str, str, str]]) -> dict:
    return {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query_{index}", "expr": expr}
        for index, (_, _, expr) in enumerate(queries)]}]}


def test_every_query_parses_with_promtool(prometheus_tools, tmp_path):
    queries = all_queries()
    rules = tmp_path / "dashboards.yml"
    # JSON is YAML: promtool reads the file as it reads the monitoring role's rules.
    rules.write_text(json.dumps(_as_rules(queries), indent=1))
    out = _promtool(prometheus_tools, "check", "rules", rules.name, cwd=tmp_path)
    listing = "\n".join(f"query_{index}: {uid} / {title}: {expr}"
                        for index, (uid, title, expr) in enumerate(queries))
    assert out.returncode == 0, f"{out.stdout}{out.stderr}\n{listing}"
    assert f"SUCCESS: {len(queries)} rules found" in out.stdout


def test_promtool_refuses_a_broken_query(prometheus_tools, tmp_path):
    """The check above is not vacuous: a query Prometheus cannot parse fails it."""
    rules = tmp_path / "broken.yml"
    rules.write_text(json.dumps(_as_rules([("x", "y", 'sum by (model) (rate(up[5m])')])))
    assert _promtool(prometheus_tools, "check", "rules", rules.name, cwd=tmp_path).returncode


@pytest.mark.parametrize("name", sorted(UIDS))
def test_variables_are_defined_used_and_matched_as_regexes(name):
    """Grafana turns a multi-value or All selection into a regex (a|b, or the All value):
    a variable belongs in a =~ matcher, never after =. $__rate_interval belongs in a range.
    Every variable a query names exists, and every variable is used."""
    dashboard = dashboards()[name]
    texts = [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]
    texts += [variable_selector(v) or "" for v in dashboard["templating"]["list"]]
    texts += [a.get("expr", "") for a in dashboard["annotations"]["list"]]
    used = set()
    for text in texts:
        substitute(text, dashboard)  # an undefined variable raises
        for match in _VARIABLE.finditer(text):
            variable = next(group for group in match.groups() if group)
            used.add(variable)
            before, after = text[:match.start()], text[match.end():]
            if variable in GRAFANA_VARIABLES:
                assert before.endswith("[") and after.startswith("]"), text
            else:
                assert before.endswith('=~"') and after.startswith('"'), text
    titles = " ".join(item["title"] for item in items(dashboard))
    for variable in dashboard["templating"]["list"]:
        assert variable["name"] in used or f"${variable['name']}" in titles, variable["name"]


# --- 3. every name is one the contract names ---------------------------------------------------

def test_metric_names_finds_the_names_and_only_them():
    expr = ('sum by (instance, reason) (rate(gateway_errors_total{reason=~"vision_.*"}[5m])) '
            'or on (instance) sum by (instance) (0 * up{job="gateway"}) '
            '+ histogram_quantile(0.95, sum by (le) (rate(x_bucket[1h] offset 5m))) '
            '/ ignoring (le) group_left llamacpp:requests_deferred > 1e3 and time() - b:c:d')
    assert metric_names(expr) == {"gateway_errors_total", "up", "x_bucket",
                                  "llamacpp:requests_deferred", "b:c:d"}


def test_the_gateway_exposes_the_names_the_contract_gives():
    for name in ("gateway_request_duration_seconds_bucket", "gateway_errors_total",
                 "gateway_time_to_first_token_seconds_bucket", "gateway_model_memory_bytes",
                 "gateway_generation_tokens_per_second_bucket", "gateway_backend_up",
                 "gateway_requests_in_flight", "gateway_model_loaded"):
        assert name in gateway_names(), name


def test_every_name_a_query_reads_is_a_known_one():
    unknown = [(uid, title, sorted(metric_names(expr) - known_names()))
               for uid, title, expr in all_queries() if metric_names(expr) - known_names()]
    assert not unknown, unknown
    assert "gateway_request_duration_second_bucket" not in known_names()  # a typo is unknown


def test_the_recording_rules_the_dashboards_read_are_recorded():
    """The names come from the contract; the monitoring role's recording rules must define
    each one the dashboards read (else the panel is empty on every site)."""
    recorded = {rule["record"] for group in yaml.safe_load(RECORDING_RULES.read_text())["groups"]
                for rule in group["rules"] if "record" in rule}
    used = {name for _, _, expr in all_queries() for name in metric_names(expr)}
    assert used & RECORDING_NAMES, "the dashboards should read the recording rules"
    assert (used & RECORDING_NAMES) <= recorded, sorted((used & RECORDING_NAMES) - recorded)


def test_needs_marks_gpu_and_vision_queries():
    marked = {(uid, title): needs(expr) for uid, title, expr in panel_queries()}
    assert marked[("gemma-airgap-host", "GPU utilisation")] == {"gpu"}
    assert marked[("gemma-airgap-vision", "Busy slots per decode")] == {"vision-metrics"}
    assert marked[("gemma-airgap-overview", "Tokens per second")] == frozenset()


# --- every panel draws from the series the contract promises -------------------------------------

HOST = "gemma-airgap-lab-target-1"
MODEL = "gemma3n:e4b"


def _series(name: str, labels: dict[str, str], values: str) -> dict:
    inner = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _counter(name: str, labels: dict[str, str], step: float = 1) -> dict:
    return _series(name, labels, f"0+{step}x30")


def _gauge(name: str, labels: dict[str, str], value: float = 1) -> dict:
    return _series(name, labels, f"{value}+0x30")


def _histogram(name: str, labels: dict[str, str], bounds: tuple[str, ...]) -> list[dict]:
    found = [_counter(f"{name}_bucket", {**labels, "le": bound}, index + 1)
             for index, bound in enumerate((*bounds, "+Inf"))]
    count = len(bounds) + 1
    return [*found, _counter(f"{name}_count", labels, count),
            _counter(f"{name}_sum", labels, count)]


def contract_series(errors: bool) -> list[dict]:
    """One target's series as the contract describes them, as the scrape jobs label them.
    errors=False: a target that never failed a request, so the gateway has no error series
    at all (prometheus_client creates a labelled series on its first use)."""
    job = {name: {"job": name, "instance": HOST}
           for name in ("gateway", "node", "dcgm", "vision")}
    gateway, node, dcgm, vision = job["gateway"], job["node"], job["dcgm"], job["vision"]
    chat = {**gateway, "endpoint": "/api/chat", "model": MODEL}
    series = [_gauge("up", labels) for labels in job.values()]
    series += _histogram("gateway_request_duration_seconds", {**chat, "status": "200"},
                         ("0.5", "1", "5"))
    series += _histogram("gateway_time_to_first_token_seconds", chat, ("0.1", "0.5", "1"))
    series += _histogram("gateway_generation_tokens_per_second", {**gateway, "model": MODEL},
                         ("10", "20", "50"))
    series += _histogram("gateway_model_load_seconds", {**gateway, "model": MODEL},
                         ("0.1", "1", "10"))
    series += [
        _counter("gateway_prompt_tokens_total", {**gateway, "model": MODEL}, 40),
        _counter("gateway_completion_tokens_total", {**gateway, "model": MODEL}, 200),
        _gauge("gateway_requests_in_flight", gateway),
        _gauge("gateway_model_loaded", {**gateway, "model": MODEL}),
        _gauge("gateway_model_memory_bytes", {**gateway, "model": MODEL}, 7.5e9),
        _gauge("gateway_models_available", gateway, 2),
        _gauge("gateway_backend_up", {**gateway, "backend": "ollama"}),
        _gauge("gateway_backend_up", {**gateway, "backend": "vision"}),
        _gauge("gateway_pool_backend_in_flight", {**gateway, "backend": "ollama"}),
        _counter("gateway_pool_backend_requests_total", {**gateway, "backend": "ollama"}),
    ]
    if errors:
        pool = {**gateway, "backend": "ollama"}
        series += [_counter("gateway_pool_backend_errors_total", {**pool, "reason": "busy"}),
                   _counter("gateway_pool_backend_retries_total", pool),
                   _counter("gateway_pool_backend_ejections_total", pool)]
        series += _histogram("gateway_request_duration_seconds", {**chat, "status": "503"},
                             ("0.5", "1", "5"))
        series += [_counter("gateway_errors_total", {**gateway, "reason": reason})
                   for reason in ("backend_503", "vision_503", "auth")]
    for service in ("ollama", "vision", "gateway"):
        series += [_gauge("gemma_airgap_container_healthy", {**node, "service": service}),
                   _counter("gemma_airgap_healer_restarts_total", {**node, "service": service},
                            0)]
    series += [_counter("gemma_airgap_healer_last_check_timestamp_seconds", node, 60)]
    series += [_counter("node_cpu_seconds_total", {**node, "cpu": "0", "mode": mode}, step)
               for mode, step in (("idle", 40), ("iowait", 2), ("user", 18))]
    series += [_gauge(f"node_load{minutes}", node, 0.5) for minutes in (1, 5, 15)]
    series += [_gauge("node_memory_MemAvailable_bytes", node, 2e10),
               _gauge("node_memory_MemTotal_bytes", node, 6.4e10)]
    disk = {**node, "device": "/dev/sda1", "fstype": "ext4", "mountpoint": "/"}
    series += [_gauge("node_filesystem_avail_bytes", disk, 4e11),
               _gauge("node_filesystem_size_bytes", disk, 1e12)]
    series += [_counter(f"node_disk_{way}_bytes_total", {**node, "device": "sda"}, 1e6)
               for way in ("read", "written")]
    series += [_counter(f"node_network_{way}_bytes_total", {**node, "device": "eth0"}, 1e5)
               for way in ("receive", "transmit")]
    gpu = {**dcgm, "gpu": "0", "UUID": "GPU-0", "modelName": "NVIDIA H200"}
    series += [_gauge(name, gpu, value) for name, value in (
        ("DCGM_FI_DEV_FB_USED", 20000), ("DCGM_FI_DEV_FB_FREE", 123771),
        ("DCGM_FI_DEV_GPU_UTIL", 60), ("DCGM_FI_DEV_XID_ERRORS", 0))]
    series += [_counter("llamacpp:prompt_tokens_total", vision, 300),
               _counter("llamacpp:tokens_predicted_total", vision, 100)]
    series += [_gauge(f"llamacpp:{name}", vision, value) for name, value in (
        ("prompt_tokens_seconds", 900), ("predicted_tokens_seconds", 40),
        ("requests_processing", 1), ("requests_deferred", 0), ("kv_cache_usage_ratio", 0.3),
        ("n_busy_slots_per_decode", 1))]
    return series


@pytest.mark.parametrize("errors", [True, False], ids=["with-errors", "never-failed"])
def test_every_panel_query_returns_data_from_the_contracts_series(prometheus_tools, tmp_path,
                                                                   errors):
    """promtool's rule unit test: the contract's series for half an hour, the monitoring
    role's recording rules on them, and one alert per panel query that fires when the query
    returns nothing. None may fire: each panel draws, also on a target that never failed a
    request (the error panels then draw 0, not "No data")."""
    rules = {"groups": [{"name": "dashboard-panels", "rules": [
        {"alert": "PanelQueryEmpty", "expr": f"absent({expr})",
         "labels": {"dashboard": uid, "panel": title}, "annotations": {"query": expr}}
        for uid, title, expr in panel_queries()]}]}
    (tmp_path / "panels.yml").write_text(json.dumps(rules, indent=1))
    test = {"rule_files": [str(RECORDING_RULES), "panels.yml"], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": contract_series(errors),
                       "alert_rule_test": [{"eval_time": "20m", "alertname": "PanelQueryEmpty",
                                            "exp_alerts": []}]}]}
    (tmp_path / "panels.test.yml").write_text(json.dumps(test, indent=1))
    out = _promtool(prometheus_tools, "test", "rules", "panels.test.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
