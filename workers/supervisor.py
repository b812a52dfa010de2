"""Start a container process under a detached per-container supervisor.

The process tree, like containerd-shim or conmon::

    caller (rq worker) --fork--> A: setsid, fork, exit at once
                                 `--> B: the supervisor, in its own session; outlives the caller
                                       unshare(CLONE_NEWPID), fork
                                       `--> C: the container's init, PID 1 of a new pid namespace:
                                             cgroup, netns, mount/uts/ipc, pivot_root, user, execve

A caller that is a child subreaper (as the worker should be) would adopt B
when A exits, so it forks B directly. Forking from the caller instead of
re-executing Python is the fast path. B
tells the caller "started" or "failed" in one JSON message; C's close-on-exec
pipe tells B whether execve happened (EOF without data) or why not; C's
stdout/stderr go through B into a json-file log.

After the process exits, B releases the cgroup, writes ``exit.json`` (see
``workers.process``), XADDs the exit to Redis when ``spec.report`` asks for it
(retrying until Redis accepts), then exits. A start that fails before execve
is reported to the caller only, which raises ``SpawnError``.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import select
import signal
import stat
import time
from typing import Any, Literal, NamedTuple

import msgspec

from workers import cgroups, nsutil, process
from workers.logs import JsonFileWriter

__all__ = [
    "BindMount", "Limits", "ProcessSpec", "Report", "SpawnError", "SpawnResult",
    "reap_supervisors", "report_fields", "spawn",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
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


class SpawnError(Exception):
    """The process could not be started; exit_code is Docker's (126, 127 or 128)."""

    def __init__(self, exit_code: int, message: str) -> None:
        """Carry Docker's exit code and error text."""
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


class User(NamedTuple):
    """A resolved user: ids, supplementary groups and home directory."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def exit_code_for_errno(err: int) -> int:
    """Map a start failure's errno to Docker's exit code."""
    if err in (errno.ENOENT, errno.ENOTDIR):
        return 127
    if err in (errno.EACCES, errno.EISDIR):
        return 126
    return 128


def _db(rootfs: str, path: str) -> list[list[str]]:
    """Read a colon-separated database (passwd, group) from inside the rootfs."""
    try:
        with open(nsutil.resolve_in_root(rootfs, path), encoding="utf-8",
                  errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if ":" in line]
    except (FileNotFoundError, NotADirectoryError):
        return []


def resolve_user(rootfs: str, spec: str) -> User:
    """Resolve "user[:group]" (names or ids) against the rootfs as runc does."""
    name, _, group = (spec or "0").partition(":")
    uid, gid, home, login = 0, 0, "/", ""
    entry = next((e for e in _db(rootfs, "/etc/passwd") if len(e) >= 6 and
                  (e[0] == name or (name.isdigit() and e[2] == name))), None)
    if entry is not None:
        login, uid, gid, home = entry[0], int(entry[2]), int(entry[3]), entry[5] or "/"
    elif name.isdigit():
        uid = int(name)
    else:
        raise SpawnError(128, f"unable to find user {name}: no matching entries in passwd file")
    groups = _db(rootfs, "/etc/group")
    extra: tuple[int, ...] = ()
    if group:
        match = next((g for g in groups if len(g) >= 3 and
                      (g[0] == group or (group.isdigit() and g[2] == group))), None)
        if match is not None:
            gid = int(match[2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise SpawnError(
                128, f"unable to find group {group}: no matching entries in group file")
    elif login:
        extra = tuple(int(g[2]) for g in groups
                      if len(g) >= 4 and login in g[3].split(",") and g[2].isdigit())
    return User(uid, gid, tuple(dict.fromkeys((gid, *extra))), home)


# --- C: the container's init; runs between fork and execve ---

class _InitError(Exception):
    """A start failure with Docker's exit code and text."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code, self.message = exit_code, message


def _strerror(err: int) -> str:
    text = os.strerror(err)
    return text[:1].lower() + text[1:]  # Go's errno texts are lower case


