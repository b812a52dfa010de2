"""Reconcile: compare the facts with this host and correct the drift.

Run at worker start and periodically. First, after a host reboot (a new kernel boot id),
it has the engine restore every container as Docker's daemon does (`restore_after_boot`).
Then it reports exits nobody reported (the supervisor died with its container),
re-issues starts whose job was lost with a killed worker,
releases resources no live container owns, and records every finding in the journal
(ReportDrift), so the audit trail shows what the host disagreed about.

Only this engine's resources: their names carry its id (engine.config.engine_id), and
another engine's on the same host are never listed, so never released. Names an earlier
version made carry no id; those of containers this journal knows are its own (a container
id is unique), the rest may be another engine's live containers and are left alone.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from commands import schema as c
from engine.config import engine_id
from engine.core.react import resume
from engine.core.state import Container, World
from engine.errors import Timeout
from engine.outbox import JobOutbox
from engine.snapshot import load_world
from workers.context import HostContext
from workers.net import network, portmap
from workers.net.netconf import LEGACY
from workers.proc import process
from workers.saga import lost_exit, release_runtime
from workers.storage import rootfs

__all__ = ["BOOT_ID_FILE", "read_boot_id", "reconcile", "restore_after_boot"]

log = logging.getLogger("moorage.reconcile")

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
"""The kernel's id of this boot; `MOOR_BOOT_ID_FILE` names another file (a test, or the
chaos rig simulating a reboot by writing a new id into it)."""


def _state_dir(ctx: HostContext, cid: str) -> str:
    return os.path.join(ctx.container_dir(cid), "state")


def _mounted(ctx: HostContext) -> set[str]:
    base = os.path.join(os.path.realpath(ctx.root), "containers") + os.sep
    found = set()
    for entry in rootfs.mounts():
        if entry.fstype == "overlay" and entry.mount_point.startswith(base):
            found.add(entry.mount_point[len(base):].split(os.sep, 1)[0])
    return found


def _drift(ctx: HostContext, cid: str, ctr: Container | None, resource: str,
           detail: str, findings: list[dict[str, Any]]) -> None:
    generation = ctr.generation if ctr is not None else 0
    findings.append({"container": cid, "resource": resource, "detail": detail})
    log.warning("drift %s %s: %s", cid[:12], resource, detail)
    ctx.report(cid, c.ReportDrift(resource=resource, detail=detail, generation=generation),
               f"drift-{cid}-{resource}-{time.time_ns()}")


def _process_owed(ctr: Container) -> bool:
    """Tell whether the facts say a process runs: running, with a pid, no start in flight.

    A restart back-off (`restarting`, no pid) has no process by design, and a start in
    flight belongs to its job (re-issued by resume if the job was lost).
    """
    return ctr.running and not ctr.saga and not ctr.restarting and ctr.pid > 0


def read_boot_id(path: str | None = None) -> str:
    """Return this host's boot id ("" when it cannot be read: no restore is attempted)."""
    try:
        with open(path or os.environ.get("MOOR_BOOT_ID_FILE") or BOOT_ID_FILE) as f:
            return f.read().strip()
    except OSError as exc:
        log.warning("cannot read the boot id: %s", exc)
        return ""


def _restore_command(ctx: HostContext, ctr: Container, boot_id: str) -> c.RestoreContainer:
    """Return a container's restore, with the exit its supervisor saved if its run died."""
    if _process_owed(ctr):
        status = lost_exit(_state_dir(ctx, ctr.id), ctr.pid, ctr.generation)
        return c.RestoreContainer(boot_id=boot_id, generation=ctr.generation,
                                  exit_code=status.exit_code,
                                  finished_at=status.finished_at_ns,
                                  oom_killed=status.oom_killed, pid=status.pid)
    return c.RestoreContainer(boot_id=boot_id, generation=ctr.generation)


def _await(ctx: HostContext, command_id: str) -> None:
    """Wait for a command's result, however long the reducer takes to come up."""
    client = ctx.client
    while True:
        try:
            client.wait_result(command_id)
            return
        except Timeout:
            log.warning("no result yet for %s; still waiting for the reducer", command_id)


def restore_after_boot(ctx: HostContext, world: World, boot_id_file: str | None = None
                       ) -> bool:
    """After a host reboot, have the engine restore every container (Docker's §5.4).

    A boot id other than the recorded one means every process, mount and namespace of
    the last boot is gone: one `RestoreContainer` per container (Dead ones wait for a
    user rm), then `ReportHostBooted`, which records the boot. Ids are deterministic, so
    a worker killed half-way repeats the same commands and the reducer drops what it
    decided already. With no boot recorded (the engine's first start on this host), the
    boot is only recorded. Return whether anything was appended.
    """
    boot_id = read_boot_id(boot_id_file)
    if not boot_id or boot_id == world.host_boot_id:
        return False
    client = ctx.client
    pending = []
    if world.host_boot_id:
        log.warning("the host rebooted (boot %s, last %s): restoring %d containers",
                    boot_id, world.host_boot_id, len(world.containers))
        for ctr in world.containers.values():
            if ctr.dead:
                continue
            pending.append(client.send(_restore_command(ctx, ctr, boot_id),
                                       container_id=ctr.id, reply=True,
                                       command_id=c.restore_command_id(boot_id, ctr.id)))
    for command_id in pending:
        _await(ctx, command_id)
    _await(ctx, client.send(c.ReportHostBooted(boot_id=boot_id), command_id=f"boot-{boot_id}",
                            reply=True))
    return True


