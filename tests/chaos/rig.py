"""The engine under test: a private redis-server, two reducers, a worker, and their control.

`ChaosEngine` extends the end-to-end `Engine` (the same programs, `python -m moor.cli
reducer|worker`, the same driving and reading helpers) with what faults need: two reducer
slots (one leads, one stands by), Redis that can be killed and restarted on its port and
AOF directory, the pids the harness ended on purpose (so a crash is told from a fault),
and a program monitor that records a crash and restarts the program, as a service
manager would.

Every name is unique to the run (key prefix, bridge, subnet in 10.213.0.0/16, cgroup
parent, data root); everything is stopped by PID, never by name.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redislib
from redis.backoff import NoBackoff
from redis.retry import Retry

from commands.client import Client
from engine.keys import keys_for
from tests.chaos import hostprobe
from tests.conftest import RedisServer, start_redis
from tests.e2e.conftest import (
    Engine,
    _networks,
    check_capabilities,
    pick_subnet,
    proc_env,
    program_env,
    require_busybox,
    stop_process,
    wait_for,
)
from tests.imagebuild import busybox_rootfs_tar

__all__ = ["ChaosEngine", "new_boot_id", "start_engine", "wait_quiet"]

Popen = subprocess.Popen[bytes]


@dataclass
class ChaosEngine(Engine):
    """An isolated engine with two reducer slots and a Redis the harness owns."""

    server: RedisServer | None = None
    redis_dir: str = ""
    cgroup_parent: str = ""
    lease_ms: int = 2000
    reducers: list[Popen | None] = field(default_factory=lambda: [None, None])
    expected_exits: set[int] = field(default_factory=set)  # pids the harness ended
    crashes: list[str] = field(default_factory=list)  # programs that died by themselves
    # Other moorage engines' workers seen on this host during the run (pid -> prefix),
    # reported so that a finding can be told apart from a neighbour's doing.
    neighbours: dict[int, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    t0: float = field(default_factory=time.monotonic)  # the round's start, for "t+" times
    round_no: int = 1
    _monitor_stop: threading.Event = field(default_factory=threading.Event)
    _monitor: threading.Thread | None = None

    # --- programs ---------------------------------------------------------------------

    def start_reducer_slot(self, slot: int) -> Popen:
        """Start `moor reducer` in a slot (it stands by until it holds the lease)."""
        proc = self._spawn(f"reducer{slot}", [sys.executable, "-m", "moor.cli", "reducer",
                                              "--lease-ms", str(self.lease_ms)])
        self.reducers[slot] = proc
        return proc

    def programs(self) -> list[Popen]:
        return [p for p in (*self.reducers, self.worker) if p is not None]

    def end(self, proc: Popen, sig: int = signal.SIGKILL, timeout: float = 15) -> int:
        """Send sig to one of our programs, expecting its end; return its exit status."""
        self.expected_exits.add(proc.pid)
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # it ignored sig: it must not outlive the fault
            return proc.wait(timeout=10)

    def stop_all(self) -> None:
        """Stop the worker and both reducers cleanly (SIGTERM, by pid)."""
        for proc in (self.worker, *self.reducers):
            if proc is not None and proc.poll() is None:
                self.expected_exits.add(proc.pid)
                stop_process(proc)

    def _ended_by_us(self, proc: Popen | None) -> bool:
        return proc is None or (proc.poll() is not None and proc.pid in self.expected_exits)

    def start_all(self) -> None:
        """Start again the programs the harness ended (a crashed one is the monitor's:
        it records the crash before restarting it)."""
        for slot in range(len(self.reducers)):
            if self._ended_by_us(self.reducers[slot]):
                self.start_reducer_slot(slot)
        if self._ended_by_us(self.worker):
            self.start_worker()

    def leader(self) -> tuple[int | None, int]:
        """Return (pid of the lease holder, fencing epoch) as Redis says now."""
        owner = self.redis.get(self.keys.lease)
        epoch = int(self.redis.get(self.keys.epoch) or 0)
        if owner is None:
            return None, epoch
        # The owner token is "host:pid:random"; match it against our reducers' pids.
        parts = owner.decode().split(":")
        for proc in self.reducers:
            if proc is not None and str(proc.pid) in parts:
                return proc.pid, epoch
        return None, epoch

    def slot_of(self, pid: int) -> int:
        for slot, proc in enumerate(self.reducers):
            if proc is not None and proc.pid == pid:
                return slot
        raise KeyError(pid)

    def wait_leader(self, timeout: float, *, other_than: int | None = None,
                    epoch_above: int = 0) -> tuple[int, int]:
        """Wait until one of our reducers holds the lease (another than `other_than`)."""
        def led() -> tuple[int, int] | None:
            pid, epoch = self.leader()
            if pid is not None and pid != other_than and epoch > epoch_above:
                return pid, epoch
            return None

        found: tuple[int, int] = wait_for(led, timeout, "a reducer to lead",
                                          lambda: self.log_tail("reducer0") + "\n"
                                          + self.log_tail("reducer1"))
        return found

    # --- the monitor: a crash is recorded and the program restarted ----------------------

    def start_monitor(self) -> None:
        self._monitor_stop.clear()
        self._monitor = threading.Thread(target=self._watch, name="chaos-monitor",
                                         daemon=True)
        self._monitor.start()

    def stop_monitor(self) -> None:
        self._monitor_stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=60)

    def _watch(self) -> None:
        passes = 0
        while not self._monitor_stop.wait(0.25):
            with self.lock:
                self._restart_crashed()
            if passes % 8 == 0:
                self.note_neighbours()
            passes += 1

    def note_neighbours(self) -> None:
        """Remember the workers of other moorage engines running on this host now."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                title = Path("/proc", entry, "cmdline").read_bytes()
            except OSError:
                continue
            if not title.startswith((b"moor worker", b"moor up")):
                continue
            prefix = proc_env(int(entry)).get("MOOR_PREFIX", "moor:v1")
            if prefix != self.env["MOOR_PREFIX"]:
                self.neighbours[int(entry)] = prefix

    def _restart_crashed(self) -> None:
        for slot, proc in enumerate(self.reducers):
            if proc is not None and proc.poll() is not None \
                    and proc.pid not in self.expected_exits:
                self._crashed(f"reducer{slot}", proc)
                self.start_reducer_slot(slot)
        if self.worker is not None and self.worker.poll() is not None \
                and self.worker.pid not in self.expected_exits:
            self._crashed("worker", self.worker)
            try:
                self.start_worker()
            except AssertionError as exc:  # recorded; the next pass tries again
                self.crashes.append(f"worker restart failed: {exc}")

    def _crashed(self, name: str, proc: Popen) -> None:
        self.expected_exits.add(proc.pid)
        self.crashes.append(f"{name} pid {proc.pid} exited by itself with {proc.returncode} "
                            f"(seen in round {self.round_no} at "
                            f"t+{time.monotonic() - self.t0:.1f}s)\n"
                            f"{self.log_tail(name, 40)}")

    # --- redis ----------------------------------------------------------------------------

    def kill_redis(self, sig: int = signal.SIGKILL) -> int:
        """End redis-server (SIGKILL: a crash; SIGTERM: a clean stop); return its status."""
        assert self.server is not None
        self.server.proc.send_signal(sig)
        return self.server.proc.wait(timeout=30)

    def restart_redis(self) -> None:
        """Start redis-server again on the same port and AOF directory."""
        assert self.server is not None
        self.server = start_redis(self.redis_dir, port=self.server.port)

    def redis_probe(self, timeout: float = 0.5) -> bool:
        """Tell whether Redis answers a PING within timeout (a fresh connection)."""
        assert self.server is not None
        probe = redislib.Redis(host="127.0.0.1", port=self.server.port,
                               socket_timeout=timeout, socket_connect_timeout=timeout,
                               retry=Retry(NoBackoff(), 0))  # one try: the answer is the probe
        try:
            return bool(probe.ping())
        except redislib.RedisError:
            return False
        finally:
            probe.close()

    # --- host ------------------------------------------------------------------------------

    def supervisors(self) -> dict[str, tuple[int, int]]:
        """Return each container's live supervisor (pid, start ticks) from its state dir."""
        found = {}
        base = os.path.join(self.data_root, "containers")
        for cid in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            pid = self.supervisor_pid(cid)
            if pid is None:
                continue
            ticks = hostprobe.start_ticks(pid)
            try:
                recorded = Path(self.state_dir(cid), "supervisor.pid").read_text().split()
            except OSError:
                continue
            if ticks is not None and len(recorded) > 1 and int(recorded[1]) == ticks:
                found[cid] = (pid, ticks)
        return found

    def bridge_config(self) -> Any:
        from workers.net.netconf import BridgeConfig

        return BridgeConfig(name=self.bridge, subnet=self.subnet)


