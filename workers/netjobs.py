"""rq entry points of user-defined networks: bridges, live connect and disconnect.

Primitive arguments only (the engine names these by string, `engine.core.netreact`).
A live connect reports its outcome (`ReportNetworkJoined`); the other jobs only release
or ensure host resources, idempotently.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from commands import schema as c
from engine.config import default_network
from engine.errors import MoorError
from events.specs import Endpoint, NetworkSpec
from workers.context import current
from workers.net import netconf, netfiles, usernet
from workers.net import network as _network

__all__ = ["connect_endpoint", "create_network", "disconnect_endpoint", "remove_network"]

log = logging.getLogger("moorage.worker")


def _default_bridge() -> str:
    """The engine's default bridge on this host: isolated from user networks too."""
    return default_network().bridge


def create_network(network: dict[str, Any], internal: bool = False) -> None:
    usernet.ensure_network(msgspec.convert(network, NetworkSpec), internal, _default_bridge())


def remove_network(bridge: str, subnet: str) -> None:
    usernet.release_network(bridge, subnet)


def connect_endpoint(container_id: str, generation: int, endpoint: dict[str, Any],
                     network: dict[str, Any]) -> None:
    ctx = current()
    ep = msgspec.convert(endpoint, Endpoint)
    spec = msgspec.convert(network, NetworkSpec)
    ctr = ctx.container(container_id)
    if ctr is None or ctr.generation != generation or not ctr.running:
        log.info("connect of %s to %s is no longer owed", container_id[:12], spec.name)
        return
    report = c.ReportNetworkJoined(generation=generation, network=spec.name)
    try:
        usernet.ensure_network(spec, default=_default_bridge())
        veth = usernet.ensure_extra_endpoint(container_id, ctx.container_dir(container_id),
                                             spec, ep)
        if spec.name != default_network().name:  # a user network: embedded DNS from now on
            netfiles.join_resolver(ctx.root, ctx.redis_url, ctx.keys.prefix, container_id,
                                   netconf.netns_path(container_id))
        report = msgspec.structs.replace(report, endpoint_id=veth)
    except Exception as exc:
        message = exc.message if isinstance(exc, MoorError) else f"{type(exc).__name__}: {exc}"
        log.warning("connect of %s to %s failed: %s", container_id[:12], spec.name, message)
        report = msgspec.structs.replace(report, error=message)
    ctx.report(container_id, report, f"joined-{container_id}-{generation}-{spec.name}-"
                                     f"{ep.ip_address}")


def disconnect_endpoint(container_id: str, network: dict[str, Any],
                        primary: bool = False) -> None:
    ctx = current()
    spec = msgspec.convert(network, NetworkSpec)
    if primary:
        _network.release_endpoint(container_id)
        return
    usernet.release_extra_endpoint(container_id, ctx.container_dir(container_id), spec.name)

