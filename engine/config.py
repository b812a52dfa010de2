"""Configuration from MOOR_* environment variables, with defaults that work on one machine."""

from __future__ import annotations

import ipaddress
import os

from engine.errors import InvalidParameter
from events.specs import NetworkSpec

__all__ = ["DEFAULT_BRIDGE", "DEFAULT_SUBNET", "data_root", "default_network", "key_prefix"]

# Chosen to stay clear of Docker's local pools (172.17.0.0/16 to 172.31.0.0/16 and
# 192.168.0.0/16), of podman's defaults (10.88.0.0/16 and the 10.89.x.0/24 user networks)
# and of the usual Kubernetes ranges (10.42-43/16, 10.96.0.0/12, 10.244.0.0/16), so moorage
# can run beside any of them. A host route that overlaps it still wins: ensure_bridge
# refuses the subnet, and MOOR_SUBNET picks another.
DEFAULT_SUBNET = "10.77.0.0/16"
DEFAULT_BRIDGE = "moor0"


def default_network() -> NetworkSpec:
    """Return the default bridge network from MOOR_SUBNET / MOOR_BRIDGE (unset or empty: ours)."""
    text = os.environ.get("MOOR_SUBNET") or DEFAULT_SUBNET
    try:
        subnet = ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise InvalidParameter(f"invalid MOOR_SUBNET {text!r}: {exc}") from None
    # The gateway is the bridge's own address: the first host address of the subnet.
    return NetworkSpec(name="bridge", subnet=str(subnet), gateway=str(subnet.network_address + 1),
                       bridge=os.environ.get("MOOR_BRIDGE") or DEFAULT_BRIDGE)


def key_prefix() -> str:
    """Return the Redis key prefix (MOOR_PREFIX), so several engines can share a server."""
    return os.environ.get("MOOR_PREFIX", "moor:v1")


def data_root() -> str:
    """Return moorage's data directory: ``MOOR_DATA_ROOT``, else a per-user default."""
    explicit = os.environ.get("MOOR_DATA_ROOT")
    if explicit:
        return explicit
    if os.geteuid() == 0:
        return "/var/lib/moorage"
    xdg = os.environ.get("XDG_DATA_HOME")
    base = xdg if xdg and os.path.isabs(xdg) else os.path.expanduser("~/.local/share")
    return os.path.join(base, "moorage")
