"""The host work networking facts trigger (the part of `react` for networks). Pure.

Returns (function, job id, kwargs) triples that `engine.core.react` wraps as Jobs; the
functions live in `workers.netjobs`. Ids are deterministic, as every job's.
"""

from __future__ import annotations

from typing import Any

from commands.codec import CODEC
from engine.core.state import World
from events import model as e

__all__ = ["net_jobs"]

_JOBS = "workers.netjobs"
Triple = tuple[str, str, dict[str, Any]]


def net_jobs(world: World, record: e.EventRecord) -> list[Triple] | None:
    """Return the jobs of a networking fact; None when the event is not one of them."""
    ev = record.event
    cid = record.meta.container_id
    if isinstance(ev, e.NetworkCreated):
        return [(f"{_JOBS}.create_network", f"network-create-{ev.info.id}",
                 {"network": CODEC.primitives(ev.network), "internal": ev.info.internal})]
    if isinstance(ev, e.NetworkRemoved):
        return [(f"{_JOBS}.remove_network", f"network-remove-{ev.network_id}",
                 {"bridge": ev.bridge, "subnet": ev.subnet})]
    if isinstance(ev, e.EndpointReserved):
        ctr = world.containers.get(cid)
        spec = world.networks.get(ev.endpoint.network)
        if ctr is None or spec is None:
            return []
        return [(f"{_JOBS}.connect_endpoint", f"connect-{cid}-{record.meta.version}",
                 {"container_id": cid, "generation": ev.generation,
                  "endpoint": CODEC.primitives(ev.endpoint),
                  "network": CODEC.primitives(spec)})]
    if isinstance(ev, e.NetworkDisconnected):
        ctr = world.containers.get(cid)
        spec = world.networks.get(ev.network)
        # Only a live disconnect of a network joined live: at an exit the teardown takes
        # the whole sandbox (the primary network's endpoint is the start saga's).
        if ctr is None or spec is None or not ctr.running \
                or ev.network == ctr.host_config.network_mode:
            return None
        return [(f"{_JOBS}.disconnect_endpoint", f"disconnect-{cid}-{record.meta.version}",
                 {"container_id": cid, "network": CODEC.primitives(spec)})]
    return None
