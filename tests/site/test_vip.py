"""One address for clients: keepalived on both edge hosts holds the site's virtual IP on one
of them. The host holding it is killed (as a power cut: no goodbye advert); the address must
answer from the other edge host within FAILOVER_SECONDS, the figure the README states. The
killed host then boots again and serves, and the address stays where it is (nopreempt): it
moves only when its holder fails."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import HOSTS, address, backends, docker, generate, wait_for

pytestmark = pytest.mark.site

# What the README promises: VRRP adverts every second, the holder declared dead after three
# missed ones plus a skew under a second, then a gratuitous ARP. Measured here on a loaded
# machine, with the figure printed.
FAILOVER_SECONDS = 10


def holders(vip: str) -> list[str]:
    return [host for host in HOSTS
            if f" {vip}/" in docker("exec", host, "ip", "-o", "-4", "addr", "show",
                                    check=False).stdout]


def ready(url: str, timeout: float = 0.5) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_virtual_ip_moves_to_the_other_edge_host_when_its_holder_dies(lab, site, capsys):
    vip, url = lab, f"http://{lab}:8080"
    assert ready(url, timeout=5)
    held = wait_for(lambda: holders(vip) if len(holders(vip)) == 1 else None, 30)
    victim = held[0]
    survivor = next(host for host in HOSTS if host != victim)
    assert generate(url).status_code == 200
    victim_address = address(victim)

    docker("kill", victim)
    killed = time.monotonic()
    try:
        while not ready(url, timeout=0.3):
            assert time.monotonic() - killed < 60, "the virtual IP never answered again"
            time.sleep(0.1)
        took = time.monotonic() - killed
        with capsys.disabled():  # the figure, in make test's output
            print(f"\nvirtual IP failover after its holder died: {took:.1f} s "
                  f"(README: within {FAILOVER_SECONDS} s)")
        assert holders(vip) == [survivor]
        assert took <= FAILOVER_SECONDS
        # The survivor serves through the address on its own Ollama (the dead host is out).
        assert generate(url).status_code == 200
    finally:
        # The dead host boots again (also after a failure: the site's teardown needs it).
        docker("start", victim)
    assert address(victim) == victim_address  # Docker hands out the lowest free address
    # Its stack comes back, and the address stays put.
    wait_for(lambda: ready(f"http://{address(victim)}:8080", timeout=2), 240, every=2)
    wait_for(lambda: all(entry["answering"]
                         for entry in backends(f"http://{address(survivor)}:8080").values()),
             120, every=1)
    time.sleep(5)  # keepalived on the returning host has settled as a backup by now
    assert holders(vip) == [survivor]
    assert generate(url).status_code == 200
