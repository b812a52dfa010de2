"""Be the supervisor (B): the detached parent of one container process, until it exits.

The process tree, like containerd-shim or conmon::

    caller (rq worker) --fork--> A: setsid, fork, exit at once
                                 `--> B: the supervisor, in its own session; outlives the caller
                                       unshare(CLONE_NEWPID), fork
                                       `--> C: the container's init, PID 1 of a new pid namespace:
                                             cgroup, netns, mount/uts/ipc, pivot_root, user, execve
                                             (``workers.proc.init``)

The caller's side (forking A or B, idempotence, the previous run) is
``workers.proc.spawn``. B names itself ``moor-supervisor <short id>`` (``ps``), so an
operator can tell it from the worker: killing a supervisor kills its container. B tells
the caller "started" or "failed" in one ``SpawnReply`` (``events.runs``); C's
close-on-exec pipe tells B whether execve happened or why not (``init.await_exec``);
C's stdout/stderr (pipes, or a pty made in the container whose master C sends B) go
through B into a json-file log; with a TTY or an open stdin B also serves attach on a
unix socket (``workers.proc.hub``), holding C's stdin for the attachers.

After the process exits, B releases the cgroup, writes ``exit.json`` (see
``workers.proc.process``), appends a ``ReportProcessExited`` command to Redis when
``spec.report`` asks for it (retrying until Redis accepts; exit.json is fsynced only if
the first attempt fails, or when there is no report at all), then exits. The report goes
out on ``engine.resp``'s one connection, not redis-py (``exit_client``).

B is forked by the worker's zygote (``workers.proc.zygote``) when the caller runs one,
else by the caller as drawn above; everything B touches first is a page of its own, so
B keeps to plain descriptors and ints where the stdlib's wrappers touch many objects. A start that
fails before execve is reported to the caller only, which raises ``SpawnError``.

While the process runs, B also owns a stop's escalation: ``process.request_stop``
signals the container, writes ``stop.json`` and wakes B with SIGUSR1; B then
SIGKILLs the process if it outlives the deadline (``workers.proc.stopper``).
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import select
import signal
import socket
import time
from typing import Any, NamedTuple

import _signal

from commands import schema as c
from commands.codec import CODEC
from events.runs import ExitStatus, SpawnFailure, SpawnReply, SpawnResult
from events.signals import signal_name
from workers import nsutil
from workers.proc import cgroups, init, process, stopper
from workers.proc.console import receive_master
from workers.proc.hub import Hub, stdio_for
from workers.proc.init import SpawnError
from workers.proc.logs import JsonFileWriter
from workers.proc.spec import ExitReport, ProcessSpec
from workers.proc.title import set_title, supervisor_title

__all__ = ["STDIO_GRACE", "exit_client", "report_client", "report_entry", "supervise",
           "tell_failure"]

STDIO_GRACE = 2.0  # Docker waits this long for stdio to drain after the exit
# Plain ints for _signal, not signal's enum wrappers: a supervisor forked from the zygote
# copies every page it first touches, and the enum machinery touches many (~0.1 MB).
_IGNORED = tuple(int(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                                  signal.SIGPIPE, process.WAKE_SIGNAL))
_SIGCHLD, _SIG_IGN, _SIG_DFL = int(signal.SIGCHLD), int(signal.SIG_IGN), int(signal.SIG_DFL)


def _pump(run: _Started, escalation: stopper.Escalation) -> None:
    """Log the container's output, serve its attachers and enforce a stop's deadline
    until it has exited.

    Runs until the process has exited and its output has ended; the process may
    close its stdio long before it exits, and a stop must still escalate then.
    """
    streams = dict(run.outputs)
    hub = run.hub
    pidfd = os.pidfd_open(run.pid)
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
            interest = dict.fromkeys(streams, select.POLLIN)
            interest[escalation.fileno()] = select.POLLIN
            if exited_at is None:
                interest[pidfd] = select.POLLIN
            for fd, events in (hub.interest() if hub is not None else {}).items():
                interest[fd] = interest.get(fd, 0) | events
            poller = select.poll()
            for fd, events in interest.items():
                poller.register(fd, events)
            for fd, events in poller.poll(timeout):
                if fd == pidfd:
                    exited_at = time.monotonic()
                elif fd == escalation.fileno():
                    escalation.on_wake()
                elif fd in streams and events & ~select.POLLOUT \
                        and not _copy(fd, streams[fd], run.writer, hub):
                    del streams[fd]
                    if hub is None or not hub.owns(fd):
                        os.close(fd)
                if hub is not None and fd not in (pidfd, escalation.fileno()):
                    hub.handle(fd, events)
            if exited_at is None and escalation.fire_if_due(pidfd):
                _say(f"process {run.pid} outlived its stop timeout after "
                     f"{signal_name(escalation.signal)}: SIGKILL")
    finally:
        for fd in (*streams, pidfd):
            if hub is None or not hub.owns(fd):
                os.close(fd)
        if hub is not None:
            hub.close()  # before exit.json: a next run's hub takes the same path


def _copy(fd: int, stream: str, writer: JsonFileWriter, hub: Hub | None) -> bool:
    """Log what is readable on a stream's pipe (or pty) and pass it to the attachers;
    False once the stream has ended."""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:  # the pty master is non-blocking once attach serves stdin
        return True
    except OSError as e:  # EIO: the pty's last slave holder closed it
        if e.errno != errno.EIO:
            raise
        data = b""
    try:
        if data:
            writer.feed(stream, data)
        else:
            writer.flush(stream)
    except OSError as e:  # a full disk must not block the container on its pipe
        _say(f"log write failed: {e}")
    if data and hub is not None:
        hub.output(stream, data)
    return bool(data)


def report_entry(report: ExitReport, status: ExitStatus) -> dict[str, bytes]:
    """Build the commands-stream entry that reports the exit: envelope and command."""
    env = c.Envelope(command_id=c.exit_command_id(report.container_id, report.generation,
                                                  status.pid),
                     container_id=report.container_id, issued_at=time.time_ns(),
                     actor=report.actor)
    return CODEC.entry(env, c.ReportProcessExited.of(report.generation, status))


def report_client(report: ExitReport) -> Any:
    """Build (not connect) the client the exit goes out on, while the process still runs.

    Its first command connects; CLIENT SETINFO is skipped (two round trips of ~1 ms each
    on the exit's path, for a connection that sends one command).
    """
    import inspect

    import redis  # only the supervisor needs it

    kwargs: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 2}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters:
        kwargs["driver_info"] = None  # redis-py >= 7.1: None disables SETINFO
    else:
        kwargs["lib_name"] = kwargs["lib_version"] = None
    if report.credential_file:  # the worker's ACL user (engine.acl), read at each attempt
        from engine.acl import read_credential

        try:
            user, password = read_credential(report.credential_file)
        except (OSError, ValueError) as e:
            raise redis.AuthenticationError(f"credential: {e}") from e
        kwargs.update(username=user, password=password)
    return redis.Redis.from_url(report.redis_url, **kwargs)


def exit_client(report: ExitReport, url: str | None = None) -> Any:
    """Build (not connect) the client the exit goes out on: one RESP connection of
    ``engine.resp`` for redis:// and unix:// URLs, so that a supervisor never loads
    redis-py (a zygote's fork would copy it: ~7 MB per container); redis-py, loaded
    then, for anything else (rediss://, query options).

    The URL's own user and password win over the credential file, as in
    ``engine.acl.connect_kwargs``.
    """
    from engine.resp import RespConnectionError, RespRedis, Unsupported, parse_url

    try:
        where = parse_url(url or report.redis_url)
    except Unsupported:
        return report_client(report)
    if report.credential_file and where["username"] is None and where["password"] is None:
        from engine.acl import read_credential

        try:
            user, password = read_credential(report.credential_file)
        except (OSError, ValueError) as e:
            raise RespConnectionError(f"credential: {e}") from e
        where.update(username=user, password=password)
    return RespRedis(**where, socket_timeout=5)


def _report(report: ExitReport, status: ExitStatus, state_dir: str,
            client: Any = None) -> None:
    """XADD the exit to Redis, retrying with backoff until it is accepted.

    exit.json is written without fsync before the first attempt: once Redis has the exit
    it is the record. If that attempt fails, exit.json is made durable before waiting,
    since it is then what reconcile reads should this host go down before Redis is back.
    """
    from engine.resp import redis_errors
    from engine.seeds import moved_url, seed_urls

    fields = report_entry(report, status)
    delay = 0.05
    synced = False
    # On Redis Cluster the URL lists seeds: the report goes to the node that owns the
    # shard's slot, found by following MOVED, and to the next seed when a node is down.
    seeds = seed_urls(report.redis_url)
    seed, target = 0, None
    while True:
        try:
            if client is None:
                client = exit_client(report, target or seeds[seed])
            client.xadd(report.stream, fields)
            client.close()
            return
        except redis_errors() as e:
            target = moved_url(report.redis_url, str(e))
            if target is None:
                seed = (seed + 1) % len(seeds)
            if not synced:
                try:
                    process.sync_exit(state_dir)
                    synced = True
                except OSError as err:
                    _say(f"fsync of the exit status failed: {err}")
            _say(f"report failed, retrying in {delay:.2f}s: {e}")
            try:
                if client is not None:
                    client.close()  # a new connection next time
            except redis_errors():
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
    outputs: dict[int, str]  # read end (or pty master) -> the log's stream name
    writer: JsonFileWriter
    hub: Hub | None


def _start(spec: ProcessSpec, plan: init.InitPlan, netns_fd: int,
           status_w: int) -> _Started | None:
    """Fork C into a new pid namespace and wait until it has exec'd (None: it failed)."""
    state = spec.state_dir
    try:
        writer = JsonFileWriter(spec.log_path, spec.log_max_size, spec.log_max_file,
                                spec.log_attrs, discard=spec.log_discard)  # exists once spawned
    except OSError as e:
        raise SpawnError(128, f"failed to initialize logging driver: {e}") from e
    io = stdio_for(spec)
    exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
    console, console_child = socket.socketpair() if spec.tty else (None, None)
    _pid_namespace(spec.pid_ns)
    pid = os.fork()
    if pid == 0:
        if console is not None:
            console.close()
        init.run(plan, netns_fd, io.child, exec_w, console_child)
    if console_child is not None:
        console_child.close()
    for fd in (*io.child, exec_w, netns_fd):
        if fd >= 0:
            os.close(fd)
    me = os.getpid()  # recorded while C sets itself up, which takes longer
    process.write_pid_file(os.path.join(state, process.SUPERVISOR_PID_FILE),
                           process.ProcRef(me, process.start_ticks(me) or 0))
    master = receive_master(console) if console is not None else -1
    outputs = {master: "stdout"} if master >= 0 else io.outputs  # a TTY logs as stdout
    failure = init.await_exec(exec_r)
    started_at = time.time_ns()
    if failure is not None:
        _tell_failure(status_w, failure)
        os.waitpid(pid, 0)
        for fd in (*outputs, io.stdin_w, writer.fd):
            if fd >= 0:
                os.close(fd)
        _release(spec.container_id)
        process.write_exit(state, ExitStatus(exit_code=failure.container_exit_code,
                                             error=failure.message))
        return None
    hub = None
    if spec.attach_socket:  # listening before the start is told: attach may follow
        try:
            hub = Hub.for_spec(spec, io.stdin_w, master)
        except OSError as e:  # only attach is lost
            _say(f"attach socket {spec.attach_socket}: {e}")
            if io.stdin_w >= 0:
                os.close(io.stdin_w)
    ticks = process.start_ticks(pid) or 0
    process.write_pid_file(os.path.join(state, process.PID_FILE),
                           process.ProcRef(pid, ticks, started_at))
    _tell(status_w, SpawnResult(pid=pid, supervisor_pid=me, started_at_ns=started_at))
    return _Started(pid, started_at, outputs, writer, hub)


def _pid_namespace(mode: str) -> None:
    """Choose the pid namespace C is forked into: a new one, the host's, or a donor's."""
    if not mode:
        nsutil.unshare(nsutil.CLONE_NEWPID)
    elif mode != "host":
        try:
            fd = os.open(mode, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SpawnError(128, "cannot join PID of a container that is no longer "
                                  "running") from None
        try:
            nsutil.setns(fd, nsutil.CLONE_NEWPID)
        finally:
            os.close(fd)


def _release(cid: str) -> None:
    """Remove the cgroup, before exit.json: a start that follows the exit must find it gone."""
    try:
        cgroups.release_cgroup(cid)
    except OSError as e:
        _say(f"release cgroup failed: {e}")  # the reconciler retries it


def _tell(status_w: int, message: SpawnReply) -> None:
    """Answer the caller; if it died meanwhile, supervise all the same."""
    try:
        os.write(status_w, CODEC.json(message))
    except OSError as e:
        _say(f"caller gone: {e}")


def _tell_failure(status_w: int, error: SpawnError) -> None:
    """Tell the caller why the process did not start."""
    tell_failure(status_w, error.container_exit_code, error.message)


def tell_failure(status_w: int, container_exit_code: int, message: str) -> None:
    """Tell the caller on status_w that the process did not start, and why."""
    _tell(status_w, SpawnFailure(container_exit_code=container_exit_code, message=message))


def _watch(spec: ProcessSpec, run: _Started, wake_fd: int) -> None:
    """Log the output, reap, release the cgroup, record exit.json and report.

    The report's client is built at the exit (``exit_client`` is cheap): whatever a
    supervisor touches while its process runs is a private copy in each of them.
    """
    _pump(run, stopper.Escalation(spec.state_dir, run.started_at_ns, wake_fd))
    try:
        run.writer.close()
    except OSError as e:
        _say(f"log flush failed: {e}")
    _, wait_status = os.waitpid(run.pid, 0)
    finished_at = time.time_ns()
    code, sig = process.exit_code_of(wait_status)
    status = ExitStatus(
        exit_code=code, signal=sig, oom_killed=cgroups.oom_killed(spec.container_id),
        pid=run.pid, started_at_ns=run.started_at_ns, finished_at_ns=finished_at,
        generation=spec.generation)
    _release(spec.container_id)
    # Durable at once only when nobody will hear of the exit otherwise (see _report).
    process.write_exit(spec.state_dir, status, durable=spec.report is None)
    _remove_if_mine(os.path.join(spec.state_dir, process.PID_FILE), run.pid)
    _say(f"process {run.pid} exited with {code}")
    if spec.report is not None:
        _report(spec.report, status, spec.state_dir)
        with open(os.path.join(spec.state_dir, process.REPORTED_FILE), "w") as f:
            f.write(f"{run.started_at_ns}\n")  # names the run it reports


def supervise(spec: ProcessSpec, plan: init.InitPlan, netns_fd: int, status_w: int) -> None:
    """Run B: name it, detach from the caller's descriptors and signals, start C, watch it."""
    set_title(supervisor_title(spec.container_id))
    me = os.getpid()
    for sig in _IGNORED:
        _signal.signal(sig, _SIG_IGN)  # only SIGKILL ends a supervisor
    _signal.signal(_SIGCHLD, _SIG_DFL)  # the caller's disposition could eat exits
    os.chdir("/")  # do not keep the caller's cwd busy
    os.umask(0o022)  # the container inherits it: Docker's default
    status_w, netns_fd = _above_stdio(status_w), _above_stdio(netns_fd)
    nsutil.close_fds_except({status_w, netns_fd})
    os.open("/dev/null", os.O_RDONLY)  # becomes fd 0
    log = os.open(os.path.join(spec.state_dir, process.SUPERVISOR_LOG),
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