def _release_removed_dirs(ctx: HostContext, destroyed: set[str]) -> None:
    """Delete the directories of containers removed while this host was lost (its removal
    job could not run): the tombstones say they are gone for good."""
    base = os.path.join(ctx.root, "containers")
    try:
        entries = os.listdir(base)
    except FileNotFoundError:
        return
    for cid in sorted(set(entries) & destroyed):
        try:
            rootfs.release_rw_layer(ctx.root, cid)
        except Exception as exc:  # a mount left inside: the next reconcile tries again
            log.warning("directory of removed container %s kept: %s", cid[:12], exc)


def reconcile(ctx: HostContext, boot_id_file: str | None = None) -> list[dict[str, Any]]:
    """Correct this host against the facts; return the findings (also journaled).

    A host (ctx.host_id) looks after the containers placed on it alone; what it holds for
    a container the facts no longer have (removed while the host was lost) is an orphan.
    """
    world, _ = load_world(ctx.redis, ctx.keys)
    # Per-host boot ids are not recorded yet: a host's reboot is not restored (0017).
    if not ctx.host_id and restore_after_boot(ctx, world, boot_id_file):
        world, _ = load_world(ctx.redis, ctx.keys)  # restored: exited, starting or removed
    findings: list[dict[str, Any]] = []
    mine = {cid: ctr for cid, ctr in world.containers.items() if ctr.host == ctx.host_id}
    known = set(mine)
    # The context's engine: the worker's own, or the one a caller (a test) reconciles.
    eid = engine_id(ctx.root, ctx.keys.prefix, ctx.keys.shard, ctx.host_id)
    sandboxes = set(network.list_sandboxes(eid))
    endpoints = set(network.list_endpoints(eid))
    ports = set(portmap.list_port_rules(eid))
    # Under this host's data root: its own, unless another host shares the root (then the
    # facts say whose a container is).
    mounted = _mounted(ctx) - (set(world.containers) - known)
    orphans = (sandboxes | endpoints | ports | mounted) - known
    unnamed = {"netns": set(network.list_sandboxes(LEGACY)),
               "veth": set(network.list_endpoints(LEGACY)),
               "ports": set(portmap.list_port_rules(LEGACY))}
    sandboxes |= unnamed["netns"] & known
    endpoints |= unnamed["veth"] & known
    ports |= unnamed["ports"] & known
    if strangers := set().union(*unnamed.values()) - known:
        log.info("left alone: resources named before engine ids, of %d containers this "
                 "journal does not know (%s)", len(strangers),
                 ", ".join(sorted(cid[:12] for cid in strangers)))

    for ctr in mine.values():
        cid = ctr.id
        state_dir = _state_dir(ctx, cid)
        if _process_owed(ctr) and not process.is_alive(state_dir):
            # The exit of the process the facts name (its pid), under that process's id:
            # the same id as its supervisor's report, so a repeat is dropped, and never
            # another run's exit taken for it.
            status = lost_exit(state_dir, ctr.pid, ctr.generation)
            ctx.report_exit(cid, ctr.generation, status)
            _drift(ctx, cid, ctr, "process", f"exit not reported; reported {status.exit_code}",
                   findings)
            continue
        live = ctr.running or bool(ctr.saga)
        # A back-off has no sandbox by design (torn down at the exit, made at the start).
        if _process_owed(ctr) and ctr.host_config.network_mode == "bridge" \
                and cid not in sandboxes:
            _drift(ctx, cid, ctr, "netns", "sandbox missing while running", findings)
        if not live:
            for what, present in (("netns", cid in sandboxes), ("veth", cid in endpoints),
                                  ("ports", cid in ports), ("mount", cid in mounted)):
                if present:
                    _drift(ctx, cid, ctr, what, "held by a stopped container; released",
                           findings)
            if cid in sandboxes or cid in endpoints or cid in ports or cid in mounted:
                release_runtime(ctx, cid)

    for cid in sorted(orphans):
        _drift(ctx, cid, None, "orphan", "resources of no known container; released",
               findings)
        release_runtime(ctx, cid)
    if ctx.host_id:
        _release_removed_dirs(ctx, world.destroyed)

    # Starts and removals owed by the state (a killed worker lost their jobs).
    JobOutbox(ctx.redis, ctx.keys).enqueue([job for job in resume(world)
                                            if job.host == ctx.host_id])
    return findings

