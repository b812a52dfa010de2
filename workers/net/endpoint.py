"""Ensure and release a container's veth endpoint: host end on the bridge, eth0 inside.

The peer is created directly inside the container's namespace as eth0, already enslaved
and up; a veth that exists already is adopted only if it is ours (else Conflict): tagged
for this container by this engine, by an earlier version (netconf.LEGACY), or not yet.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

import msgspec
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from engine.errors import Conflict, NotFound
from workers.net import netns
from workers.net.links import get_link, ipv4_addrs, link_kind, netlink_errors, ours
from workers.net.netconf import LEGACY, BridgeConfig, netns_path, tag, veth_name
from workers.net.rtnl import (
    IFA_ADDRESS,
    IFA_LOCAL,
    IFF_UP,
    IFLA_ADDRESS,
    IFLA_IFALIAS,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MASTER,
    IFLA_NET_NS_FD,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    RT_TABLE_MAIN,
    RTA_GATEWAY,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTN_UNICAST,
    RTPROT_STATIC,
    VETH_INFO_PEER,
    Rtnl,
    attr,
    ifinfo,
    mac_bytes,
    name,
)

__all__ = ["BridgeMissing", "EndpointInfo", "ensure_endpoint", "release_endpoint"]


class BridgeMissing(NotFound):
    """The bridge an endpoint needs is gone, not a bridge, or down: ensure_bridge again."""


class EndpointInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What ensure_endpoint set up: facts for the endpoint report and inspect."""

    veth: str
    sandbox_key: str
    ip_address: str
    prefix_len: int
    gateway: str
    mac_address: str


def ensure_endpoint(cid: str, cfg: BridgeConfig, ip: str, prefixlen: int, gateway: str,
                    mac: str | None = None, *, engine: str | None = None) -> EndpointInfo:
    """Ensure the container's veth: host end on the bridge, eth0 addressed and routed.

    The sandbox must exist (ensure_sandbox). A veth created by this call is deleted again if
    a later step fails, so a failed ensure leaves nothing behind.
    """
    veth, path, owner = veth_name(cid), netns_path(cid, engine), tag(cid, engine)
    nsfd = netns.open_netns(path, cid)
    try:
        with netlink_errors(f"endpoint {veth} of container {cid}"):
            mac_address = _new_endpoint(cid, owner, cfg, veth, nsfd, ip, prefixlen, gateway,
                                        mac)
            if mac_address is None:  # the name exists: a retry, or not ours at all
                mac_address = _existing_endpoint(cid, owner, cfg, veth, nsfd, ip, prefixlen,
                                                 gateway, mac)
    finally:
        os.close(nsfd)
    return EndpointInfo(veth=veth, sandbox_key=path, ip_address=ip, prefix_len=prefixlen,
                        gateway=gateway, mac_address=mac_address)


def _new_endpoint(cid: str, owner: str, cfg: BridgeConfig, veth: str, nsfd: int, ip: str,
                  prefixlen: int, gateway: str, mac: str | None) -> str | None:
    """Create the pair and configure eth0 (5 round trips); None if the veth name exists.

    The peer is born inside the netns as eth0, the host end enslaved and up; a pair this
    creates is deleted again if a later step fails.
    """
    with Rtnl() as host:
        br = host.get_link(cfg.name)
        if br is None or br.kind != "bridge" or not br.flags & IFF_UP:
            raise BridgeMissing(f"bridge {cfg.name} not found or down (ensure_bridge first)")
        peer = (ifinfo() + attr(IFLA_IFNAME, name("eth0"))
                + attr(IFLA_NET_NS_FD, struct.pack("=I", nsfd)))
        if mac:
            peer += attr(IFLA_ADDRESS, mac_bytes(mac))
        info = (attr(IFLA_INFO_KIND, b"veth")
                + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer)))
        create = (ifinfo(flags=IFF_UP, change=IFF_UP) + attr(IFLA_IFNAME, name(veth))
                  + attr(IFLA_MASTER, struct.pack("=I", br.index))
                  + attr(IFLA_LINKINFO, info))
        try:
            host.batch((RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, create))
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return None
            raise
        try:
            # The kernel ignores IFLA_IFALIAS when creating: tag it in a second request.
            host.batch((RTM_NEWLINK, 0, ifinfo() + attr(IFLA_IFNAME, name(veth))
                        + attr(IFLA_IFALIAS, owner.encode())))
            with Rtnl(netns.socket_in(nsfd)) as ns:
                eth0 = ns.get_link("eth0")
                if eth0 is None:
                    raise Conflict(f"eth0 in the sandbox of container {cid} is not the peer "
                                   "of its veth")
                if mac and eth0.address.lower() != mac.lower():
                    raise Conflict(f"container {cid}: eth0 has MAC {eth0.address}, "
                                   f"expected {mac}")
                addr, family = socket.inet_aton(ip), socket.AF_INET
                ns.batch(
                    (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                     struct.pack("=BBBBI", family, prefixlen, 0, 0, eth0.index)
                     + attr(IFA_LOCAL, addr) + attr(IFA_ADDRESS, addr)),
                    (RTM_NEWLINK, 0, ifinfo(eth0.index, IFF_UP, IFF_UP)),
                    (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE,
                     struct.pack("=BBBBBBBBI", family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                                 0, RTN_UNICAST, 0)
                     + attr(RTA_GATEWAY, socket.inet_aton(gateway))))
        except BaseException:
            try:  # undo our own partial work before reporting the failure
                host.batch((RTM_DELLINK, 0, ifinfo() + attr(IFLA_IFNAME, name(veth))))
            except (NetlinkError, OSError):
                pass
            raise
    return eth0.address


