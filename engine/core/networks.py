"""Decide user-defined networks, endpoints and legacy links, with Docker's texts. Pure.

Handlers of `engine.core.decide` (create, remove, prune, connect, disconnect, rm --link,
the host's join report) and the hooks the container lifecycle calls: what a create's
networking records, which endpoint a start reserves (IPAM per network, `--ip`,
`--ip-range`, `--mac-address`), what a start plan carries for hosts files and links.

The default network (`bridge`, `engine.config.default_network`) is predefined: it has no
NetworkInfo and cannot be removed; embedded DNS and aliases are for user networks only,
legacy links for the default one only (Docker's rules, docker-semantics-2 §13).
"""

from __future__ import annotations

import hashlib
import ipaddress

from commands import schema as c
from engine.core import names
from engine.core.ipam import address_key, mac_for
from engine.shards import shard_of_id
from engine.core.state import Container, World
from engine.errors import (
    Conflict,
    Forbidden,
    Internal,
    InvalidParameter,
    MoorError,
    NotFound,
)
from events import model as e
from events.hostopts import container_target
from events.netspecs import EndpointSettings, LinkTarget, NetPlan, NetworkInfo, Networking
from events.specs import Endpoint, HostConfig, NetworkSpec

__all__ = [
    "AUTO_POOL", "PREDEFINED", "check_create", "connect", "create_network", "create_events",
    "derived_network_id", "destroy_links", "disconnect", "endpoint_on", "extra_endpoints", "rejoin",
    "is_user_network", "joined", "network_id", "net_plan", "network_joined", "networks_of",
    "prune_networks", "remove_link", "remove_network", "resolve_network",
]

PREDEFINED = ("bridge", "host", "none")
# Where the engine picks a /24 when `network create` names no subnet and the client did
# not pick one either (the API and CLI pick a free one against the host's routes first).
AUTO_POOL = "10.214.0.0/16"
_MAX_BRIDGE = 15  # IFNAMSIZ - 1


# --- lookups -------------------------------------------------------------------------

def network_id(world: World, name: str) -> str:
    """Return a network's 64-hex id: its record's, or one derived from a predefined name."""
    info = world.network_info.get(name)
    if info is not None:
        return info.id
    return derived_network_id(name)


def derived_network_id(name: str) -> str:
    """The stable 64-hex id of a predefined network (bridge, host, none)."""
    return hashlib.sha256(f"moorage-network:{name}".encode()).hexdigest()


def is_user_network(world: World, name: str) -> bool:
    return name in world.network_info


