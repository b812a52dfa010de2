"""The host side of the lifecycle: the start saga, signals, teardown and removal.

Every step is an ensure/release pair named from the container id, so a retried job
redoes nothing twice and undoing is always safe. A start reports each step as it
completes; on failure it undoes what it did, in reverse, and reports the failed step.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from commands import schema as c
from engine.core.state import saga_steps
from engine.errors import MoorError
from events.specs import ContainerConfig, HostConfig, NetworkSpec
from workers.context import HostContext
from workers.net import network, portmap
from workers.net.hostfiles import write_hostfiles
from workers.net.netconf import BridgeConfig, from_port_bindings
from workers.proc import supervisor
from workers.storage import images, rootfs

__all__ = ["forget_bridges", "release_runtime", "remove", "signal", "start", "teardown"]

log = logging.getLogger("moorage.worker")


def _paths(ctx: HostContext, cid: str) -> tuple[str, str, str]:
    cdir = ctx.container_dir(cid)
    return cdir, os.path.join(cdir, "state"), os.path.join(cdir, f"{cid}-json.log")


def _limits(host: HostConfig) -> supervisor.Limits:
    return supervisor.Limits(memory=host.memory or None, pids=host.pids_limit or None,
                             nano_cpus=host.nano_cpus or None)


class _Undo:
    """A stack of compensations, run in reverse when a step fails."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def push(self, name: str, fn: Callable[[], None]) -> None:
        self._steps.append((name, fn))

    def run(self) -> None:
        for name, fn in reversed(self._steps):
            try:
                fn()
            except Exception:  # keep undoing: one leak must not cause more
                log.exception("undo of %s failed", name)


# Ensuring the bridge and the chains costs ~15 ms (netlink dumps, iptables-save/restore):
# more than the endpoint itself. Once ensured they are trusted for a while; a bridge that
# vanished or went down meanwhile is noticed by ensure_endpoint (BridgeMissing) and
# re-ensured at once, other drift (addresses, rules) within _BRIDGE_RECHECK seconds or at
# the worker's next idle reconcile (forget_bridges).
_BRIDGE_RECHECK = 30.0
_BRIDGES_READY: dict[BridgeConfig, float] = {}


def _ensure_bridge_once(cfg: BridgeConfig, force: bool = False) -> None:
    """Ensure the bridge and moorage's chains unless done in the last _BRIDGE_RECHECK s."""
    checked = _BRIDGES_READY.get(cfg)
    if force or checked is None or time.monotonic() - checked > _BRIDGE_RECHECK:
        _BRIDGES_READY.pop(cfg, None)
        network.ensure_bridge(cfg)
        portmap.ensure_chains(cfg)
        _BRIDGES_READY[cfg] = time.monotonic()


def forget_bridges() -> None:
    """Make the next start ensure its bridge and chains in full (after a reconcile)."""
    _BRIDGES_READY.clear()


