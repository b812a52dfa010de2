"""Look up host links with pyroute2, tell ours from others, translate netlink errors.

The rare paths (the bridge, adopting an existing veth, listings) use pyroute2; the hot
path that creates an endpoint speaks rtnetlink directly (:mod:`workers.net.rtnl`).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from engine.errors import Internal, MoorError

__all__ = ["get_link", "ipv4_addrs", "link_kind", "netlink_errors", "ours"]


@contextmanager
def netlink_errors(what: str) -> Iterator[None]:
    """Translate netlink and OS errors into moorage errors at the boundary."""
    try:
        yield
    except MoorError:
        raise
    except (NetlinkError, OSError) as exc:
        raise Internal(f"{what}: {exc}") from exc


def get_link(ipr: IPRoute, ifname: str) -> Any | None:
    """Return the link message for ifname, or None if there is no such device."""
    try:
        return ipr.link("get", ifname=ifname)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def link_kind(link: Any) -> str | None:
    """Return the link's kind ("bridge", "veth", ...), None for a plain device."""
    return link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))  # type: ignore[no-any-return]


def ours(link: Any, kind: str, *owner_tags: str) -> bool:
    """Tell whether a device with our name is ours: right kind, one of our tags or no tag yet.

    An untagged device of the right kind counts: the kernel ignores IFLA_IFALIAS on
    RTM_NEWLINK, so a crash between create and tag leaves exactly that behind. Several
    tags: the one this version writes and the one an earlier version wrote.
    """
    return link_kind(link) == kind and link.get("IFLA_IFALIAS") in (None, "", *owner_tags)


def ipv4_addrs(ipr: IPRoute, index: int) -> set[tuple[str, int]]:
    """Return the (address, prefix length) pairs of a link's IPv4 addresses."""
    return {(a.get("IFA_ADDRESS"), a["prefixlen"])
            for a in ipr.addr("dump", index=index, family=socket.AF_INET)}
