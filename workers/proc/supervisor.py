"""Start a container process under a detached per-container supervisor.

The process tree, like containerd-shim or conmon::

    caller (rq worker) --fork--> A: setsid, fork, exit at once
                                 `--> B: the supervisor, in its own session; outlives the caller
                                       unshare(CLONE_NEWPID), fork
                                       `--> C: the container's init, PID 1 of a new pid namespace:
                                             cgroup, netns, mount/uts/ipc, pivot_root, user, execve
                                             (``workers.proc.init``)

A caller that is a child subreaper (as the worker should be) would adopt B
when A exits, so it forks B directly. Forking from the caller instead of
re-executing Python is the fast path. B tells the caller "started" or
"failed" in one JSON message; C's close-on-exec pipe tells B whether execve
happened or why not (``init.await_exec``); C's stdout/stderr go through B into
a json-file log.

After the process exits, B releases the cgroup, writes ``exit.json`` (see
``workers.proc.process``), XADDs the exit to Redis when ``spec.report`` asks for it
(retrying until Redis accepts; exit.json is fsynced only if the first attempt
fails, or when there is no report at all), then exits. A start that fails before execve
is reported to the caller only, which raises ``SpawnError``.

While the process runs, B also owns a stop's escalation: ``process.request_stop``
signals the container, writes ``stop.json`` and wakes B with SIGUSR1; B then
SIGKILLs the process if it outlives the deadline (``workers.proc.stopper``).
"""

from __future__ import annotations

import fcntl
import gc
import inspect
import math
import os
import select
import signal
import time
from typing import Any, Literal, NamedTuple

import msgspec

from events.signals import signal_name
from workers import nsutil
from workers.proc import cgroups, init, process, stopper
from workers.proc.init import SpawnError
from workers.proc.logs import JsonFileWriter

__all__ = [
    "BindMount", "Limits", "ProcessSpec", "Report", "SpawnError", "SpawnResult", "report_fields",
    "spawn",
]

STDIO_GRACE = 2.0  # Docker waits this long for stdio to drain after the exit
SUPERVISOR_LOG = "supervisor.log"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """cgroup limits with Docker's meaning (bytes, count, 1e-9 CPUs)."""

    memory: int | None = None
    memory_swap: int | None = None
    pids: int | None = None
    nano_cpus: int | None = None


class BindMount(msgspec.Struct, frozen=True, kw_only=True):
    """A host path bound into the container (resolv.conf, hosts, volumes)."""

    source: str
    target: str
    readonly: bool = False


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """Where and what the supervisor XADDs once the process has exited.

    The entry holds ``fields`` verbatim, the ExitStatus as JSON under
    ``exit_field`` (unless empty), and each of ``templates`` encoded with
    ``encoding``, after replacing every string value that names an exit fact
    ("$exit_code", "$signal", "$oom_killed", "$pid", "$started_at_ns",
    "$finished_at_ns", "$now_ns") with its value. Templates let the engine get
    its own command envelope without the supervisor importing it. Put a
    deterministic command id in the entry: a retry after a lost reply appends
    it twice, and the reducer drops the duplicate by that id.
    """

    redis_url: str
    stream: str
    fields: dict[str, str] = {}
    exit_field: str = "exit"
    templates: dict[str, dict[str, Any]] = {}
    encoding: Literal["json", "msgpack"] = "json"


class ProcessSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything needed to run one container process.

    ``netns`` is the path of the network namespace to join; None keeps the
    host's network (network mode host). ``user`` is "uid[:gid]" or names,
    resolved through the rootfs's /etc/passwd and /etc/group.
    """

    container_id: str
    rootfs: str
    argv: tuple[str, ...]
    state_dir: str
    log_path: str
    env: tuple[str, ...] = ()
    working_dir: str = "/"
    user: str = ""
    hostname: str = ""
    netns: str | None = None
    limits: Limits = msgspec.field(default_factory=Limits)
    mounts: tuple[BindMount, ...] = ()
    report: Report | None = None


class SpawnResult(msgspec.Struct, frozen=True):
    """The running process: host pid, its supervisor's pid, when it started."""

    pid: int
    supervisor_pid: int
    started_at_ns: int


# --- B: the supervisor ---

