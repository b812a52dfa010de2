"""Inject faults into the running engine, each confirmed on the host where it was aimed.

A `FaultPoint` records what was hit (the pid, its role, the lease epoch, the jobs or
commands in flight), the evidence that it happened (the exit status of the pid killed,
the process state after SIGSTOP, the lease seen to move, the exits seen on disk while
the engine was down) and the window during which the engine was impaired. A fault whose
aim could not be confirmed is reported as such: a fault test must not pass because the
fault never happened.

Kinds: kill-reducer, kill-worker, kill-supervisor, kill-redis (restarted on its AOF),
stop-leader (SIGSTOP past the lease, a standby takes over, SIGCONT), pause-redis
(unreachable for a while), engine-restart (everything stopped while containers exit),
reboot (every process killed, every mount, namespace, link, rule and cgroup gone, then
the engine starts; judged against Docker's restore rules).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis as redislib
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from engine.errors import MoorError
from engine.snapshot import load_world
from tests.chaos import hostprobe, restore
from tests.chaos.journal import Violation
from tests.chaos.rig import ChaosEngine, new_boot_id
from tests.chaos.workload import Gate, RecordingClient, Registry, Shape
from tests.e2e.conftest import wait_for

__all__ = ["KINDS", "FaultPoint", "Injector"]

KINDS = ("kill-worker", "kill-supervisor", "kill-reducer", "stop-leader", "pause-redis",
         "kill-redis", "engine-restart", "reboot")


@dataclass
class FaultPoint:
    """One injected fault: where it was aimed and the evidence that it happened."""

    kind: str
    at: float  # seconds since the run started
    target: str
    evidence: str
    confirmed: bool
    window: tuple[float, float] = (0.0, 0.0)  # monotonic: the engine impaired
    round: int = 1

    def render(self) -> str:
        mark = "confirmed" if self.confirmed else "NOT CONFIRMED"
        return (f"round {self.round} t+{self.at:5.1f}s {self.kind:16} {mark}: {self.target}; "
                f"{self.evidence}")


class Injector:
    """Inject faults one at a time; record each point and any rule it showed broken."""

    def __init__(self, engine: ChaosEngine, client: RecordingClient, registry: Registry,
                 gate: Gate, rng: random.Random, t0: float, *, restore_window: float,
                 round_no: int = 1) -> None:
        self.engine = engine
        self.client = client
        self.registry = registry
        self.gate = gate
        self.rng = rng
        self.t0 = t0
        self.restore_window = restore_window
        self.round_no = round_no
        self.points: list[FaultPoint] = []
        self.violations: list[Violation] = []
        self.killed_runs: list[tuple[str, int]] = []  # (cid, generation) whose supervisor died
        self.made = 0

    @property
    def lease_s(self) -> float:
        return self.engine.lease_ms / 1000

    def inject(self, kind: str) -> FaultPoint:
        """Inject one fault of a kind; return its point (also kept in `points`)."""
        start = time.monotonic()
        handler = getattr(self, "_" + kind.replace("-", "_"))
        with self.engine.lock:  # the monitor must not restart what a fault stopped
            try:
                target, evidence, confirmed = handler()
            except (AssertionError, MoorError, OSError, subprocess.SubprocessError,
                    redislib.RedisError) as exc:
                target, evidence, confirmed = "?", f"injection failed: {exc}", False
                self._recover()  # what the fault ended must not stay down
        point = FaultPoint(kind, start - self.t0, target, evidence, confirmed,
                           (start, time.monotonic()), self.round_no)
        self.points.append(point)
        return point

    # --- programs -------------------------------------------------------------------------

    def _kill_reducer(self) -> tuple[str, str, bool]:
        eng = self.engine
        pid, epoch = eng.wait_leader(10 + 3 * self.lease_s)
        slot = eng.slot_of(pid)
        proc = eng.reducers[slot]
        assert proc is not None
        pending = sum(eng.redis.xpending(stream, "reducer")["pending"]
                      for stream in (eng.keys.commands, eng.keys.reports)
                      if eng.redis.exists(stream))
        status = eng.end(proc, signal.SIGKILL)
        new_pid, new_epoch = eng.wait_leader(10 + 3 * self.lease_s, other_than=pid,
                                             epoch_above=epoch)
        eng.start_reducer_slot(slot)
        return (f"leader reducer{slot} pid {pid} (epoch {epoch}), {pending} commands pending",
                f"exit status {status}; pid {new_pid} leads with epoch {new_epoch}",
                status == -signal.SIGKILL and new_epoch > epoch)

    def _kill_worker(self) -> tuple[str, str, bool]:
        eng = self.engine
        assert eng.worker is not None
        pid = eng.worker.pid
        # Aim at a job in progress: wait a little for this worker to start one.
        deadline = time.monotonic() + 3
        jobs = self._jobs_of(pid)
        while not jobs and time.monotonic() < deadline:
            time.sleep(0.005)
            jobs = self._jobs_of(pid)
        status = eng.end(eng.worker, signal.SIGKILL)
        eng.start_worker()
        return (f"worker pid {pid}, jobs in progress {jobs or 'none'}",
                f"exit status {status}; worker pid {eng.worker.pid} registered",
                status == -signal.SIGKILL)

    def _jobs_of(self, pid: int) -> list[str]:
        """Return the jobs rq lists as started by the worker with this pid."""
        eng = self.engine
        names = [key.decode().rsplit(":", 1)[-1]
                 for key in eng.redis.smembers(f"rq:workers:{eng.keys.queue}")
                 if eng.redis.hget(key, "pid") == str(pid).encode()]
        registry = StartedJobRegistry(eng.keys.queue, connection=eng.redis,
                                      serializer=JSONSerializer)
        return [job for job in registry.get_job_ids(cleanup=False)
                if eng.redis.hget(f"rq:job:{job}", "worker_name") in
                {n.encode() for n in names}]

    def _kill_supervisor(self) -> tuple[str, str, bool]:
        eng = self.engine
        world, _ = load_world(eng.redis, eng.keys)
        running = sorted(c.id for c in world.containers.values()
                         if c.running and not c.restarting and c.pid and not c.saga)
        sups = eng.supervisors()
        candidates = [cid for cid in running if cid in sups]
        if not candidates:
            cid = self._make(("sleep", "3600"), "no")
            world, _ = load_world(eng.redis, eng.keys)
            sups = eng.supervisors()
            candidates = [cid] if cid in sups else []
        assert candidates, "no running container with a live supervisor to aim at"
        cid = self.rng.choice(candidates)
        ctr = world.containers[cid]
        pid, ticks = sups[cid]
        child_ticks = hostprobe.start_ticks(ctr.pid)
        os.kill(pid, signal.SIGKILL)
        died = _gone(pid, ticks, 3)
        child_died = child_ticks is None or _gone(ctr.pid, child_ticks, 3)
        self.killed_runs.append((cid, ctr.generation))
        return (f"supervisor pid {pid} of {cid[:12]} generation {ctr.generation} "
                f"(process {ctr.pid})",
                f"supervisor dead: {died}, container process dead: {child_died}",
                died and child_died)

    def _stop_leader(self) -> tuple[str, str, bool]:
        eng = self.engine
        pid, epoch = eng.wait_leader(10 + 3 * self.lease_s)
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped = bool(wait_for(lambda: hostprobe.proc_state(pid) == "T", 2,
                                    "the leader to stop"))
            new_pid, new_epoch = eng.wait_leader(10 + 3 * self.lease_s, other_than=pid,
                                                 epoch_above=epoch)
            time.sleep(self.lease_s)  # well past its lease: it must wake up deposed
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = bool(wait_for(lambda: hostprobe.proc_state(pid) not in ("T", ""), 2,
                                "the old leader to resume"))
        return (f"leader pid {pid} (epoch {epoch}) SIGSTOPped",
                f"stopped: {stopped}; pid {new_pid} took over with epoch {new_epoch}; "
                f"SIGCONT, resumed: {resumed}",
                stopped and resumed and new_epoch > epoch)

    # --- redis ------------------------------------------------------------------------------

    def _kill_redis(self) -> tuple[str, str, bool]:
        eng = self.engine
        assert eng.server is not None
        length, last = eng.redis.xlen(eng.keys.events), eng.last_event_id()
        pid = eng.server.pid
        status = eng.kill_redis(signal.SIGKILL)
        eng.restart_redis()
        after = eng.redis.xlen(eng.keys.events)
        kept = bool(eng.redis.xrange(eng.keys.events, min=last, max=last))
        return (f"redis-server pid {pid} with {length} events (last {last})",
                f"exit status {status}; restarted as pid {eng.server.pid} on port "
                f"{eng.server.port} with {after} events, last one kept: {kept}",
                status == -signal.SIGKILL and after >= length and kept)

    def _pause_redis(self) -> tuple[str, str, bool]:
        eng = self.engine
        assert eng.server is not None
        pid = eng.server.pid
        pause = 1.5 * self.lease_s
        os.kill(pid, signal.SIGSTOP)
        try:
            # The stop is delivered asynchronously: see it happen, then see PING fail.
            stopped = _within(lambda: hostprobe.proc_state(pid) == "T", 2) \
                and not eng.redis_probe(0.3)
            time.sleep(pause)
        finally:
            os.kill(pid, signal.SIGCONT)
        back = bool(wait_for(lambda: eng.redis_probe(1.0), 10, "Redis to answer again"))
        return (f"redis-server pid {pid} SIGSTOPped for {pause:.1f}s",
                f"unreachable while stopped: {stopped}; answering after SIGCONT: {back}",
                stopped and back)

    # --- the whole engine ---------------------------------------------------------------------

    def _engine_restart(self) -> tuple[str, str, bool]:
        """Stop everything (as stopping `moor up` does) while containers are about to exit."""
        eng = self.engine
        quiet = self.gate.close(60)
        aims: list[str] = []
        exited: list[str] = []
        redis_status: int | None = None
        try:
            aims = [self._make(("sh", "-c", "sleep 1.5; exit 3"), "always") for _ in range(2)]
            eng.stop_all()
            redis_status = eng.kill_redis(signal.SIGTERM)
            exits = [os.path.join(eng.state_dir(cid), "exit.json") for cid in aims]
            _within(lambda: all(map(os.path.exists, exits)), 6)
            exited = [cid for cid, path in zip(aims, exits, strict=True) if os.path.exists(path)]
            time.sleep(0.5)
        finally:
            try:
                self._recover()
            finally:
                self.gate.open()
        pid, epoch = eng.wait_leader(10 + 3 * self.lease_s)
        return (f"reducers, worker and redis stopped (redis exit {redis_status}), drivers "
                f"quiet: {quiet}; aimed {[a[:12] for a in aims]}",
                f"exited while down: {[x[:12] for x in exited]}; pid {pid} leads "
                f"(epoch {epoch}) after the restart",
                len(exited) == len(aims))

    def _reboot(self) -> tuple[str, str, bool]:
        """Kill every process, drop every kernel resource, start the engine; judge §5.4."""
        eng = self.engine
        quiet = self.gate.close(60)
        try:
            for proc in eng.programs():
                eng.end(proc, signal.SIGKILL)
            # No reducer runs now: this is the state Docker would persist at the crash.
            world, _ = load_world(eng.redis, eng.keys)
            mark = eng.last_event_id()
            killed, survivors = self._kill_host_processes()
            saved = self._saved_exits(world)
            redis_status = eng.kill_redis(signal.SIGKILL)
            try:
                left = self._drop_kernel_state(set(world.containers))
            except (OSError, MoorError, subprocess.SubprocessError) as exc:
                left = [f"dropping kernel state failed: {exc}"]
            new_boot_id(eng.env["MOOR_BOOT_ID_FILE"])  # the kernel comes back with a new one
            self._recover()  # the worker registers after its reconcile
            eng.wait_leader(10 + 3 * self.lease_s)
            expectations = restore.expect(world, saved, due_within=self.restore_window)
            self.violations += restore.judge(eng.redis, eng.keys, mark, expectations,
                                             self.restore_window)
        finally:
            try:
                self._recover()
            finally:
                self.gate.open()
        return (f"{len(killed)} processes killed (supervisors and containers), "
                f"{len(world.containers)} containers, drivers quiet: {quiet}",
                f"survivors {survivors or 'none'}; redis exit {redis_status}; kernel state "
                f"left {left or 'none'}; {len(expectations)} restore expectations judged",
                not survivors and not left and redis_status == -signal.SIGKILL)

    def _kill_host_processes(self) -> tuple[list[int], list[int]]:
        """SIGKILL supervisors (first: none may save a status), then container processes."""
        eng = self.engine
        victims = [pid for pid, _ in eng.supervisors().values()]
        victims += [p for p in eng.our_processes() if p not in victims]  # stop helpers too
        for pid in victims:
            _kill(pid)
        for pids in hostprobe.container_pids(eng.cgroup_parent).values():
            for pid in pids:
                _kill(pid)
                victims.append(pid)
        time.sleep(0.2)
        survivors = [p for p in victims if hostprobe.start_ticks(p) is not None]
        survivors += [p for ps in hostprobe.container_pids(eng.cgroup_parent).values()
                      for p in ps]
        return victims, survivors

    def _saved_exits(self, world: Any) -> dict[str, int | None]:
        """Return, per container running at the reboot, the exit code saved on disk."""
        from commands.codec import CODEC

        saved: dict[str, int | None] = {}
        for ctr in world.containers.values():
            if ctr.running and not ctr.restarting:
                path = os.path.join(self.engine.state_dir(ctr.id), "exit.json")
                try:
                    with open(path, "rb") as f:
                        saved[ctr.id] = CODEC.exit_status(f.read()).exit_code
                except OSError:
                    saved[ctr.id] = None
        return saved

    def _drop_kernel_state(self, cids: set[str]) -> list[str]:
        """Unmount, delete namespaces, links, rules, the bridge and cgroups: a reboot."""
        from workers.net import portmap

        eng = self.engine
        for mount in sorted(hostprobe.mounts_under(eng.data_root), reverse=True):
            if subprocess.run(["umount", mount], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mount], capture_output=True)
        for cid in sorted(cids):
            for name in hostprobe.netns_entries(cid):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)
            for link in hostprobe.links_matching(cid):
                subprocess.run(["ip", "link", "delete", link], capture_output=True)
            portmap.release_ports(cid)
        portmap.release_chains(eng.bridge_config())
        # A reboot asks nobody: the bridge goes whatever its tag says (its name is the run's).
        subprocess.run(["ip", "link", "delete", eng.bridge], capture_output=True)
        for base in hostprobe.cgroup_parent_dirs(eng.cgroup_parent):
            for entry in os.scandir(base):
                if entry.is_dir():
                    _rmdir(entry.path)
            _rmdir(base)
        left = [f"mount {m}" for m in hostprobe.mounts_under(eng.data_root)]
        for cid in sorted(cids):
            left += [f"netns {n}" for n in hostprobe.netns_entries(cid)]
            left += [f"link {n}" for n in hostprobe.links_matching(cid)]
        left += [f"cgroup {d}" for d in hostprobe.cgroup_parent_dirs(eng.cgroup_parent)]
        if os.path.exists(f"/sys/class/net/{eng.bridge}"):
            left.append(f"bridge {eng.bridge}")
        return left

    # --- helpers ------------------------------------------------------------------------------

    def _make(self, cmd: tuple[str, ...], policy: str) -> str:
        """Create and start a container the fault aims at (it joins the workload after)."""
        self.made += 1
        shape = Shape(cmd=cmd, policy=policy)
        config, host = shape.configs()
        cid = self.client.create(config, host, name=f"chaos-{self.engine.token}-aim-{self.made}")
        self.registry.add(cid, shape)
        self.client.start(cid)
        return cid

    def _recover(self) -> None:
        """Bring back whatever a fault left down: Redis, both reducers, the worker."""
        eng = self.engine
        if eng.server is not None and eng.server.proc.poll() is not None:
            eng.restart_redis()
        eng.start_all()


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # still busy: the check after the drop reports it


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _within(cond: Callable[[], bool], timeout: float) -> bool:
    """Poll cond until true or timeout; return its last value."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _gone(pid: int, ticks: int, timeout: float) -> bool:
    """Wait until the process incarnation (pid, ticks) no longer runs."""
    deadline = time.monotonic() + timeout
    while hostprobe.start_ticks(pid) == ticks:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
