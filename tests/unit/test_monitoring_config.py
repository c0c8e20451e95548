"""The monitoring role's Prometheus and Alertmanager files, rendered by Ansible from the role's
own templates for a few kinds of site, and checked by the real promtool and amtool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    gemma_airgap_project: gemma-airgap
    gemma_airgap_gateway_port: 8080
  vars_files: [{site}]
  tasks:
    - name: Render
      ansible.builtin.template:
        src: "{roles}/monitoring/templates/{{{{ item }}}}.j2"
        dest: "{out}/{{{{ item }}}}"
        mode: "0644"
      loop: [prometheus.yml, alertmanager.yml]
      vars:
        monitoring_dir: {out}
"""

DEFAULTS = (ROOT / "roles" / "monitoring" / "defaults" / "main.yml").read_text()

SITES = {
    # Two CPU targets, one with TLS on its gateway; a webhook receiver.
    "tls-webhook": {
        "__monitoring_scraped": [
            {"name": "llm-01", "address": "10.20.0.11", "gpu": False, "metrics_key": "k1",
             "certificate": "PEM", "server_name": "llm-01.example.internal", "vision": True},
            {"name": "llm-02", "address": "10.20.0.12", "gpu": False, "metrics_key": "k2",
             "certificate": "", "server_name": "llm-02", "vision": False}],
        "monitoring_alert_receiver": {"webhook_url": "http://alerts.example.internal/hook"},
    },
    # A GPU target without a metrics key, an e-mail relay, no vision metrics.
    "gpu-email": {
        "__monitoring_scraped": [
            {"name": "gpu-01", "address": "10.20.0.21", "gpu": True, "metrics_key": "",
             "certificate": "", "server_name": "gpu-01", "vision": True}],
        "monitoring_alert_receiver": {"email_to": "ops@example.internal",
                                      "email_from": "am@example.internal",
                                      "smarthost": "mail.example.internal:25"},
    },
}


def render(tmp_path: Path, site: dict) -> Path:
    out = tmp_path / "out"
    (out / "prometheus" / "secrets").mkdir(parents=True)
    for target in site["__monitoring_scraped"]:
        for suffix in ("key", "crt"):
            (out / "prometheus" / "secrets" / f"{target['name']}.{suffix}").write_text("x")
    variables = {**yaml.safe_load(DEFAULTS), "inventory_hostname": "llm-01", **site}
    variables.pop("monitoring_dir", None)
    (tmp_path / "site.yml").write_text(json.dumps(variables))
    (tmp_path / "play.yml").write_text(PLAYBOOK.format(site=tmp_path / "site.yml",
                                                       roles=ROOT / "roles", out=out))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"),
                           str(tmp_path / "play.yml")], env=env, text=True,
                          capture_output=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    (out / "prometheus" / "prometheus.yml").write_text((out / "prometheus.yml").read_text())
    return out


@pytest.mark.parametrize("name", sorted(SITES))
def test_rendered_files_pass_promtool_and_amtool(name, tmp_path, prometheus_tools):
    out = render(tmp_path, SITES[name])
    config = yaml.safe_load((out / "prometheus.yml").read_text())
    # promtool resolves the credentials and CA files relative to where they are named.
    text = (out / "prometheus.yml").read_text().replace("/etc/prometheus/", f"{out}/prometheus/")
    (out / "prometheus" / "prometheus.yml").write_text(text)
    checked = subprocess.run([str(prometheus_tools / "promtool"), "check", "config",
                              str(out / "prometheus" / "prometheus.yml")],
                             text=True, capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = subprocess.run([str(prometheus_tools / "amtool"), "check-config",
                              str(out / "alertmanager.yml")], text=True, capture_output=True,
                             check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for target in SITES[name]["__monitoring_scraped"]:
        gateway = jobs.get(f"gateway/{target['name']}")
        if not target["metrics_key"]:
            # Scraped without a key: the 401 makes it down, and GatewayDown says so.
            assert "authorization" not in gateway
            assert f"vision/{target['name']}" not in jobs
            continue
        assert gateway["relabel_configs"] == [{"target_label": "job", "replacement": "gateway"}]
        assert gateway["static_configs"][0]["labels"] == {"instance": target["name"]}
        assert gateway["scheme"] == ("https" if target["certificate"] else "http")
        assert ("tls_config" in gateway) == bool(target["certificate"])
        if target["certificate"]:
            assert gateway["tls_config"]["server_name"] == target["server_name"]
        vision = jobs.get(f"vision/{target['name']}")
        assert (vision is not None) == target["vision"]
        if vision:  # only llama-server's own series, and only so many
            assert vision["metric_relabel_configs"] == [
                {"source_labels": ["__name__"], "regex": "llamacpp:.+", "action": "keep"}]
            assert vision["sample_limit"] <= 2000
        assert target["metrics_key"] not in (out / "prometheus.yml").read_text()
    nodes = [c["labels"]["instance"] for c in jobs["node"]["static_configs"]]
    assert nodes == [t["name"] for t in SITES[name]["__monitoring_scraped"]]
    assert ("dcgm" in jobs) == any(t["gpu"] for t in SITES[name]["__monitoring_scraped"])
    assert jobs["alertmanager"]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:9093"]