def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _pump(run: _Started, escalation: stopper.Escalation) -> None:
    """Log the container's output and enforce a stop's deadline until it has exited.

    Runs until the process has exited and its output has ended; the process may
    close its stdio long before it exits, and a stop must still escalate then.
    """
    streams = {run.stdout_r: "stdout", run.stderr_r: "stderr"}
    pidfd = os.pidfd_open(run.pid)
    poller = select.poll()
    for fd in (*streams, pidfd, escalation.fileno()):
        poller.register(fd, select.POLLIN)
    exited_at: float | None = None
    try:
        while exited_at is None or streams:
            if exited_at is None:
                timeout = escalation.timeout_ms()
            else:
                # Descendants outside the pid namespace may hold the pipes open; do not hang.
                timeout = math.ceil((exited_at + STDIO_GRACE - time.monotonic()) * 1000)
                if timeout <= 0:
                    break
            for fd, _ in poller.poll(timeout):
                if fd == pidfd:
                    exited_at = time.monotonic()
                    poller.unregister(pidfd)
                elif fd == escalation.fileno():
                    escalation.on_wake()
                elif not _copy(fd, streams[fd], run.writer):
                    poller.unregister(fd)
                    os.close(fd)
                    del streams[fd]
            if exited_at is None and escalation.fire_if_due(pidfd):
                _say(f"process {run.pid} outlived its stop timeout after "
                     f"{signal_name(escalation.signal)}: SIGKILL")
    finally:
        for fd in (*streams, pidfd):
            os.close(fd)


def _copy(fd: int, stream: str, writer: JsonFileWriter) -> bool:
    """Log what is readable on a stream's pipe; False once the stream has ended."""
    data = os.read(fd, 65536)
    try:
        if data:
            writer.feed(stream, data)
        else:
            writer.flush(stream)
    except OSError as e:  # a full disk must not block the container on its pipe
        _say(f"log write failed: {e}")
    return bool(data)


def _render(template: Any, facts: dict[str, Any]) -> Any:
    """Replace "$fact" strings anywhere in template by the facts' values."""
    if isinstance(template, str):
        return facts.get(template, template) if template.startswith("$") else template
    if isinstance(template, dict):
        return {k: _render(v, facts) for k, v in template.items()}
    if isinstance(template, list):
        return [_render(v, facts) for v in template]
    return template


def report_fields(report: Report, status: process.ExitStatus) -> dict[str, str | bytes]:
    """Build the stream entry that reports status."""
    fields: dict[str, str | bytes] = dict(report.fields)
    if report.exit_field:
        fields[report.exit_field] = msgspec.json.encode(status)
    facts = {f"${name}": value for name, value in msgspec.structs.asdict(status).items()}
    facts["$now_ns"] = time.time_ns()
    encode = msgspec.msgpack.encode if report.encoding == "msgpack" else msgspec.json.encode
    for name, template in report.templates.items():
        fields[name] = encode(_render(template, facts))
    return fields


def _report_client(report: Report) -> Any:
    """Build (not connect) the client the exit goes out on, while the process still runs.

    Its first command connects; CLIENT SETINFO is skipped (two round trips of ~1 ms each
    on the exit's path, for a connection that sends one command).
    """
    import redis  # only the supervisor needs it

    kwargs: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 2}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters:
        kwargs["driver_info"] = None  # redis-py >= 7.1: None disables SETINFO
    else:
        kwargs["lib_name"] = kwargs["lib_version"] = None
    return redis.Redis.from_url(report.redis_url, **kwargs)


