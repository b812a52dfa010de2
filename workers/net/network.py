"""Set up host networking: the bridge, each container's netns sandbox and veth endpoint.

Every resource has an idempotent pair: `ensure_*` accepts what already exists only if it is
ours and matches (else Conflict), `release_*` treats "already gone" as success. The
namespace mechanics (creating, opening and entering one cheaply) are in `netns`.

This module is the face the saga and reconcile use: it owns the sandbox (the named
namespace) and the listings, and re-exports the bridge (`bridge`) and the veth endpoint
(`endpoint`).
"""

from __future__ import annotations

import os

from pyroute2 import IPRoute

from engine.errors import Conflict
from workers.net import netns
from workers.net.bridge import ensure_bridge, release_bridge
from workers.net.endpoint import BridgeMissing, EndpointInfo, ensure_endpoint, release_endpoint
from workers.net.links import link_kind, netlink_errors
from workers.net.netconf import NETNS_DIR, cid_from_netns_name, cid_from_tag, netns_path, veth_name

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


# --- sandbox --------------------------------------------------------------------------

def ensure_sandbox(cid: str) -> str:
    """Ensure the container's named network namespace exists with lo up; return its path."""
    path = netns_path(cid)
    with netlink_errors(f"sandbox of container {cid}"):
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
    with netlink_errors(f"sandbox of container {cid}"):
        netns.remove(path)


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
    with netlink_errors("list endpoints"), IPRoute() as ipr:
        for link in ipr.link("dump"):
            name = link.get("IFLA_IFNAME") or ""
            if link_kind(link) != "veth" or not name.startswith("mv"):
                continue
            cid = cid_from_tag(link.get("IFLA_IFALIAS")) or sandboxes.get(name[2:])
            if cid is not None and veth_name(cid) == name:
                found.add(cid)
    return sorted(found)