def _existing_endpoint(cid: str, owner: str, cfg: BridgeConfig, veth: str, nsfd: int, ip: str,
                       prefixlen: int, gateway: str, mac: str | None) -> str:
    """Check and adopt a veth that exists (ours from an earlier try, else Conflict)."""
    with IPRoute() as host:
        br = get_link(host, cfg.name)
        if br is None or link_kind(br) != "bridge":
            raise BridgeMissing(f"bridge {cfg.name} not found (ensure_bridge first)")
        host_index = _adopt_veth(host, cid, owner, veth, br["index"])
        with IPRoute(use_socket=netns.socket_in(nsfd)) as ns:
            return _configure_eth0(ns, cid, host_index, ip, prefixlen, gateway, mac)


def _adopt_veth(host: IPRoute, cid: str, owner: str, veth: str, bridge: int) -> int:
    """Accept an existing veth if it is ours, enslave it and bring it up; return its index."""
    link = get_link(host, veth)
    if link is None:  # EEXIST came from the netns side: eth0 is taken by something else
        raise Conflict(f"cannot create {veth}: eth0 already exists in the sandbox of {cid}")
    if not ours(link, "veth", owner, tag(cid, LEGACY)):
        raise Conflict(f"device {veth} exists and is not container {cid}'s veth")
    if link.get("IFLA_MASTER") != bridge or not link["flags"] & IFF_UP:
        host.link("set", index=link["index"], master=bridge, state="up")
    if link.get("IFLA_IFALIAS") != owner:
        host.link("set", index=link["index"], ifalias=owner)
    return int(link["index"])


def _configure_eth0(ns: IPRoute, cid: str, host_index: int, ip: str, prefixlen: int,
                    gateway: str, mac: str | None) -> str:
    """Check eth0 is host_index's peer, give it its address, bring it up and route via the
    gateway; return its MAC."""
    eth0 = get_link(ns, "eth0")
    if eth0 is None or eth0.get("IFLA_LINK") != host_index:
        raise Conflict(f"eth0 in the sandbox of container {cid} is not the peer of its veth")
    mac_address = str(eth0.get("IFLA_ADDRESS"))
    if mac and mac_address.lower() != mac.lower():
        raise Conflict(f"container {cid}: eth0 has MAC {mac_address}, expected {mac}")
    index = eth0["index"]
    addrs = ipv4_addrs(ns, index)
    if addrs - {(ip, prefixlen)}:
        raise Conflict(f"container {cid}: eth0 has {sorted(addrs)}, expected {ip}/{prefixlen}")
    if (ip, prefixlen) not in addrs:
        ns.addr("add", index=index, address=ip, prefixlen=prefixlen)
    if not eth0["flags"] & IFF_UP:
        ns.link("set", index=index, state="up")
    ns.route("replace", dst="0.0.0.0/0", gateway=gateway)  # replace: idempotent on retry
    return mac_address


def release_endpoint(cid: str, engine: str | None = None) -> None:
    """Delete the container's veth pair (both ends); absent is success."""
    veth = veth_name(cid)
    with netlink_errors(f"endpoint {veth} of container {cid}"), Rtnl() as host:
        link = host.get_link(veth)
        if link is None:
            return
        # Ours as links.ours has it: a veth with our tag (or an earlier version's tag for
        # this container), or none yet (a crash before tagging).
        if link.kind != "veth" or link.alias not in (None, "", tag(cid, engine),
                                                     tag(cid, LEGACY)):
            raise Conflict(f"device {veth} is not container {cid}'s veth; not deleting it")
        try:
            host.batch((RTM_DELLINK, 0, ifinfo(link.index)))
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
