"""Pure network configuration: the bridge config, resource names, published-port mappings.

Nothing here touches the host; `network`, `netns`, `portmap` and `hostfiles` perform the
effects. The default network (subnet, bridge name, MOOR_SUBNET / MOOR_BRIDGE) is
engine.config's; `-p` specs are parsed by commands.options. `network.ensure_bridge` refuses a
subnet that overlaps a route the host already has.

Names derive from the engine id (engine.config.engine_id) and the 64-hex container id, never
from randomness, so every worker and the reconciler find the same resources again, and
one engine's reconciler can tell its own resources from another engine's on the same host:
    netns       /run/netns/moor-<engine>-<64 hex>   the full id, so a listing maps back to it
    host veth   mv<12 hex>                         IFNAMSIZ allows 15 bytes: no room for the
                                                   engine, which its tag carries instead
    tag         moor:<engine>:<64 hex>             veth ifalias and iptables comment
    bridge tag  moor:bridge:<engine>               the bridge's ifalias
    chains      MOOR-DNAT-<engine>, MOOR-POSTROUTING-<engine>, MOOR-FORWARD-<engine>

Names made before engines had an id lack the engine part (`moor-<64 hex>`, `moor:<64 hex>`,
`moor:bridge`, `MOOR-DNAT`); every helper takes `engine=LEGACY` to name those, and release and
reconcile use it so that an upgraded engine still releases what it made earlier.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import msgspec

from commands import options
from engine import config
from engine.errors import InvalidParameter
from events import specs

__all__ = [
    "LEGACY",
    "NETNS_DIR",
    "BridgeConfig",
    "Chains",
    "Owner",
    "PortMapping",
    "bridge_tag",
    "cid_from_netns_name",
    "chains",
    "cid_from_tag",
    "engine_of",
    "engine_of_chain",
    "from_port_bindings",
    "netns_name",
    "netns_path",
    "parse_bridge_tag",
    "parse_netns_name",
    "parse_tag",
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
BRIDGE_TAG_PREFIX = "moor:bridge"
# The engine id of names made before engines had one: the engine part is left out.
LEGACY = ""

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


class Owner(NamedTuple):
    """Whose a resource name says it is: an engine id (LEGACY: none) and a container id."""

    engine: str
    cid: str


def engine_of(engine: str | None) -> str:
    """Return the engine id to name resources for: this engine's when None."""
    if engine is None:
        return config.engine_id()
    return engine if engine == LEGACY else config.validate_engine_id(engine)


def netns_name(cid: str, engine: str | None = None) -> str:
    """Return the name of the container's network namespace under /run/netns."""
    eid = engine_of(engine)
    return f"{NETNS_PREFIX}{eid}-{validate_cid(cid)}" if eid else NETNS_PREFIX + validate_cid(cid)


def netns_path(cid: str, engine: str | None = None) -> str:
    """Return the bind-mount path of the container's network namespace (its sandbox key)."""
    return f"{NETNS_DIR}/{netns_name(cid, engine)}"


def veth_name(cid: str) -> str:
    """Return the host end of the container's veth pair (14 bytes, fits IFNAMSIZ)."""
    return VETH_PREFIX + short_id(cid)


def tag(cid: str, engine: str | None = None) -> str:
    """Return the ownership tag put on the veth alias and on iptables rules."""
    eid = engine_of(engine)
    return f"{TAG_PREFIX}{eid}:{validate_cid(cid)}" if eid else TAG_PREFIX + validate_cid(cid)


def bridge_tag(engine: str | None = None) -> str:
    """Return the ownership tag put on the alias of a bridge this engine created."""
    eid = engine_of(engine)
    return f"{BRIDGE_TAG_PREFIX}:{eid}" if eid else BRIDGE_TAG_PREFIX


def _owner(engine: str, cid: str) -> Owner | None:
    if _CID.fullmatch(cid) and (engine == LEGACY or config.ENGINE_ID.fullmatch(engine)):
        return Owner(engine, cid)
    return None


def parse_netns_name(name: str) -> Owner | None:
    """Return whose a namespace name says it is, or None if moorage did not name it."""
    if not name.startswith(NETNS_PREFIX):
        return None
    rest = name[len(NETNS_PREFIX):]
    if len(rest) == 64:
        return _owner(LEGACY, rest)
    engine, sep, cid = rest[:-65], rest[-65:-64], rest[-64:]
    return _owner(engine, cid) if engine and sep == "-" else None


def parse_tag(text: str | None) -> Owner | None:
    """Return whose an ownership tag (ifalias, rule comment) says it is, or None."""
    if not text or not text.startswith(TAG_PREFIX):
        return None
    parts = text[len(TAG_PREFIX):].split(":")
    if len(parts) == 1:
        return _owner(LEGACY, parts[0])
    return _owner(parts[0], parts[1]) if len(parts) == 2 and parts[0] else None


def parse_bridge_tag(text: str | None) -> str | None:
    """Return the engine id in a bridge's tag (LEGACY for the old one), None if not one."""
    if text == BRIDGE_TAG_PREFIX:
        return LEGACY
    if text and text.startswith(BRIDGE_TAG_PREFIX + ":"):
        engine = text[len(BRIDGE_TAG_PREFIX) + 1:]
        return engine if config.ENGINE_ID.fullmatch(engine) else None
    return None


class Chains(NamedTuple):
    """An engine's iptables chains: published ports, masquerading, forwarding."""

    dnat: str
    postrouting: str
    forward: str


_CHAIN_BASES = Chains("MOOR-DNAT", "MOOR-POSTROUTING", "MOOR-FORWARD")


def chains(engine: str | None = None) -> Chains:
    """Return the engine's chain names (iptables allows 28 characters: ids have 11 at most)."""
    eid = engine_of(engine)
    return Chains(*(f"{base}-{eid}" if eid else base for base in _CHAIN_BASES))


def engine_of_chain(name: str) -> str | None:
    """Return the engine id a chain name carries (LEGACY: none), None if not moorage's."""
    for base in _CHAIN_BASES:
        if name == base:
            return LEGACY
        if name.startswith(base + "-") and config.ENGINE_ID.fullmatch(name[len(base) + 1:]):
            return name[len(base) + 1:]
    return None


def cid_from_netns_name(name: str, engine: str | None = None) -> str | None:
    """Return the cid a namespace name was derived from, or None if it is not the engine's."""
    owner = parse_netns_name(name)
    return owner.cid if owner is not None and owner.engine == engine_of(engine) else None


def cid_from_tag(text: str | None, engine: str | None = None) -> str | None:
    """Return the cid in an ownership tag, or None if the text is not the engine's tag."""
    owner = parse_tag(text)
    return owner.cid if owner is not None and owner.engine == engine_of(engine) else None


class BridgeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The host bridge containers attach to: device name and IPv4 subnet.

    No defaults on purpose: the reducer's NetworkSpec (engine.config.default_network for
    the default network) is the one source of both; build it with from_network_spec.
    """

    name: str
    subnet: str
    gw: str = ""  # a user network's --gateway; "" is the subnet's first host address

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
        if spec.gateway != cfg.gateway and spec.name != "bridge":
            cfg = cls(name=spec.bridge, subnet=spec.subnet, gw=spec.gateway)
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
        if self.gw:
            return self.gw
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
