"""Start a container process under a detached per-container supervisor: the caller's side.

``spawn`` forks the supervisor (``workers.proc.supervisor``, which draws the process
tree), waits for its one reply and returns the running process, or raises
``SpawnError``. It is idempotent: a live run in the state dir is returned as is, and a
finished one must have recorded its exit before the next run starts. A spec naming its
generation runs at most once per generation: a repeated start of a generation whose run
already ended raises ``RunFinished`` with that run's exit instead of running it again.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import time

from commands.codec import CODEC
from events.hostopts import MASKED_PATHS, READONLY_PATHS, device_rules, tmpfs_options
from events.runs import ExitStatus, SpawnFailure, SpawnResult
from workers import nsutil
from workers.proc import cgroups, init, process, zygote
from workers.proc.devices import host_devices, resolve_devices
from workers.proc.init import SpawnError
from workers.proc.spec import ProcessSpec
from workers.proc.supervisor import supervise

__all__ = ["RunFinished", "SpawnError", "SpawnResult", "spawn"]


class RunFinished(Exception):
    """This generation already ran, and its run has ended: here is how."""

    def __init__(self, status: ExitStatus) -> None:
        super().__init__(f"generation {status.generation} already ran (pid {status.pid})")
        self.status = status


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _running(state_dir: str) -> SpawnResult | None:
    """Describe the run already going on in state_dir, if any."""
    ref = process.read_pid_file(os.path.join(state_dir, process.PID_FILE))
    sup = process.read_pid_file(os.path.join(state_dir, process.SUPERVISOR_PID_FILE))
    if ref is None or sup is None or not process.is_alive(state_dir) \
            or not process.supervisor_alive(state_dir):
        return None
    return SpawnResult(pid=ref.pid, supervisor_pid=sup.pid, started_at_ns=ref.started_at_ns)


def _await_previous(state_dir: str, timeout: float = 5.0) -> SpawnResult | None:
    """Return the live run in state_dir, or wait until a finished one has recorded its exit.

    The previous supervisor frees the cgroup before writing exit.json; starting
    earlier would let it kill the new process.
    """
    deadline = time.monotonic() + timeout
    while (running := _running(state_dir)) is None and process.supervisor_alive(state_dir) \
            and process.read_exit(state_dir) is None:
        if time.monotonic() > deadline:
            raise SpawnError(128, f"the previous supervisor of {state_dir} has not recorded "
                                  "its exit yet")
        time.sleep(0.005)
    return running


def _warn(message: str) -> None:
    """Say something in the worker's log."""
    import logging

    logging.getLogger("moorage.worker").warning("%s", message)


def _kill_supervisor(state_dir: str) -> None:
    """SIGKILL a hung supervisor; its container follows through PDEATHSIG."""
    ref = process.read_pid_file(os.path.join(state_dir, process.SUPERVISOR_PID_FILE))
    if ref is not None and process.supervisor_alive(state_dir):
        os.kill(ref.pid, signal.SIGKILL)


# Where `--init` finds its init on the host, best first: a static tini runs in any image.
_INIT_BINARIES = ("/usr/bin/tini-static", "/usr/bin/docker-init", "/usr/libexec/docker/docker-init")
INIT_TARGET = "/sbin/docker-init"  # where Docker puts it in the container


def _init_binary() -> str:
    for path in _INIT_BINARIES:
        if os.access(path, os.X_OK):
            return path
    raise SpawnError(128, 'exec: "docker-init": executable file not found in $PATH '
                          "(--init needs Debian's tini package: apt-get install tini)")


def _plan(spec: ProcessSpec) -> tuple[tuple[str, ...], init.InitPlan]:
    """Resolve everything C needs that can be resolved before forking, and the devices
    cgroup rules."""
    user = init.resolve_user(spec.rootfs, spec.user, spec.group_add)
    try:
        nodes = resolve_devices(spec.devices)
    except OSError as e:
        raise SpawnError(128, str(e.strerror)) from None
    rules = device_rules(spec.privileged, ((n.kind, n.major, n.minor, n.perms) for n in nodes),
                         spec.device_rules)
    if spec.privileged:
        nodes = host_devices() + nodes
    binds = tuple((m.source, m.target, m.readonly, m.propagation) for m in spec.mounts)
    argv = spec.argv
    if spec.init:
        binds += ((_init_binary(), INIT_TARGET, True, ""),)
        argv = (INIT_TARGET, "--", *argv)
    try:
        tmpfs = tuple((path, *tmpfs_options(options)) for path, options in spec.tmpfs)
    except ValueError as e:
        raise SpawnError(128, str(e)) from None
    return rules, init.InitPlan(
        container_id=spec.container_id, rootfs=spec.rootfs, argv=argv,
        env=init.environment(spec.env, spec.hostname, user), user=user,
        working_dir=spec.working_dir, hostname=spec.hostname, binds=binds,
        capabilities=spec.capabilities, no_new_privs=spec.no_new_privs,
        readonly_rootfs=spec.readonly_rootfs,
        masked_paths=() if spec.privileged else MASKED_PATHS,
        readonly_paths=() if spec.privileged else READONLY_PATHS,
        tmpfs=tmpfs, shm=spec.shm, sysfs_rw=spec.privileged, nodes=nodes,
        sysctls=spec.sysctls, ipc_ns=spec.ipc_ns,
        uts_host=spec.uts_host, cgroupns_private=spec.cgroupns_private, seccomp=spec.seccomp,
        rlimits=init.rlimits(spec.ulimits), shm_size=spec.shm_size, tty=spec.tty)


