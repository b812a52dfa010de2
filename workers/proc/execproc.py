"""`docker exec` on the host: a process entering a running container, under an exec supervisor.

`spawn_exec` (the worker) forks E, the exec supervisor, detached like a container's. E
owns the process's stdio (a pty master with a TTY, pipes without) and serves it on a unix
socket, as conmon does, so whichever process serves the API can attach. Once a client has
attached (or at once for a detached exec) E enters the container's pid namespace and forks
C, which joins the container's cgroup and its other namespaces, takes the container's
confinement (`init.confine_and_exec`: capabilities, no_new_privs, seccomp, user) and execs.
E relays the stdio (Docker's raw stream with a TTY, stdcopy frames without), applies
resizes sent on a second socket, waits for the exit and hands the exit code to `on_exit`.

Socket protocol: `<sock>` takes one client; bytes from it are the process's stdin (a
half-close closes stdin); bytes to it are the output; E closes it after the exit. `<sock>.ctl`
takes lines "resize <rows> <cols>".
"""

from __future__ import annotations

import errno
import gc
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

from workers import nsutil
from workers.proc import cgroups, init, seccomp
from workers.proc.console import (
    CTL_SUFFIX,
    frame,
    listen,
    open_console,
    receive_master,
    set_size,
    unlink_sockets,
)

__all__ = ["ExecPlan", "spawn_exec"]

_NAMESPACES = (("ipc", nsutil.CLONE_NEWIPC), ("uts", nsutil.CLONE_NEWUTS),
               ("net", nsutil.CLONE_NEWNET), ("cgroup", nsutil.CLONE_NEWCGROUP),
               ("mnt", nsutil.CLONE_NEWNS))  # the mount namespace last: it moves the root
ATTACH_TIMEOUT = 30.0  # how long E waits for the client before running unattached
_KILLED = 137  # the exit code of an exec whose container ended first (SIGKILL)


class ExecPlan(NamedTuple):
    """Everything E needs, resolved by the worker."""

    exec_id: str
    container_id: str
    pid: int  # the container's PID 1, whose namespaces the process enters
    argv: tuple[str, ...]
    env: tuple[str, ...]  # the container's Env, then the exec's
    user: str  # "" runs as the container's user (the caller resolves that)
    working_dir: str
    capabilities: int
    no_new_privs: bool
    seccomp: seccomp.Program | None
    tty: bool
    stdin: bool  # AttachStdin: the client's bytes feed the process
    detach: bool  # nobody attaches: run at once, output dropped
    hostname: str = ""


def spawn_exec(plan: ExecPlan, sock_path: str, on_exit: Callable[[int], None],
               timeout: float = 10.0) -> int:
    """Fork E; return its pid once its sockets listen (the process starts on attach)."""
    unlink_sockets(sock_path)
    os.makedirs(os.path.dirname(sock_path), 0o700, exist_ok=True)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # E, then a grandchild: detached from the worker
        code = 0
        try:
            gc.freeze()
            os.close(ready_r)
            os.setsid()
            if os.fork() == 0:
                _supervise(plan, sock_path, on_exit, ready_w)
        except BaseException as e:  # noqa: B036 - never unwind into the worker's stack
            os.write(2, f"moorage exec supervisor failed: {e!r}\n".encode(errors="replace"))
            code = 1
        finally:
            os._exit(code)
    os.close(ready_w)
    try:
        ready, _, _ = select.select([ready_r], [], [], timeout)
        reply = os.read(ready_r, 64) if ready else b""
    finally:
        os.close(ready_r)
        os.waitpid(pid, 0)
    if not reply.startswith(b"ready "):
        raise init.SpawnError(128, f"exec supervisor for {plan.exec_id} did not start")
    return int(reply.split()[1])