def _lookup(name: str, path_env: str) -> str:
    """Find the executable as Go's exec.LookPath does (runc's behaviour)."""
    if "/" in name:
        try:
            st = os.stat(name)
        except OSError as e:
            raise _InitError(exit_code_for_errno(e.errno or 0),
                             f'exec: "{name}": stat {name}: {_strerror(e.errno or 0)}') from None
        if stat.S_ISDIR(st.st_mode) or not st.st_mode & 0o111:
            raise _InitError(126, f'exec: "{name}": permission denied')
        return name
    for directory in path_env.split(":"):
        candidate = (directory or ".") + "/" + name
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) and st.st_mode & 0o111:
            return candidate
    raise _InitError(127, f'exec: "{name}": executable file not found in $PATH')


def _init(spec: ProcessSpec, user: User, env: dict[str, str], netns_fd: int) -> None:
    """Enter the container's namespaces and rootfs, drop to the user and execve."""
    stage = "join cgroup"
    try:
        cgroups.join_cgroup(spec.container_id, 0)  # before pivoting: /sys is the host's
        if netns_fd >= 0:
            stage = "join network namespace"
            nsutil.setns(netns_fd, nsutil.CLONE_NEWNET)
            os.close(netns_fd)
        stage = "unshare"
        nsutil.unshare(nsutil.CLONE_NEWNS | nsutil.CLONE_NEWUTS | nsutil.CLONE_NEWIPC)
        stage = "prepare rootfs"
        nsutil.setup_rootfs(spec.rootfs, tuple((m.source, m.target, m.readonly)
                                               for m in spec.mounts))
        stage = "pivot_root"
        nsutil.pivot_into(spec.rootfs)
        if spec.hostname:
            stage = "sethostname"
            nsutil.sethostname(spec.hostname)
        workdir = spec.working_dir or "/"
        stage = f'mkdir cwd ("{workdir}")'
        os.makedirs(workdir, 0o755, exist_ok=True)
        stage = "set user"
        os.setgroups(list(user.groups))
        os.setgid(user.gid)
        os.setuid(user.uid)
        stage = f'chdir to cwd ("{workdir}") set in config.json failed'
        os.chdir(workdir)
        stage = "exec"
        path = _lookup(spec.argv[0], env.get("PATH", DEFAULT_PATH))
        try:
            os.execve(path, list(spec.argv), env)
        except OSError as e:
            raise _InitError(exit_code_for_errno(e.errno or 0),
                             f"exec {path}: {_strerror(e.errno or 0)}") from None
    except OSError as e:
        raise _InitError(exit_code_for_errno(e.errno or 0),
                         f"{stage}: {_strerror(e.errno or 0)}") from None


def _container_main(spec: ProcessSpec, user: User, env: dict[str, str], netns_fd: int,
                    stdout_w: int, stderr_w: int, exec_w: int) -> None:
    """Run C: set up stdio and signals, then _init; report a failure on exec_w."""
    code, message = 128, "container init failed"
    try:
        gc.disable()  # the caller's objects must not be finalized here (fd reuse)
        os.setsid()
        nsutil.set_pdeathsig(signal.SIGKILL)  # a dead supervisor could not record the exit
        # SIG_IGN survives execve: give the program default dispositions and no mask.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM,
                    signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1,
                    signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGTSTP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        null = os.open("/dev/null", os.O_RDONLY)
        for fd, target in ((null, 0), (stdout_w, 1), (stderr_w, 2)):
            os.dup2(fd, target)
        _close_fds_except({0, 1, 2, exec_w, netns_fd})
        _init(spec, user, env, netns_fd)
    except _InitError as e:
        code, message = e.exit_code, e.message
    except BaseException as e:  # noqa: B036 - nothing may unwind into the caller's stack
        message = f"container init failed: {e!r}"
    try:
        os.write(exec_w, f"{code}\0{message}".encode(errors="replace")[:4000])
    finally:
        os._exit(code)


def _close_fds_except(keep: set[int]) -> None:
    """Close every descriptor not in keep."""
    low = 0
    for fd in sorted(k for k in keep if k >= 0):
        if low < fd:  # closerange(n, n) becomes close_range(n, UINT_MAX) on 3.11: all of them
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


# --- B: the supervisor ---

