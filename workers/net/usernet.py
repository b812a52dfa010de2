"""User-defined networks on the host: their bridges, isolation rules and extra endpoints.

A user network is a bridge like the default one (`network.ensure_bridge`, the masquerade
and forward rules of `portmap.ensure_chains`), plus Docker's isolation between networks in
two chains of the engine's own (<e> the engine id, as netconf.chains):

    filter  MOOR-FORWARD-<e>  -j MOOR-ISO1-<e>                         (first)
            MOOR-ISO1-<e>     -i <br> ! -o <br> -j MOOR-ISO2-<e>        tag moor-net:<br>
            MOOR-ISO2-<e>     -o <br> -j DROP                           tag moor-net:<br>

so traffic entering from one user bridge and leaving through another is dropped, as
Docker's DOCKER-ISOLATION-STAGE-1/2 do. An internal network also drops everything that
leaves or enters it from elsewhere. The chains and the hook go with the last network.

A live `network connect` adds an endpoint beyond eth0: host end `mx<12 hex>` (a hash of
the container and network ids, tagged like the primary veth), eth<N> inside (the lowest
free N). Deleting the sandbox deletes it with it; teardown deletes it first so that a
restart never races the kernel for its name.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from engine.errors import Conflict
from events.specs import Endpoint, NetworkSpec
from workers.net import netns, network, portmap
from workers.net.iptables import comment, locked, restore, rule_line, save
from workers.net.links import netlink_errors
from workers.net.netconf import BridgeConfig, chains, engine_of, netns_path, tag

__all__ = ["ensure_extra_endpoint", "ensure_isolation", "ensure_network",
           "extra_veth_name", "release_extra_endpoint", "release_extra_endpoints",
           "release_network"]

_EXTRA_FILE = "extra-endpoints"  # in the container's directory: the mx veths it has


def iso_chains(engine: str | None = None) -> tuple[str, str]:
    eid = engine_of(engine)
    return (f"MOOR-ISO1-{eid}", f"MOOR-ISO2-{eid}") if eid else ("MOOR-ISO1", "MOOR-ISO2")


def _net_tag(cfg: BridgeConfig, mark: str = "moor-net") -> tuple[str, ...]:
    return ("-m", "comment", "--comment", f"{mark}:{cfg.name}")


def _iso_rules(cfg: BridgeConfig, internal: bool, engine: str | None,
               mark: str = "moor-net") -> list[tuple[str, ...]]:
    iso1, iso2 = iso_chains(engine)
    br, c = cfg.name, _net_tag(cfg, mark)
    rules = [(iso1, "-i", br, "!", "-o", br, *c, "-j", iso2), (iso2, "-o", br, *c, "-j", "DROP")]
    if internal:
        rules += [(iso1, "-i", br, "!", "-o", br, *c, "-j", "DROP"),
                  (iso1, "-o", br, "!", "-i", br, *c, "-j", "DROP")]
    return rules


def ensure_isolation(cfg: BridgeConfig, internal: bool = False,
                     engine: str | None = None, default: str = "") -> None:
    """Ensure the isolation chains, their hook and this bridge's rules (portmap's first).

    `default` names the engine's default bridge: it takes part in the isolation while any
    user network exists (Docker isolates docker0 from user bridges too), tagged apart so
    that the last user network's release takes its rules with the chains.
    """
    iso1, iso2 = iso_chains(engine)
    fwd = chains(engine).forward
    with locked():
        rs = save()
        lines = [f"-N {ch}" for ch in (iso1, iso2) if ch not in rs.chains["filter"]]
        if (fwd, "-j", iso1) not in rs.rules["filter"]:
            lines.append(f"-I {fwd} 1 -j {iso1}")
        wanted = _iso_rules(cfg, internal, engine)
        if internal:  # the drops go before the stage-2 jump
            wanted = wanted[2:] + wanted[:2]
        if default and default != cfg.name:
            wanted += _iso_rules(BridgeConfig(name=default, subnet=cfg.subnet), False,
                                 engine, DEFAULT_MARK)
        lines += [rule_line("-A", r) for r in wanted if r not in rs.rules["filter"]]
        restore({"filter": lines})


DEFAULT_MARK = "moor-net-default"


def _release_isolation(cfg: BridgeConfig, engine: str | None = None) -> None:
    iso1, iso2 = iso_chains(engine)
    fwd = chains(engine).forward
    mark = f"moor-net:{cfg.name}"
    with locked():
        rs = save()
        doomed = rs.tagged("filter", mark)
        ours = [r for r in rs.rules["filter"] if r[0] in (iso1, iso2) and r not in doomed]
        rest = [r for r in ours if not (comment(r) or "").startswith(DEFAULT_MARK + ":")]
        lines = rs.deletions("filter", doomed if rest else doomed + ours)
        if not rest:
            if (fwd, "-j", iso1) in rs.rules["filter"]:
                lines.append(f"-D {fwd} -j {iso1}")
            lines += [f"-X {ch}" for ch in (iso1, iso2) if ch in rs.chains["filter"]]
        restore({"filter": lines})


def ensure_network(spec: NetworkSpec, internal: bool = False, default: str = "") -> None:
    """Ensure a user network's bridge, its masquerade/forward rules and its isolation."""
    cfg = BridgeConfig.from_network_spec(spec)
    network.ensure_bridge(cfg)
    portmap.ensure_chains(cfg)
    ensure_isolation(cfg, internal, default=default)


