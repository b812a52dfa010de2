"""Configuration from MOOR_* environment variables, with defaults that work on one machine."""

from __future__ import annotations

import ipaddress
import os

from events.specs import NetworkSpec

__all__ = ["DEFAULT_BRIDGE", "DEFAULT_SUBNET", "default_network", "key_prefix"]

# Not Docker's 172.17.0.0/16, not podman's 10.88.0.0/16; override with MOOR_SUBNET.
DEFAULT_SUBNET = "10.220.0.0/16"
DEFAULT_BRIDGE = "moor0"


def default_network() -> NetworkSpec:
    """Return the default bridge network from MOOR_SUBNET / MOOR_BRIDGE."""
    subnet = ipaddress.IPv4Network(os.environ.get("MOOR_SUBNET", DEFAULT_SUBNET))
    gateway = next(subnet.hosts())
    return NetworkSpec(name="bridge", subnet=str(subnet), gateway=str(gateway),
                       bridge=os.environ.get("MOOR_BRIDGE", DEFAULT_BRIDGE))


def key_prefix() -> str:
    """Return the Redis key prefix (MOOR_PREFIX), so several engines can share a server."""
    return os.environ.get("MOOR_PREFIX", "moor:v1")