def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _pump(pid: int, stdout_r: int, stderr_r: int, writer: JsonFileWriter) -> None:
    """Copy the container's output into the log until it ends and the process exits."""
    streams = {stdout_r: "stdout", stderr_r: "stderr"}
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (*streams, pidfd):
        poller.register(fd, select.POLLIN)
    exited_at: float | None = None
    while streams:
        timeout = None
        if exited_at is not None:
            # Descendants outside the pid namespace may hold the pipes open; do not hang.
            timeout = int((exited_at + STDIO_GRACE - time.monotonic()) * 1000)
            if timeout <= 0:
                break
        for fd, _ in poller.poll(timeout):
            if fd == pidfd:
                exited_at = time.monotonic()
                poller.unregister(pidfd)
                continue
            data = os.read(fd, 65536)
            try:
                if data:
                    writer.feed(streams[fd], data)
                else:
                    writer.flush(streams[fd])
            except OSError as e:  # a full disk must not block the container on its pipe
                _say(f"log write failed: {e}")
            if not data:
                poller.unregister(fd)
                os.close(fd)
                del streams[fd]
    for fd in streams:
        os.close(fd)
    os.close(pidfd)


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


def _report(report: Report, status: process.ExitStatus) -> None:
    """XADD the exit to Redis, retrying with backoff until it is accepted."""
    import redis  # only the supervisor needs it, and only at exit

    fields = report_fields(report, status)
    delay = 0.05
    while True:
        try:
            client = redis.Redis.from_url(report.redis_url, socket_timeout=5,
                                          socket_connect_timeout=2)
            try:
                client.xadd(report.stream, fields)  # type: ignore[arg-type]
                return
            finally:
                client.close()
        except redis.RedisError as e:
            _say(f"report failed, retrying in {delay:.2f}s: {e}")
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


