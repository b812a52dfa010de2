"""Escalate a stop to SIGKILL from inside the supervisor, once its deadline passes.

``process.request_stop`` signals the container, records a ``StopRequest`` in
``stop.json`` and sends the supervisor ``process.WAKE_SIGNAL``. ``listen``
turns that signal into a readable pipe (the supervisor polls it with the
container's output); ``Escalation`` then reads the request, keeps the earliest
deadline of the current run and SIGKILLs the process when it passes.
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType

import _signal

from workers.proc import process

__all__ = ["Escalation", "listen"]

_WAKE = int(process.WAKE_SIGNAL)


def _wake(signum: int, frame: FrameType | None) -> None:
    """Do nothing: the wakeup fd has already told the poll loop."""


def listen() -> int:
    """Route the wake-up signal into a pipe and return its read end (call in the main thread)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    _signal.signal(_WAKE, _wake)  # not signal.signal: its enum wrapper touches many pages
    return read_fd


class Escalation:
    """The SIGKILL deadline of one run, armed from stop.json when the supervisor is woken."""

    def __init__(self, state_dir: str, started_at_ns: int, wake_fd: int) -> None:
        """Watch stop requests for the run started at started_at_ns; wake_fd comes from listen."""
        self._state_dir = state_dir
        self._started_at_ns = started_at_ns
        self._wake_fd = wake_fd
        self.deadline_ns: int | None = None
        self.signal = 0  # what the armed request sent first
        self._check()  # a request may have landed before the run was being watched

    def fileno(self) -> int:
        """Return the descriptor to poll for wake-ups."""
        return self._wake_fd

    def on_wake(self) -> None:
        """Drain the wake-up pipe and arm the deadline of a new stop request."""
        try:
            while os.read(self._wake_fd, 256):
                pass
        except BlockingIOError:
            pass
        self._check()

    def _check(self) -> None:
        request = process.read_stop_request(self._state_dir)
        if request is None or request.started_at_ns != self._started_at_ns:
            return  # none, or a previous run's
        if self.deadline_ns is None or request.deadline_ns < self.deadline_ns:
            self.deadline_ns, self.signal = request.deadline_ns, request.signal

    def timeout_ms(self) -> int | None:
        """Return how long to poll before the deadline (rounded up), None when unarmed."""
        if self.deadline_ns is None:
            return None
        return max(0, -(-(self.deadline_ns - time.monotonic_ns()) // 1_000_000))

    def fire_if_due(self, pidfd: int) -> bool:
        """SIGKILL the process behind pidfd if the deadline has passed; True if it did."""
        if self.deadline_ns is None or time.monotonic_ns() < self.deadline_ns:
            return False
        self.deadline_ns = None
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True
