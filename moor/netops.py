"""Network operations shared by the API server and the `moor network` CLI (blocking).

They submit the commands and, where Docker's call returns only once the host acted
(connect on a running container), wait on the journal for the fact.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from typing import Any

from commands import schema as c
from commands.client import Client
from engine.core.networks import AUTO_POOL
from engine.core.state import World
from engine.errors import Internal, InvalidParameter
from events import model as e
from events.netspecs import EndpointSettings

__all__ = ["connect", "create_network", "disconnect", "pick_subnet"]


def _host_routes() -> list[ipaddress.IPv4Network]:
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return []
    try:
        with IPRoute() as ipr:
            return [ipaddress.IPv4Network(f"{r.get('RTA_DST')}/{r['dst_len']}", strict=False)
                    for r in ipr.route("dump", family=socket.AF_INET, table=254)
                    if r["dst_len"]]
    except OSError:
        return []


def pick_subnet(world: World) -> str:
    """Return a free /24 of the engine's pool: no network's, no host route's."""
    taken = [ipaddress.IPv4Network(s.subnet) for s in world.networks.values()] + _host_routes()
    for candidate in ipaddress.IPv4Network(AUTO_POOL).subnets(new_prefix=24):
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate)
    raise InvalidParameter("all predefined address pools have been fully subnetted")


def create_network(client: Client, world: World, name: str, *, subnet: str = "",
                   gateway: str = "", ip_range: str = "", labels: dict[str, str] | None = None,
                   internal: bool = False, options: dict[str, str] | None = None) -> str:
    """Create a user-defined bridge network; return its id."""
    given = bool(subnet)
    if not subnet and not gateway and not ip_range:
        subnet = pick_subnet(world)
    nid = secrets.token_hex(32)
    client.submit(c.CreateNetwork(name=name, network_id=nid, subnet=subnet, gateway=gateway,
                                  ip_range=ip_range, labels=labels or {}, internal=internal,
                                  options=options or {}, subnet_given=given))
    return nid


def connect(client: Client, network: str, container: str, settings: EndpointSettings,
            timeout: float = 30) -> None:
    """`docker network connect`: returns once a running container's interface is up."""
    sub = client.submit(c.ConnectNetwork(ref=container, network=network, settings=settings))
    if "EndpointReserved" not in sub.result.events:
        return
    _, record = client.wait_event(
        sub.result.container_id, sub.last_event_id,
        lambda ev: isinstance(ev, e.NetworkConnected | e.EndpointReleased)
        and (ev.endpoint.network if isinstance(ev, e.NetworkConnected) else ev.network)
        != "", timeout)
    if isinstance(record.event, e.EndpointReleased):
        raise Internal(record.event.error or "failed to join the network")


def disconnect(client: Client, network: str, container: str, force: bool = False) -> Any:
    return client.submit(c.DisconnectNetwork(ref=container, network=network, force=force))
