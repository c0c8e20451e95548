"""Many inference hosts, as Ansible renders them: each gateway's backends, Ollama's published
site port and its firewall, the checks; through real inventories and hostvars."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from inference_pool import inference_backends, site_addresses

from tests.conftest import ROOT
from tests.unit.test_ollama_stack_settings import BUNDLE

SHARED = ROOT / "roles" / "gemma_airgap"
STACK = ROOT / "roles" / "ollama_stack"
GATEWAY = ROOT / "roles" / "gateway"
# Three hosts named the three ways an inventory names them: an explicit site address (here
# also its ansible_host: the play below reads role defaults as play variables, which would
# hide an inventory's own value for the host itself), an ansible_host, and a name that is
# itself the address.
INVENTORY = {"all": {"children": {
    "targets": {"hosts": {
        "llm-01": {"gemma_airgap_site_address": "10.20.0.11", "ansible_host": "10.20.0.11",
                   "ollama_stack_num_parallel": 4},
        "llm-02": {"ansible_host": "10.20.0.12"},
        "10.20.0.13": {}}},
    "inference": {"hosts": {"llm-01": {}, "llm-02": {}, "10.20.0.13": {}}}}}}


def play(tmp_path: Path, host: str, tasks: str, inventory: dict = INVENTORY,
         **variables) -> subprocess.CompletedProcess:
    """Run `tasks` for `host` (locally) with the roles' defaults and vars, as deploy does."""
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    extra = {"release_bundle": BUNDLE, "release_dir": "/opt/r/v1", **variables}
    (tmp_path / "vars.json").write_text(json.dumps(extra))
    (tmp_path / "play.yml").write_text(f"""
- hosts: "{host}"
  gather_facts: false
  connection: local
  vars_files: [{SHARED}/defaults/main.yml, {STACK}/defaults/main.yml, {STACK}/vars/main.yml,
               {GATEWAY}/defaults/main.yml, {GATEWAY}/vars/main.yml, {tmp_path}/vars.json]
  tasks:
{tasks}
""")
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i",
         str(tmp_path / "inventory.yml"), "-e", f"ansible_python_interpreter={sys.executable}",
         str(tmp_path / "play.yml")], cwd=ROOT, text=True, capture_output=True, check=False)


def rendered(tmp_path: Path, host: str, expression: str, **kwargs):
    out = play(tmp_path, host, f"""
    - ansible.builtin.copy:
        dest: {tmp_path}/out.json
        content: "{{{{ {expression} | to_json }}}}"
        mode: "0644"
""", **kwargs)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads((tmp_path / "out.json").read_text())


def test_every_gateway_lists_every_inference_host_its_own_on_the_stack_network(tmp_path):
    backends = rendered(tmp_path, "llm-02", """gemma_airgap_inference_hosts
        | gemma_airgap.ollama.inference_backends(hostvars, inventory_hostname,
                                                 gemma_airgap_ollama_port,
                                                 __gateway_local_ollama)""")
    assert backends == [
        {"name": "llm-01", "url": "http://10.20.0.11:11434", "parallel": 4},
        {"name": "llm-02", "url": "http://ollama:11434", "parallel": 1},
        {"name": "10.20.0.13", "url": "http://10.20.0.13:11434", "parallel": 1}]


def test_the_edge_hosts_default_to_the_inference_hosts_and_none_without_the_group(tmp_path):
    assert rendered(tmp_path, "llm-01", "gemma_airgap_edge_hosts") == \
        ["llm-01", "llm-02", "10.20.0.13"]
    alone = {"all": {"children": {"targets": INVENTORY["all"]["children"]["targets"]}}}
    assert rendered(tmp_path, "llm-01", "[gemma_airgap_inference_hosts, "
                    "__ollama_stack_remote_edges]", inventory=alone) == [[], []]


