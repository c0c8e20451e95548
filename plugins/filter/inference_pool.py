# -*- coding: utf-8 -*-
# gemma-airgap: the site's inference hosts as each gateway and firewall sees them.

"""Jinja filters ``site_addresses``, ``inference_backends`` and ``virtual_ip``.

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


def virtual_ip(address, site_interface, prefix_length, taken):
    """The virtual IP's prefix length, once the address is checked: IPv4, inside the network
    of the edge host's site address (`site_interface`, as `ip` shows it: 10.0.0.5/24), not
    that network's own or broadcast address, and not a host's site address (`taken`)."""
    try:
        vip = ipaddress.IPv4Address(str(address))
        interface = ipaddress.IPv4Interface(str(site_interface))
    except ValueError as error:
        raise AnsibleFilterError("edge_vip_address %r: %s; give an IPv4 address on the edge "
                                 "hosts' site network" % (address, error)) from None
    prefix = int(prefix_length) or interface.network.prefixlen
    if not 1 <= prefix <= 32:
        raise AnsibleFilterError("edge_vip_prefix_length %s: an IPv4 prefix length is 1 to 32 "
                                 "(0: the site address's own)" % prefix_length)
    network = ipaddress.IPv4Network("%s/%d" % (interface.ip, prefix), strict=False)
    if vip not in interface.network or vip not in network:
        raise AnsibleFilterError("edge_vip_address %s is not on the site network %s of this "
                                 "edge host: VRRP moves it only between hosts of one network"
                                 % (vip, interface.network))
    if vip in (network.network_address, network.broadcast_address):
        raise AnsibleFilterError("edge_vip_address %s is the network's own or broadcast "
                                 "address in %s" % (vip, network))
    if str(vip) in [str(host) for host in taken]:
        raise AnsibleFilterError("edge_vip_address %s is a host's site address: give an "
                                 "address nothing else uses" % vip)
    return prefix


class FilterModule(object):
    def filters(self):
        return {"site_addresses": site_addresses, "inference_backends": inference_backends,
                "virtual_ip": virtual_ip}
