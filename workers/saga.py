"""The host side of the lifecycle: the start saga, signals, teardown and removal.

Every step is an ensure/release pair named from the container id, so a retried job
redoes nothing twice and undoing is always safe. A start performs the steps in the
saga's order (`events.saga`), reports each as it completes; on failure it undoes what
it did, in reverse, and reports the failed step.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any

from commands import schema as c
from engine.config import engine_id
from engine.errors import Internal, MoorError
from events.caps import capability_mask, effective_caps, no_new_privileges
from events.hostopts import DEFAULT_SYSCTLS
from events.logopts import log_attrs, rotation
from events.runs import ExitStatus
from events.saga import ENDPOINT, MOUNT, REMOVE, SANDBOX, SPAWN, StartPlan, saga_steps
from events.specs import ContainerConfig, HostConfig
from workers import interactive
from workers.context import HostContext
from workers.net import dnsctl, netfiles, network, portmap, usernet
from workers.net.hostfiles import write_hostfiles
from workers.net.netconf import BridgeConfig, from_port_bindings
from workers.proc import cgroups, process, seccomp, shm
from workers.proc.init import SpawnError
from workers.proc.spawn import RunFinished, spawn
from workers.proc.spec import BindMount, ProcessSpec, limits_for
from workers.storage import images, rootfs, volumes

__all__ = ["forget_bridges", "lost_exit", "release_runtime", "remove", "signal", "start",
           "teardown"]

log = logging.getLogger("moorage.worker")


def _paths(ctx: HostContext, cid: str) -> tuple[str, str, str]:
    cdir = ctx.container_dir(cid)
    return cdir, os.path.join(cdir, "state"), os.path.join(cdir, f"{cid}-json.log")


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


class _Start:
    """One start in progress: its plan, what its steps produced, and how to undo them."""

    def __init__(self, ctx: HostContext, plan: StartPlan) -> None:
        self.ctx = ctx
        self.plan = plan
        self.cid = plan.container_id
        self.gen = plan.generation
        self.undo = _Undo()
        self.rootfs = ""  # the merged overlay, once mounted
        self.netns: str | None = None  # the sandbox; None keeps the host's network
        self.ip: str | None = None  # the endpoint's address
        self.finished: ExitStatus | None = None  # set when this generation already ran
        self.binds: tuple[BindMount, ...] = ()  # the plan's binds and volumes, readied
        self.tmpfs: tuple[tuple[str, str], ...] = ()  # the plan's `--mount type=tmpfs`


def _mount(run: _Start) -> tuple[c.SagaReport, str]:
    """Mount the overlay rootfs: the container's RW layer over the image's layers."""
    ctx, cid = run.ctx, run.cid
    lowers = images.dirs_of_layers(ctx.root, run.plan.layers)
    rootfs.ensure_rw_layer(ctx.root, cid)
    run.rootfs = rootfs.ensure_mounted(ctx.root, cid, lowers)
    run.undo.push(MOUNT, lambda: rootfs.release_mount(ctx.root, cid))
    # Volumes are readied here, so their `mount` events precede `network connect`.
    run.binds, run.tmpfs = volumes.prepare_mounts(ctx.root, run.rootfs, run.plan.mounts)
    return c.ReportMounted(generation=run.gen, rootfs=run.rootfs), f"mount-{cid}-{run.gen}"


def _sandbox(run: _Start) -> tuple[c.SagaReport, str]:
    """Create the container's network namespace."""
    cid = run.cid
    run.netns = network.ensure_sandbox(cid)
    run.undo.push(SANDBOX, lambda: network.release_sandbox(cid))
    return (c.ReportSandbox(generation=run.gen, sandbox_key=run.netns),
            f"sandbox-{cid}-{run.gen}")


def _endpoint(run: _Start) -> tuple[c.SagaReport, str]:
    """Connect the sandbox to its bridge (veth, address, routes) and publish its ports."""
    cid, endpoint, spec = run.cid, run.plan.endpoint, run.plan.network
    if endpoint is None or spec is None:
        raise Internal(f"the start plan of container {cid} has no endpoint to connect")
    cfg = BridgeConfig.from_network_spec(spec)
    _ensure_bridge_once(cfg)
    args = (cid, cfg, endpoint.ip_address, endpoint.prefix_len, endpoint.gateway,
            endpoint.mac_address or None)
    try:
        info = network.ensure_endpoint(*args)
    except network.BridgeMissing:  # gone or down since it was last ensured
        _ensure_bridge_once(cfg, force=True)
        info = network.ensure_endpoint(*args)
    run.undo.push(ENDPOINT, lambda: network.release_endpoint(cid))
    run.ip = info.ip_address
    bindings = from_port_bindings(run.plan.host_config.port_bindings)
    if bindings:
        portmap.ensure_ports(cid, run.ip, bindings, cfg)
        run.undo.push("ports", lambda: portmap.release_ports(cid))
    return (c.ReportEndpoint(generation=run.gen, endpoint_id=info.veth),
            f"endpoint-{cid}-{run.gen}")