def start(ctx: HostContext, plan: dict[str, Any]) -> None:
    """Run the start saga for one generation, reporting each step still owed.

    Every resource the network mode needs is ensured, not only those of the steps still
    owed: a start re-issued after a killed worker owes only the later steps, yet its
    process must still join the sandbox and find its endpoint. Ensuring is idempotent,
    and a step already reported is not reported again.
    """
    cid, gen = plan["container_id"], plan["generation"]
    current = ctx.container(cid)
    if current is None or current.generation != gen or not current.saga:
        log.info("start %s gen %s is no longer owed; skipped", cid[:12], gen)
        return
    owed = set(plan["steps"])
    # The plan travels as primitives; typed again here, once.
    config = msgspec.convert(plan["config"], ContainerConfig)
    host = msgspec.convert(plan["host_config"], HostConfig)
    steps = saga_steps(host.network_mode)
    cdir, state_dir, log_path = _paths(ctx, cid)
    undo = _Undo()

    def report(name: str, cmd: c.Command, command_id: str) -> None:
        if name in owed:
            ctx.report(cid, cmd, command_id)

    step = "mount"
    try:
        lowers = images.dirs_of_layers(ctx.root, plan["layers"])
        rootfs.ensure_rw_layer(ctx.root, cid)
        merged = rootfs.ensure_mounted(ctx.root, cid, lowers)
        undo.push("mount", lambda: rootfs.release_mount(ctx.root, cid))
        report("mount", c.ReportMounted(generation=gen, rootfs=merged), f"mount-{cid}-{gen}")

        netns: str | None = None
        ip: str | None = None
        if "sandbox" in steps:
            step = "sandbox"
            netns = network.ensure_sandbox(cid)
            undo.push("sandbox", lambda: network.release_sandbox(cid))
            report("sandbox", c.ReportSandbox(generation=gen, sandbox_key=netns),
                   f"sandbox-{cid}-{gen}")
        if "endpoint" in steps:
            step = "endpoint"
            endpoint = plan["endpoint"]
            cfg = BridgeConfig.from_network_spec(NetworkSpec(**plan["network"]))
            _ensure_bridge_once(cfg)
            args = (cid, cfg, endpoint["ip_address"], endpoint["prefix_len"],
                    endpoint["gateway"], endpoint.get("mac_address") or None)
            try:
                info = network.ensure_endpoint(*args)
            except network.BridgeMissing:  # gone or down since it was last ensured
                _ensure_bridge_once(cfg, force=True)
                info = network.ensure_endpoint(*args)
            undo.push("endpoint", lambda: network.release_endpoint(cid))
            ip = info.ip_address
            bindings = from_port_bindings(host.port_bindings)
            if bindings:
                portmap.ensure_ports(cid, ip, bindings, cfg)
                undo.push("ports", lambda: portmap.release_ports(cid))
            report("endpoint", c.ReportEndpoint(generation=gen, endpoint_id=info.veth),
                   f"endpoint-{cid}-{gen}")

        step = "spawn"
        files = write_hostfiles(cdir, cid, ip, config.hostname)
        mounts = (supervisor.BindMount(source=files.hosts, target="/etc/hosts"),
                  supervisor.BindMount(source=files.hostname, target="/etc/hostname"),
                  supervisor.BindMount(source=files.resolv_conf, target="/etc/resolv.conf"))
        spec = supervisor.ProcessSpec(
            container_id=cid, rootfs=merged,
            argv=(*(config.entrypoint or ()), *(config.cmd or ())), state_dir=state_dir,
            log_path=log_path, env=config.env, working_dir=config.working_dir or "/",
            user=config.user, hostname=config.hostname or cid[:12], netns=netns,
            limits=_limits(host), mounts=mounts,
            report=supervisor.Report(redis_url=ctx.redis_url, stream=ctx.keys.commands,
                                     exit_field="", encoding="msgpack",
                                     templates=ctx.exit_report_templates(cid, gen)))
        result = supervisor.spawn(spec)
        ctx.report(cid, c.ReportProcessStarted(generation=gen, pid=result.pid,
                                               started_at=result.started_at_ns),
                   f"started-{cid}-{gen}")
    except Exception as exc:
        undo.run()
        code = getattr(exc, "container_exit_code", None) or 128
        message = exc.message if isinstance(exc, MoorError) else f"{type(exc).__name__}: {exc}"
        log.warning("start %s gen %s failed at %s: %s", cid[:12], gen, step, message)
        ctx.report(cid, c.ReportStepFailed(generation=gen, step=step, error=message,
                                           exit_code=code), f"failed-{cid}-{gen}")


def signal(ctx: HostContext, cid: str, generation: int, sig: int, timeout: int | None,
           purpose: str) -> None:
    """Deliver a signal; a stop hands its SIGKILL escalation to the supervisor."""
    from workers.proc import process

    _, state_dir, _ = _paths(ctx, cid)
    if purpose in ("stop", "restart"):
        process.request_stop(state_dir, sig, -1 if timeout is None else timeout)
    else:
        process.signal_container(state_dir, sig)


def teardown(ctx: HostContext, cid: str, generation: int, ports: bool = True) -> None:
    """Release the network and the mount after an exit (the RW layer stays)."""
    # Runs before the next generation's start: one queue per host, first in first out.
    release_runtime(ctx, cid, ports)


def release_runtime(ctx: HostContext, cid: str, ports: bool = True,
                    reuse: bool = True) -> None:
    """Release a container's ports, endpoint, sandbox and mount (each: gone = success).

    `ports=False` skips reading the iptables rules of a container that published none;
    `reuse=False` (removal) lets the kernel delete the veth with the namespace.
    """
    if ports:
        portmap.release_ports(cid)
    if reuse:
        network.release_endpoint(cid)
    network.release_sandbox(cid, reuse=reuse)
    rootfs.release_mount(ctx.root, cid)


def remove(ctx: HostContext, cid: str, generation: int, ports: bool = True) -> None:
    """Delete everything the container had on this host, then report it removed."""
    try:
        release_runtime(ctx, cid, ports, reuse=False)
        rootfs.release_rw_layer(ctx.root, cid)
        shutil.rmtree(ctx.container_dir(cid), ignore_errors=True)
    except Exception as exc:
        message = exc.message if isinstance(exc, MoorError) else str(exc)
        ctx.report(cid, c.ReportStepFailed(generation=generation, step="remove",
                                           error=message), uuid.uuid4().hex)
        return
    ctx.report(cid, c.ReportRemoved(generation=generation), f"removed-{cid}-{generation}")