def test_an_inference_host_publishes_ollama_on_its_site_address_for_the_others(tmp_path):
    out = play(tmp_path, "llm-01", f"""
    - ansible.builtin.template:
        src: {STACK}/templates/compose.yml.j2
        dest: {tmp_path}/compose.yml
        mode: "0644"
    - ansible.builtin.template:
        src: {STACK}/templates/ollama-firewall.sh.j2
        dest: {tmp_path}/firewall.sh
        mode: "0755"
""")
    assert out.returncode == 0, out.stdout + out.stderr
    compose = yaml.safe_load((tmp_path / "compose.yml").read_text())
    ollama = compose["services"]["ollama"]
    assert ollama["ports"] == ["10.20.0.11:11434:11434"]
    assert ollama["networks"] == ["backend", "site"]
    assert compose["networks"]["backend"] == {"internal": True}
    assert "ports" not in compose["services"]["vision"]
    script = (tmp_path / "firewall.sh").read_text()
    allowed = [line for line in script.splitlines() if line.endswith("-j RETURN")]
    assert allowed == ['iptables -w -A "$new" -s 10.20.0.12 -j RETURN',
                       'iptables -w -A "$new" -s 10.20.0.13 -j RETURN']
    assert script.index("-s 10.20.0.13") < script.index('-A "$new" -j DROP')
    assert "--ctorigdst 10.20.0.11 --ctorigdstport 11434" in script
    # The script is valid sh.
    subprocess.run(["sh", "-n", str(tmp_path / "firewall.sh")], check=True)


def test_a_standalone_target_publishes_nothing(tmp_path):
    alone = {"all": {"children": {"targets": INVENTORY["all"]["children"]["targets"]}}}
    out = play(tmp_path, "llm-01", f"""
    - ansible.builtin.template:
        src: {STACK}/templates/compose.yml.j2
        dest: {tmp_path}/compose.yml
        mode: "0644"
""", inventory=alone)
    assert out.returncode == 0, out.stdout + out.stderr
    compose = yaml.safe_load((tmp_path / "compose.yml").read_text())
    assert "ports" not in compose["services"]["ollama"]
    assert compose["services"]["ollama"]["networks"] == ["backend"]
    assert "site" not in compose["networks"]


def checks(tmp_path: Path, inventory: dict) -> subprocess.CompletedProcess:
    return play(tmp_path, "llm-01", f"""
    - ansible.builtin.include_tasks: {STACK}/tasks/checks.yml
""", inventory=inventory)


def test_an_edge_host_outside_the_inference_group_is_refused(tmp_path):
    inventory = json.loads(json.dumps(INVENTORY))
    inventory["all"]["children"]["inference"]["hosts"] = {"llm-01": {}}
    inventory["all"]["children"]["edge"] = {"hosts": {"llm-01": {}, "llm-02": {}}}
    out = checks(tmp_path, inventory)
    assert out.returncode != 0
    assert "llm-02 in the edge group but not in the inference group" in out.stdout


def test_an_inference_host_without_an_ipv4_site_address_is_refused(tmp_path):
    inventory = json.loads(json.dumps(INVENTORY))
    inventory["all"]["children"]["targets"]["hosts"]["llm-02"] = {
        "ansible_host": "llm-02.example.internal"}
    out = checks(tmp_path, inventory)
    assert out.returncode != 0
    assert "llm-02: its site address 'llm-02.example.internal' is not an IPv4" in out.stdout
    assert checks(tmp_path, INVENTORY).returncode == 0


def test_the_filters_refuse_what_they_cannot_name():
    hostvars = {"a": {"gemma_airgap_site_address": "10.0.0.1"}, "b": {"ansible_host": "b.lan"}}
    assert site_addresses(["a"], hostvars) == ["10.0.0.1"]
    with pytest.raises(AnsibleFilterError, match="not an IPv4 address"):
        site_addresses(["b"], hostvars)
    with pytest.raises(AnsibleFilterError, match="c is in the inference or edge group but not"):
        inference_backends(["c"], hostvars, "a", 11434, "http://ollama:11434")
    with pytest.raises(AnsibleFilterError, match="not an IPv4"):
        site_addresses(["x"], {"x": {"gemma_airgap_site_address": "10.0.0.1; reboot"}})


# --- the virtual IP (roles/edge_vip) -------------------------------------------------------------

EDGE_VIP = ROOT / "roles" / "edge_vip"


