"""react(world, record) -> jobs, and resume(world) -> jobs owed after a restart. Pure.

A job names a worker function by its dotted path (the engine never imports workers/)
and carries only primitives (rq serializes its arguments as JSON): the start plan, a
`StartPlan`, is handed over as the codec's primitives and typed back once by the worker.
Job ids are deterministic, so re-issuing owed work after a crash enqueues the same job
again rather than a second one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from commands.codec import CODEC
from engine.core import hosts, networks
from engine.core.joins import namespace_joins
from engine.core.netreact import net_jobs
from engine.core.state import Container, World
from events import model as e
from events.saga import StartPlan

__all__ = ["Job", "react", "resume", "start_plan"]

_JOBS = "workers.jobs"


class Job(NamedTuple):
    """One side effect to perform on the container's host (its queue: `host`, "" for
    single-host mode's default queue)."""

    func: str
    job_id: str
    kwargs: dict[str, Any]
    host: str = ""


def start_plan(world: World, ctr: Container) -> StartPlan:
    """Return everything the worker needs to start this generation (the steps still owed)."""
    image = world.images.get(ctr.image_id)
    network = world.networks.get(ctr.endpoint.network) if ctr.endpoint is not None else None
    if network is not None and ctr.host:  # the default network: the host's slice
        network = hosts.host_network(world, network, ctr.host)
    return StartPlan(container_id=ctr.id, generation=ctr.generation, name=ctr.name,
                     image_id=ctr.image_id, layers=image.layers if image is not None else (),
                     config=ctr.config, host_config=ctr.host_config, endpoint=ctr.endpoint,
                     network=network, steps=ctr.saga, joins=namespace_joins(world, ctr),
                     mounts=ctr.mounts, net=networks.net_plan(world, ctr))


def _start_job(world: World, ctr: Container) -> Job:
    return Job(f"{_JOBS}.start_container", f"start-{ctr.id}-{ctr.generation}",
               {"plan": CODEC.primitives(start_plan(world, ctr))})


def _signal_job(ctr: Container, ev: e.SignalRequested, version: int) -> Job:
    return Job(f"{_JOBS}.signal_container", f"signal-{ctr.id}-{version}",
               {"container_id": ctr.id, "generation": ev.generation, "signal": ev.signal,
                "timeout": ev.timeout, "purpose": ev.purpose})


def _teardown_job(ctr: Container, generation: int) -> Job:
    return Job(f"{_JOBS}.teardown_container", f"teardown-{ctr.id}-{generation}",
               {"container_id": ctr.id, "generation": generation,
                "ports": bool(ctr.host_config.port_bindings)})


def _remove_job(ctr: Container) -> Job:
    return Job(f"{_JOBS}.remove_container", f"remove-{ctr.id}",
               {"container_id": ctr.id, "generation": ctr.generation,
                "ports": bool(ctr.host_config.port_bindings)})


def react(world: World, record: e.EventRecord) -> list[Job]:
    """Return the jobs an event triggers, each on its host's queue; `world` is the state
    after the event."""
    jobs = _react(world, record)
    if not jobs or not world.hosts:
        return jobs  # single-host mode: every job on the default queue
    ctr = world.containers.get(record.meta.container_id)
    if ctr is not None:
        return _on_host(jobs, ctr.host)
    return _everywhere(world, jobs)


def _on_host(jobs: list[Job], host: str) -> list[Job]:
    return [job._replace(host=host) for job in jobs] if host else jobs


def _everywhere(world: World, jobs: list[Job]) -> list[Job]:
    """Engine-wide work (volumes, user networks) goes to every known host's queue, lost
    ones included (they do it when they return); job ids get the host, since rq's job
    keys are global."""
    return [job._replace(job_id=f"{job.job_id}@{host}", host=host)
            for host in sorted(world.hosts) for job in jobs]


def _react(world: World, record: e.EventRecord) -> list[Job]:
    event = record.event
    if isinstance(event, e.VolumeCreated | e.VolumeRemoved):
        # The directory is made at once (inspect's Mountpoint exists), and goes with it.
        verb = "create" if isinstance(event, e.VolumeCreated) else "remove"
        return [Job(f"{_JOBS}.{verb}_volume", f"volume-{verb}-{event.name}-{record.meta.at}",
                    {"name": event.name})]
    triples = net_jobs(world, record)
    if triples is not None:
        return [Job(*t) for t in triples]
    ctr = world.containers.get(record.meta.container_id)
    if ctr is None:
        return []
    if isinstance(event, e.StartInitiated):
        return [_start_job(world, ctr)]
    if isinstance(event, e.SignalRequested):
        return [_signal_job(ctr, event, record.meta.version)]
    if isinstance(event, e.ContainerDied):
        # A container dying on its way out is released by its removal job in one go.
        return [] if ctr.dead else [_teardown_job(ctr, event.generation)]
    if isinstance(event, e.ContainerMarkedDead):
        return [_remove_job(ctr)]
    if isinstance(event, e.FreezeRequested):
        return [Job(f"{_JOBS}.freeze_container", f"freeze-{ctr.id}-{record.meta.version}",
                    {"container_id": ctr.id, "generation": event.generation,
                     "frozen": event.frozen, "version": record.meta.version})]
    if isinstance(event, e.ContainerUpdated) and event.generation:
        return [Job(f"{_JOBS}.update_container", f"update-{ctr.id}-{record.meta.version}",
                    {"container_id": ctr.id, "generation": event.generation,
                     "version": record.meta.version})]
    if isinstance(event, e.ExecStarted):
        return [Job(f"{_JOBS}.start_exec", f"exec-{event.exec_id}",
                    {"container_id": ctr.id, "exec_id": event.exec_id,
                     "detach": event.detach})]
    return []


def resume(world: World) -> list[Job]:
    """Return the work owed by the state itself, re-issued at boot (same job ids)."""
    jobs: list[Job] = []
    for ctr in world.containers.values():
        if ctr.dead and ctr.removal_in_progress:
            jobs += _on_host([_remove_job(ctr)], ctr.host)
        elif ctr.saga:
            jobs += _on_host([_start_job(world, ctr)], ctr.host)
    return jobs