def _supervise(plan: ExecPlan, sock_path: str, on_exit: Callable[[int], None],
               ready_w: int) -> None:
    """Be E: listen, wait for the client, run the process, relay, report the exit."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    ctl = listen(sock_path + CTL_SUFFIX)  # first: once the main socket shows, both listen
    main = listen(sock_path)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    nsutil.close_fds_except({0, 1, 2, ready_w, main.fileno(), ctl.fileno()})
    os.write(ready_w, f"ready {os.getpid()}".encode())
    os.close(ready_w)
    client = None
    code = _KILLED
    try:
        container = os.pidfd_open(plan.pid)  # the container's end is the exec's end
    except OSError:
        container = -1
    try:
        if container >= 0 and not plan.detach:
            ready, _, _ = select.select([main.fileno(), container], [], [], ATTACH_TIMEOUT)
            if main.fileno() in ready:
                client, _ = main.accept()
        if container >= 0 and not select.select([container], [], [], 0)[0]:
            code = _run(plan, client, ctl)
    finally:
        try:
            on_exit(code)  # before the client hears the end: it asks for the exit code next
        finally:
            for s in (client, main, ctl):
                if s is not None:
                    s.close()
            unlink_sockets(sock_path)


class _Stdio(NamedTuple):
    child: tuple[int, ...]  # C's stdin, stdout, stderr (none with a TTY)
    stdin_w: int  # where the client's bytes go (-1: nowhere)
    outputs: dict[int, int]  # our read end -> stdcopy stream (0: raw, a TTY)


def _stdio(plan: ExecPlan) -> _Stdio:
    if plan.tty:
        return _Stdio((), -1, {})  # the pty comes from C (`console.open_console`)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    if plan.stdin:
        in_r, in_w = os.pipe()
    else:
        in_r, in_w = os.open("/dev/null", os.O_RDONLY), -1
    return _Stdio((in_r, out_w, err_w), in_w, {out_r: 1, err_r: 2})


def _run(plan: ExecPlan, client: socket.socket | None, ctl: socket.socket) -> int:
    """Start C and relay until it has exited and its output is drained; its exit code."""
    io = _stdio(plan)
    fds = {kind: os.open(f"/proc/{plan.pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
           for kind in ("pid", *(k for k, _ in _NAMESPACES))}
    exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
    console, console_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    user = init.resolve_user(f"/proc/{plan.pid}/root", plan.user)
    last_cap = nsutil.cap_last_cap()
    conf = init.Confinement(init.allowed_capabilities(plan.capabilities, last_cap), last_cap,
                            user, plan.no_new_privs,
                            seccomp.prepare(plan.seccomp) if plan.seccomp else None)
    env = init.environment(plan.env, plan.hostname, user)
    pid_ns = fds.pop("pid")
    nsutil.setns(pid_ns, nsutil.CLONE_NEWPID)  # for the children: C is born inside
    os.close(pid_ns)
    pid = os.fork()
    if pid == 0:
        console.close()
        _child(plan, io, fds, exec_w, console_child, conf, env)
    console_child.close()
    for fd in (*set(io.child), exec_w, *fds.values()):
        os.close(fd)
    if plan.tty:  # C made the pty in the container's devpts and sends its master
        io = _tty_stdio(plan, console)
    failure = init.await_exec(exec_r)
    if failure is not None:
        os.waitpid(pid, 0)
        if client is not None:
            message = f"OCI runtime exec failed: {failure.message}\r\n".encode()
            _send(client, message if plan.tty else frame(2, message))
        return failure.container_exit_code
    return _relay(pid, io, client, ctl, plan.tty)


def _tty_stdio(plan: ExecPlan, console: socket.socket) -> _Stdio:
    """Receive the pty master C opened (none if C failed first: its error says why)."""
    master = receive_master(console)
    if master < 0:
        return _Stdio((), -1, {})
    return _Stdio((), master if plan.stdin else -1, {master: 0})


def _child(plan: ExecPlan, io: _Stdio, fds: dict[str, int], exec_w: int,
           console: socket.socket, conf: init.Confinement, env: dict[str, str]) -> None:
    """Be C: stdio, the container's cgroup and namespaces, its confinement, execve."""
    code, message = 128, "exec failed"
    try:
        os.setsid()
        nsutil.set_pdeathsig(signal.SIGKILL)
        for fd, target in zip(io.child, (0, 1, 2), strict=False):
            os.dup2(fd, target)
        nsutil.close_fds_except({0, 1, 2, exec_w, console.fileno(), *fds.values()})
        stage = "join cgroup"
        try:
            cgroups.join_cgroup(plan.container_id, 0)  # the host's /sys, before entering
            for kind, flag in _NAMESPACES:
                stage = f"join {kind} namespace"
                nsutil.setns(fds[kind], flag)
                os.close(fds[kind])
            if plan.tty:
                stage = "open the container's console"
                open_console(console, conf.user.uid)
        except OSError as e:
            raise init.SpawnError(128, f"{stage}: {init.errno_text(e.errno or 0)}") from None
        init.confine_and_exec(conf, plan.working_dir or "/", plan.argv, env)
    except init.SpawnError as e:
        code, message = e.container_exit_code, e.message
    except BaseException as e:  # noqa: B036
        message = f"exec failed: {e!r}"
    try:
        os.write(exec_w, f"{code}\0{message}".encode(errors="replace")[:4000])
    finally:
        os._exit(code)


