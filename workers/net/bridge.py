"""Ensure and release the host bridge that containers' veths attach to.

An existing device is accepted only if it is a bridge that is this engine's and matches
(else Conflict); "already gone" is success on release. The bridge's alias carries the
engine id (netconf.bridge_tag), so a second engine configured with the same bridge name is
refused instead of sharing the device and its addresses.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from engine.errors import Conflict
from workers.net.links import get_link, ipv4_addrs, link_kind, netlink_errors, ours
from workers.net.netconf import LEGACY, BridgeConfig, bridge_tag, parse_bridge_tag

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


def ensure_bridge(cfg: BridgeConfig, engine: str | None = None) -> int:
    """Ensure the bridge exists, is up with the gateway address, and forwarding is on.

    Returns the bridge's ifindex. An existing device is accepted only if it is a bridge
    tagged as this engine's (or an untagged bridge named as ours without other IPv4
    addresses). One tagged before engines had ids is adopted and retagged: an earlier
    version made it, most likely this engine's, and refusing it would strand its running
    containers after an upgrade.
    """
    tag = bridge_tag(engine)
    with netlink_errors(f"bridge {cfg.name}"), IPRoute() as ipr:
        link = get_link(ipr, cfg.name)
        if link is None:
            _check_overlap(ipr, cfg, None)
            ipr.link("add", ifname=cfg.name, kind="bridge", address=cfg.mac)
            link = ipr.link("get", ifname=cfg.name)[0]
        elif not ours(link, "bridge", tag, bridge_tag(LEGACY)):
            owner = parse_bridge_tag(link.get("IFLA_IFALIAS"))
            if owner is not None and link_kind(link) == "bridge":
                raise Conflict(f"bridge {cfg.name} belongs to another moorage engine ({owner}); "
                               "set MOOR_BRIDGE and MOOR_SUBNET to its own")
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
        ipr.link("set", index=index, ifalias=tag, state="up")
        _sysctl("net/ipv4/ip_forward", "1")
        # Published ports answer on 127.0.0.1 only if 127/8-sourced packets may leave
        # through the bridge (they are masqueraded on the way, see portmap).
        _sysctl(f"net/ipv4/conf/{cfg.name}/route_localnet", "1")
        return int(index)


def release_bridge(cfg: BridgeConfig) -> None:
    """Delete the named moorage bridge; absent is success. ip_forward stays on.

    Any engine's bridge: no engine releases bridges on its own, the tools that tear an
    engine down (tests, benchmarks) do, from processes without its configuration. They name
    the device; the tag only has to prove it is moorage's, not some other tool's.
    """
    with netlink_errors(f"bridge {cfg.name}"), IPRoute() as ipr:
        link = get_link(ipr, cfg.name)
        if link is None:
            return
        alias = link.get("IFLA_IFALIAS")
        if link_kind(link) != "bridge" or (alias and parse_bridge_tag(alias) is None):
            raise Conflict(f"device {cfg.name} is not a moorage bridge; not deleting it")
        try:
            ipr.link("del", index=link["index"])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