def _namespace(plan: StartPlan, kind: str, mode: str) -> str:
    """A ProcessSpec namespace field: "" new, "host", or the donor's namespace file."""
    if not mode.startswith("container:"):
        return "host" if mode == "host" else ""
    donor = plan.joins.get(kind)
    if donor is None or not donor.pid:
        raise SpawnError(128, f"cannot join the {kind.upper()} namespace of {mode[10:]}: "
                              "it is not running")
    return f"/proc/{donor.pid}/ns/{kind}"


def _shm(ctx: HostContext, plan: StartPlan, undo: _Undo) -> str:
    """The container's /dev/shm: private, none, the host's, or a shareable one on the host."""
    mode = plan.host_config.ipc_mode
    if mode == "host":
        return "/dev/shm"
    if mode == "none":
        return "none"
    if mode == "shareable":
        cdir = ctx.container_dir(plan.container_id)
        undo.push("shm", lambda: shm.release_shm(cdir))
        return shm.ensure_shm(cdir, plan.host_config.shm_size)
    donor = plan.joins.get("ipc")
    if donor is not None and donor.container_id:
        return shm.shm_path(ctx.container_dir(donor.container_id))
    return ""


def _seccomp(ctx: HostContext, host: HostConfig, caps: int) -> seccomp.Program | None:
    """The container's compiled filter (None: unconfined), from the per-host cache."""
    try:
        return seccomp.program_for(host.security_opt, host.privileged, caps,
                                   os.path.join(ctx.root, "seccomp"))
    except ValueError as e:  # a bad profile fails the start, as Docker's spec generation does
        raise SpawnError(128, str(e)) from None


def _sharing(run: _Start) -> dict[str, Any]:
    """The ProcessSpec fields for what the container shares with the host or another one."""
    plan = run.plan
    host = plan.host_config
    sysctls = dict(DEFAULT_SYSCTLS) if run.netns is not None else {}
    sysctls.update(host.sysctls)  # the user's win
    return {
        "privileged": host.privileged, "devices": host.devices,
        "device_rules": host.device_cgroup_rules, "group_add": host.group_add,
        "tmpfs": (*host.tmpfs.items(), *run.tmpfs), "sysctls": tuple(sysctls.items()),
        "pid_ns": _namespace(plan, "pid", host.pid_mode),
        "ipc_ns": _namespace(plan, "ipc", host.ipc_mode), "shm": _shm(run.ctx, plan, run.undo),
        "uts_host": host.uts_mode == "host",
        "cgroupns_private": host.cgroupns_mode == "private", "init": host.init,
        "ulimits": host.ulimits, "shm_size": host.shm_size,
    }


def _log_options(config: ContainerConfig, host: HostConfig) -> dict[str, Any]:
    """Map LogConfig onto the supervisor's writer (checked at create, so it parses)."""
    log = host.log_config
    max_size, max_file = rotation(log.config)
    return {"log_discard": log.type == "none", "log_max_size": max_size,
            "log_max_file": max_file, "log_attrs": log_attrs(log, config.labels, config.env)}


def _shared_netns(plan: StartPlan) -> str | None:
    """`--network container:<x>`: x's namespace (None keeps the host's, for host mode)."""
    if plan.net is not None and plan.net.shared_from:
        return network.netns_path(plan.net.shared_from)
    if plan.host_config.network_mode.startswith("container:"):
        raise SpawnError(128, "cannot join the network namespace of "
                              f"{plan.host_config.network_mode[10:]}: it is not running")
    return None


