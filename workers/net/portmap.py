"""Published ports (`netconf.PortMapping`s) as iptables DNAT in moorage's chains.

Layout per engine (IPv4 only; other tools' rules and chains are never touched; <e> is the
engine id, netconf.chains names the chains):

    nat     PREROUTING  -m addrtype --dst-type LOCAL -j MOOR-DNAT-<e>
            OUTPUT      -m addrtype --dst-type LOCAL -j MOOR-DNAT-<e>   (127.0.0.1 included)
            POSTROUTING -j MOOR-POSTROUTING-<e>
    MOOR-DNAT-<e>       [-d hostip] -p P --dport H  -j DNAT --to ip:C     tag moor:<e>:<cid>
    MOOR-POSTROUTING-<e> -s 127.0.0.0/8 -o <bridge> -j MASQUERADE         tag moor-bridge:<br>
                        -s <subnet> ! -o <bridge> -j MASQUERADE           tag moor-bridge:<br>
    filter  FORWARD     -j MOOR-FORWARD-<e> (first, so a DROP policy, e.g. dockerd's, is no bar)
    MOOR-FORWARD-<e>    -o <br> conntrack RELATED,ESTABLISHED -j ACCEPT   tag moor-bridge:<br>
                        -o <br> conntrack DNAT -j ACCEPT                  tag moor-bridge:<br>
                        -i <br> -j ACCEPT                                 tag moor-bridge:<br>

Each engine edits only its own chains and the rules tagged for it, so one engine's release
never removes what another engine's live containers use. Host ports are one namespace for
all of them: a port published by any engine counts as taken. The bridge tag has no engine
id: the bridge is one device on the host (its alias names its engine) and its rules move to
whichever engine ensures it. Rules an earlier version wrote (chains without the `-<e>`, tags
moor:<cid>) are still released, and replaced, for the containers the engine knows.

The forward side of a published port is the one per-bridge `ctstate DNAT` rule (accept
what our DNAT redirected into the bridge) rather than one ACCEPT per port: a container's
ports then live in the nat table alone, and on the nft backend every table a deleting
commit touches costs a kernel grace period (~16 ms measured here; two tables ~33 ms).

A loopback client reaches a container only with the MASQUERADE of 127/8 out of the bridge
and `route_localnet=1` on the bridge (network.ensure_bridge sets it).

Every change is one save and one atomic restore under a host-wide lock (`iptables`).
Unlike dockerd there is no userland proxy holding the host port: a free-port probe at
publish time stands in for it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import msgspec

from engine.errors import Conflict, InvalidParameter
from workers.net.iptables import (
    LOCK_PATH,
    TABLES,
    Rule,
    Ruleset,
    comment,
    locked,
    restore,
    rule_line,
    save,
)
from workers.net.netconf import (
    LEGACY,
    BridgeConfig,
    Chains,
    PortMapping,
    chains,
    cid_from_tag,
    engine_of,
    engine_of_chain,
    parse_tag,
    tag,
)

__all__ = [
    "LOCK_PATH",
    "PortRule",
    "ensure_chains",
    "ensure_ports",
    "list_port_rules",
    "release_chains",
    "release_ports",
]


def __getattr__(name: str) -> str:
    """Return DNAT_CHAIN, POSTROUTING_CHAIN, FORWARD_CHAIN: this engine's, as named now."""
    # Computed on access: the engine id comes from the environment, which tests change.
    fields = {"DNAT_CHAIN": "dnat", "POSTROUTING_CHAIN": "postrouting",
              "FORWARD_CHAIN": "forward"}
    if name in fields:
        return str(getattr(chains(), fields[name]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _table_chains(ch: Chains) -> dict[str, tuple[str, ...]]:
    return {"nat": (ch.dnat, ch.postrouting), "filter": (ch.forward,)}


def _hooks(ch: Chains) -> tuple[tuple[str, str, tuple[str, ...], bool], ...]:
    """Return (table, builtin chain, match tokens, insert first?), as iptables-save prints."""
    return (
        ("nat", "PREROUTING", ("-m", "addrtype", "--dst-type", "LOCAL", "-j", ch.dnat), False),
        ("nat", "OUTPUT", ("-m", "addrtype", "--dst-type", "LOCAL", "-j", ch.dnat), False),
        ("nat", "POSTROUTING", ("-j", ch.postrouting), False),
        ("filter", "FORWARD", ("-j", ch.forward), True),
    )


class PortRule(msgspec.Struct, frozen=True, kw_only=True):
    """One published port found on the host: its binding and where it points."""

    binding: PortMapping
    container_ip: str


# --- rule shapes ----------------------------------------------------------------------

def _bridge_tag(cfg: BridgeConfig) -> str:
    return f"moor-bridge:{cfg.name}"


def _bridge_rules(cfg: BridgeConfig, ch: Chains) -> dict[str, list[Rule]]:
    br, c = cfg.name, ("-m", "comment", "--comment", _bridge_tag(cfg))
    post, fwd = ch.postrouting, ch.forward
    return {
        "nat": [
            (post, "-s", "127.0.0.0/8", "-o", br, *c, "-j", "MASQUERADE"),
            (post, "-s", cfg.subnet, "!", "-o", br, *c, "-j", "MASQUERADE"),
        ],
        "filter": [
            (fwd, "-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
             *c, "-j", "ACCEPT"),
            (fwd, "-o", br, "-m", "conntrack", "--ctstate", "DNAT", *c, "-j", "ACCEPT"),
            (fwd, "-i", br, *c, "-j", "ACCEPT"),
        ],
    }


def _dnat_rule(owner: str, ip: str, b: PortMapping, ch: Chains) -> Rule:
    dst = ("-d", f"{b.host_ip}/32") if b.host_ip else ()
    return (ch.dnat, *dst, "-p", b.proto, "-m", b.proto, "--dport", str(b.host_port),
            "-m", "comment", "--comment", owner,
            "-j", "DNAT", "--to-destination", f"{ip}:{b.container_port}")


def _is_dnat_chain(name: str) -> bool:
    """Tell whether a chain is a DNAT chain of any engine's (host ports are shared)."""
    owner = engine_of_chain(name)
    return owner is not None and name == chains(owner).dnat


def _parse_dnat(rule: Rule) -> PortRule | None:
    """Read a binding back from a DNAT rule of any engine's (None if it is not one)."""
    if not _is_dnat_chain(rule[0]) or not {"-p", "--dport", "--to-destination"} <= set(rule):
        return None

    def value(opt: str) -> str:
        return rule[rule.index(opt) + 1]

    host_ip = value("-d").removesuffix("/32") if "-d" in rule else ""
    ip, _, cport = value("--to-destination").rpartition(":")
    try:
        binding = PortMapping(container_port=int(cport), proto=value("-p"), host_ip=host_ip,
                              host_port=int(value("--dport")))
    except (ValueError, InvalidParameter):
        return None  # not a shape we write (hand-edited?); release_ports still finds its tag
    return PortRule(binding=binding, container_ip=ip)


class _Plan:
    """Changes to one snapshot, rendered in a safe order: new chains, deletions, additions."""

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {"nat": [], "filter": []}
        self.doomed: dict[str, list[Rule]] = {"nat": [], "filter": []}
        self.added: dict[str, list[str]] = {"nat": [], "filter": []}

    def render(self, rs: Ruleset) -> dict[str, list[str]]:
        # One deletions() call per table: its rule numbers all refer to the same snapshot.
        return {t: self.chains[t] + rs.deletions(t, self.doomed[t]) + self.added[t]
                for t in self.chains}


def _setup(rs: Ruleset, cfg: BridgeConfig, ch: Chains) -> _Plan:
    """Plan the engine's missing chains and hooks and the (re)written bridge rules."""
    plan = _Plan()
    for table, names in _table_chains(ch).items():
        plan.chains[table] += [f"-N {chain}" for chain in names if chain not in rs.chains[table]]
    for table, chain, match, first in _hooks(ch):
        if (chain, *match) not in rs.rules[table]:
            plan.added[table].append(rule_line(f"-I {chain} 1" if first else f"-A {chain}", match))
    for table, wanted in _bridge_rules(cfg, ch).items():
        # Found in any chain: an earlier version's (or the bridge's previous engine's)
        # rules move into this engine's chains.
        have = rs.tagged(table, _bridge_tag(cfg))
        if have != wanted:  # missing or drifted (e.g. another subnet): rewrite them all
            plan.doomed[table] += have
            plan.added[table] += [rule_line("-A", r) for r in wanted]
    return plan


# --- public API -----------------------------------------------------------------------

def ensure_chains(cfg: BridgeConfig, engine: str | None = None) -> None:
    """Ensure the engine's chains, their hooks and the bridge's masquerade/forward rules."""
    with locked():
        rs = save()
        restore(_setup(rs, cfg, chains(engine)).render(rs))


def release_chains(cfg: BridgeConfig, engine: str | None = None) -> None:
    """Remove the bridge's rules; drop an engine's hooks and chains once they hold nothing.

    The engine's chains, and those of whichever engine held the bridge's rules: tools tear
    an engine down from processes without its configuration, naming only its bridge.
    """
    with locked():
        rs = save()
        owners: set[str | None] = {engine_of(engine)}
        for table in TABLES:
            owners |= {engine_of_chain(r[0]) for r in rs.tagged(table, _bridge_tag(cfg))}
        batch: dict[str, list[str]] = {}
        for table in TABLES:
            doomed = rs.tagged(table, _bridge_tag(cfg))
            dropped: list[str] = []
            for owner in sorted(o for o in owners if o is not None):
                ch = chains(owner)
                names = _table_chains(ch)[table]
                if any(r[0] in names and r not in doomed for r in rs.rules[table]):
                    continue  # others still need these chains
                doomed += [(chain, *match) for t, chain, match, _ in _hooks(ch) if t == table]
                dropped += [f"-X {c}" for c in names if c in rs.chains[table]]
            batch[table] = rs.deletions(table, doomed) + dropped
        restore(batch)


def ensure_ports(cid: str, ip: str, mappings: Iterable[PortMapping],
                 cfg: BridgeConfig, engine: str | None = None) -> list[PortMapping]:
    """Publish the container's ports (creating chains if needed); return the mappings used.

    netconf.from_port_bindings turns HostConfig.port_bindings into mappings (and
    to_port_bindings turns the result back, e.g. for NetworkSettings.Ports). Ephemeral host
    ports (0) are picked from the kernel's local port range; a retry reuses the port already
    published for the same mapping. Rules of this container that are not wanted any more
    are removed in the same transaction, and so are an earlier version's rules for it (they
    move into this engine's chain). No mappings is a no-op without touching iptables
    (release_ports is what removes rules).
    """
    wanted = list(dict.fromkeys(mappings))
    if not wanted:
        return []
    try:
        ip = str(ipaddress.IPv4Address(ip))
    except ValueError:
        raise InvalidParameter(f"invalid container address: {ip!r}") from None
    owner, ch = tag(cid, engine), chains(engine)
    with locked():
        rs = save()
        mine = {t: rs.tagged(t, owner) + rs.tagged(t, tag(cid, LEGACY)) for t in TABLES}
        published = [p.binding for r in mine["nat"] if (p := _parse_dnat(r)) is not None]
        # Host ports are shared by every engine on the host: theirs count as taken.
        taken = [p.binding for r in rs.rules["nat"]
                 if parse_tag(comment(r)) is not None and r not in mine["nat"]
                 and (p := _parse_dnat(r)) is not None]
        resolved = [_resolve(b, published, taken) for b in wanted]
        for i, b in enumerate(resolved):
            if any(_clash(b, other) for other in taken + resolved[:i]):
                raise Conflict(f"Bind for {b.host_ip or '0.0.0.0'}:{b.host_port} failed: "
                               "port is already allocated")
            if b not in published:
                _probe(b)
        desired: dict[str, list[Rule]] = {"nat": [_dnat_rule(owner, ip, b, ch)
                                                  for b in resolved], "filter": []}
        plan = _setup(rs, cfg, ch)
        for table in plan.doomed:
            plan.doomed[table] += [r for r in mine[table] if r not in desired[table]]
            plan.added[table] += [rule_line("-A", r) for r in desired[table]
                                  if r not in mine[table]]
        restore(plan.render(rs))
    return resolved


def release_ports(cid: str, engine: str | None = None) -> None:
    """Remove every rule tagged for the container (by the engine or an earlier version)."""
    owners = (tag(cid, engine), tag(cid, LEGACY))
    with locked():
        rs = save()
        restore({t: rs.deletions(t, [r for o in owners for r in rs.tagged(t, o)])
                  for t in TABLES})


def list_port_rules(engine: str | None = None) -> dict[str, list[PortRule]]:
    """Return the engine's published ports found on the host, by container id (reconcile)."""
    eid = engine_of(engine)
    found: dict[str, list[PortRule]] = {}
    for rule in save().rules["nat"]:
        cid = cid_from_tag(comment(rule), eid)
        parsed = _parse_dnat(rule) if cid else None
        if cid and parsed is not None:
            found.setdefault(cid, []).append(parsed)
    return found


# --- binding helpers ------------------------------------------------------------------

def _clash(a: PortMapping, b: PortMapping) -> bool:
    return (a.proto == b.proto and a.host_port == b.host_port
            and (not a.host_ip or not b.host_ip or a.host_ip == b.host_ip))


def _resolve(b: PortMapping, published: list[PortMapping], taken: list[PortMapping]) -> PortMapping:
    """Give an ephemeral binding a concrete host port (the published one on a retry)."""
    if b.host_port:
        return b
    for p in published:
        if (p.container_port, p.proto, p.host_ip) == (b.container_port, b.proto, b.host_ip):
            return p
    for _ in range(64):
        kind = socket.SOCK_DGRAM if b.proto == "udp" else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((b.host_ip or "0.0.0.0", 0))  # the kernel picks from ip_local_port_range
            candidate = msgspec.structs.replace(b, host_port=s.getsockname()[1])
        if not any(_clash(candidate, t) for t in taken):
            return candidate
    raise Conflict(f"no free host port for {b.key}")


def _probe(b: PortMapping) -> None:
    """Refuse a host port a host process already uses (DNAT would silently shadow it)."""
    if b.proto == "sctp":
        return  # no portable probe; sctp sockets need the kernel module
    kind = socket.SOCK_DGRAM if b.proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            # Only a listener should count, not connections lingering in TIME_WAIT.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((b.host_ip or "0.0.0.0", b.host_port))
        except OSError as exc:
            raise Conflict(f"Bind for {b.host_ip or '0.0.0.0'}:{b.host_port} failed: "
                           f"{exc.strerror.lower() if exc.strerror else exc}") from None
