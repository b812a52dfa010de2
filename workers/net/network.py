"""Host network side effects: the bridge, each container's netns sandbox and veth endpoint.

Every resource has an idempotent pair: `ensure_*` accepts what already exists only if it is
ours and matches (else Conflict), `release_*` treats "already gone" as success. The
namespace mechanics (creating, opening and entering one cheaply) are in `netns`. The veth
peer is created directly inside the namespace as eth0, already enslaved and up.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from engine.errors import Conflict, Internal, MoorError, NotFound
from workers.net import netns
from workers.net.netconf import (
    BRIDGE_TAG,
    NETNS_DIR,
    BridgeConfig,
    cid_from_netns_name,
    cid_from_tag,
    netns_path,
    tag,
    veth_name,
)
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

__all__ = [
    "BridgeMissing",
    "EndpointInfo",
    "ensure_bridge",
    "ensure_endpoint",
    "ensure_sandbox",
    "list_endpoints",
    "list_sandboxes",
    "release_bridge",
    "release_endpoint",
    "release_sandbox",
]



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


# --- netlink helpers ------------------------------------------------------------------

@contextmanager
def _netlink(what: str) -> Iterator[None]:
    """Translate netlink and OS errors into moorage errors at the boundary."""
    try:
        yield
    except MoorError:
        raise
    except (NetlinkError, OSError) as exc:
        raise Internal(f"{what}: {exc}") from exc


def _get_link(ipr: IPRoute, ifname: str) -> Any | None:
    """Return the link message for ifname, or None if there is no such device."""
    try:
        return ipr.link("get", ifname=ifname)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def _kind(link: Any) -> str | None:
    return link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))  # type: ignore[no-any-return]


def _ours(link: Any, kind: str, owner_tag: str) -> bool:
    """Tell whether a device with our name is ours: right kind, our tag or no tag yet.

    An untagged device of the right kind counts: the kernel ignores IFLA_IFALIAS on
    RTM_NEWLINK, so a crash between create and tag leaves exactly that behind.
    """
    return _kind(link) == kind and link.get("IFLA_IFALIAS") in (None, "", owner_tag)


def _ipv4_addrs(ipr: IPRoute, index: int) -> set[tuple[str, int]]:
    return {(a.get("IFA_ADDRESS"), a["prefixlen"])
            for a in ipr.addr("dump", index=index, family=socket.AF_INET)}


def _sysctl(key: str, value: str) -> None:
    path = "/proc/sys/" + key
    with open(path) as f:
        if f.read().strip() == value:
            return
    with open(path, "w") as f:
        f.write(value)


# --- bridge ---------------------------------------------------------------------------

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
    with _netlink(f"bridge {cfg.name}"), IPRoute() as ipr:
        link = _get_link(ipr, cfg.name)
        if link is None:
            _check_overlap(ipr, cfg, None)
            ipr.link("add", ifname=cfg.name, kind="bridge", address=cfg.mac)
            link = ipr.link("get", ifname=cfg.name)[0]
        elif not _ours(link, "bridge", BRIDGE_TAG):
            raise Conflict(f"device {cfg.name} exists and is not a moorage bridge")
        index = link["index"]
        _check_overlap(ipr, cfg, index)
        addrs = _ipv4_addrs(ipr, index)
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
    with _netlink(f"bridge {cfg.name}"), IPRoute() as ipr:
        link = _get_link(ipr, cfg.name)
        if link is None:
            return
        if not _ours(link, "bridge", BRIDGE_TAG):
            raise Conflict(f"device {cfg.name} is not a moorage bridge; not deleting it")
        try:
            ipr.link("del", index=link["index"])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise


# --- sandbox --------------------------------------------------------------------------

def ensure_sandbox(cid: str) -> str:
    """Ensure the container's named network namespace exists with lo up; return its path."""
    path = netns_path(cid)
    with _netlink(f"sandbox of container {cid}"):
        state = netns.state(path)
        if state == "other":
            raise Conflict(f"{path} is not a network namespace (container {cid})")
        if state == "placeholder":
            # Our name but no namespace mounted: a create interrupted mid-way. Redo it.
            netns.remove(path)
            state = "missing"
        if state == "missing":
            try:
                netns.create(path)
                return path
            except FileExistsError:
                pass  # a concurrent ensure won the race; accept its namespace below
        nsfd = netns.open_netns(path, cid)
        try:
            netns.ensure_lo_up(nsfd)
        finally:
            os.close(nsfd)
    return path


def release_sandbox(cid: str, reuse: bool = True) -> None:
    """Remove the container's namespace name; its veth goes first so the name is reusable.

    `reuse=False` (the container is being removed, its names never come back) leaves the
    veth to the kernel, which deletes it with the namespace ~20 ms later, off our clock.
    """
    path = netns_path(cid)
    # Unmounting alone would leave the host veth to die ~20 ms later, asynchronously, and
    # a restart reusing the name would race it. A sysfs stat is a cheap presence check.
    if reuse and os.path.exists(f"/sys/class/net/{veth_name(cid)}"):
        release_endpoint(cid)
    with _netlink(f"sandbox of container {cid}"):
        netns.remove(path)


# --- endpoint -------------------------------------------------------------------------