def release_network(bridge: str, subnet: str, engine: str | None = None) -> None:
    """Delete a user network's isolation rules, its bridge rules and the bridge itself."""
    cfg = BridgeConfig(name=bridge, subnet=subnet)
    _release_isolation(cfg, engine)
    portmap.release_chains(cfg, engine)
    network.release_bridge(cfg)


# --- extra endpoints -------------------------------------------------------------------

def extra_veth_name(cid: str, network_name: str) -> str:
    """Return the host end of the container's endpoint on a network joined live (14 bytes)."""
    return "mx" + hashlib.sha256(f"{cid}/{network_name}".encode()).hexdigest()[:12]


def _record(cdir: str, veth: str, present: bool) -> None:
    path = os.path.join(cdir, _EXTRA_FILE)
    try:
        with open(path) as f:
            names = set(f.read().split())
    except FileNotFoundError:
        names = set()
    names = names | {veth} if present else names - {veth}
    os.makedirs(cdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(sorted(names)))
    os.replace(path + ".tmp", path)


def ensure_extra_endpoint(cid: str, cdir: str, spec: NetworkSpec, ep: Endpoint,
                          engine: str | None = None) -> str:
    """Join the running container's sandbox to another network; return the host veth."""
    cfg = BridgeConfig.from_network_spec(spec)
    veth = extra_veth_name(cid, spec.name)
    _record(cdir, veth, True)  # before creating: a crash leaves a name teardown will find
    nsfd = netns.open_netns(netns_path(cid, engine), cid)
    try:
        with netlink_errors(f"endpoint {veth} of container {cid}"), IPRoute() as host:
            found = host.link_lookup(ifname=veth)
            if found:
                return veth  # joined by an earlier try of this job
            bridge = host.link_lookup(ifname=cfg.name)
            if not bridge:
                raise Conflict(f"bridge {cfg.name} of network {spec.name} not found")
            with IPRoute(use_socket=netns.socket_in(nsfd)) as ns:
                taken = {link.get("IFLA_IFNAME") for link in ns.link("dump")}
                inner = next(f"eth{i}" for i in range(1, 64) if f"eth{i}" not in taken)
                host.link("add", ifname=veth, kind="veth",
                          peer={"ifname": inner, "net_ns_fd": nsfd})
                try:
                    index = host.link_lookup(ifname=veth)[0]
                    host.link("set", index=index, master=bridge[0], state="up",
                              ifalias=tag(cid, engine))
                    inside = ns.link_lookup(ifname=inner)[0]
                    if ep.mac_address:
                        ns.link("set", index=inside, address=ep.mac_address)
                    ns.addr("add", index=inside, address=ep.ip_address,
                            prefixlen=ep.prefix_len)
                    ns.link("set", index=inside, state="up")
                except BaseException:
                    _delete(host, veth)
                    raise
    finally:
        os.close(nsfd)
    return veth


def _delete(host: IPRoute, veth: str) -> None:
    try:
        host.link("del", ifname=veth)
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT):
            raise


def release_extra_endpoint(cid: str, cdir: str, network_name: str) -> None:
    """Remove the container's interface on one network (absent is success)."""
    veth = extra_veth_name(cid, network_name)
    with netlink_errors(f"endpoint {veth} of container {cid}"), IPRoute() as host:
        _delete(host, veth)
    _record(cdir, veth, False)


def release_extra_endpoints(cdir: str) -> None:
    """Delete every extra veth the container's directory lists (cheap when it has none)."""
    path = os.path.join(cdir, _EXTRA_FILE)
    try:
        with open(path) as f:
            names = f.read().split()
    except FileNotFoundError:
        return
    with IPRoute() as host:
        for veth in names:
            _delete(host, veth)
    os.unlink(path)


def wait_gone(veth: str, timeout: float = 1.0) -> None:
    """Wait until a veth's name is free (the kernel deletes pairs asynchronously)."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/sys/class/net/{veth}") and time.monotonic() < deadline:
        time.sleep(0.01)