def _fork_here(spec: ProcessSpec, plan: init.InitPlan, netns_fd: int,
               status: tuple[int, int], direct: bool) -> int:
    """Fork the supervisor from this process: B at once (direct), else A, which forks B."""
    status_r, status_w = status
    child = os.fork()
    if child == 0:  # A, then B (or B at once): never return into the caller's stack
        try:
            gc.freeze()  # keep the caller's garbage (and its fds) out of our collections
            os.close(status_r)
            os.setsid()
            if direct or os.fork() == 0:
                supervise(spec, plan, netns_fd, status_w)
        except BaseException as e:  # noqa: B036
            os.write(2, f"moorage supervisor failed: {e!r}\n".encode(errors="replace"))
        finally:
            os._exit(0)
    return child


def spawn(spec: ProcessSpec, timeout: float = 30.0) -> SpawnResult:
    """Start the container process under a new supervisor; return once it has exec'd.

    In a process that started a zygote (``moor worker``: ``workers.proc.zygote``), the
    zygote forks the supervisor and reaps it. Otherwise the supervisor is detached by a
    double fork; when the caller is a child subreaper, orphans come back to it anyway,
    so the supervisor is forked directly (one fork of the caller's address space less)
    and the caller reaps it (``process.reap_children``). Idempotent: when state_dir
    already holds a live run, that run is returned. Raises SpawnError (container exit
    code 126/127/128, Docker's text) if the process cannot start.
    """
    process.reap_children()
    if not spec.argv:
        raise SpawnError(128, "no command specified")
    running = _await_previous(spec.state_dir)
    if running is not None:
        return running
    if spec.generation:
        finished = process.read_exit(spec.state_dir)
        if finished is not None and finished.generation == spec.generation:
            raise RunFinished(finished)  # a duplicate start job: never a second run
    os.makedirs(spec.state_dir, exist_ok=True)
    for name in (process.EXIT_FILE, process.REPORTED_FILE, process.STOP_FILE):
        try:
            os.unlink(os.path.join(spec.state_dir, name))
        except FileNotFoundError:
            pass
    rules, plan = _plan(spec)
    try:
        cgroups.ensure_cgroup(spec.container_id, device_rules=rules, limits=spec.limits)
    except (OSError, ValueError) as e:
        raise SpawnError(128, f"cgroup {spec.container_id}: {e}") from e
    netns_fd = -1
    if spec.netns is not None:
        try:
            netns_fd = os.open(spec.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            cgroups.release_cgroup(spec.container_id)
            raise SpawnError(128, f"open network namespace {spec.netns}: "
                                  f"{init.errno_text(e.errno or 0)}") from e
    # A subreaper would adopt B anyway once A exited: fork B directly, one fork less.
    direct = nsutil.is_child_subreaper()
    status_r = status_w = -1
    child = None  # ours to reap (None: the zygote's child, or unknown)
    try:
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            forked = zygote.fork_supervisor(spec, plan, netns_fd, status_w)
        except zygote.ZygoteLost as e:  # B may run all the same: its reply decides
            _warn(f"{e}; waiting for the supervisor's reply")
            forked = -1
        if forked is None:
            child = _fork_here(spec, plan, netns_fd, (status_r, status_w), direct)
    except OSError as e:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        cgroups.release_cgroup(spec.container_id)
        raise SpawnError(128, f"start supervisor: {e}") from e
    finally:
        if netns_fd >= 0:
            os.close(netns_fd)
    os.close(status_w)
    try:
        ready, _, _ = select.select([status_r], [], [], timeout)
        reply = _read_all(status_r) if ready else b""
    finally:
        os.close(status_r)
        if child is None:
            pass  # the zygote reaps B
        elif direct:
            process.track_child(child)
        else:
            os.waitpid(child, 0)  # A is long gone by now: reaping it here costs no wait
    if not reply:
        _kill_supervisor(spec.state_dir)
        cgroups.release_cgroup(spec.container_id)
        why = "timed out" if not ready else "exited"
        raise SpawnError(128, f"supervisor {why} before the process started (see "
                              f"{os.path.join(spec.state_dir, process.SUPERVISOR_LOG)})")
    answer = CODEC.spawn_reply(reply)
    if isinstance(answer, SpawnFailure):
        raise SpawnError(answer.container_exit_code, answer.message)
    return answer
