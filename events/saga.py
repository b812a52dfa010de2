"""The start saga: its steps in order, and the plan the engine hands a host to run them.

This module is the one home of the step order. The decider awaits the steps in this
order (`engine.core.evolve`), accepts each report only for the step it completes
(`commands.schema`, `completes`), and the worker performs them in this order
(`workers.saga`).

The plan travels from the reducer's outbox through rq (JSON) to the host's worker, which
decodes it once (`commands.codec.CODEC.plan`). Its fields keep the names of the dict it
replaced, so a job queued by an older engine still decodes.
"""

from __future__ import annotations

import msgspec

from events.netspecs import NetPlan
from events.specs import ContainerConfig, Endpoint, HostConfig, MountPoint, NetworkSpec

__all__ = ["ENDPOINT", "MOUNT", "REMOVE", "SANDBOX", "SPAWN", "STEPS", "Donor", "StartPlan",
           "saga_steps"]

MOUNT = "mount"  # the overlay rootfs
SANDBOX = "sandbox"  # the network namespace
ENDPOINT = "endpoint"  # the veth on the bridge, its address and published ports
SPAWN = "spawn"  # the supervised process
REMOVE = "remove"  # not a start step: the step a failed removal reports (ReportStepFailed)

STEPS = (MOUNT, SANDBOX, ENDPOINT, SPAWN)  # every start step, in order

_BY_MODE = {
    "bridge": STEPS,
    "none": (MOUNT, SANDBOX, SPAWN),
    "host": (MOUNT, SPAWN),
}


def saga_steps(network_mode: str) -> tuple[str, ...]:
    """Return the start saga's steps for a network mode (user networks join like bridge)."""
    if network_mode.startswith("container:"):  # the donor's namespace: nothing to join
        return _BY_MODE["host"]
    return _BY_MODE.get(network_mode, _BY_MODE["bridge"])


class Donor(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A running container whose namespace another one enters (`--pid`/`--ipc container:`)."""

    container_id: str
    pid: int  # 0: not running any more, so the start must fail


class StartPlan(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Everything a host's worker needs to start one generation of a container.

    `steps` are the steps still owed, in order (a start re-issued after a killed worker
    owes only the later ones); `saga_steps(host_config.network_mode)` are all of them.
    `endpoint` and `network` are set when the network mode has an endpoint step.
    """

    container_id: str
    generation: int
    name: str
    image_id: str
    layers: tuple[str, ...] = ()  # the image's diff ids, bottom-most first
    config: ContainerConfig
    host_config: HostConfig
    endpoint: Endpoint | None = None
    network: NetworkSpec | None = None
    steps: tuple[str, ...] = ()
    joins: dict[str, Donor] = {}  # namespace kind ("pid", "ipc") -> whose to enter
    mounts: tuple[MountPoint, ...] = ()  # binds, volumes and tmpfs (engine.core.volumes)
    net: NetPlan | None = None  # DNS, hosts entries, links (engine.core.networks)
