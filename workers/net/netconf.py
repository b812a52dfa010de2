"""Pure network configuration: the bridge config, resource names, published-port mappings.

Nothing here touches the host; `network`, `netns`, `portmap` and `hostfiles` perform the
effects. The default network (subnet, bridge name, MOOR_SUBNET / MOOR_BRIDGE) is
engine.config's; `-p` specs are parsed by commands.options. `network.ensure_bridge` refuses a
subnet that overlaps a route the host already has.

Names derive from the 64-hex container id, never from randomness, so every worker and the
reconciler find the same resources again:
    netns       /run/netns/moor-<64 hex>   the full id, so a listing maps back to the cid
    host veth   mv<12 hex>                 IFNAMSIZ allows 15 bytes; 12 hex is the short id
    tag         moor:<64 hex>              veth ifalias and iptables comment (full id)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

import msgspec

from commands import options
from engine.errors import InvalidParameter
from events import specs

__all__ = [
    "BRIDGE_TAG",
    "NETNS_DIR",
    "BridgeConfig",
    "PortMapping",
    "cid_from_netns_name",
    "cid_from_tag",
    "from_port_bindings",
    "netns_name",
    "netns_path",
    "short_id",
    "tag",
    "to_port_bindings",
    "validate_cid",
    "veth_name",
]

NETNS_DIR = "/run/netns"
NETNS_PREFIX = "moor-"
VETH_PREFIX = "mv"
TAG_PREFIX = "moor:"
BRIDGE_TAG = "moor:bridge"

_CID = re.compile(r"[0-9a-f]{64}")
# Interface names end up in iptables rules and /proc/sys paths: keep them to a safe set.
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


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
    """The host bridge containers attach to: device name and IPv4 subnet.

    No defaults on purpose: the reducer's NetworkSpec (engine.config.default_network for
    the default network) is the one source of both; build it with from_network_spec.
    """

    name: str
    subnet: str

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
    def from_network_spec(cls, spec: specs.NetworkSpec) -> BridgeConfig:
        """Build the config of the bridge behind a reducer-defined network."""
        cfg = cls(name=spec.bridge, subnet=spec.subnet)
        if spec.gateway != cfg.gateway:
            raise InvalidParameter(
                f"network {spec.name}: gateway {spec.gateway} is not {cfg.gateway}, "
                "the first host address the bridge uses")
        return cfg

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


class PortMapping(msgspec.Struct, frozen=True, kw_only=True):
    """One published port, flattened for iptables: container port, proto and one host side.

    Docker's go-connections calls this a PortMapping; HostConfig.PortBindings holds the same
    facts as {"80/tcp": (PortBinding, ...)}. `host_ip` "" means every local IPv4 address;
    `host_port` 0 means "pick an ephemeral port".
    """

    container_port: int
    proto: str = "tcp"
    host_ip: str = ""
    host_port: int = 0

    def __post_init__(self) -> None:
        # Every field becomes an iptables token, so the invariants hold however one is built
        # (from_port_bindings, a rule read back, structs.replace); parsing is not done here.
        if (self.proto not in options.PROTOS or not 0 < self.container_port <= 65535
                or not 0 <= self.host_port <= 65535 or not _canonical_ipv4(self.host_ip)):
            raise InvalidParameter(f"invalid port mapping: {self.host_ip or '0.0.0.0'}:"
                                   f"{self.host_port}:{self.container_port}/{self.proto}")

    @property
    def key(self) -> str:
        """Return Docker's port key, e.g. "80/tcp"."""
        return f"{self.container_port}/{self.proto}"


def _canonical_ipv4(text: str) -> bool:
    """Tell whether text is "" or an IPv4 address in canonical form, other than 0.0.0.0."""
    if not text:
        return True
    try:
        return str(ipaddress.IPv4Address(text)) == text != "0.0.0.0"
    except ValueError:
        return False


def _ipv4_host_ip(text: str) -> str:
    """Return a binding's host IP as iptables wants it: IPv4 only, "" for every address."""
    ip = options.parse_host_ip(text)
    if ip in ("", "0.0.0.0"):
        return ""
    if ipaddress.ip_address(ip).version != 4:
        raise InvalidParameter(f"IPv6 port bindings are not supported: {ip}")
    return ip


def from_port_bindings(
    port_bindings: Mapping[str, Iterable[specs.PortBinding]],
) -> list[PortMapping]:
    """Validate HostConfig.port_bindings ({"80/tcp": (PortBinding, ...)}) and flatten it.

    The one way from the engine's shape into the iptables layer. Duplicates are dropped,
    order is kept; a key with no bindings publishes nothing (an exposed-only port).
    """
    out: list[PortMapping] = []
    for key, hosts in port_bindings.items():
        port, proto = options.parse_port_key(key)
        out += [PortMapping(container_port=port, proto=proto, host_ip=_ipv4_host_ip(h.host_ip),
                            host_port=options.parse_host_port(h.host_port)) for h in hosts]
    return list(dict.fromkeys(out))


def to_port_bindings(
    mappings: Iterable[PortMapping],
) -> dict[str, tuple[specs.PortBinding, ...]]:
    """Return mappings in HostConfig / NetworkSettings.Ports shape (host port 0 as "")."""
    out: dict[str, list[specs.PortBinding]] = {}
    for m in mappings:
        out.setdefault(m.key, []).append(specs.PortBinding(
            host_ip=m.host_ip, host_port=str(m.host_port) if m.host_port else ""))
    return {key: tuple(bindings) for key, bindings in out.items()}
