"""Ensure and release the host bridge that containers' veths attach to.

An existing device is accepted only if it is a bridge that is ours and matches (else
Conflict); "already gone" is success on release.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from engine.errors import Conflict
from workers.net.links import get_link, ipv4_addrs, netlink_errors, ours
from workers.net.netconf import BRIDGE_TAG, BridgeConfig

__all__ = ["ensure_bridge", "release_bridge"]


def _sysctl(key: str, value: str) -> None:
    path = "/proc/sys/" + key
    with open(path) as f:
        if f.read().strip() == value:
            return
    with open(path, "w") as f:
        f.write(value)


def _check_overlap(ipr: IPRoute, cfg: BridgeConfig, own_index: int | None) -> None:
    """Refuse a subnet that overlaps a route the host already has (other than our bridge)."""
    net = cfg.network
    for route in ipr.route("dump", family=socket.AF_INET, table=254):
        if route["dst_len"] == 0 or route.get("RTA_OIF") == own_index:
            continue
        other = ipaddress.IPv4Network(f"{route.get('RTA_DST')}/{route['dst_len']}", strict=False)
        if net.overlaps(other):
            raise Conflict(f"bridge {cfg.name}: subnet {cfg.subnet} overlaps the host route "
                           f"{other} (set MOOR_SUBNET)")


def ensure_bridge(cfg: BridgeConfig) -> int:
    """Ensure the bridge exists, is up with the gateway address, and forwarding is on.

    Returns the bridge's ifindex. An existing device is accepted only if it is a bridge
    tagged as ours (or an untagged bridge named as ours without other IPv4 addresses).
    """
    with netlink_errors(f"bridge {cfg.name}"), IPRoute() as ipr:
        link = get_link(ipr, cfg.name)
        if link is None:
            _check_overlap(ipr, cfg, None)
            ipr.link("add", ifname=cfg.name, kind="bridge", address=cfg.mac)
            link = ipr.link("get", ifname=cfg.name)[0]
        elif not ours(link, "bridge", BRIDGE_TAG):
            raise Conflict(f"device {cfg.name} exists and is not a moorage bridge")
        index = link["index"]
        _check_overlap(ipr, cfg, index)
        addrs = ipv4_addrs(ipr, index)
        wanted = (cfg.gateway, cfg.prefixlen)
        if addrs - {wanted}:
            raise Conflict(f"bridge {cfg.name} has addresses {sorted(addrs)}, expected "
                           f"{cfg.gateway}/{cfg.prefixlen}")
        if wanted not in addrs:
            ipr.addr("add", index=index, address=cfg.gateway, prefixlen=cfg.prefixlen)
        ipr.link("set", index=index, ifalias=BRIDGE_TAG, state="up")
        _sysctl("net/ipv4/ip_forward", "1")
        # Published ports answer on 127.0.0.1 only if 127/8-sourced packets may leave
        # through the bridge (they are masqueraded on the way, see portmap).
        _sysctl(f"net/ipv4/conf/{cfg.name}/route_localnet", "1")
        return int(index)


def release_bridge(cfg: BridgeConfig) -> None:
    """Delete our bridge; absent is success. ip_forward stays on (others may rely on it)."""
    with netlink_errors(f"bridge {cfg.name}"), IPRoute() as ipr:
        link = get_link(ipr, cfg.name)
        if link is None:
            return
        if not ours(link, "bridge", BRIDGE_TAG):
            raise Conflict(f"device {cfg.name} is not a moorage bridge; not deleting it")
        try:
            ipr.link("del", index=link["index"])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
