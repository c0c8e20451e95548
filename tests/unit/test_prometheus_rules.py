"""The Prometheus rules against the monitoring contract, and their promtool tests' coverage.

promtool (make rules) checks that the rules load and that each test case gets the alerts it
expects; it cannot say that an alert the contract names is missing, that an alert lacks a
severity or a description, or that some alert has no test where it fires or none where it
stays silent. These tests read the YAML and say so.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

RULES = ROOT / "roles" / "monitoring" / "files" / "prometheus" / "rules"
TESTS = ROOT / "tests" / "prometheus"

# The monitoring contract's names (issue 15): dashboards and Alertmanager routes use them.
CONTRACT_ALERTS = {
    "BackendDown", "VisionDown", "GatewayDown", "TargetDown", "ErrorRatioHigh",
    "TimeToFirstTokenSlow", "QueueSaturated", "DiskFilling", "MemoryPressure", "GpuMemoryHigh",
    "GpuXidErrors", "StackUnhealthy", "ContainerRestartsRepeating", "BackupMissing",
    "CertificateExpiring", "InferenceHostOut",
}
CONTRACT_RECORDS = {
    "instance_endpoint_model:gateway_request_duration_seconds:p50_5m",
    "instance_endpoint_model:gateway_request_duration_seconds:p95_5m",
    "instance_endpoint_model:gateway_request_duration_seconds:p99_5m",
    "instance_model:gateway_requests:rate5m",
    "instance_model:gateway_completion_tokens:rate5m",
    "instance_model:gateway_prompt_tokens:rate5m",
    "instance_model:gateway_time_to_first_token_seconds:p50_5m",
    "instance_model:gateway_time_to_first_token_seconds:p95_5m",
    "instance_model:gateway_time_to_first_token_seconds:p99_5m",
    "instance_model:gateway_model_load_seconds:p95_5m",
    "instance:gateway_errors:ratio5m",
    "instance:gateway_saturated:rate5m",
}
SEVERITIES = {"critical", "warning"}


def rules(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict]:
    return [rule for rule in rules(RULES / "alerts.yml") if "alert" in rule]


def promtool_cases() -> list[tuple[str, dict]]:
    """(file name, one alert_rule_test entry) for every promtool test file."""
    cases = []
    for path in sorted(TESTS.glob("*.test.yml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases += [(path.name, case) for case in test.get("alert_rule_test", [])]
    return cases


def test_every_contract_alert_exists_and_no_other():
    assert {rule["alert"] for rule in alert_rules()} == CONTRACT_ALERTS


def test_alerts_file_holds_only_alerts_and_recording_file_only_records():
    assert all("alert" in rule for rule in rules(RULES / "alerts.yml"))
    assert all("record" in rule for rule in rules(RULES / "recording.yml"))


def test_every_contract_recording_rule_exists_and_no_other():
    names = [rule["record"] for rule in rules(RULES / "recording.yml")]
    assert len(names) == len(set(names)), "a recording rule is defined twice"
    assert set(names) == CONTRACT_RECORDS


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_says_how_bad_what_and_what_to_do(rule):
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    annotations = rule.get("annotations", {})
    assert set(annotations) >= {"summary", "description"}
    assert annotations["summary"].strip() and annotations["description"].strip()
    # Where: the target's name. What to do: at least one command to run, in backquotes.
    assert "$labels.instance" in annotations["summary"] + annotations["description"]
    assert re.search(r"`[^`]+`", annotations["description"]), "no command in the description"


def test_alerts_with_two_rules_differ_in_severity():
    """Two rules of one alert (a warning and a critical tier, or two causes) never carry the
    same severity and expression twice."""
    seen = defaultdict(set)
    for rule in alert_rules():
        key = (rule["labels"]["severity"], rule["expr"].strip())
        assert key not in seen[rule["alert"]], rule["alert"]
        seen[rule["alert"]].add(key)


def test_disks_are_chosen_by_an_allow_list_of_filesystem_types():
    disk = [rule for rule in alert_rules() if rule["alert"] == "DiskFilling"]
    assert disk
    for rule in disk:
        assert "fstype!" not in rule["expr"]
        assert all(selector.startswith("fstype=~")
                   for selector in re.findall(r"fstype\s*[!=]~?", rule["expr"]))
        assert "node_filesystem_readonly" in rule["expr"]


def test_every_alert_and_severity_fires_in_a_test_and_every_alert_stays_silent_in_one():
    fired, silent = set(), set()
    for _name, case in promtool_cases():
        expected = case.get("exp_alerts") or []
        if expected:
            fired |= {(case["alertname"], alert["exp_labels"]["severity"]) for alert in expected}
        else:
            silent.add(case["alertname"])
    tiers = {(rule["alert"], rule["labels"]["severity"]) for rule in alert_rules()}
    assert tiers - fired == set(), "never seen firing"
    assert CONTRACT_ALERTS - silent == set(), "never tested silent"


def test_every_expected_alert_checks_its_labels_and_annotations_exactly():
    """promtool compares what it is given: an expected alert without annotations would only
    pass for an alert without any; spell them out so the text operators read is tested."""
    for name, case in promtool_cases():
        for alert in case.get("exp_alerts") or []:
            assert "severity" in alert.get("exp_labels", {}), (name, case["alertname"])
            assert set(alert.get("exp_annotations", {})) == {"summary", "description"}, (
                name, case["alertname"])


def test_every_test_file_loads_both_rule_files():
    """Alerts read recorded series: a test file without recording.yml would test nothing."""
    for path in sorted(TESTS.glob("*.test.yml")):
        files = {Path(entry).name for entry in yaml.safe_load(path.read_text())["rule_files"]}
        if path.name == "recording.test.yml":
            assert "recording.yml" in files
        else:
            assert files == {"recording.yml", "alerts.yml"}, path.name
