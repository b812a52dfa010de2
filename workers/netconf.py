"""Pure network configuration: the bridge config, resource names and `-p` port specs.

Nothing here touches the host; `network`, `portmap` and `hostfiles` perform the effects.

Default subnet: 10.77.0.0/16, gateway 10.77.0.1 on bridge `moor0`. It was picked to stay
clear of Docker's local pools (172.17.0.0/16 to 172.31.0.0/16 and 192.168.0.0/16), of
Podman's defaults (10.88.0.0/16 and the 10.89.x.0/24 user networks), of the usual
Kubernetes ranges (10.42-43/16, 10.96.0.0/12, 10.244.0.0/16), and of this host's
192.0.2.0/24 and its resolver 10.255.255.53. `network.ensure_bridge` still refuses a subnet
that overlaps a route the host already has. Override with MOOR_BRIDGE and MOOR_SUBNET.

Names derive from the 64-hex container id, never from randomness, so every worker and the
reconciler find the same resources again:
    netns       /run/netns/moor-<64 hex>   the full id, so a listing maps back to the cid
    host veth   mv<12 hex>                 IFNAMSIZ allows 15 bytes; 12 hex is the short id
    tag         moor:<64 hex>              veth ifalias and iptables comment (full id)
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping

import msgspec

from engine.errors import InvalidParameter
from events import specs

__all__ = [
    "BRIDGE_TAG",
    "DEFAULT_BRIDGE",
    "DEFAULT_SUBNET",
    "NETNS_DIR",
    "BridgeConfig",
    "PortBinding",
    "cid_from_netns_name",
    "cid_from_tag",
    "from_port_bindings",
    "netns_name",
    "netns_path",
    "parse_publish",
    "parse_publish_all",
    "short_id",
    "tag",
    "validate_cid",
    "veth_name",
]

DEFAULT_BRIDGE = "moor0"
DEFAULT_SUBNET = "10.77.0.0/16"
NETNS_DIR = "/run/netns"
NETNS_PREFIX = "moor-"
VETH_PREFIX = "mv"
TAG_PREFIX = "moor:"
BRIDGE_TAG = "moor:bridge"

_CID = re.compile(r"[0-9a-f]{64}")
# Interface names end up in iptables rules and /proc/sys paths: keep them to a safe set.
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_PROTOS = ("tcp", "udp", "sctp")


def validate_cid(cid: str) -> str:
    """Return `cid` if it is a full 64-hex container id, else raise InvalidParameter."""
    if not isinstance(cid, str) or _CID.fullmatch(cid) is None:
        raise InvalidParameter(f"invalid container id: {cid!r} (want 64 lowercase hex)")
    return cid


def short_id(cid: str) -> str:
    """Return Docker's short id (first 12 hex characters)."""
    return validate_cid(cid)[:12]


def netns_name(cid: str) -> str:
    """Return the name of the container's network namespace under /run/netns."""
    return NETNS_PREFIX + validate_cid(cid)


def netns_path(cid: str) -> str:
    """Return the bind-mount path of the container's network namespace (its sandbox key)."""
    return f"{NETNS_DIR}/{netns_name(cid)}"


def veth_name(cid: str) -> str:
    """Return the host end of the container's veth pair (14 bytes, fits IFNAMSIZ)."""
    return VETH_PREFIX + short_id(cid)


def tag(cid: str) -> str:
    """Return the ownership tag put on the veth alias and on iptables rules."""
    return TAG_PREFIX + validate_cid(cid)


def cid_from_netns_name(name: str) -> str | None:
    """Return the cid a namespace name was derived from, or None if it is not ours."""
    if name.startswith(NETNS_PREFIX) and _CID.fullmatch(name[len(NETNS_PREFIX):]):
        return name[len(NETNS_PREFIX):]
    return None


def cid_from_tag(text: str | None) -> str | None:
    """Return the cid in an ownership tag, or None if the text is not one."""
    if text and text.startswith(TAG_PREFIX) and _CID.fullmatch(text[len(TAG_PREFIX):]):
        return text[len(TAG_PREFIX):]
    return None


class BridgeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The host bridge containers attach to: device name and IPv4 subnet."""

    name: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET

    def __post_init__(self) -> None:
        if _IFNAME.fullmatch(self.name) is None:
            raise InvalidParameter(f"invalid bridge name: {self.name!r} (1-15 of [A-Za-z0-9_.-])")
        try:
            net = ipaddress.IPv4Network(self.subnet)
        except ValueError as exc:
            raise InvalidParameter(f"invalid subnet {self.subnet!r}: {exc}") from None
        if net.prefixlen > 30:
            # /31 and /32 leave no room for a gateway plus one container.
            raise InvalidParameter(f"subnet {self.subnet} is too small (need /30 or larger)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BridgeConfig:
        """Build the config from MOOR_BRIDGE and MOOR_SUBNET, defaulting each."""
        env = os.environ if environ is None else environ
        return cls(name=env.get("MOOR_BRIDGE") or DEFAULT_BRIDGE,
                   subnet=env.get("MOOR_SUBNET") or DEFAULT_SUBNET)

    @classmethod
    def from_network_spec(cls, spec: specs.NetworkSpec) -> BridgeConfig:
        """Build the config of the bridge behind a reducer-defined network."""
        cfg = cls(name=spec.bridge, subnet=spec.subnet)
        if spec.gateway != cfg.gateway:
            raise InvalidParameter(
                f"network {spec.name}: gateway {spec.gateway} is not {cfg.gateway}, "
                "the first host address the bridge uses")
        return cfg

    def network_spec(self, network: str = "bridge") -> specs.NetworkSpec:
        """Return the reducer's NetworkSpec for this bridge (Docker's default network name)."""
        return specs.NetworkSpec(name=network, subnet=self.subnet, gateway=self.gateway,
                                 bridge=self.name)

    @property
    def network(self) -> ipaddress.IPv4Network:
        """Return the subnet as an IPv4Network."""
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        """Return the gateway: the first host address of the subnet (the bridge's address)."""
        return str(self.network.network_address + 1)

    @property
    def prefixlen(self) -> int:
        """Return the subnet's prefix length."""
        return self.network.prefixlen

    @property
    def mac(self) -> str:
        """Return the bridge's fixed MAC, 02:42:<gateway octets>.

        A bridge without one takes its lowest port's MAC, so the gateway's MAC would change
        as containers come and go, stranding their ARP caches.
        """
        octets = ipaddress.IPv4Address(self.gateway).packed
        return "02:42:" + ":".join(f"{b:02x}" for b in octets)


class PortBinding(msgspec.Struct, frozen=True, kw_only=True):
    """One published port: Docker's port key ("80/tcp") and one host binding, flattened.

    `host_ip` "" means every local IPv4 address; `host_port` 0 means "pick an ephemeral port".
    """

    container_port: int
    proto: str = "tcp"
    host_ip: str = ""
    host_port: int = 0

    @property
    def key(self) -> str:
        """Return Docker's port key, e.g. "80/tcp"."""
        return f"{self.container_port}/{self.proto}"

    def to_docker(self) -> tuple[str, specs.PortBinding]:
        """Return (port key, Docker PortBinding) for HostConfig / NetworkSettings.Ports."""
        host_port = str(self.host_port) if self.host_port else ""
        return self.key, specs.PortBinding(host_ip=self.host_ip, host_port=host_port)


def _bad_port(text: str) -> InvalidParameter:
    # dockerd's text for a port it cannot parse (daemon-side validation of PortBindings).
    return InvalidParameter(f'invalid port specification: "{text}"')


def _port_range(text: str, allow_zero: bool) -> tuple[int, int]:
    """Parse "80" or "8000-8010" into an inclusive range; raise on anything else."""
    low, sep, high = text.partition("-")
    if not low.isdigit() or (sep and not high.isdigit()):
        raise _bad_port(text)
    start, end = int(low), int(high) if sep else int(low)
    if end < start or end > 65535 or (start == 0 and not allow_zero):
        raise _bad_port(text)
    return start, end


def _split_parts(raw: str) -> tuple[str, str, str]:
    """Split "[ip:][host:]container[/proto]" the way the docker CLI does (IPv6 ip has colons)."""
    parts = raw.split(":")
    if len(parts) == 1:
        return "", "", parts[0]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return ":".join(parts[:-2]), parts[-2], parts[-1]


def parse_publish_all(spec: str) -> list[PortBinding]:
    """Parse a `-p` spec into bindings, expanding equal-length port ranges.

    Error texts follow the docker CLI / dockerd (`invalid proto: x`, `invalid IP address: x`,
    `invalid port specification: "x"`).
    """
    ip, host, container = _split_parts(spec.strip())
    cport, _, proto = container.partition("/")
    proto = (proto or "tcp").lower()
    if not cport:
        raise InvalidParameter(f"no port specified: {spec}<empty>")
    if proto not in _PROTOS:
        raise InvalidParameter(f"invalid proto: {proto}")
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    if ip:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise InvalidParameter(f"invalid IP address: {ip}") from None
    c_start, c_end = _port_range(cport, allow_zero=False)
    if not host:
        return [PortBinding(container_port=p, proto=proto, host_ip=ip)
                for p in range(c_start, c_end + 1)]
    h_start, h_end = _port_range(host, allow_zero=True)
    if h_end - h_start != c_end - c_start:
        if c_start != c_end:
            raise InvalidParameter("invalid ranges specified for container and host Ports: "
                                   f"{cport} and {host}")
        # Docker then allocates one free port from the host range; not implemented.
        raise InvalidParameter(
            f'host port ranges for one container port are not supported: "{spec}"')
    return [PortBinding(container_port=c_start + i, proto=proto, host_ip=ip, host_port=h_start + i)
            for i in range(c_end - c_start + 1)]


def parse_publish(spec: str) -> PortBinding:
    """Parse one `-p [ip:][host:]container[/proto]` spec (no ranges) into a PortBinding."""
    bindings = parse_publish_all(spec)
    if len(bindings) != 1:
        raise InvalidParameter(
            f'port ranges publish several ports; use parse_publish_all: "{spec}"')
    return bindings[0]


def from_port_bindings(
    port_bindings: Mapping[str, Iterable[specs.PortBinding | Mapping[str, str]]],
) -> list[PortBinding]:
    """Flatten HostConfig.port_bindings ({"80/tcp": [PortBinding, ...]}) into PortBindings.

    Accepts Structs or the plain dicts a job receives (msgspec.to_builtins of the Struct).
    """
    out: list[PortBinding] = []
    for key, hosts in port_bindings.items():
        cport, _, proto = key.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in _PROTOS:
            raise InvalidParameter(f"invalid proto: {proto}")
        c_start, c_end = _port_range(cport, allow_zero=False)
        if c_start != c_end:
            raise _bad_port(cport)
        for host in hosts:
            if isinstance(host, specs.PortBinding):
                host_ip, host_port = host.host_ip, host.host_port
            else:
                host_ip, host_port = host.get("host_ip", ""), host.get("host_port", "")
            h_port = 0
            if host_port:
                h_start, h_end = _port_range(host_port, allow_zero=True)
                if h_start != h_end:
                    raise _bad_port(host_port)
                h_port = h_start
            out.append(PortBinding(container_port=c_start, proto=proto, host_ip=host_ip,
                                   host_port=h_port))
    return out
