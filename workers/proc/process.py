"""The container process as recorded in its state dir: read, signal, stop.

The supervisor keeps these files in the container's state dir:

``supervisor.pid``  ``"<pid> <start ticks>"`` of the supervisor while it lives.
``pid``             ``"<pid> <start ticks> <started_at ns>"`` of the container
                    process (host pid) while it runs.
``exit.json``       the ``ExitStatus`` (``events.runs``) once the process is gone, atomically
                    after the cgroup was released; fsynced unless its report reached
                    Redis at the first attempt (then Redis holds the exit).
``exit.reported``   ``"<started_at ns>"`` of the run whose exit reached Redis.
``stop.json``       the ``StopRequest`` (``events.runs``) of a stop in progress: when to
                    SIGKILL.
``supervisor.log``  the supervisor's own diagnostics.

Start ticks are field 22 of ``/proc/<pid>/stat``: a pid is trusted only while
the process behind it has the recorded start time, so a reused pid is never
signalled. Signals go through a pidfd opened *before* that check.

A stop never blocks its caller: ``request_stop`` signals the process and
leaves the SIGKILL after the timeout to the supervisor (``workers.proc.stopper``),
which it wakes with ``WAKE_SIGNAL``; with no supervisor to wake, a detached
helper process does it.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import sys
import time

import msgspec

from commands.codec import CODEC
from events.runs import ExitStatus, StopRequest
from events.signals import parse_signal
from workers import nsutil

__all__ = [
    "EXIT_FILE", "PID_FILE", "REPORTED_FILE", "STOP_FILE", "SUPERVISOR_LOG", "SUPERVISOR_PID_FILE",
    "UNKNOWN_EXIT", "WAKE_SIGNAL",
    "ExitStatus", "ProcRef", "StopRequest", "exit_code_of", "is_alive", "read_exit",
    "read_pid_file", "read_stop_request", "reap_children", "request_stop", "signal_container",
    "start_ticks", "stop_container", "supervisor_alive", "sync_exit", "track_child", "write_exit",
    "write_pid_file", "write_stop_request",
]

PID_FILE = "pid"
SUPERVISOR_PID_FILE = "supervisor.pid"
EXIT_FILE = "exit.json"
REPORTED_FILE = "exit.reported"
STOP_FILE = "stop.json"
SUPERVISOR_LOG = "supervisor.log"
WAKE_SIGNAL = signal.SIGUSR1  # tells the supervisor to read stop.json
UNKNOWN_EXIT = 255  # Docker's exit code when the status was lost
KILL_WAIT = 10.0  # Docker waits this long for an exit after SIGKILL


class ProcRef(msgspec.Struct, frozen=True):
    """A pid pinned to one process incarnation by its start time."""

    pid: int
    start_ticks: int
    started_at_ns: int = 0




def exit_code_of(wait_status: int) -> tuple[int, int | None]:
    """Turn a waitpid status into (exit code, signal), 128+n for a death by signal n."""
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return 128 + sig, sig
    return os.WEXITSTATUS(wait_status), None


def start_ticks(pid: int) -> int | None:
    """Return the start time of a live (non-zombie) pid in clock ticks, else None."""
    try:  # a plain descriptor: fewer objects touched in a supervisor forked from the zygote
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        stat = os.read(fd, 4096)
    except ProcessLookupError:  # it exited between the open and the read
        return None
    finally:
        os.close(fd)
    # comm (field 2) may contain spaces and parens: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _atomic_write(path: str, data: bytes, durable: bool = False) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        _fsync_dir(os.path.dirname(path))


def _fsync_dir(path: str) -> None:
    """Make a rename in directory path durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_pid_file(path: str, ref: ProcRef) -> None:
    """Record a process incarnation atomically."""
    _atomic_write(path, f"{ref.pid} {ref.start_ticks} {ref.started_at_ns}\n".encode())


def read_pid_file(path: str) -> ProcRef | None:
    """Read a pid file; None when absent or unreadable."""
    try:
        with open(path) as f:
            parts = [int(p) for p in f.read().split()]
    except (FileNotFoundError, ValueError):
        return None
    if len(parts) < 2:
        return None
    return ProcRef(parts[0], parts[1], parts[2] if len(parts) > 2 else 0)


