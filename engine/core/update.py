"""Decide `docker update`: the new HostConfig is a fact, kept across restarts. Pure.

moby's `daemon/update.go` and `Container.UpdateContainer`: validation first (400, the
create texts; a swap limit without a memory limit is allowed), then the conflicts with
what is set already (409, wrapped `Cannot update container <id>: …`). Zero fields keep
their value. A running container's live cgroup takes the new limits (`react` emits the
job); a stopped one only keeps them for its next start.
"""

from __future__ import annotations

import msgspec

from commands import schema as c
from engine.core import names
from engine.core.state import Container, World
from engine.core.validate import check_resources, check_restart_policy
from engine.errors import Conflict, Internal
from events import model as e
from events.specs import HostConfig

__all__ = ["effective_swap", "update"]

# Docker's updatable resources: a zero value in the request keeps the current one.
_FIELDS = ("blkio_weight", "cpu_shares", "nano_cpus", "cpu_period", "cpu_quota",
           "cpuset_cpus", "cpuset_mems", "memory", "memory_swap", "memory_reservation")


def effective_swap(host: HostConfig) -> int:
    """Return the memory+swap limit Docker stores: unset with a memory limit is twice it."""
    if host.memory_swap == 0 and host.memory > 0:
        return 2 * host.memory
    return host.memory_swap


def _conflict(ctr: Container, message: str) -> Conflict:
    return Conflict(f"Cannot update container {ctr.id}: {message}")


def _merge(ctr: Container, cmd: c.UpdateContainer) -> HostConfig:
    """Apply the request to the current HostConfig, with moby's conflict checks and texts."""
    old, new = ctr.host_config, cmd.resources
    for field, now in (("CPU Period", old.cpu_period), ("CPU Quota", old.cpu_quota)):
        if new.nano_cpus > 0 and now > 0:
            raise _conflict(ctr, f"Conflicting options: Nano CPUs cannot be updated as "
                                 f"{field} has already been set")
    for field, wanted in (("CPU Period", new.cpu_period), ("CPU Quota", new.cpu_quota)):
        if wanted > 0 and old.nano_cpus > 0:
            raise _conflict(ctr, f"Conflicting options: {field} cannot be updated as "
                                 "NanoCPUs has already been set")
    if new.memory and new.memory > effective_swap(old) and new.memory_swap == 0:
        raise _conflict(ctr, "Memory limit should be smaller than already set memoryswap "
                             "limit, update the memoryswap at the same time")
    changes: dict[str, object] = {f: getattr(new, f) for f in _FIELDS if getattr(new, f)}
    if new.memory and not new.memory_swap:
        changes["memory_swap"] = effective_swap(old)  # kept as Docker keeps it
    if cmd.pids_limit is not None:
        changes["pids_limit"] = max(cmd.pids_limit, 0)
    policy = cmd.restart_policy
    if policy is not None and policy.name:
        if old.auto_remove and policy.name != "no":
            raise _conflict(ctr, "Restart policy cannot be updated because AutoRemove is "
                                 "enabled for the container")
        changes["restart_policy"] = policy
    return msgspec.structs.replace(old, **changes)


def update(world: World, env: c.Envelope, cmd: c.UpdateContainer) -> tuple[str, list[e.Event]]:
    """Return the ContainerUpdated fact, or raise Docker's refusal."""
    ctr = names.resolve(world, cmd.ref)
    check_resources(cmd.resources, update=True)
    if cmd.restart_policy is not None and cmd.restart_policy.name:
        # The policy's own texts (400); AutoRemove is the merge's 409.
        check_restart_policy(HostConfig(restart_policy=cmd.restart_policy))
    if ctr.removal_in_progress or ctr.dead:
        raise Internal(f'Cannot update container {ctr.id}: container is marked for removal '
                       'and cannot be "update"')
    host = _merge(ctr, cmd)
    live = ctr.running and not ctr.restarting
    return ctr.id, [e.ContainerUpdated(host_config=host,
                                       generation=ctr.generation if live else 0)]
