# -*- coding: utf-8 -*-
# gemma-airgap: the site's inference hosts as each gateway and firewall sees them.

"""Jinja filters ``site_addresses`` and ``inference_backends``.

A host's site address (``gemma_airgap_site_address``) defaults, in the gemma_airgap role,
to its ``ansible_host``. Another host reads it through ``hostvars``, which carry inventory
variables and facts but not role defaults; these filters apply the same rule there, so
that every host names the others by the address they listen on.

``inference_backends`` is the gateway's ``backends`` list: every inference host's Ollama,
this host's own on the stack's internal network, the others' on their site address.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible.errors import AnsibleFilterError


def _address(hostvars, host):
    if host not in hostvars:
        raise AnsibleFilterError("%s is in the inference or edge group but not in the "
                                 "inventory" % host)
    variables = hostvars[host]
    address = str(variables.get("gemma_airgap_site_address") or
                  variables.get("ansible_host") or host)
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        raise AnsibleFilterError(
            "%s: its site address %r is not an IPv4 address; the firewall and the other "
            "gateways need one (set ansible_host or gemma_airgap_site_address)"
            % (host, address)) from None


def site_addresses(hosts, hostvars):
    """The site (IPv4) address of each host, in order."""
    return [_address(hostvars, host) for host in hosts]


def inference_backends(hosts, hostvars, this_host, port, local_url):
    """The gateway's backends: [{name, url, parallel}] for each inference host."""
    backends = []
    for host in hosts:
        url = local_url if host == this_host else \
            "http://%s:%d" % (_address(hostvars, host), int(port))
        parallel = int(hostvars[host].get("ollama_stack_num_parallel") or 1)
        backends.append({"name": host, "url": url, "parallel": parallel})
    return backends


class FilterModule(object):
    def filters(self):
        return {"site_addresses": site_addresses, "inference_backends": inference_backends}
