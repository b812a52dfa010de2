"""Reconcile: compare the facts with this host and correct the drift.

Run at worker start and periodically. It reports exits nobody reported (the supervisor
died with its container), re-issues starts whose job was lost with a killed worker,
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
from engine.core.state import Container
from engine.outbox import JobOutbox
from engine.snapshot import load_world
from workers.context import HostContext
from workers.net import network, portmap
from workers.net.netconf import LEGACY
from workers.proc import process
from workers.saga import lost_exit, release_runtime
from workers.storage import rootfs

__all__ = ["reconcile"]

log = logging.getLogger("moorage.reconcile")


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


def reconcile(ctx: HostContext) -> list[dict[str, Any]]:
    """Correct this host against the facts; return the findings (also journaled)."""
    world, _ = load_world(ctx.redis, ctx.keys)
    findings: list[dict[str, Any]] = []
    known = set(world.containers)
    # The context's engine: the worker's own, or the one a caller (a test) reconciles.
    eid = engine_id(ctx.root, ctx.keys.prefix, ctx.keys.shard)
    sandboxes = set(network.list_sandboxes(eid))
    endpoints = set(network.list_endpoints(eid))
    ports = set(portmap.list_port_rules(eid))
    mounted = _mounted(ctx)  # under this engine's data root: its own
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

    for ctr in world.containers.values():
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

    # Starts and removals owed by the state (a killed worker lost their jobs).
    JobOutbox(ctx.redis, ctx.keys).enqueue(resume(world))
    return findings

