"""Namespaces a container joins from another one (`--pid`/`--ipc container:<x>`). Pure.

Checked when a start is asked for, with Docker's texts (moby `daemon/container_operations_unix.go`
getPidContainer, getIpcContainer); the start plan then carries the donor's process id, whose
namespaces the worker enters.
"""

from __future__ import annotations

from engine.core import names
from engine.core.state import Container, World
from engine.errors import Conflict, MoorError
from events.hostopts import container_target, ipc_shareable
from events.saga import Donor

__all__ = ["check_joins", "namespace_joins"]


def _donor(world: World, ref: str) -> Container:
    donor = names.resolve(world, ref)
    if not donor.running:
        raise Conflict(f"container {donor.id} is not running")
    if donor.restarting:
        raise Conflict(f"Container {donor.id} is restarting, wait until the container is running")
    return donor


def check_joins(world: World, ctr: Container) -> None:
    """Raise Docker's error when a namespace donor is missing, stopped or not shareable."""
    host = ctr.host_config
    if ref := container_target(host.pid_mode):
        try:
            _donor(world, ref)
        except MoorError as err:
            raise type(err)(f"cannot join PID of a non running container: {ref}: "
                            f"{err.message}") from None
    if ref := container_target(host.ipc_mode):
        try:
            donor = _donor(world, ref)
        except MoorError as err:
            raise type(err)(f"can't join IPC of container {ref}: {err.message}") from None
        if not ipc_shareable(donor.host_config):
            raise Conflict(f"can't join IPC of container {ref}: non-shareable IPC "
                           "(hint: use IpcMode:shareable for the donor container)")


def namespace_joins(world: World, ctr: Container) -> dict[str, Donor]:
    """Return namespace kind ("pid", "ipc") -> its donor, for the start plan.

    A donor gone or stopped since the start was accepted gets pid 0: the worker then
    refuses the start rather than run the container in a namespace of its own.
    """
    joins: dict[str, Donor] = {}
    for kind, mode in (("pid", ctr.host_config.pid_mode), ("ipc", ctr.host_config.ipc_mode)):
        if ref := container_target(mode):
            try:
                donor = names.resolve(world, ref)
            except MoorError:
                joins[kind] = Donor(container_id="", pid=0)
                continue
            joins[kind] = Donor(container_id=donor.id, pid=donor.pid if donor.running else 0)
    return joins
