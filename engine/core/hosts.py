"""Hosts: joining, loss and return, subnet slices, and the guard on a lost host's containers.

Pure, as every decider module. A worker joins as a host (`JoinHost`, from the reports
inbox); the reducer's host watch (engine.hostwatch) notices a lapsed or renewed lease and
appends `MarkHostLost` / `MarkHostReturned` to its own inbox. Hosts are never forgotten,
so a host's slice of the default bridge network is never given to another one.
docs/decisions/0017-hosts.md explains the choices.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

import msgspec

from commands import schema as c
from engine.core import reports
from engine.core.state import Container, Host, World, host_lost
from engine.errors import Conflict, InvalidParameter, NotFound, NotModified, Unavailable
from events import model as e
from events.specs import NetworkSpec

__all__ = [
    "DEFAULT_NETWORK",
    "HOST_ID",
    "check_reachable",
    "drop_lost",
    "host_network",
    "join_host",
    "mark_lost",
    "mark_returned",
    "slice_ranges",
    "validate_host_id",
]

DEFAULT_NETWORK = "bridge"  # the default bridge network's name (engine.config.default_network)
# A host id names an rq queue and a Redis key, and goes into the engine id's hash.
HOST_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_MAX_LABELS = 64


def validate_host_id(value: str) -> str:
    """Return `value` if it can name a host, else raise InvalidParameter."""
    if HOST_ID.fullmatch(value) is None:
        raise InvalidParameter(f"invalid host id {value!r} (1-63 of [a-z0-9_.-], starting "
                               "with a letter or digit)")
    return value


# --- subnet slices ---------------------------------------------------------------------

def slice_prefix(prefixlen: int) -> int:
    """Return the prefix length of a host's slice of a network of `prefixlen`.

    /24 slices of a /20 or larger network (the default /16 gives 255 hosts of 253
    addresses); a smaller network is cut into 16 slices (down to /28).
    """
    return 24 if prefixlen <= 20 else min(28, prefixlen + 4)


@lru_cache(maxsize=16)
def _slices(subnet: str) -> tuple[ipaddress.IPv4Network, ...]:
    net = ipaddress.IPv4Network(subnet)
    return tuple(net.subnets(new_prefix=slice_prefix(net.prefixlen)))


def _allocate_slice(world: World, spec: NetworkSpec, host: str) -> str:
    """Return the lowest slice no known host holds and no address on it is taken.

    Slice 0 holds the network's own gateway and stays with single-host mode (host ""),
    so containers created before any host joined keep their addresses.
    """
    held = {h.subnet for h in world.hosts.values()}
    taken = [ipaddress.IPv4Address(key.split("/", 1)[1]) for key in world.addresses
             if key.startswith(spec.name + "/")]
    for candidate in _slices(spec.subnet)[1:]:
        if str(candidate) in held or any(ip in candidate for ip in taken):
            continue
        return str(candidate)
    raise Unavailable(f"no free subnet slice of {spec.subnet} for host {host}: "
                      f"{len(held)} hosts hold one")


def slice_ranges(world: World) -> tuple[tuple[int, int], ...]:
    """Return the (first, last) integer addresses of every host's slice (IPAM skips them
    for containers of host "")."""
    ranges = []
    for host in world.hosts.values():
        if host.subnet:
            net = ipaddress.IPv4Network(host.subnet)
            ranges.append((int(net.network_address), int(net.broadcast_address)))
    return tuple(ranges)


def host_network(world: World, spec: NetworkSpec, host: str) -> NetworkSpec:
    """Return the default network as a host sees it: its slice, gateway and bridge.

    Any other network, or host "" (or a host with no slice), is returned as it is.
    """
    if not host or spec.name != DEFAULT_NETWORK:
        return spec
    record = world.hosts.get(host)
    if record is None or not record.subnet:
        return spec
    return _slice_spec(spec, record.subnet, record.bridge or spec.bridge)


@lru_cache(maxsize=256)
def _slice_spec(spec: NetworkSpec, subnet: str, bridge: str) -> NetworkSpec:
    net = ipaddress.IPv4Network(subnet)
    return msgspec.structs.replace(spec, subnet=subnet, gateway=str(net.network_address + 1),
                                   bridge=bridge)


# --- decisions -------------------------------------------------------------------------

def join_host(world: World, env: c.Envelope, cmd: c.JoinHost) -> tuple[str, list[e.Event]]:
    """Record a host's join (first, again, or back from lost); allocate its slice once."""
    host = validate_host_id(cmd.host)
    if cmd.capacity < 1:
        raise InvalidParameter(f"invalid capacity {cmd.capacity} for host {host}: at least 1")
    if len(cmd.labels) > _MAX_LABELS:
        raise InvalidParameter(f"host {host}: too many labels ({len(cmd.labels)})")
    known = world.hosts.get(host)
    events: list[e.Event] = []
    if known is not None:
        subnet = known.subnet
        if not known.alive:
            events.append(e.HostReturned(host=host))
    else:
        spec = world.networks.get(DEFAULT_NETWORK)
        subnet = _allocate_slice(world, spec, host) if spec is not None else ""
    events.append(e.HostJoined(host=host, labels=dict(cmd.labels), capacity=cmd.capacity,
                               subnet=subnet, bridge=cmd.bridge))
    return "", events


def _known(world: World, host: str) -> Host:
    record = world.hosts.get(host)
    if record is None:
        raise NotFound(f"host {host} has not joined")
    return record


def mark_lost(world: World, env: c.Envelope, cmd: c.MarkHostLost) -> tuple[str, list[e.Event]]:
    """Record the loss the host watch saw, unless the host is lost already or came back
    (and was lost again) since the watch looked."""
    record = _known(world, cmd.host)
    if not record.alive or record.losses != cmd.losses:
        raise NotModified(f"host {cmd.host} is already lost")
    return "", [e.HostLost(host=cmd.host)]


def mark_returned(world: World, env: c.Envelope,
                  cmd: c.MarkHostReturned) -> tuple[str, list[e.Event]]:
    """Record the return the host watch saw (a lease renewed after a loss)."""
    record = _known(world, cmd.host)
    if record.alive or record.losses != cmd.losses:
        raise NotModified(f"host {cmd.host} is not lost")
    return "", [e.HostReturned(host=cmd.host)]


def drop_lost(world: World, env: c.Envelope,
              cmd: c.DropLostContainer) -> tuple[str, list[e.Event]]:
    """Destroy a removed container of a lost host, as its host's removal report would."""
    ctr = world.containers.get(env.container_id)
    if ctr is None:
        raise NotFound(f"No such container: {env.container_id}")
    if not host_lost(world, ctr):  # back meanwhile: its own removal job reports it
        raise NotModified(f"host {ctr.host} of container {ctr.id} is not lost")
    return reports.removed(world, env, c.ReportRemoved(generation=ctr.generation))


# --- the guard -------------------------------------------------------------------------

def check_reachable(world: World, ctr: Container) -> None:
    """Raise Docker's 409 when the container's host is lost: nobody can act on it there."""
    if not ctr.host:
        return
    record = world.hosts.get(ctr.host)
    if record is not None and not record.alive:
        raise Conflict(f"container {ctr.id} is on host {ctr.host}, which is lost (its "
                       "heartbeat lapsed): it cannot be acted on until the host returns; "
                       "rm -f removes it")