def _spawn(run: _Start) -> tuple[c.SagaReport, str]:
    """Write the container's host files and start its process under a supervisor."""
    ctx, cid, config, host = run.ctx, run.cid, run.plan.config, run.plan.host_config
    cdir, state_dir, log_path = _paths(ctx, cid)
    # --uts host: the host's name, as the container sees it anyway.
    hostname = os.uname().nodename if host.uts_mode == "host" else config.hostname or cid[:12]
    if run.plan.net is not None and run.plan.net.shared_hostname:
        hostname = run.plan.net.shared_hostname  # --network container:<x>: x's, as Docker
    files = write_hostfiles(cdir, cid, run.ip, hostname)
    link_env = netfiles.prepare(ctx.root, ctx.redis_url, ctx.keys.prefix, run.plan, files,
                                run.netns, run.ip, hostname)
    ro = host.readonly_rootfs  # Docker: with --read-only these bind mounts are read-only too
    mounts = (BindMount(source=files.hosts, target="/etc/hosts", readonly=ro),
              BindMount(source=files.hostname, target="/etc/hostname", readonly=ro),
              BindMount(source=files.resolv_conf, target="/etc/resolv.conf", readonly=ro),
              *run.binds)
    caps = capability_mask(effective_caps(host.cap_add, host.cap_drop, host.privileged))
    spec = ProcessSpec(
        container_id=cid, rootfs=run.rootfs,
        argv=(*(config.entrypoint or ()), *(config.cmd or ())), state_dir=state_dir,
        log_path=log_path, env=(*link_env, *config.env),
        working_dir=config.working_dir or "/",
        user=config.user, hostname=hostname, netns=run.netns or _shared_netns(run.plan),
        limits=limits_for(host), mounts=mounts,
        report=ctx.exit_report(cid, run.gen), generation=run.gen,
        capabilities=caps, no_new_privs=no_new_privileges(host.security_opt),
        readonly_rootfs=host.readonly_rootfs, seccomp=_seccomp(ctx, host, caps),
        tty=config.tty, open_stdin=config.open_stdin, stdin_once=config.stdin_once,
        attach_socket=interactive.attach_socket(engine_id(ctx.root, ctx.keys.prefix), cid,
                                                config),
        **_log_options(config, host), **_sharing(run))
    try:
        result = spawn(spec)
    except RunFinished as done:
        # A repeated start job of a generation that already ran: its process started and
        # ended. Report both (repeats are dropped by id); never run it a second time.
        run.finished = done.status
        return (c.ReportProcessStarted(generation=run.gen, pid=done.status.pid,
                                       started_at=done.status.started_at_ns),
                f"started-{cid}-{run.gen}")
    return (c.ReportProcessStarted(generation=run.gen, pid=result.pid,
                                   started_at=result.started_at_ns),
            f"started-{cid}-{run.gen}")


# How each step is performed; the order is the saga's (events.saga.saga_steps).
_STEPS: dict[str, Callable[[_Start], tuple[c.SagaReport, str]]] = {
    MOUNT: _mount,
    SANDBOX: _sandbox,
    ENDPOINT: _endpoint,
    SPAWN: _spawn,
}


def start(ctx: HostContext, plan: StartPlan) -> None:
    """Run the start saga for one generation, reporting each step still owed.

    Every step of the network mode is performed, not only those still owed: a start
    re-issued after a killed worker owes only the later steps, yet its process must still
    join the sandbox and find its endpoint. Ensuring is idempotent, and a step already
    reported is not reported again.
    """
    cid, gen = plan.container_id, plan.generation
    current = ctx.container(cid)
    if current is None or current.generation != gen or not current.saga:
        log.info("start %s gen %s is no longer owed; skipped", cid[:12], gen)
        return
    run = _Start(ctx, plan)
    for step in saga_steps(plan.host_config.network_mode):
        try:
            report, command_id = _STEPS[step](run)
        except Exception as exc:
            run.undo.run()
            code = getattr(exc, "container_exit_code", None) or 128
            message = (exc.message if isinstance(exc, MoorError)
                       else f"{type(exc).__name__}: {exc}")
            log.warning("start %s gen %s failed at %s: %s", cid[:12], gen, step, message)
            _report(ctx, cid, c.ReportStepFailed(generation=gen, step=step, error=message,
                                                 exit_code=code), f"failed-{cid}-{gen}")
            return
        # A report that cannot be sent undoes nothing: the step did happen, and a live
        # process may already stand on it. The job fails instead; the start is re-issued
        # (resume, reconcile) and finds every step done.
        if step in plan.steps:
            _report(ctx, cid, report, command_id)
    if run.finished is not None:
        ctx.report_exit(cid, gen, run.finished)


_REPORT_TRIES = (0.05, 0.2, 0.5, 1.0, 2.0)


