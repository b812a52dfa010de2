"""A minimal rtnetlink client for the start's hot path (links, addresses, routes).

pyroute2 spends ~1 ms of Python per request (an asyncio loop, message objects) where the
kernel needs ~0.1 ms; an endpoint takes seven requests. The path that creates a new
endpoint speaks rtnetlink directly: fixed structs, one datagram per batch of requests,
every request acknowledged and checked. The rare paths (adopting what exists, the bridge,
listings) keep pyroute2.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import NamedTuple

from pyroute2.netlink.exceptions import NetlinkError

IFF_UP = 0x1  # net_device_flags bit, as netlink reports it

NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 18, 20, 24
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 10, 18, 28
IFLA_IFALIAS, IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 20, 1, 2, 1
IFA_ADDRESS, IFA_LOCAL, RTA_GATEWAY = 1, 2, 5
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1
NLA_F_NESTED = 0x8000
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
NLATTR = struct.Struct("=HH")


def attr(kind: int, payload: bytes) -> bytes:
    size = NLATTR.size + len(payload)
    return NLATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def name(value: str) -> bytes:
    return value.encode() + b"\0"


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def parse_attrs(data: bytes, offset: int) -> dict[int, bytes]:
    """Parse netlink attributes from offset on (last one of a type wins)."""
    found = {}
    while offset + NLATTR.size <= len(data):
        size, kind = NLATTR.unpack_from(data, offset)
        if size < NLATTR.size:
            break
        found[kind & 0x3FFF] = data[offset + NLATTR.size:offset + size]
        offset += (size + 3) & ~3
    return found


class Link(NamedTuple):
    index: int
    flags: int
    kind: str | None
    address: str
    alias: str | None


class Rtnl:
    """Synchronous rtnetlink requests on one socket (optionally one made inside a netns)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self._sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                           socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def batch(self, *requests: tuple[int, int, bytes]) -> list[bytes]:
        """Send (type, flags, body) requests in one datagram; return each one's reply.

        Every request asks for an ack; the first failure raises NetlinkError, after all
        of them were answered (the kernel runs each request of a batch regardless).
        """
        out, seqs = [], []
        for kind, flags, body in requests:
            self._seq += 1
            seqs.append(self._seq)
            out.append(NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind,
                                       flags | NLM_F_REQUEST | NLM_F_ACK, self._seq, 0) + body)
        self._sock.send(b"".join(out))
        replies: dict[int, bytes] = {}
        errors: dict[int, int] = {}
        while len(errors) < len(seqs):
            data = self._sock.recv(65536)
            offset = 0
            while offset + NLMSG_HDR.size <= len(data):
                size, kind, _, seq, _ = NLMSG_HDR.unpack_from(data, offset)
                if size < NLMSG_HDR.size:
                    break
                body = data[offset + NLMSG_HDR.size:offset + size]
                if seq in seqs:
                    if kind == NLMSG_ERROR:
                        errors[seq] = -struct.unpack_from("=i", body)[0]
                    elif kind != NLMSG_DONE:
                        replies[seq] = body
                offset += (size + 3) & ~3
        for seq in seqs:
            if errors[seq]:
                raise NetlinkError(errors[seq])
        return [replies.get(seq, b"") for seq in seqs]

    def get_link(self, ifname: str) -> Link | None:
        """Look a device up by name; None if there is none."""
        try:
            [reply] = self.batch((RTM_GETLINK, 0, ifinfo() + attr(IFLA_IFNAME, name(ifname))))
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        _, _, index, flags, _ = IFINFOMSG.unpack_from(reply)
        found = parse_attrs(reply, IFINFOMSG.size)
        info = parse_attrs(found.get(IFLA_LINKINFO, b""), 0)
        kind = info[IFLA_INFO_KIND].rstrip(b"\0").decode() if IFLA_INFO_KIND in info else None
        address = ":".join(f"{b:02x}" for b in found.get(IFLA_ADDRESS, b""))
        alias = found[IFLA_IFALIAS].rstrip(b"\0").decode() if IFLA_IFALIAS in found else None
        return Link(index, flags, kind, address, alias)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))