def _start(spec: ProcessSpec, user: User, env: dict[str, str], netns_fd: int,
           status_w: int) -> _Started | None:
    """Fork C into a new pid namespace and wait until it has exec'd (None: it failed)."""
    state = spec.state_dir
    try:
        writer = JsonFileWriter(spec.log_path)  # exists once spawn returns
    except OSError as e:
        raise _InitError(128, f"failed to initialize logging driver: {e}") from e
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
    nsutil.unshare(nsutil.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        _container_main(spec, user, env, netns_fd, stdout_w, stderr_w, exec_w)
    for fd in (stdout_w, stderr_w, exec_w, netns_fd):
        if fd >= 0:
            os.close(fd)
    me = os.getpid()  # recorded while C sets itself up, which takes longer
    process.write_pid_file(os.path.join(state, process.SUPERVISOR_PID_FILE),
                           process.ProcRef(me, process.start_ticks(me) or 0))
    failure = _read_all(exec_r)
    os.close(exec_r)
    started_at = time.time_ns()
    if failure:
        code, _, message = failure.decode(errors="replace").partition("\0")
        _tell(status_w, {"exit_code": int(code), "message": message})
        os.waitpid(pid, 0)
        for fd in (stdout_r, stderr_r, writer.fd):
            os.close(fd)
        _release(spec.container_id)
        process.write_exit(state, process.ExitStatus(exit_code=int(code), error=message))
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


def _watch(spec: ProcessSpec, run: _Started) -> None:
    """Log the output, reap, record exit.json, release the cgroup and report."""
    _pump(run.pid, run.stdout_r, run.stderr_r, run.writer)
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
    process.write_exit(spec.state_dir, status)
    _remove_if_mine(os.path.join(spec.state_dir, process.PID_FILE), run.pid)
    _say(f"process {run.pid} exited with {code}")
    if spec.report is not None:
        _report(spec.report, status)
        with open(os.path.join(spec.state_dir, process.REPORTED_FILE), "w") as f:
            f.write(f"{run.started_at_ns}\n")  # names the run it reports


def _supervise(spec: ProcessSpec, user: User, env: dict[str, str], netns_fd: int,
               status_w: int) -> None:
    """Run B: detach from the caller's descriptors and signals, start C, watch it."""
    me = os.getpid()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # only SIGKILL ends a supervisor
    os.chdir("/")  # do not keep the caller's cwd busy
    os.umask(0o022)  # the container inherits it: Docker's default
    status_w, netns_fd = _above_stdio(status_w), _above_stdio(netns_fd)
    _close_fds_except({status_w, netns_fd})
    os.open("/dev/null", os.O_RDONLY)  # becomes fd 0
    log = os.open(os.path.join(spec.state_dir, SUPERVISOR_LOG),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)  # becomes fd 1
    os.dup2(log, 2)
    sup_file = os.path.join(spec.state_dir, process.SUPERVISOR_PID_FILE)
    try:
        run = _start(spec, user, env, netns_fd, status_w)
    except BaseException as e:  # noqa: B036 - the caller must hear why
        _say(f"start failed: {e!r}")
        code, message = (e.exit_code, e.message) if isinstance(e, _InitError) \
            else (128, f"supervisor: {e}")
        _tell(status_w, {"exit_code": code, "message": message})
        run = None
    os.close(status_w)
    try:
        if run is not None:
            _watch(spec, run)
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


def _environment(spec: ProcessSpec, user: User) -> dict[str, str]:
    """Build the process environment as dockerd and runc do; the spec's Env wins."""
    env = {"PATH": DEFAULT_PATH}
    if spec.hostname:
        env["HOSTNAME"] = spec.hostname
    for item in spec.env:
        key, sep, value = item.partition("=")
        if sep and key:
            env[key] = value
    env.setdefault("HOME", user.home)  # as runc does
    return env


def _kill_supervisor(state_dir: str) -> None:
    """SIGKILL a hung supervisor; its container follows through PDEATHSIG."""
    ref = process.read_pid_file(os.path.join(state_dir, process.SUPERVISOR_PID_FILE))
    if ref is not None and process.supervisor_alive(state_dir):
        os.kill(ref.pid, signal.SIGKILL)


_children: set[int] = set()  # supervisors forked directly by this (subreaper) process


def reap_supervisors() -> int:
    """Reap the exited supervisors this process forked directly; return how many.

    Only a subreaper caller gets direct children (see spawn); its reaping loop
    may call this, and every spawn does.
    """
    reaped = 0
    for pid in list(_children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # somebody else's waitpid(-1) got it first
            done = pid
        if done:
            _children.discard(pid)
            reaped += 1
    return reaped


def spawn(spec: ProcessSpec, timeout: float = 30.0) -> SpawnResult:
    """Start the container process under a new supervisor; return once it has exec'd.

    The supervisor is detached by a double fork; when the caller is a child
    subreaper, orphans come back to it anyway, so the supervisor is forked
    directly (one fork of the caller's address space less) and the caller
    reaps it (reap_supervisors). Idempotent: when state_dir already holds a
    live run, that run is returned. Raises SpawnError (exit code 126/127/128,
    Docker's text) if the process cannot start.
    """
    reap_supervisors()
    spec = msgspec.convert(msgspec.to_builtins(spec), ProcessSpec)  # validates a dict-built spec
    if not spec.argv:
        raise SpawnError(128, "no command specified")
    running = _await_previous(spec.state_dir)
    if running is not None:
        return running
    os.makedirs(spec.state_dir, exist_ok=True)
    for name in (process.EXIT_FILE, process.REPORTED_FILE):
        try:
            os.unlink(os.path.join(spec.state_dir, name))
        except FileNotFoundError:
            pass
    user = resolve_user(spec.rootfs, spec.user)
    env = _environment(spec, user)
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
                                  f"{_strerror(e.errno or 0)}") from e
    # A subreaper would adopt B anyway once A exited: fork B directly, one fork less.
    direct = nsutil.is_child_subreaper()
    try:
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:  # A, then B (or B at once): never return into the caller's stack
            try:
                gc.freeze()  # keep the caller's garbage (and its fds) out of our collections
                os.close(status_r)
                os.setsid()
                if direct or os.fork() == 0:
                    _supervise(spec, user, env, netns_fd, status_w)
            except BaseException as e:  # noqa: B036
                os.write(2, f"moorage supervisor failed: {e!r}\n".encode(errors="replace"))
            finally:
                os._exit(0)
    except OSError as e:
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
            _children.add(child)
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
    raise SpawnError(int(message["exit_code"]), str(message["message"]))
