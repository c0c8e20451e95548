#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gemma-airgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: gateway_pool
short_description: Take an inference host out of a gateway's backend pool, or put it back
description:
  - Asks one gateway (C(POST /gateway/drain) or C(/gateway/resume)) to stop sending new
    requests to one of its inference hosts, or to send them again; when draining, waits until
    the requests that host still serves for this gateway have finished (C(in_flight) 0 in
    C(GET /gateway/backends)).
  - A gateway that does not run (nothing listens on its port, and O(running) is false) or
    that does not list the host sends it nothing, so there is nothing to drain there (a first
    deploy, a host just added to the inventory); the module says so in C(gateway) and changes
    nothing. Any other failure to reach it (a timeout, TLS, a reset) fails.
  - Read-only in check mode.
version_added: "0.21.0"
author: gemma-airgap developers (@gemma-airgap)
options:
  url:
    description: The gateway's base URL, as the host the module runs on reaches it.
    type: str
    required: true
  api_key:
    description: A key with the C(pool) (or C(admin)) scope.
    type: str
    required: true
  ca_path:
    description: The CA that signed the gateway's certificate (the chain is verified, not the name).
    type: path
  backend:
    description: The inference host's name in the gateway's pool (its inventory name).
    type: str
    required: true
  state:
    description: C(drained) (no new request; wait for those in flight) or C(resumed).
    type: str
    choices: [drained, resumed]
    required: true
  wait_timeout:
    description: Seconds to wait, when draining, for the requests in flight to finish.
    type: int
    default: 600
  running:
    description:
      - Whether the gateway's container is known to run. Then a refused connection fails too
        (the gateway listens elsewhere than O(url) says, and may still send the host requests).
    type: bool
    default: false
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
requirements:
  - Python standard library only.
"""

EXAMPLES = r"""
- name: Take llm-02 out of llm-01's gateway for its upgrade
  gemma_airgap.ollama.gateway_pool:
    url: http://127.0.0.1:8080
    api_key: "{{ vault_gateway_pool_key }}"
    backend: llm-02.example.internal
    state: drained
  delegate_to: llm-01.example.internal
"""

RETURN = r"""
gateway:
  description: C(listed) (the gateway has the host), C(unlisted) or C(not running).
  type: str
  returned: always
draining_before:
  description: Whether the host was drained on this gateway before the call.
  type: bool
  returned: always
backend:
  description: The host's state on the gateway afterwards (name, draining, in_flight, ...).
  type: dict
  returned: when the gateway lists the host
waited:
  description: Seconds spent waiting for the requests in flight.
  type: float
  returned: always
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_http import (
    ApiError,
    OllamaClient,
)

# How often a drain looks at the requests still in flight (the gateway counts them live).
POLL_SECONDS = 0.5


class Forgotten(Exception):
    """The gateway no longer has the host drained (it restarted while we waited)."""


class PoolMember:
    """One inference host as one gateway sees it."""

    def __init__(self, client, name):
        self.client = client
        self.name = name

    def state(self):
        """Its entry in GET /gateway/backends, or None when the gateway does not list it."""
        answer = self.client.get("/gateway/backends", timeout=10)
        entries = answer.get("backends") if isinstance(answer, dict) else None
        if not isinstance(entries, list):
            raise ApiError(self.client.base_url + "/gateway/backends",
                           "the answer has no backends list: is this a gemma-airgap gateway?")
        for entry in entries:
            if isinstance(entry, dict) and entry.get("name") == self.name:
                return entry
        return None

    def set_draining(self, draining):
        path = "/gateway/drain" if draining else "/gateway/resume"
        return self.client.post(path, {"backend": self.name}, timeout=10).get("backend") or {}

    def wait_idle(self, timeout):
        """Seconds it took for the host's requests in flight to reach 0; raises at timeout.
        The host must stay drained meanwhile: a gateway that restarted forgot the drain."""
        started = time.monotonic()
        while True:
            entry = self.state() or {}
            if not entry.get("draining"):
                raise Forgotten()
            in_flight = entry.get("in_flight", 0)
            if not in_flight:
                return entry, time.monotonic() - started
            if time.monotonic() - started >= timeout:
                raise TimeoutError(in_flight)
            time.sleep(POLL_SECONDS)


def run(module):
    params = module.params
    client = OllamaClient(params["url"], timeout=10,
                          headers={"Authorization": "Bearer " + params["api_key"]},
                          ca_path=params["ca_path"])
    member = PoolMember(client, params["backend"])
    draining = params["state"] == "drained"
    result = {"changed": False, "gateway": "listed", "draining_before": False, "waited": 0.0}
    try:
        entry = member.state()
    except ApiError as error:
        # Nothing listens on its port and no container runs: not started yet (a first deploy)
        # or stopped, and it sends the host nothing. Anything else (a timeout, TLS, a reset,
        # an HTTP error) may be a gateway that still sends it requests.
        if not isinstance(error.cause, ConnectionRefusedError) or params["running"]:
            raise
        result.update(gateway="not running", message=str(error))
        return result
    if entry is None:
        result.update(gateway="unlisted", message="%s does not list %s: it sends it nothing"
                      % (params["url"], params["backend"]))
        return result
    result["draining_before"] = bool(entry.get("draining"))
    result["changed"] = result["draining_before"] != draining
    if result["changed"] and not module.check_mode:
        entry = member.set_draining(draining)
    if draining and not module.check_mode:
        try:
            entry, result["waited"] = member.wait_idle(params["wait_timeout"])
        except Forgotten:
            message = ("%s forgot the drain of %s while the deploy waited (it restarted?); "
                       "nothing was changed on %s: run deploy.yml again."
                       % (params["url"], params["backend"], params["backend"]))
            module.fail_json(msg=message, **result)
        except TimeoutError as late:
            message = ("%s still has %s request(s) in flight on %s after %s s of draining. It "
                       "stays drained (no new request reaches it); wait for them and run "
                       "deploy.yml again, or raise gateway_drain_timeout."
                       % (params["backend"], late.args[0], params["url"], params["wait_timeout"]))
            module.fail_json(msg=message, **result)
    result["backend"] = entry
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            api_key=dict(type="str", required=True, no_log=True),
            ca_path=dict(type="path"),
            backend=dict(type="str", required=True),
            state=dict(type="str", required=True, choices=["drained", "resumed"]),
            wait_timeout=dict(type="int", default=600),
            running=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module))
    except ApiError as error:
        hint = ""
        if error.status in (401, 403):
            hint = (" The deploy's key (gateway_pool_key) must be among this gateway's keys with "
                    "the pool scope: run deploy.yml with --tags gateway on that host first.")
        elif error.status is None:
            hint = (" The gateway runs but does not answer at that URL (TLS or its port changed "
                    "in the inventory?): apply the gateway's settings first with --tags "
                    "gateway, then run deploy.yml again.")
        module.fail_json(msg="The gateway refused to %s %s: %s.%s" % (
            "drain" if module.params["state"] == "drained" else "resume",
            module.params["backend"], error, hint))


if __name__ == "__main__":
    main()