def _report(ctx: HostContext, cid: str, report: c.Command, command_id: str) -> None:
    """Report, retrying a failing Redis for a few seconds; then raise (the job fails)."""
    for delay in (*_REPORT_TRIES, None):
        try:
            ctx.report(cid, report, command_id)
            return
        except MoorError as exc:  # Unavailable: the client's translation of Redis errors
            if delay is None:
                raise
            log.warning("report %s of %s failed (%s); retrying", command_id, cid[:12],
                        exc.message)
            time.sleep(delay)


def signal(ctx: HostContext, cid: str, generation: int, sig: int, timeout: int | None,
           purpose: str) -> None:
    """Deliver a signal; a stop hands its SIGKILL escalation to the supervisor.

    Only to the run it was decided for: a signal job of an older generation (a re-drained
    outbox, a late retry) must never reach the next run. When the run it was meant for
    is already dead and its exit never reached the engine (its supervisor died with it),
    the exit is reported here, so a stop or `rm -f` completes instead of waiting forever.
    """
    ctr = ctx.container(cid)
    if ctr is None or ctr.generation != generation or not (ctr.running or ctr.starting):
        log.info("signal %s to %s gen %s is no longer current; skipped", sig, cid[:12],
                 generation)
        return
    _, state_dir, _ = _paths(ctx, cid)
    if purpose in ("stop", "restart"):
        delivered = process.request_stop(state_dir, sig, -1 if timeout is None else timeout)
    else:
        delivered = process.signal_container(state_dir, sig)
    if not delivered and ctr.running and ctr.pid and not process.is_alive(state_dir):
        ctx.report_exit(cid, generation, lost_exit(state_dir, ctr.pid, generation))
    elif ctr.paused or ctr.freezing:  # a frozen process only sees its signal once thawed
        interactive.thaw_for_signal(ctx, ctr, f"thawed-{cid}-{generation}-{sig}-{purpose}")


def lost_exit(state_dir: str, pid: int, generation: int) -> ExitStatus:
    """Return the exit of a run that died unreported: its recorded status, else Docker's 255."""
    status = process.read_exit(state_dir)
    if status is not None and status.pid == pid:
        return status
    return ExitStatus(exit_code=process.UNKNOWN_EXIT, pid=pid, finished_at_ns=time.time_ns(),
                      generation=generation)


def teardown(ctx: HostContext, cid: str, generation: int, ports: bool = True) -> None:
    """Release the network and the mount after an exit (the RW layer stays).

    Only while that exit is still the container's latest fact: once a later generation
    started (its start ensures the same resources), a duplicate of this job would pull
    them from under the live process.
    """
    ctr = ctx.container(cid)
    if ctr is None or ctr.generation != generation or ctr.running or ctr.starting:
        log.info("teardown of %s gen %s is no longer current; skipped", cid[:12], generation)
        return
    release_runtime(ctx, cid, ports)


def release_runtime(ctx: HostContext, cid: str, ports: bool = True,
                    reuse: bool = True) -> None:
    """Release a container's ports, endpoint, sandbox, mount and cgroup (gone = success).

    The supervisor frees the cgroup when its process exits; a supervisor killed with its
    container cannot, so the release is repeated here.

    `ports=False` skips reading the iptables rules of a container that published none;
    `reuse=False` (removal) lets the kernel delete the veth with the namespace.
    """
    if ports:
        portmap.release_ports(cid)
    if reuse:
        network.release_endpoint(cid)
    dnsctl.drop(ctx.root, cid)  # its listeners hold the namespace: close them first
    usernet.release_extra_endpoints(ctx.container_dir(cid))
    network.release_sandbox(cid, reuse=reuse)
    rootfs.release_mount(ctx.root, cid)
    shm.release_shm(ctx.container_dir(cid))
    cgroups.release_cgroup(cid)


def remove(ctx: HostContext, cid: str, generation: int, ports: bool = True) -> None:
    """Delete everything the container had on this host, then report it removed."""
    ctr = ctx.container(cid)
    if ctr is None or not (ctr.dead and ctr.removal_in_progress):
        log.info("removal of %s is no longer owed; skipped", cid[:12])
        return
    try:
        release_runtime(ctx, cid, ports, reuse=False)
        rootfs.release_rw_layer(ctx.root, cid)
        shutil.rmtree(ctx.container_dir(cid), ignore_errors=True)
    except Exception as exc:
        message = exc.message if isinstance(exc, MoorError) else str(exc)
        ctx.report(cid, c.ReportStepFailed(generation=generation, step=REMOVE,
                                           error=message), uuid.uuid4().hex)
        return
    ctx.report(cid, c.ReportRemoved(generation=generation), f"removed-{cid}-{generation}")
