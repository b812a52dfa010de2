"""Fold the networking facts into the World (the part of `evolve` for networks). Pure.

`engine.core.evolve` dispatches these events here; like it, nothing here raises on an
event decide produced. Extra endpoints (networks joined beyond the primary one) live in
`Container.endpoints` and hold their address in `World.addresses` as the primary does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.core.ipam import address_key
from engine.core.state import Container, World
from events import model as e

__all__ = ["CONTAINER", "WORLD", "extra_connected", "extra_disconnected", "release_extra"]


def _created(world: World, ev: e.NetworkCreated) -> None:
    world.networks[ev.network.name] = ev.network
    world.network_info[ev.network.name] = ev.info


def _removed(world: World, ev: e.NetworkRemoved) -> None:
    world.networks.pop(ev.name, None)
    world.network_info.pop(ev.name, None)
    prefix = ev.name + "/"
    for key in [k for k in world.addresses if k.startswith(prefix)]:
        del world.addresses[key]


def _pruned(world: World, ev: e.NetworksPruned) -> None:
    return None


def _link_added(world: World, ev: e.LinkAdded) -> None:
    world.links[f"{ev.parent}/{ev.alias}"] = ev.child


def _link_removed(world: World, ev: e.LinkRemoved) -> None:
    world.links.pop(f"{ev.parent}/{ev.alias}", None)


WORLD: dict[type, Callable[[World, Any], None]] = {
    e.NetworkCreated: _created,
    e.NetworkRemoved: _removed,
    e.NetworksPruned: _pruned,
    e.LinkAdded: _link_added,
    e.LinkRemoved: _link_removed,
}


def _release(world: World, ctr: Container, network: str) -> None:
    ep = ctr.endpoints.get(network)
    if ep is not None:
        key = address_key(network, ep.ip_address)
        if world.addresses.get(key) == ctr.id:
            del world.addresses[key]


def release_extra(world: World, ctr: Container) -> None:
    """Free the addresses of every extra endpoint (the container's run ended)."""
    for network in ctr.endpoints:
        _release(world, ctr, network)


def _configured(world: World, ctr: Container, ev: e.NetworkingConfigured) -> dict[str, Any]:
    return {"networking": ev.networking}


def _reserved(world: World, ctr: Container, ev: e.EndpointReserved) -> dict[str, Any]:
    world.addresses[address_key(ev.endpoint.network, ev.endpoint.ip_address)] = ctr.id
    return {"endpoints": {**ctr.endpoints, ev.endpoint.network: ev.endpoint}}


def _released(world: World, ctr: Container, ev: e.EndpointReleased) -> dict[str, Any]:
    _release(world, ctr, ev.network)
    return {"endpoints": {n: ep for n, ep in ctr.endpoints.items() if n != ev.network}}


def extra_connected(world: World, ctr: Container, ev: e.NetworkConnected) -> dict[str, Any]:
    """A live connect joined: the endpoint now has its id (see networks.joined)."""
    return {"endpoints": {**ctr.endpoints, ev.endpoint.network: ev.endpoint}}


def extra_disconnected(world: World, ctr: Container,
                       ev: e.NetworkDisconnected) -> dict[str, Any]:
    _release(world, ctr, ev.network)
    return {"endpoints": {n: ep for n, ep in ctr.endpoints.items() if n != ev.network}}


CONTAINER: dict[type, Callable[[World, Container, Any], dict[str, Any]]] = {
    e.NetworkingConfigured: _configured,
    e.EndpointReserved: _reserved,
    e.EndpointReleased: _released,
}