def _report(report: Report, status: process.ExitStatus, state_dir: str,
            client: Any = None) -> None:
    """XADD the exit to Redis, retrying with backoff until it is accepted.

    exit.json is written without fsync before the first attempt: once Redis has the exit
    it is the record. If that attempt fails, exit.json is made durable before waiting,
    since it is then what reconcile reads should this host go down before Redis is back.
    """
    import redis

    fields = report_fields(report, status)
    delay = 0.05
    synced = False
    while True:
        try:
            if client is None:
                client = _report_client(report)
            client.xadd(report.stream, fields)
            client.close()
            return
        except redis.RedisError as e:
            if not synced:
                try:
                    process.sync_exit(state_dir)
                    synced = True
                except OSError as err:
                    _say(f"fsync of the exit status failed: {err}")
            _say(f"report failed, retrying in {delay:.2f}s: {e}")
            try:
                client.close()  # a new connection next time
            except redis.RedisError:
                pass
            client = None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _remove_if_mine(path: str, pid: int) -> None:
    """Remove a pid file only if it still names pid (a newer run may own it)."""
    ref = process.read_pid_file(path)
    if ref is not None and ref.pid == pid:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _say(message: str) -> None:
    """Note something in supervisor.log (fd 2); sys.stdout may be the caller's."""
    os.write(2, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n".encode(errors="replace"))


def _above_stdio(fd: int) -> int:
    """Return fd moved to 3 or higher, so reopening stdio cannot clobber it."""
    if 0 <= fd < 3:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        os.close(fd)
        return high
    return fd


class _Started(NamedTuple):
    pid: int
    started_at_ns: int
    stdout_r: int
    stderr_r: int
    writer: JsonFileWriter


def _start(spec: ProcessSpec, plan: init.InitPlan, netns_fd: int,
           status_w: int) -> _Started | None:
    """Fork C into a new pid namespace and wait until it has exec'd (None: it failed)."""
    state = spec.state_dir
    try:
        writer = JsonFileWriter(spec.log_path)  # exists once spawn returns
    except OSError as e:
        raise SpawnError(128, f"failed to initialize logging driver: {e}") from e
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
    nsutil.unshare(nsutil.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        init.run(plan, netns_fd, stdout_w, stderr_w, exec_w)
    for fd in (stdout_w, stderr_w, exec_w, netns_fd):
        if fd >= 0:
            os.close(fd)
    me = os.getpid()  # recorded while C sets itself up, which takes longer
    process.write_pid_file(os.path.join(state, process.SUPERVISOR_PID_FILE),
                           process.ProcRef(me, process.start_ticks(me) or 0))
    failure = init.await_exec(exec_r)
    started_at = time.time_ns()
    if failure is not None:
        _tell_failure(status_w, failure)
        os.waitpid(pid, 0)
        for fd in (stdout_r, stderr_r, writer.fd):
            os.close(fd)
        _release(spec.container_id)
        process.write_exit(state, process.ExitStatus(exit_code=failure.container_exit_code,
                                                     error=failure.message))
        return None
    ticks = process.start_ticks(pid) or 0
    process.write_pid_file(os.path.join(state, process.PID_FILE),
                           process.ProcRef(pid, ticks, started_at))
    _tell(status_w, SpawnResult(pid, me, started_at))
    return _Started(pid, started_at, stdout_r, stderr_r, writer)


def _release(cid: str) -> None:
    """Remove the cgroup, before exit.json: a start that follows the exit must find it gone."""
    try:
        cgroups.release_cgroup(cid)
    except OSError as e:
        _say(f"release cgroup failed: {e}")  # the reconciler retries it


def _tell(status_w: int, message: object) -> None:
    """Answer the caller; if it died meanwhile, supervise all the same."""
    try:
        os.write(status_w, msgspec.json.encode(message))
    except OSError as e:
        _say(f"caller gone: {e}")


def _tell_failure(status_w: int, error: SpawnError) -> None:
    """Tell the caller why the process did not start."""
    _tell(status_w, {"container_exit_code": error.container_exit_code, "message": error.message})


def _watch(spec: ProcessSpec, run: _Started, wake_fd: int) -> None:
    """Log the output, reap, release the cgroup, record exit.json and report."""
    client = None
    if spec.report is not None:
        try:
            client = _report_client(spec.report)
        except Exception as e:  # noqa: BLE001 - _report builds it again at exit
            _say(f"report client: {e!r}")
    _pump(run, stopper.Escalation(spec.state_dir, run.started_at_ns, wake_fd))
    try:
        run.writer.close()
    except OSError as e:
        _say(f"log flush failed: {e}")
    _, wait_status = os.waitpid(run.pid, 0)
    finished_at = time.time_ns()
    code, sig = process.exit_code_of(wait_status)
    status = process.ExitStatus(
        exit_code=code, signal=sig, oom_killed=cgroups.oom_killed(spec.container_id),
        pid=run.pid, started_at_ns=run.started_at_ns, finished_at_ns=finished_at)
    _release(spec.container_id)
    # Durable at once only when nobody will hear of the exit otherwise (see _report).
    process.write_exit(spec.state_dir, status, durable=spec.report is None)
    _remove_if_mine(os.path.join(spec.state_dir, process.PID_FILE), run.pid)
    _say(f"process {run.pid} exited with {code}")
    if spec.report is not None:
        _report(spec.report, status, spec.state_dir, client)
        with open(os.path.join(spec.state_dir, process.REPORTED_FILE), "w") as f:
            f.write(f"{run.started_at_ns}\n")  # names the run it reports


def _supervise(spec: ProcessSpec, plan: init.InitPlan, netns_fd: int, status_w: int) -> None:
    """Run B: detach from the caller's descriptors and signals, start C, watch it."""
    me = os.getpid()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE,
                process.WAKE_SIGNAL):
        signal.signal(sig, signal.SIG_IGN)  # only SIGKILL ends a supervisor
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the caller's disposition could eat exits
    os.chdir("/")  # do not keep the caller's cwd busy
    os.umask(0o022)  # the container inherits it: Docker's default
    status_w, netns_fd = _above_stdio(status_w), _above_stdio(netns_fd)
    nsutil.close_fds_except({status_w, netns_fd})
    os.open("/dev/null", os.O_RDONLY)  # becomes fd 0
    log = os.open(os.path.join(spec.state_dir, SUPERVISOR_LOG),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)  # becomes fd 1
    os.dup2(log, 2)
    # Before supervisor.pid names us: request_stop may send the wake-up signal from then on.
    wake_fd = stopper.listen()
    sup_file = os.path.join(spec.state_dir, process.SUPERVISOR_PID_FILE)
    try:
        run = _start(spec, plan, netns_fd, status_w)
    except BaseException as e:  # noqa: B036 - the caller must hear why
        _say(f"start failed: {e!r}")
        _tell_failure(status_w, e if isinstance(e, SpawnError)
                      else SpawnError(128, f"supervisor: {e}"))
        run = None
    os.close(status_w)
    try:
        if run is not None:
            _watch(spec, run, wake_fd)
        else:
            _release(spec.container_id)
    except BaseException as e:  # noqa: B036
        _say(f"supervisor failed: {e!r}")
    finally:
        _remove_if_mine(sup_file, me)


# --- the caller ---

def _running(state_dir: str) -> SpawnResult | None:
    """Describe the run already going on in state_dir, if any."""
    ref = process.read_pid_file(os.path.join(state_dir, process.PID_FILE))
    sup = process.read_pid_file(os.path.join(state_dir, process.SUPERVISOR_PID_FILE))
    if ref is None or sup is None or not process.is_alive(state_dir) \
            or not process.supervisor_alive(state_dir):
        return None
    return SpawnResult(ref.pid, sup.pid, ref.started_at_ns)


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


def _kill_supervisor(state_dir: str) -> None:
    """SIGKILL a hung supervisor; its container follows through PDEATHSIG."""
    ref = process.read_pid_file(os.path.join(state_dir, process.SUPERVISOR_PID_FILE))
    if ref is not None and process.supervisor_alive(state_dir):
        os.kill(ref.pid, signal.SIGKILL)


def _plan(spec: ProcessSpec) -> init.InitPlan:
    """Resolve everything C needs that can be resolved before forking."""
    user = init.resolve_user(spec.rootfs, spec.user)
    return init.InitPlan(
        container_id=spec.container_id, rootfs=spec.rootfs, argv=spec.argv,
        env=init.environment(spec.env, spec.hostname, user), user=user,
        working_dir=spec.working_dir, hostname=spec.hostname,
        binds=tuple((m.source, m.target, m.readonly) for m in spec.mounts))


def spawn(spec: ProcessSpec, timeout: float = 30.0) -> SpawnResult:
    """Start the container process under a new supervisor; return once it has exec'd.

    The supervisor is detached by a double fork; when the caller is a child
    subreaper, orphans come back to it anyway, so the supervisor is forked
    directly (one fork of the caller's address space less) and the caller
    reaps it (``process.reap_children``). Idempotent: when state_dir already
    holds a live run, that run is returned. Raises SpawnError (container exit
    code 126/127/128, Docker's text) if the process cannot start.
    """
    process.reap_children()
    spec = msgspec.convert(msgspec.to_builtins(spec), ProcessSpec)  # validates a dict-built spec
    if not spec.argv:
        raise SpawnError(128, "no command specified")
    running = _await_previous(spec.state_dir)
    if running is not None:
        return running
    os.makedirs(spec.state_dir, exist_ok=True)
    for name in (process.EXIT_FILE, process.REPORTED_FILE, process.STOP_FILE):
        try:
            os.unlink(os.path.join(spec.state_dir, name))
        except FileNotFoundError:
            pass
    plan = _plan(spec)
    lim = spec.limits
    try:
        cgroups.ensure_cgroup(spec.container_id, memory=lim.memory, pids=lim.pids,
                              nano_cpus=lim.nano_cpus, memory_swap=lim.memory_swap)
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
    try:
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:  # A, then B (or B at once): never return into the caller's stack
            try:
                gc.freeze()  # keep the caller's garbage (and its fds) out of our collections
                os.close(status_r)
                os.setsid()
                if direct or os.fork() == 0:
                    _supervise(spec, plan, netns_fd, status_w)
            except BaseException as e:  # noqa: B036
                os.write(2, f"moorage supervisor failed: {e!r}\n".encode(errors="replace"))
            finally:
                os._exit(0)
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
        if direct:
            process.track_child(child)
        else:
            os.waitpid(child, 0)  # A is long gone by now: reaping it here costs no wait
    if not reply:
        _kill_supervisor(spec.state_dir)
        cgroups.release_cgroup(spec.container_id)
        why = "timed out" if not ready else "exited"
        raise SpawnError(128, f"supervisor {why} before the process started (see "
                              f"{os.path.join(spec.state_dir, SUPERVISOR_LOG)})")
    message = msgspec.json.decode(reply)
    if "pid" in message:
        return msgspec.convert(message, SpawnResult)
    raise SpawnError(int(message["container_exit_code"]), str(message["message"]))