def resolve_network(world: World, ref: str) -> str:
    """Return a network's name from a name, full id or unique id prefix (Docker's order)."""
    known = list(world.networks) + [n for n in ("host", "none") if n not in world.networks]
    by_id = {network_id(world, n): n for n in known}
    if ref in by_id:
        return by_id[ref]
    if ref in known:
        return ref
    found = [n for i, n in by_id.items() if ref and i.startswith(ref)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise InvalidParameter(f"network {ref} is ambiguous ({len(found)} matches found "
                               "based on ID prefix)")
    raise NotFound(f"network {ref} not found")


def networks_of(ctr: Container) -> list[str]:
    """Return every network the container is configured on, its primary first."""
    mode = ctr.host_config.network_mode
    primary = [] if mode in ("host", "none") or container_target(mode) else [mode]
    return primary + [n for n in ctr.networking.endpoints if n not in primary]


def joined(ctr: Container) -> dict[str, Endpoint]:
    """Return the endpoints the container has joined on the host, by network."""
    out: dict[str, Endpoint] = {}
    if ctr.connected and ctr.endpoint is not None:
        out[ctr.endpoint.network] = ctr.endpoint
    out.update({n: ep for n, ep in ctr.endpoints.items() if ep.endpoint_id})
    return out


def extra_endpoints(ctr: Container) -> dict[str, Endpoint]:
    return ctr.endpoints


def rejoin(world: World, ctr: Container) -> list[e.Event]:
    """Reserve the container's endpoints on its other networks at a start (`network
    connect` is kept across restarts); one that cannot get an address is released with
    the reason, and the start goes on."""
    events: list[e.Event] = []
    for name in networks_of(ctr):
        if name == ctr.host_config.network_mode or name in ctr.endpoints:
            continue  # the primary joins in the start saga
        try:
            endpoint = endpoint_on(world, ctr, name)
        except MoorError as err:
            events.append(e.EndpointReleased(generation=ctr.generation, network=name,
                                             error=err.message))
            continue
        events.append(e.EndpointReserved(generation=ctr.generation, endpoint=endpoint))
    return events


# --- network create / remove / prune ----------------------------------------------------

def _ipam_errors(subnet: str, gateway: str, ip_range: str) -> tuple[list[str], str, str]:
    """Return Docker's IPAM validation lines, the canonical subnet and the gateway."""
    errors: list[str] = []
    try:
        net = ipaddress.IPv4Network(subnet, strict=False)
    except ValueError:
        return [f"invalid subnet {subnet}: invalid CIDR block notation"], subnet, gateway
    if str(net) != subnet:
        errors.append(f"invalid subnet {subnet}: it should be {net}")
    if net.prefixlen > 30:
        errors.append(f"invalid subnet {subnet}: too small for a bridge network")
    if ip_range:
        try:
            rng = ipaddress.IPv4Network(ip_range, strict=False)
            if not rng.subnet_of(net):
                errors.append(f"invalid ip-range {ip_range}: parent subnet {subnet} doesn't "
                              "contain ip-range")
        except ValueError:
            errors.append(f"invalid ip-range {ip_range}: invalid CIDR block notation")
    if gateway:
        try:
            if ipaddress.IPv4Address(gateway) not in net:
                errors.append(f"invalid gateway {gateway}: parent subnet {subnet} doesn't "
                              "contain this address")
        except ValueError:
            errors.append(f"invalid gateway {gateway}: invalid address")
    return errors, str(net), gateway or str(net.network_address + 1)


def _overlaps(world: World, subnet: str) -> bool:
    net = ipaddress.IPv4Network(subnet)
    return any(net.overlaps(ipaddress.IPv4Network(spec.subnet))
               for spec in world.networks.values())


def _auto_subnet(world: World) -> str:
    for candidate in ipaddress.IPv4Network(AUTO_POOL).subnets(new_prefix=24):
        if not _overlaps(world, str(candidate)):
            return str(candidate)
    raise InvalidParameter("all predefined address pools have been fully subnetted")


def bridge_name(network_id_: str, options: dict[str, str]) -> str:
    """Return the network's bridge device: its option, else mb<first 12 of the id>."""
    return options.get("com.docker.network.bridge.name") or f"mb{network_id_[:12]}"


def create_network(world: World, env: c.Envelope,
                   cmd: c.CreateNetwork) -> tuple[str, list[e.Event]]:
    if not cmd.name:
        raise InvalidParameter("invalid name: name is empty")
    if cmd.name in PREDEFINED:
        raise Forbidden(f"operation is not permitted on predefined {cmd.name} network ")
    if cmd.name in world.networks:
        raise Conflict(f"network with name {cmd.name} already exists")
    if not names.is_full_id(cmd.network_id) or any(
            i.id == cmd.network_id for i in world.network_info.values()):
        raise InvalidParameter(f"invalid network id: {cmd.network_id!r}")
    options = dict(cmd.options)
    for key in ("com.docker.network.enable_ipv6",):
        if key in options and options[key].lower() not in ("true", "false", "1", "0"):
            raise InvalidParameter(f'driver-opt "{key}" is not a valid bool')
    subnet = cmd.subnet or _auto_subnet(world)
    errors, subnet, gateway = _ipam_errors(subnet, cmd.gateway, cmd.ip_range)
    if errors:
        raise InvalidParameter("invalid network config:\n" + "\n".join(errors))
    if _overlaps(world, subnet):
        raise Forbidden("invalid pool request: Pool overlaps with other one on this address "
                        "space")
    bridge = bridge_name(cmd.network_id, options)
    if len(bridge) > _MAX_BRIDGE or any(s.bridge == bridge for s in world.networks.values()):
        raise InvalidParameter(f"invalid bridge name {bridge!r}: at most {_MAX_BRIDGE} "
                               "characters, not used by another network")
    spec = NetworkSpec(name=cmd.name, subnet=subnet, gateway=gateway, bridge=bridge)
    info = NetworkInfo(id=cmd.network_id, created=env.issued_at, labels=dict(cmd.labels),
                       internal=cmd.internal, ip_range=cmd.ip_range, options=options,
                       subnet_given=bool(cmd.subnet) and cmd.subnet_given,
                       shards=max(1, cmd.shards))
    return "", [e.NetworkCreated(network=spec, info=info)]


def _users(world: World, name: str) -> list[Container]:
    """Return the containers with an endpoint on the network (joined or being joined)."""
    return sorted((x for x in world.containers.values()
                   if (x.endpoint is not None and x.endpoint.network == name)
                   or name in x.endpoints), key=lambda x: (x.created, x.id))


def _removal(world: World, name: str) -> e.NetworkRemoved:
    if name in PREDEFINED or name not in world.network_info:
        raise Forbidden(f"{name} is a pre-defined network and cannot be removed")
    users = _users(world, name)
    if users:
        listed = ", ".join(f'name:"{x.name}" id:"{x.id[:12]}"' for x in users)
        raise Forbidden(f"error while removing network: network {name} id "
                        f"{network_id(world, name)} has active endpoints ({listed})")
    spec = world.networks[name]
    return e.NetworkRemoved(network_id=network_id(world, name), name=name, bridge=spec.bridge,
                            subnet=spec.subnet)


def remove_network(world: World, env: c.Envelope,
                   cmd: c.RemoveNetwork) -> tuple[str, list[e.Event]]:
    return "", [_removal(world, resolve_network(world, cmd.network))]


def _label_match(labels: dict[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


def prune_networks(world: World, env: c.Envelope,
                   cmd: c.PruneNetworks) -> tuple[str, list[e.Event]]:
    events: list[e.Event] = []
    for name, info in sorted(world.network_info.items()):
        if _users(world, name) or any(
                name in x.networking.endpoints or x.host_config.network_mode == name
                for x in world.containers.values()):
            continue
        if not all(_label_match(info.labels, w) for w in cmd.labels):
            continue
        if any(_label_match(info.labels, w) for w in cmd.not_labels):
            continue
        if cmd.until and info.created >= cmd.until:
            continue
        events.append(_removal(world, name))
    names_ = tuple(ev.name for ev in events if isinstance(ev, e.NetworkRemoved))
    return "", [*events, e.NetworksPruned(names=names_)]


# --- endpoints and addresses ---------------------------------------------------------

def _check_mac(mac: str) -> None:
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(ch in "0123456789abcdefABCDEF"
                                                      for ch in p) for p in parts):
        raise InvalidParameter(f"invalid MAC address {mac}")


def check_settings(world: World, network: str, settings: EndpointSettings,
                   user_network: bool) -> None:
    """Raise Docker's `invalid endpoint settings` for settings a network cannot take."""
    errors = []
    if settings.ipv4_address and not user_network:
        errors.append("user specified IP address is supported on user defined networks only")
    if settings.aliases and not user_network:
        errors.append("network-scoped alias is supported only for containers in user "
                      "defined networks")
    if settings.mac_address:
        try:
            _check_mac(settings.mac_address)
        except InvalidParameter as err:
            errors.append(err.message)
    if errors:
        raise InvalidParameter("invalid endpoint settings:\n" + "\n".join(errors))
    if settings.ipv4_address and network in world.networks:
        spec = world.networks[network]
        try:
            inside = ipaddress.IPv4Address(settings.ipv4_address) in \
                ipaddress.IPv4Network(spec.subnet)
        except ValueError:
            raise InvalidParameter(f"invalid IPv4 address: {settings.ipv4_address}") from None
        if not inside:
            raise InvalidParameter(f"invalid endpoint settings:\ninvalid address "
                                   f"{settings.ipv4_address}: It does not belong to any of "
                                   "this network's subnets")


def _share_of(net: ipaddress.IPv4Network, addr: ipaddress.IPv4Address, shards: int) -> int:
    """Return which shard gives an address of a network several shards allocate on: its
    host number modulo the shard count (each shard one writer of its share)."""
    return (int(addr) - int(net.network_address)) % shards


def endpoint_on(world: World, ctr: Container, network: str) -> Endpoint:
    """Reserve the container's address on a network: its `--ip`, else the lowest free one
    (inside `--ip-range` when the network has one). The owner's own address counts free."""
    spec = world.networks.get(network)
    if spec is None:
        raise NotFound(f"network {network} not found")
    settings = ctr.networking.endpoints.get(network, EndpointSettings())
    net = ipaddress.IPv4Network(spec.subnet)
    info = world.network_info.get(network)
    mac = settings.mac_address.lower()
    shards = info.shards if info is not None else 1
    share = int(shard_of_id(ctr.id, shards))
    if settings.ipv4_address:
        holder = world.addresses.get(address_key(network, settings.ipv4_address), ctr.id)
        if holder != ctr.id or settings.ipv4_address == spec.gateway:
            raise Forbidden("Address already in use")
        if _share_of(net, ipaddress.IPv4Address(settings.ipv4_address), shards) != share:
            raise Forbidden(f"Address {settings.ipv4_address} belongs to another shard's share "
                            f"of network {network}: in a deployment of {shards} shards, "
                            "shard k gives the addresses whose host number is k modulo "
                            f"{shards} (this container is in shard {share})")
        ip = settings.ipv4_address
        return Endpoint(network=network, ip_address=ip, prefix_len=net.prefixlen,
                        gateway=spec.gateway, mac_address=mac or mac_for(ip))
    pool = ipaddress.IPv4Network(info.ip_range) if info is not None and info.ip_range else net
    gateway = ipaddress.IPv4Address(spec.gateway)
    for addr in pool.hosts() if pool.prefixlen < 31 else pool:
        if addr == gateway or addr == net.network_address or addr == net.broadcast_address:
            continue
        if shards > 1 and _share_of(net, addr, shards) != share:
            continue  # another shard's share: it may give this address any time
        ip = str(addr)
        if world.addresses.get(address_key(network, ip), ctr.id) == ctr.id:
            return Endpoint(network=network, ip_address=ip, prefix_len=net.prefixlen,
                            gateway=spec.gateway, mac_address=mac or mac_for(ip))
    raise Forbidden(f"no available IPv4 addresses on this network's address pools: "
                    f"{network} ({network_id(world, network)})")


# --- create --------------------------------------------------------------------------

def check_create(world: World, host: HostConfig, networking: Networking | None,
                 hostname: str, exposed: bool) -> None:
    """Raise Docker's create-time errors for the container's network options."""
    mode = host.network_mode
    net = networking or Networking()
    if mode.startswith("container:"):
        if not mode[10:]:
            raise InvalidParameter("invalid network mode: invalid container format "
                                   "container:<name|id>")
        for cond, text in ((hostname, "hostname and the network mode"),
                           (net.links, "container type network can't be used with links. "
                                       "This would result in undefined behavior"),
                           (net.dns, "dns and the network mode"),
                           (net.extra_hosts, "custom host-to-IP mapping and the network mode"),
                           (host.port_bindings, "port publishing and the container type "
                                                "network mode"),
                           (exposed, "port exposing and the container type network mode")):
            if cond:
                raise InvalidParameter(f"conflicting options: {text}")
        return
    if mode == "host" and net.links:
        raise InvalidParameter("conflicting options: host type networking can't be used "
                               "with links. This would result in undefined behavior")
    for name, settings in net.endpoints.items():
        if name not in world.networks:
            raise NotFound(f"network {name} not found")
        check_settings(world, name, settings, is_user_network(world, name))
    for link in net.links:
        child, _, _ = link.partition(":")
        try:
            names.resolve(world, child.lstrip("/"))
        except MoorError:
            raise InvalidParameter(f"could not get container for {child}: No such "
                                   f"container: {child}") from None


def _link_parts(link: str) -> tuple[str, str]:
    child, _, alias = link.partition(":")
    child = child.lstrip("/")
    return child, (alias or child).lstrip("/").rsplit("/", 1)[-1]


def create_events(world: World, cid: str, host: HostConfig,
                  networking: Networking | None) -> list[e.Event]:
    """Return the facts a create records beside ContainerCreated (after it).

    The primary network's settings are keyed by its name; legacy links only where Docker
    honours them (not on user-defined networks).
    """
    if networking is None:
        return []
    events: list[e.Event] = []
    if not is_user_network(world, host.network_mode):
        for link in networking.links:
            child, alias = _link_parts(link)
            events.append(e.LinkAdded(parent=cid, child=names.resolve(world, child).id,
                                      alias=alias))
    # A container event last: its version is the container's (see decider.decide_records).
    events.append(e.NetworkingConfigured(networking=networking))
    return events


# --- start ---------------------------------------------------------------------------

def net_plan(world: World, ctr: Container) -> NetPlan | None:
    """Return what the host needs for the container's hosts and resolv.conf, or None."""
    net = ctr.networking
    mode = ctr.host_config.network_mode
    if target := container_target(mode):
        try:
            donor = names.resolve(world, target)
        except MoorError:
            return NetPlan()
        return NetPlan(shared_from=donor.id,
                       shared_hostname=donor.config.hostname or donor.id[:12])
    links: list[LinkTarget] = []
    prefix = ctr.id + "/"
    for key, child_id in sorted(world.links.items()):
        child = world.containers.get(child_id)
        if not key.startswith(prefix) or child is None:
            continue
        ep = child.endpoint if child.connected or child.saga else None
        env = tuple(x for x in child.config.env
                    if x.partition("=")[0] not in ("HOME", "PATH"))
        links.append(LinkTarget(alias=key[len(prefix):], name=child.name,
                                hostname=child.config.hostname,
                                ip=ep.ip_address if ep is not None else "",
                                ports=tuple(child.config.exposed_ports)
                                + tuple(p for p in child.host_config.port_bindings
                                        if p not in child.config.exposed_ports),
                                env=env))
    embedded = any(is_user_network(world, n) for n in networks_of(ctr))
    if not (embedded or links or net.dns or net.dns_search or net.dns_options
            or net.extra_hosts):
        return None
    return NetPlan(embedded_dns=embedded, dns=net.dns, dns_search=net.dns_search,
                   dns_options=net.dns_options, extra_hosts=net.extra_hosts,
                   links=tuple(links), parent_name=ctr.name)


def check_links(world: World, ctr: Container) -> None:
    """Raise Docker's start error when a linked child is not running."""
    prefix = ctr.id + "/"
    for key, child_id in sorted(world.links.items()):
        if not key.startswith(prefix):
            continue
        child = world.containers.get(child_id)
        alias = key[len(prefix):]
        if child is None or not child.running:
            shown = child.name if child is not None else child_id[:12]
            raise Internal(f"Cannot link to a non running container: /{shown} AS "
                           f"/{ctr.name}/{alias}")


def check_net_donor(world: World, ctr: Container) -> None:
    """Raise Docker's start errors for `--network container:<x>` (getNetworkedContainer)."""
    target = container_target(ctr.host_config.network_mode)
    if not target:
        return
    try:
        donor = names.resolve(world, target)
    except MoorError:
        raise Internal(f"joining network namespace of container: No such container: "
                       f"{target}") from None
    if donor.id == ctr.id:
        raise Internal("cannot join own network namespace")
    if donor.restarting:
        raise Conflict(f"cannot join network namespace of container: Container {target} is "
                       "restarting, wait until the container is running")
    if not donor.running:
        state = "exited" if donor.started_at else "created"
        raise Conflict(f"cannot join network namespace of a non running container: "
                       f"container {donor.name} is {state}")


# --- connect / disconnect ----------------------------------------------------------------

def _check_connectable(ctr: Container) -> None:
    mode = ctr.host_config.network_mode
    if container_target(mode):
        raise InvalidParameter("container sharing network namespace with another container "
                               "or host cannot be connected to any other network")
    if mode == "host":
        raise InvalidParameter("cannot connect container to host network - container must "
                               "be created in host network mode")
    if ctr.removal_in_progress or ctr.dead:
        raise Internal(f"Container {ctr.id} is marked for removal and cannot be connected or "
                       "disconnected to the network")


def connect(world: World, env: c.Envelope, cmd: c.ConnectNetwork) -> tuple[str, list[e.Event]]:
    ctr = names.resolve(world, cmd.ref)
    name = resolve_network(world, cmd.network)
    _check_connectable(ctr)
    if name in ("host", "none") or ctr.host_config.network_mode == "none":
        raise InvalidParameter("container cannot be connected to multiple networks with one "
                               "of the networks in private (none) mode")
    live = ctr.running and not ctr.restarting
    on = name in networks_of(ctr)
    if on and live:
        raise Forbidden(f"endpoint with name {ctr.name} already exists in network {name}")
    check_settings(world, name, cmd.settings, is_user_network(world, name))
    endpoints = {**ctr.networking.endpoints, name: cmd.settings}
    configured = e.NetworkingConfigured(
        networking=_with_endpoints(ctr.networking, endpoints))
    if on:
        return ctr.id, [configured]  # Docker: a stopped container's repeat is a no-op
    if not live:
        return ctr.id, [configured]
    probe = _with_networking(ctr, configured.networking)
    endpoint = endpoint_on(world, probe, name)
    return ctr.id, [configured, e.EndpointReserved(generation=ctr.generation,
                                                   endpoint=endpoint)]


def _with_endpoints(net: Networking, endpoints: dict[str, EndpointSettings]) -> Networking:
    return Networking(endpoints=endpoints, dns=net.dns, dns_search=net.dns_search,
                      dns_options=net.dns_options, extra_hosts=net.extra_hosts,
                      links=net.links)


def _with_networking(ctr: Container, net: Networking) -> Container:
    import msgspec

    return msgspec.structs.replace(ctr, networking=net)


def disconnect(world: World, env: c.Envelope,
               cmd: c.DisconnectNetwork) -> tuple[str, list[e.Event]]:
    ctr = names.resolve(world, cmd.ref)
    name = resolve_network(world, cmd.network)
    if ctr.host_config.network_mode == "host" and name == "host":
        raise InvalidParameter("cannot disconnect container from host network - container "
                               "was created in host network mode")
    live = ctr.running and not ctr.restarting
    if name not in networks_of(ctr):
        if live:
            raise Internal(f"container {ctr.id} is not connected to network {name}")
        raise Internal(f"container {ctr.id} is not connected to the network {name}")
    if ctr.removal_in_progress or ctr.dead:
        _check_connectable(ctr)
    endpoints = {n: s for n, s in ctr.networking.endpoints.items() if n != name}
    events: list[e.Event] = [e.NetworkingConfigured(
        networking=_with_endpoints(ctr.networking, endpoints))]
    held = name in ctr.endpoints or (ctr.endpoint is not None and ctr.endpoint.network == name)
    if live and held:
        events.append(e.NetworkDisconnected(generation=ctr.generation, network=name))
    return ctr.id, events


def network_joined(world: World, env: c.Envelope,
                   cmd: c.ReportNetworkJoined) -> tuple[str, list[e.Event]]:
    """The host joined (or failed to join) a live connect's endpoint."""
    ctr = world.containers.get(env.container_id)
    if ctr is None:
        return env.container_id, [e.ReportIgnored(report="ReportNetworkJoined",
                                                  generation=cmd.generation,
                                                  reason="no such container")]
    pending = ctr.endpoints.get(cmd.network)
    if cmd.generation != ctr.generation or pending is None or pending.endpoint_id:
        return ctr.id, [e.ReportIgnored(report="ReportNetworkJoined", generation=cmd.generation,
                                        reason="no endpoint awaited on " + cmd.network)]
    if cmd.error:
        return ctr.id, [e.EndpointReleased(generation=cmd.generation, network=cmd.network,
                                           error=cmd.error)]
    import msgspec

    joined_ep = msgspec.structs.replace(pending, endpoint_id=cmd.endpoint_id or "joined")
    return ctr.id, [e.NetworkConnected(generation=cmd.generation, endpoint=joined_ep)]


# --- links -------------------------------------------------------------------------------

def remove_link(world: World, env: c.Envelope, cmd: c.RemoveLink) -> tuple[str, list[e.Event]]:
    text = cmd.name if cmd.name.startswith("/") else "/" + cmd.name
    parent_name, _, alias = text[1:].rpartition("/")
    if not parent_name:
        raise Internal("Conflict, cannot remove the default link name of the container")
    try:
        parent = names.resolve(world, parent_name)
    except MoorError:
        raise Internal(f"Cannot get parent /{parent_name} for link name {text}") from None
    if f"{parent.id}/{alias}" not in world.links:
        raise NotFound(f"No such container: {text}")
    return "", [e.LinkRemoved(parent=parent.id, alias=alias)]


def destroy_links(world: World, ctr: Container) -> list[e.Event]:
    """Return the removals of every link the container is the parent or the child of."""
    return [e.LinkRemoved(parent=key.partition("/")[0], alias=key.partition("/")[2])
            for key, child in sorted(world.links.items())
            if child == ctr.id or key.startswith(ctr.id + "/")]