def ensure_endpoint(cid: str, cfg: BridgeConfig, ip: str, prefixlen: int, gateway: str,
                    mac: str | None = None) -> EndpointInfo:
    """Ensure the container's veth: host end on the bridge, eth0 addressed and routed.

    The sandbox must exist (ensure_sandbox). A veth created by this call is deleted again if
    a later step fails, so a failed ensure leaves nothing behind.
    """
    veth, path = veth_name(cid), netns_path(cid)
    nsfd = netns.open_netns(path, cid)
    try:
        with _netlink(f"endpoint {veth} of container {cid}"):
            mac_address = _new_endpoint(cid, cfg, veth, nsfd, ip, prefixlen, gateway, mac)
            if mac_address is None:  # the name exists: a retry, or not ours at all
                mac_address = _existing_endpoint(cid, cfg, veth, nsfd, ip, prefixlen,
                                                 gateway, mac)
    finally:
        os.close(nsfd)
    return EndpointInfo(veth=veth, sandbox_key=path, ip_address=ip, prefix_len=prefixlen,
                        gateway=gateway, mac_address=mac_address)


def _new_endpoint(cid: str, cfg: BridgeConfig, veth: str, nsfd: int, ip: str, prefixlen: int,
                  gateway: str, mac: str | None) -> str | None:
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
                        + attr(IFLA_IFALIAS, tag(cid).encode())))
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


def _existing_endpoint(cid: str, cfg: BridgeConfig, veth: str, nsfd: int, ip: str,
                       prefixlen: int, gateway: str, mac: str | None) -> str:
    """Check and adopt a veth that exists (ours from an earlier try, else Conflict)."""
    with IPRoute() as host:
        br = _get_link(host, cfg.name)
        if br is None or _kind(br) != "bridge":
            raise BridgeMissing(f"bridge {cfg.name} not found (ensure_bridge first)")
        host_index = _adopt_veth(host, cid, veth, br["index"])
        with IPRoute(use_socket=netns.socket_in(nsfd)) as ns:
            return _configure_eth0(ns, cid, host_index, ip, prefixlen, gateway, mac)


def _adopt_veth(host: IPRoute, cid: str, veth: str, bridge: int) -> int:
    """Accept an existing veth if it is ours, enslave it and bring it up; return its index."""
    link = _get_link(host, veth)
    if link is None:  # EEXIST came from the netns side: eth0 is taken by something else
        raise Conflict(f"cannot create {veth}: eth0 already exists in the sandbox of {cid}")
    if not _ours(link, "veth", tag(cid)):
        raise Conflict(f"device {veth} exists and is not container {cid}'s veth")
    if link.get("IFLA_MASTER") != bridge or not link["flags"] & IFF_UP:
        host.link("set", index=link["index"], master=bridge, state="up")
    if link.get("IFLA_IFALIAS") != tag(cid):
        host.link("set", index=link["index"], ifalias=tag(cid))
    return int(link["index"])


def _configure_eth0(ns: IPRoute, cid: str, host_index: int, ip: str, prefixlen: int,
                    gateway: str, mac: str | None) -> str:
    """Check eth0 is host_index's peer, give it its address, bring it up and route via the
    gateway; return its MAC."""
    eth0 = _get_link(ns, "eth0")
    if eth0 is None or eth0.get("IFLA_LINK") != host_index:
        raise Conflict(f"eth0 in the sandbox of container {cid} is not the peer of its veth")
    mac_address = str(eth0.get("IFLA_ADDRESS"))
    if mac and mac_address.lower() != mac.lower():
        raise Conflict(f"container {cid}: eth0 has MAC {mac_address}, expected {mac}")
    index = eth0["index"]
    addrs = _ipv4_addrs(ns, index)
    if addrs - {(ip, prefixlen)}:
        raise Conflict(f"container {cid}: eth0 has {sorted(addrs)}, expected {ip}/{prefixlen}")
    if (ip, prefixlen) not in addrs:
        ns.addr("add", index=index, address=ip, prefixlen=prefixlen)
    if not eth0["flags"] & IFF_UP:
        ns.link("set", index=index, state="up")
    ns.route("replace", dst="0.0.0.0/0", gateway=gateway)  # replace: idempotent on retry
    return mac_address


def release_endpoint(cid: str) -> None:
    """Delete the container's veth pair (both ends); absent is success."""
    veth = veth_name(cid)
    with _netlink(f"endpoint {veth} of container {cid}"), Rtnl() as host:
        link = host.get_link(veth)
        if link is None:
            return
        # Ours as _ours has it: a veth with our tag, or none yet (a crash before tagging).
        if link.kind != "veth" or link.alias not in (None, "", tag(cid)):
            raise Conflict(f"device {veth} is not container {cid}'s veth; not deleting it")
        try:
            host.batch((RTM_DELLINK, 0, ifinfo(link.index)))
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise


# --- listings for reconcile -----------------------------------------------------------

def list_sandboxes() -> list[str]:
    """Return the cids whose moorage-named namespace exists under /run/netns."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(cid for cid in map(cid_from_netns_name, names) if cid is not None)


def list_endpoints() -> list[str]:
    """Return the cids of moorage veths on the host (by their tag).

    A veth whose tag was never set (a crash between create and tag) is matched to a
    sandbox by its short id instead.
    """
    sandboxes = {cid[:12]: cid for cid in list_sandboxes()}
    found: set[str] = set()
    with _netlink("list endpoints"), IPRoute() as ipr:
        for link in ipr.link("dump"):
            name = link.get("IFLA_IFNAME") or ""
            if _kind(link) != "veth" or not name.startswith("mv"):
                continue
            cid = cid_from_tag(link.get("IFLA_IFALIAS")) or sandboxes.get(name[2:])
            if cid is not None and veth_name(cid) == name:
                found.add(cid)
    return sorted(found)