def _send(client: socket.socket, data: bytes) -> bool:
    try:
        client.sendall(data)
        return True
    except OSError:
        return False


def _relay(pid: int, io: _Stdio, client: socket.socket | None, ctl: socket.socket,
           tty: bool) -> int:
    """Copy output to the client and its bytes to stdin until C exits and output ends."""
    outputs = dict(io.outputs)
    owned = {*outputs, io.stdin_w} - {-1}
    stdin_w = io.stdin_w
    controls: list[socket.socket] = []
    pidfd = os.pidfd_open(pid)
    status: int | None = None
    exited_at = 0.0
    while outputs or status is None:
        watch: list[int] = [*outputs, ctl.fileno(), *(c.fileno() for c in controls)]
        if status is None:
            watch.append(pidfd)
        if client is not None and stdin_w >= 0:
            watch.append(client.fileno())
        wait = None if status is None else max(0.0, 0.5 - (time.monotonic() - exited_at))
        ready, _, _ = select.select(watch, [], [], wait)
        if not ready and status is not None:
            break  # the exit is in; a grandchild still holding the pipe does not keep us
        for fd in ready:
            if fd == pidfd:
                status = os.waitpid(pid, 0)[1]
                exited_at = time.monotonic()
                os.close(pidfd)
            elif fd in outputs:
                try:
                    data = os.read(fd, 65536)
                except OSError as e:  # EIO: the pty's last holder closed it
                    if e.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    del outputs[fd]
                elif client is not None and not _send(
                        client, data if outputs[fd] == 0 else frame(outputs[fd], data)):
                    client = None
            elif fd == ctl.fileno():
                controls.append(ctl.accept()[0])
            elif client is not None and fd == client.fileno():
                stdin_w = _feed(client, stdin_w, tty, owned)
            else:
                conn = next(c for c in controls if c.fileno() == fd)
                line = conn.recv(256)
                if not line:
                    controls.remove(conn)
                    conn.close()
                elif tty:
                    for one in line.splitlines():
                        set_size(next(iter(io.outputs)), one)
    for conn in controls:
        conn.close()
    for fd in owned:
        os.close(fd)
    assert status is not None
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else \
        128 + os.WTERMSIG(status)


def _feed(client: socket.socket, stdin_w: int, tty: bool, owned: set[int]) -> int:
    """Pass the client's bytes to stdin; at its half-close end stdin (without a TTY). The fd
    left (-1: none)."""
    try:
        data = client.recv(65536)
    except OSError:
        data = b""
    if data:
        try:
            os.write(stdin_w, data)
            return stdin_w
        except OSError:
            return -1  # the process closed its stdin
    if not tty:
        os.close(stdin_w)
        owned.discard(stdin_w)
    # With a TTY the client's end of input (a detach, a closed connection) only ends its
    # attachment, as Docker's: the process keeps its terminal and runs on.
    return -1
