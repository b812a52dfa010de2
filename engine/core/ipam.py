"""Address allocation: the lowest free host address of a network, as Docker's default IPAM."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from engine.core.state import World
from engine.errors import Unavailable
from events.specs import Endpoint, NetworkSpec

__all__ = ["address_key", "allocate", "mac_for"]


def address_key(network: str, ip: str) -> str:
    """Return the World.addresses key of an address."""
    return f"{network}/{ip}"


def _dotted(value: int) -> str:
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


@lru_cache(maxsize=64)
def _pool(subnet: str, gateway: str) -> tuple[int, int, int, int]:
    """Return (first host, last host, gateway, prefix length) as integers, parsed once."""
    net = ipaddress.IPv4Network(subnet)
    first = int(net.network_address) + 1
    last = int(net.broadcast_address) - 1
    return first, last, int(ipaddress.IPv4Address(gateway)), net.prefixlen


def mac_for(ip: str) -> str:
    """Derive a locally administered MAC from the IPv4 address (Docker <= 27's 02:42:...)."""
    return "02:42:" + ":".join(f"{int(octet):02x}" for octet in ip.split("."))


def allocate(world: World, spec: NetworkSpec, owner: str,
             skip: tuple[tuple[int, int], ...] = ()) -> Endpoint:
    """Return an endpoint with the lowest address not held by another container.

    The owner's own address counts as free: a restart decided together with the exit
    that releases it may get it back. `skip`: (first, last) ranges never given (the
    hosts' slices, for a container of no host: engine.core.hosts).
    """
    first, last, gateway, prefix = _pool(spec.subnet, spec.gateway)
    taken = world.addresses
    prefix_key = spec.name + "/"
    for value in range(first, last + 1):
        if value == gateway:
            continue
        if skip and any(lo <= value <= hi for lo, hi in skip):
            continue
        ip = _dotted(value)
        if taken.get(prefix_key + ip, owner) == owner:
            return Endpoint(network=spec.name, ip_address=ip, prefix_len=prefix,
                            gateway=spec.gateway, mac_address=mac_for(ip))
    raise Unavailable("no available addresses on this pool")
