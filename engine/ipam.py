"""Address allocation: the lowest free host address of a network, as Docker's default IPAM."""

from __future__ import annotations

import ipaddress

from engine.errors import Unavailable
from engine.state import World
from events.specs import Endpoint, NetworkSpec

__all__ = ["address_key", "allocate", "mac_for"]


def address_key(network: str, ip: str) -> str:
    """Return the World.addresses key of an address."""
    return f"{network}/{ip}"


def mac_for(ip: str) -> str:
    """Derive a locally administered MAC from the IPv4 address (Docker <= 27's 02:42:...)."""
    octets = ipaddress.IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in octets)


def allocate(world: World, spec: NetworkSpec, owner: str) -> Endpoint:
    """Return an endpoint with the lowest address not held by another container.

    The owner's own address counts as free: a restart decided together with the exit
    that releases it may get it back.
    """
    net = ipaddress.IPv4Network(spec.subnet)
    gateway = ipaddress.IPv4Address(spec.gateway)
    taken = world.addresses
    for host in net.hosts():
        if host == gateway:
            continue
        ip = str(host)
        if taken.get(address_key(spec.name, ip), owner) == owner:
            return Endpoint(network=spec.name, ip_address=ip, prefix_len=net.prefixlen,
                            gateway=spec.gateway, mac_address=mac_for(ip))
    raise Unavailable("no available addresses on this pool")
