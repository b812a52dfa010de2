"""Witness every container process the kernel starts, through the proc connector.

The kernel multicasts an event for every successful execve on the host (netlink
connector, CN_IDX_PROC; root only). The observer keeps the ones that are the init (PID 1
of their own pid namespace) of a container cgroup under this engine's cgroup parent: one
such exec is one spawn of that container, whatever the engine recorded. Comparing these
spawns with the journal's ContainerStarted facts shows a process started twice, or
started without the journal knowing, which no amount of reading the engine's own state
would show.

An exec whose process is gone before its /proc entry can be read cannot be attributed
(it is counted, whoever's it was), and a receive buffer overrun (the kernel dropped
events) is counted too: an overrun makes the spawn check incomplete, and the report
says so.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from dataclasses import dataclass

from tests.chaos.hostprobe import proc_info

__all__ = ["Spawn", "SpawnObserver", "available"]

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT_EXEC = 0x00000002
NLMSG_DONE = 3
SO_RCVBUFFORCE = 33
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp
_EXEC = struct.Struct("=II")  # pid, tgid


@dataclass(frozen=True)
class Spawn:
    """One container init the kernel exec'd."""

    cid: str
    pid: int
    ticks: int
    exec_ms: int  # wall-clock ms of the exec, comparable with stream ids (same host clock)


def available() -> str | None:
    """Return why the proc connector cannot be used here (None: it can)."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR) as s:
            s.bind((0, CN_IDX_PROC))
    except OSError as exc:
        return f"netlink proc connector: {exc}"
    return None


class SpawnObserver:
    """Collect the container inits exec'd under one cgroup parent, in a thread."""

    def __init__(self, cgroup_parent: str) -> None:
        self.parent = cgroup_parent
        self.spawns: list[Spawn] = []
        self.unreadable = 0  # host execs gone before /proc could be read (anyone's)
        self.overruns = 0  # the kernel dropped events (ENOBUFS)
        self.failure: OSError | None = None  # the socket failed: nothing seen after
        self._seen: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Subscribe to the kernel's process events and start collecting."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        # A burst of host execs must not overflow the queue while we read /proc.
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        sock.bind((0, CN_IDX_PROC))
        sock.send(self._control(PROC_CN_MCAST_LISTEN))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._loop, name="chaos-observer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Unsubscribe and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            try:
                self._sock.send(self._control(PROC_CN_MCAST_IGNORE))
            except OSError:
                pass
            self._sock.close()
            self._sock = None

    def snapshot(self) -> list[Spawn]:
        with self._lock:
            return list(self.spawns)

    @staticmethod
    def _control(op: int) -> bytes:
        payload = struct.pack("=I", op)
        cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
        return _NLMSG.pack(_NLMSG.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn

    def _loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    with self._lock:
                        self.overruns += 1
                    continue
                if not self._stop.is_set():
                    self.failure = exc  # the run reports the spawn check as incomplete
                return
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        offset = 0
        while offset + _NLMSG.size <= len(data):
            length = _NLMSG.unpack_from(data, offset)[0]
            if length < _NLMSG.size:
                return
            body = offset + _NLMSG.size + _CN_MSG.size
            if body + _EVENT.size + _EXEC.size <= offset + length:
                what, _cpu, stamp = _EVENT.unpack_from(data, body)
                if what == PROC_EVENT_EXEC:
                    pid, tgid = _EXEC.unpack_from(data, body + _EVENT.size)
                    if pid == tgid:
                        self._on_exec(pid, stamp)
            offset += (length + 3) & ~3  # NLMSG_ALIGN

    def _on_exec(self, pid: int, stamp: int) -> None:
        info = proc_info(pid, self.parent)
        if info is None:
            # Gone before its cgroup could be read: nobody can say whose it was. The
            # workload's container processes live at least 0.2 s, so this is rare.
            with self._lock:
                self.unreadable += 1
            return
        if info.cid is None or not info.ns_init:
            return
        key = (pid, info.ticks)
        with self._lock:
            if key in self._seen:
                return  # the same process exec'd again (sh -c 'exec …')
            self._seen.add(key)
            # The kernel stamps events with CLOCK_MONOTONIC: convert to wall-clock time,
            # the clock Redis stamps stream ids with on this same host.
            wall = time.time_ns() - (time.monotonic_ns() - stamp)
            self.spawns.append(Spawn(info.cid, pid, info.ticks, wall // 1_000_000))
