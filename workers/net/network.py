"""Set up host networking: the bridge, each container's netns sandbox and veth endpoint.

Every resource has an idempotent pair: `ensure_*` accepts what already exists only if it is
ours and matches (else Conflict), `release_*` treats "already gone" as success. The
namespace mechanics (creating, opening and entering one cheaply) are in `netns`.

This module is the face the saga and reconcile use: it owns the sandbox (the named
namespace) and the listings, and re-exports the bridge (`bridge`) and the veth endpoint
(`endpoint`).

`engine` (None: this engine, engine.config.engine_id) picks whose names a call makes or
lists; releases also remove the names an earlier version made (netconf.LEGACY), because
the engine that knows a container id owns what was made for it, whatever its name.
"""

from __future__ import annotations

import os

from pyroute2 import IPRoute

from engine.errors import Conflict
from workers.net import netns
from workers.net.bridge import ensure_bridge, release_bridge
from workers.net.endpoint import BridgeMissing, EndpointInfo, ensure_endpoint, release_endpoint
from workers.net.links import link_kind, netlink_errors
from workers.net.netconf import (
    LEGACY,
    NETNS_DIR,
    cid_from_netns_name,
    cid_from_tag,
    engine_of,
    netns_path,
    veth_name,
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


# --- sandbox --------------------------------------------------------------------------

def ensure_sandbox(cid: str, engine: str | None = None) -> str:
    """Ensure the container's named network namespace exists with lo up; return its path."""
    path = netns_path(cid, engine)
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


def release_sandbox(cid: str, reuse: bool = True, engine: str | None = None) -> None:
    """Remove the container's namespace name; its veth goes first so the name is reusable.

    `reuse=False` (the container is being removed, its names never come back) leaves the
    veth to the kernel, which deletes it with the namespace ~20 ms later, off our clock.
    The name an earlier version gave it goes too (two syscalls when absent): a container
    started before an upgrade is torn down after it.
    """
    # Unmounting alone would leave the host veth to die ~20 ms later, asynchronously, and
    # a restart reusing the name would race it. A sysfs stat is a cheap presence check.
    if reuse and os.path.exists(f"/sys/class/net/{veth_name(cid)}"):
        release_endpoint(cid, engine)
    with netlink_errors(f"sandbox of container {cid}"):
        for owner in dict.fromkeys((engine_of(engine), LEGACY)):
            netns.remove(netns_path(cid, owner))


# --- listings for reconcile -----------------------------------------------------------

def list_sandboxes(engine: str | None = None) -> list[str]:
    """Return the cids whose namespace under /run/netns carries the engine's name.

    Another engine's namespaces are not listed: they may hold its live containers.
    """
    eid = engine_of(engine)
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(cid for name in names if (cid := cid_from_netns_name(name, eid)) is not None)


def list_endpoints(engine: str | None = None) -> list[str]:
    """Return the cids of the engine's veths on the host (by their tag).

    A veth whose tag was never set (a crash between create and tag) is matched to one of
    the engine's sandboxes by its short id instead; one matching none is nobody's we know.
    """
    eid = engine_of(engine)
    sandboxes = {cid[:12]: cid for cid in list_sandboxes(eid)}
    found: set[str] = set()
    with netlink_errors("list endpoints"), IPRoute() as ipr:
        for link in ipr.link("dump"):
            name = link.get("IFLA_IFNAME") or ""
            if link_kind(link) != "veth" or not name.startswith("mv"):
                continue
            alias = link.get("IFLA_IFALIAS")
            cid = cid_from_tag(alias, eid) if alias else sandboxes.get(name[2:])
            if cid is not None and veth_name(cid) == name:
                found.add(cid)
    return sorted(found)