def _live(ref: ProcRef | None) -> bool:
    return ref is not None and start_ticks(ref.pid) == ref.start_ticks


def is_alive(state_dir: str) -> bool:
    """Tell whether the recorded container process still runs."""
    return _live(read_pid_file(os.path.join(state_dir, PID_FILE)))


def supervisor_alive(state_dir: str) -> bool:
    """Tell whether the container's supervisor still runs."""
    return _live(read_pid_file(os.path.join(state_dir, SUPERVISOR_PID_FILE)))


def write_exit(state_dir: str, status: ExitStatus, durable: bool = True) -> None:
    """Store the exit status atomically; durably (fsync, ~3 ms) unless durable=False.

    The supervisor writes it without fsync when the exit is about to reach Redis anyway,
    and makes it durable with ``sync_exit`` when that report fails.
    """
    _atomic_write(os.path.join(state_dir, EXIT_FILE), CODEC.json(status) + b"\n",
                  durable=durable)


def sync_exit(state_dir: str) -> None:
    """Make an exit.json written with durable=False durable (file, then its directory)."""
    fd = os.open(os.path.join(state_dir, EXIT_FILE), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(state_dir)


def read_exit(state_dir: str) -> ExitStatus | None:
    """Return the recorded exit status, None if the process has not exited."""
    try:
        with open(os.path.join(state_dir, EXIT_FILE), "rb") as f:
            return CODEC.exit_status(f.read())
    except FileNotFoundError:
        return None


def write_stop_request(state_dir: str, request: StopRequest) -> None:
    """Record a stop in progress atomically (not durably: it dies with the process anyway)."""
    _atomic_write(os.path.join(state_dir, STOP_FILE), CODEC.json(request) + b"\n")


def read_stop_request(state_dir: str) -> StopRequest | None:
    """Return the recorded stop request, None when there is none (or it is unreadable)."""
    try:
        with open(os.path.join(state_dir, STOP_FILE), "rb") as f:
            return CODEC.stop_request(f.read())
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def _open_pidfd(path: str) -> tuple[int, ProcRef] | None:
    """Open a pidfd on the process a pid file names, None unless it is that very incarnation."""
    ref = read_pid_file(path)
    if ref is None:
        return None
    try:
        fd = os.pidfd_open(ref.pid)
    except ProcessLookupError:
        return None
    # Checked after opening: the pidfd then pins the process that passed the check.
    if start_ticks(ref.pid) != ref.start_ticks:
        os.close(fd)
        return None
    return fd, ref


def _send(pidfd: int, sig: int) -> bool:
    """Send sig through a pidfd; False when the process is gone."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False


def signal_container(state_dir: str, sig: int | str) -> bool:
    """Send sig to the container process; False when it is not running.

    Raises ValueError (``invalid signal: <sig>``) for a signal Docker would reject.
    """
    number = parse_signal(sig)
    opened = _open_pidfd(os.path.join(state_dir, PID_FILE))
    if opened is None:
        return False
    try:
        return _send(opened[0], number)
    finally:
        os.close(opened[0])


def request_stop(state_dir: str, sig: int | str, timeout: float | None) -> bool:
    """Send sig to the container and have it SIGKILLed timeout seconds later; never blocks.

    The supervisor owns the escalation: the request goes to ``stop.json`` and
    the supervisor is woken to arm its timer (an earlier pending deadline of
    the same run stands). Without a supervisor to wake, a detached helper does
    it. None or a negative timeout never escalates. Returns False when the
    process is not running; raises ValueError for an invalid signal.
    """
    number = parse_signal(sig)
    deadline = None
    if timeout is not None and timeout >= 0 and number != signal.SIGKILL:
        deadline = time.monotonic_ns() + int(timeout * 1e9)
    opened = _open_pidfd(os.path.join(state_dir, PID_FILE))
    if opened is None:
        return False
    pidfd, ref = opened
    try:
        if not _send(pidfd, number):
            return False
        if deadline is not None:
            _hand_off(state_dir, pidfd, StopRequest(signal=number, deadline_ns=deadline,
                                                    started_at_ns=ref.started_at_ns))
        return True
    finally:
        os.close(pidfd)


def _hand_off(state_dir: str, pidfd: int, request: StopRequest) -> None:
    """Record the stop for the supervisor and wake it; fall back to a helper if it is gone."""
    pending = read_stop_request(state_dir)
    if pending is not None and pending.started_at_ns == request.started_at_ns \
            and pending.deadline_ns <= request.deadline_ns:
        request = pending  # the supervisor may not have read it yet: do not postpone it
    write_stop_request(state_dir, request)
    opened = _open_pidfd(os.path.join(state_dir, SUPERVISOR_PID_FILE))
    if opened is not None:
        try:
            if _send(opened[0], WAKE_SIGNAL):
                return
        finally:
            os.close(opened[0])
    _escalate_detached(pidfd, request.deadline_ns)


def _wait_pidfd(fd: int, timeout_ns: int | None) -> bool:
    """Wait until the pidfd's process exits; True if it did within timeout_ns."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    ms = None if timeout_ns is None else max(0, -(-timeout_ns // 1_000_000))  # rounded up
    return bool(poller.poll(ms))


def _escalate_detached(pidfd: int, deadline_ns: int) -> None:
    """SIGKILL pidfd's process at deadline_ns unless it exits first, from a helper process.

    The helper is detached as a supervisor is: a double fork, or one fork for a
    subreaper caller, which would adopt it anyway and reaps it through
    reap_children. It lives until the deadline at most.
    """
    direct = nsutil.is_child_subreaper()
    child = os.fork()
    if child == 0:  # never return into the caller's stack
        try:
            gc.disable()  # the caller's objects must not be finalized here (shared sockets)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_IGN)  # the caller's handlers are not ours
            nsutil.close_fds_except({pidfd})
            os.setsid()
            if (direct or os.fork() == 0) \
                    and not _wait_pidfd(pidfd, deadline_ns - time.monotonic_ns()):
                _send(pidfd, signal.SIGKILL)
        finally:
            os._exit(0)
    if direct:
        track_child(child)
    else:
        os.waitpid(child, 0)  # the intermediate process exits right after forking


_children: set[int] = set()  # detached processes forked directly by this (subreaper) process


def track_child(pid: int) -> None:
    """Remember a detached child for reap_children (a subreaper caller's supervisors, helpers)."""
    _children.add(pid)


def reap_children() -> int:
    """Reap the exited detached children this process forked directly; return how many.

    Only a subreaper caller gets direct children (see supervisor.spawn and
    request_stop); its reaping loop may call this, and every spawn does. A caller that
    runs a supervisor zygote also reaps (and replaces) it here if it died, adopting the
    supervisors it forked (``workers.proc.zygote.check``).
    """
    zygote = sys.modules.get("workers.proc.zygote")  # loaded only by callers that use one
    if zygote is not None:
        zygote.check()
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


def _await_exit_code(state_dir: str, timeout: float | None) -> int:
    """Wait for the supervisor to record the exit (None: however long); 255 if it never will."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = read_exit(state_dir)
        if status is not None:
            return status.exit_code
        if not supervisor_alive(state_dir) or deadline is not None and time.monotonic() > deadline:
            status = read_exit(state_dir)  # it may have written just before exiting
            return status.exit_code if status is not None else UNKNOWN_EXIT
        time.sleep(0.002)


def stop_container(state_dir: str, stop_signal: str | int = "SIGTERM",
                   timeout: float | None = 10) -> int:
    """Stop the process as request_stop does, then wait for its recorded exit code.

    Blocks until the exit (255 if it was lost): for the CLI and tests, not for
    the rq worker, which calls request_stop and hears the exit from the
    supervisor's report. Stopping a process that already exited just returns
    its recorded code, so a retry gets the same answer.
    """
    request_stop(state_dir, stop_signal, timeout)
    wait = None if timeout is None or timeout < 0 else timeout + KILL_WAIT
    return _await_exit_code(state_dir, wait)