def start_engine(*, lease_ms: int, reconcile_interval: int) -> ChaosEngine:
    """Start Redis, two reducers and a worker with unique names; import busybox."""
    check_capabilities()
    busybox = require_busybox()
    token = secrets.token_hex(3)
    workdir = tempfile.mkdtemp(prefix=f"moor-chaos-{token}-")
    redis_dir = os.path.join(workdir, "redis")
    data_root = os.path.join(workdir, "data")
    os.makedirs(redis_dir)
    os.makedirs(data_root)
    server = start_redis(redis_dir)
    prefix = f"moorchaos{token}"
    subnet = pick_subnet(token)
    env = program_env(server.url, data_root, prefix, subnet, f"moorch{token}",
                      MOOR_CGROUP_PARENT=f"moorchaos-{token}", MOOR_LOG_LEVEL="INFO",
                      MOOR_RECONCILE_INTERVAL=str(reconcile_interval),
                      # the kernel's boot id, as the worker reads it: a reboot rewrites it
                      MOOR_BOOT_ID_FILE=os.path.join(workdir, "boot_id"))
    new_boot_id(env["MOOR_BOOT_ID_FILE"])
    r = redislib.Redis.from_url(server.url)
    keys = keys_for(prefix=prefix)
    engine = ChaosEngine(token=token, env=env, redis=r, keys=keys,
                         client=Client(r, keys, actor="chaos", timeout=20),
                         data_root=data_root, workdir=workdir, bridge=env["MOOR_BRIDGE"],
                         subnet=subnet, server=server, redis_dir=redis_dir,
                         cgroup_parent=env["MOOR_CGROUP_PARENT"], lease_ms=lease_ms)
    try:
        engine.start_reducer_slot(0)
        wait_for(lambda: _networks(engine), 30, "the reducer to define the default network",
                 lambda: engine.log_tail("reducer0"))
        engine.start_reducer_slot(1)
        engine.start_worker()
        tar = busybox_rootfs_tar(os.path.join(workdir, "busybox.tar"), busybox)
        engine.image_id = engine.moor("image", "import", tar, "busybox:latest").stdout.strip()
        assert engine.image_id.startswith("sha256:"), engine.image_id
    except BaseException:
        from tests.chaos.cleanup import teardown

        teardown(engine, [])
        raise
    return engine


def wait_quiet(engine: ChaosEngine, timeout: float) -> bool:
    """Wait until the reducer has taken and acknowledged every entry of its inboxes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys = engine.keys
        if all(_stream_quiet(engine, stream)
               for stream in (keys.commands, keys.reports, keys.internal)):
            return True
        time.sleep(0.2)
    return False


def _stream_quiet(engine: ChaosEngine, stream: str) -> bool:
    try:
        if not engine.redis.exists(stream):
            return True
        groups = engine.redis.xinfo_groups(stream)
        tail = engine.redis.xrevrange(stream, count=1)
    except redislib.RedisError:
        return False
    last = tail[0][0] if tail else b"0-0"
    for group in groups:
        name = group["name"]
        name = name.decode() if isinstance(name, bytes) else name
        if name == "reducer" and group["pending"] == 0 and group["last-delivered-id"] == last:
            return True
    return False


def new_boot_id(path: str) -> str:
    """Write a fresh boot id where the engine's worker reads it (a simulated boot)."""
    boot = str(uuid.uuid4())
    with open(path, "w") as f:
        f.write(boot + "\n")
    return boot
