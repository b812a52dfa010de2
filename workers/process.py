"""The container process as recorded in its state dir: read, signal, stop.

The supervisor keeps these files in the container's state dir:

``supervisor.pid``  ``"<pid> <start ticks>"`` of the supervisor while it lives.
``pid``             ``"<pid> <start ticks> <started_at ns>"`` of the container
                    process (host pid) while it runs.
``exit.json``       the ``ExitStatus`` once the process is gone, written atomically
                    (fsynced) after the cgroup was released.
``exit.reported``   ``"<started_at ns>"`` of the run whose exit reached Redis.
``supervisor.log``  the supervisor's own diagnostics.

Start ticks are field 22 of ``/proc/<pid>/stat``: a pid is trusted only while
the process behind it has the recorded start time, so a reused pid is never
signalled. Signals go through a pidfd opened *before* that check.
"""

from __future__ import annotations

import os
import re
import select
import signal
import time

import msgspec

__all__ = [
    "EXIT_FILE", "PID_FILE", "REPORTED_FILE", "SUPERVISOR_PID_FILE", "ExitStatus", "InvalidSignal",
    "ProcRef", "exit_code_of", "is_alive", "parse_signal", "read_exit", "read_pid_file",
    "signal_container", "start_ticks", "stop_container", "supervisor_alive", "write_exit",
    "write_pid_file",
]

PID_FILE = "pid"
SUPERVISOR_PID_FILE = "supervisor.pid"
EXIT_FILE = "exit.json"
REPORTED_FILE = "exit.reported"
UNKNOWN_EXIT = 255  # Docker's exit code when the status was lost
KILL_WAIT = 10.0  # Docker waits this long for an exit after SIGKILL


class InvalidSignal(ValueError):
    """A signal name or number Docker would reject (HTTP 400)."""


class ExitStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How one run of the container process ended."""

    exit_code: int
    signal: int | None = None  # the signal that killed it, if any
    oom_killed: bool = False
    pid: int = 0
    started_at_ns: int = 0
    finished_at_ns: int = 0
    error: str | None = None  # set when the process never started (exec failed)


class ProcRef(msgspec.Struct, frozen=True):
    """A pid pinned to one process incarnation by its start time."""

    pid: int
    start_ticks: int
    started_at_ns: int = 0


_RT_SIGNAL = re.compile(r"(RTMIN|RTMAX)(?:([+-])(\d+))?")
_encoder = msgspec.json.Encoder()
_exit_decoder = msgspec.json.Decoder(ExitStatus)


def parse_signal(raw: str | int) -> int:
    """Parse "SIGTERM", "TERM", "term" or "15" to a signal number as Docker does."""
    text = str(raw).strip()
    if text.isdigit():
        number = int(text)
        if 0 < number <= signal.SIGRTMAX:
            return number
        raise InvalidSignal(f"invalid signal: {raw}")
    name = text.upper().removeprefix("SIG")
    if name.isalnum() and not name.startswith("RT"):
        sig = getattr(signal.Signals, "SIG" + name, None)
        if sig is not None:
            return int(sig)
    # Docker's table also names real-time signals: RTMIN, RTMIN+1..15, RTMAX-14..1, RTMAX.
    rt = _RT_SIGNAL.fullmatch(name)
    if rt:
        n = int(rt.group(3) or 0)
        if rt.group(1) == "RTMIN" and rt.group(2) in (None, "+") and n <= 15:
            return int(signal.SIGRTMIN) + n
        if rt.group(1) == "RTMAX" and rt.group(2) in (None, "-") and n <= 14:
            return int(signal.SIGRTMAX) - n
    raise InvalidSignal(f"invalid signal: {raw}")


def exit_code_of(wait_status: int) -> tuple[int, int | None]:
    """Turn a waitpid status into (exit code, signal), 128+n for a death by signal n."""
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return 128 + sig, sig
    return os.WEXITSTATUS(wait_status), None


def start_ticks(pid: int) -> int | None:
    """Return the start time of a live (non-zombie) pid in clock ticks, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parens: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
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


def write_exit(state_dir: str, status: ExitStatus) -> None:
    """Store the exit status durably and atomically."""
    _atomic_write(os.path.join(state_dir, EXIT_FILE), _encoder.encode(status) + b"\n",
                  durable=True)


def read_exit(state_dir: str) -> ExitStatus | None:
    """Return the recorded exit status, None if the process has not exited."""
    try:
        with open(os.path.join(state_dir, EXIT_FILE), "rb") as f:
            return _exit_decoder.decode(f.read())
    except FileNotFoundError:
        return None


def _open_pidfd(state_dir: str) -> int | None:
    """Open a pidfd on the recorded process, None unless it is that very incarnation."""
    ref = read_pid_file(os.path.join(state_dir, PID_FILE))
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
    return fd


def signal_container(state_dir: str, sig: int | str) -> bool:
    """Send sig to the container process; False when it is not running."""
    number = parse_signal(sig)
    fd = _open_pidfd(state_dir)
    if fd is None:
        return False
    try:
        signal.pidfd_send_signal(fd, number)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def _wait_pidfd(fd: int, timeout: float | None) -> bool:
    """Wait until the pidfd's process exits; True if it did within timeout."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else int(timeout * 1000)))


def _await_exit_code(state_dir: str, timeout: float = 5.0) -> int:
    """Wait for the supervisor to record the exit; 255 if it never will."""
    deadline = time.monotonic() + timeout
    while True:
        status = read_exit(state_dir)
        if status is not None:
            return status.exit_code
        if not supervisor_alive(state_dir) or time.monotonic() > deadline:
            status = read_exit(state_dir)  # it may have written just before exiting
            return status.exit_code if status is not None else UNKNOWN_EXIT
        time.sleep(0.002)


def stop_container(state_dir: str, stop_signal: str | int = "SIGTERM",
                   timeout: float | None = 10) -> int:
    """Send stop_signal, SIGKILL after timeout seconds (None/negative: never); return the exit code.

    Stopping a process that already exited just returns its recorded code, so a
    retried job gets the same answer.
    """
    number = parse_signal(stop_signal)
    fd = _open_pidfd(state_dir)
    if fd is not None:
        try:
            try:
                signal.pidfd_send_signal(fd, number)
            except ProcessLookupError:
                pass
            wait = None if timeout is None or timeout < 0 else timeout
            if not _wait_pidfd(fd, wait):
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _wait_pidfd(fd, KILL_WAIT)
        finally:
            os.close(fd)
    return _await_exit_code(state_dir)