def test_keepalived_gets_the_other_edge_hosts_as_peers_and_a_priority_by_order(tmp_path):
    out = play(tmp_path, "llm-02", f"""
    - ansible.builtin.include_vars: {EDGE_VIP}/defaults/main.yml
    - ansible.builtin.include_vars: {EDGE_VIP}/vars/main.yml
    - ansible.builtin.set_fact:
        __edge_vip_interface: eth1
        __edge_vip_prefix: 24
        edge_vip_address: 10.20.0.100
        edge_vip_check_url: http://127.0.0.1:8080/readyz
        gemma_airgap_site_address: 10.20.0.12
    - ansible.builtin.template:
        src: {EDGE_VIP}/templates/keepalived.conf.j2
        dest: {tmp_path}/keepalived.conf
        mode: "0644"
""")
    assert out.returncode == 0, out.stdout + out.stderr
    conf = (tmp_path / "keepalived.conf").read_text()
    peers = conf.split("unicast_peer {")[1].split("}")[0].split()
    assert peers == ["10.20.0.11", "10.20.0.13"]
    assert "unicast_src_ip 10.20.0.12" in conf and "priority 190" in conf
    assert "10.20.0.100/24 dev eth1" in conf and "nopreempt" in conf and "state BACKUP" in conf
    assert conf.count("{") == conf.count("}")
    assert "# The site's virtual IP, held by one edge host whose gateway is ready" in conf


@pytest.mark.parametrize("address, prefix, says", [
    ("10.20.1.100", 0, "not on the site network 10.20.0.0/24"),
    ("10.20.0.255", 0, "broadcast"),
    ("10.20.0.12", 0, "a host's site address"),
    ("fd00::1", 0, "IPv4"),
    ("10.20.0.100", 33, "prefix length is 1 to 32"),
])
def test_a_virtual_ip_off_the_site_network_or_taken_is_refused(address, prefix, says):
    from inference_pool import virtual_ip

    with pytest.raises(AnsibleFilterError, match=says):
        virtual_ip(address, "10.20.0.12/24", prefix, ["10.20.0.11", "10.20.0.12"])


def test_a_virtual_ip_takes_the_site_networks_prefix_unless_given():
    from inference_pool import virtual_ip

    assert virtual_ip("10.20.0.100", "10.20.0.12/24", 0, ["10.20.0.12"]) == 24
    assert virtual_ip("10.20.0.100", "10.20.0.12/24", 25, ["10.20.0.12"]) == 25


def pool_checks(tmp_path: Path, hosts: str, **variables) -> subprocess.CompletedProcess:
    """roles/gemma_airgap/tasks/pool_checks.yml, as deploy.yml and rollback.yml run it."""
    return play(tmp_path, hosts, f"""
    - ansible.builtin.include_tasks: {SHARED}/tasks/pool_checks.yml
""", **variables)


def test_a_pooled_site_with_its_key_and_every_host_in_the_run_passes(tmp_path):
    out = pool_checks(tmp_path, "all", gateway_pool_key="gk_pool")
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_run_limited_to_one_host_of_a_pooled_site_is_refused_naming_the_others(tmp_path):
    out = pool_checks(tmp_path, "llm-01", gateway_pool_key="gk_pool")
    assert out.returncode != 0
    assert "llm-02, 10.20.0.13 not in this run (--limit?)" in " ".join(out.stdout.split())


def test_a_pooled_site_without_the_pool_key_is_refused(tmp_path):
    out = pool_checks(tmp_path, "all")
    assert out.returncode != 0
    said = " ".join(out.stdout.split())
    assert "This site has 3 inference hosts" in said and "set gateway_pool_key" in said
    # Where the key tool runs: the control-node kit does not carry it.
    assert "PYTHONPATH=gateway .venv/bin/python -m gemma_gateway.keys --name deploy" in said
    assert "docker exec gemma-airgap-gateway-1 /opt/gateway/bin/python -m gemma_gateway" in said


def test_inference_hosts_set_apart_from_the_inventory_group_are_refused(tmp_path):
    out = pool_checks(tmp_path, "all", gateway_pool_key="gk_pool",
                      gemma_airgap_inference_hosts=["llm-01", "llm-02"])
    assert out.returncode != 0
    assert "is not the inventory's inference group (llm-01, llm-02, 10.20.0.13)" in \
        " ".join(out.stdout.split())
