"""The seeded workload: driver threads running a lifecycle mix through the Python client.

Each driver draws its operations from its own `random.Random(f"{seed}-{index}")`, so a
seed names the same sequence of choices (which containers, commands, policies, exit
times); what the engine answers depends on timing, as it would in production.

Every command goes through `RecordingClient.submit`, which writes the `Ledger` the
invariants judge the engine by: the command id (chosen here, before sending), and either
the result the reducer returned (the command is acknowledged) or the error the client
raised instead (it may or may not have been applied). Every `rm -f` is timed.

The `Gate` lets a fault quiesce the drivers (no operation in flight) before it acts.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis as redislib

from commands import schema as c
from commands.client import Client, Submitted
from commands.codec import CommandResult
from engine.errors import Conflict, MoorError, NotFound, error_for_status
from events.specs import ContainerConfig, HostConfig, PortBinding, RestartPolicy
from tests.e2e.conftest import free_port

__all__ = ["Driver", "Gate", "Ledger", "Removal", "Registry", "RecordingClient", "Sent",
           "Shape"]


@dataclass
class Sent:
    """One command the workload submitted, and what it was told."""

    command_id: str
    kind: str
    target: str
    sent_at: float  # monotonic
    acked: bool = False
    result: CommandResult | None = None
    last_event_id: str = ""
    error: str = ""


@dataclass
class Removal:
    """One `rm -f` as the client saw it."""

    cid: str
    started: float  # monotonic
    ended: float
    outcome: str  # "destroyed" or the error


@dataclass
class Ledger:
    """Everything the workload sent and was told, shared by the driver threads."""

    sent: list[Sent] = field(default_factory=list)
    removals: list[Removal] = field(default_factory=list)
    ops: Counter[str] = field(default_factory=Counter)
    op_errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, item: Sent) -> None:
        with self.lock:
            self.sent.append(item)

    def count(self, counter: Counter[str], key: str) -> None:
        with self.lock:
            counter[key] += 1

    def acknowledged(self) -> list[Sent]:
        with self.lock:
            return [s for s in self.sent if s.acked]


class RecordingClient(Client):
    """The engine's client, writing every submission and its outcome to a ledger."""

    def __init__(self, redis: Any, keys: Any, ledger: Ledger, **kwargs: Any) -> None:
        super().__init__(redis, keys, **kwargs)
        self.ledger = ledger

    def submit(self, cmd: c.Command, *, container_id: str = "", command_id: str | None = None,
               reason: str | None = None, timeout: float | None = None,
               check: bool = True) -> Submitted:
        command_id = command_id or uuid.uuid4().hex
        target = getattr(cmd, "ref", "") or container_id
        item = Sent(command_id, type(cmd).__name__, target, time.monotonic())
        self.ledger.record(item)
        try:
            sub = super().submit(cmd, container_id=container_id, command_id=command_id,
                                 reason=reason, timeout=timeout, check=False)
        except (MoorError, redislib.RedisError) as exc:
            # Not acknowledged: it may have been applied, or not; never twice.
            item.error = f"{type(exc).__name__}: {exc}"
            raise
        item.result, item.last_event_id, item.acked = sub.result, sub.last_event_id, True
        if check and not sub.result.ok:
            raise error_for_status(sub.result.status, sub.result.message)
        return sub


class Gate:
    """Let drivers run operations while open; closing waits for those in flight."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = True
        self._busy = 0

    def enter(self, stop: threading.Event) -> bool:
        """Wait until open (False: stop was set meanwhile); then count us busy."""
        with self._cond:
            while not self._open:
                if stop.is_set():
                    return False
                self._cond.wait(0.2)
            self._busy += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Close, and wait until no operation is in flight; False if one outlived timeout."""
        with self._cond:
            self._open = False
            return self._cond.wait_for(lambda: self._busy == 0, timeout)

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()


@dataclass(frozen=True)
class Shape:
    """What a container runs and how it is configured."""

    cmd: tuple[str, ...]
    policy: str = "no"
    max_retry: int = 0
    auto_remove: bool = False
    network: str = "bridge"
    publish: bool = False

    def configs(self) -> tuple[ContainerConfig, HostConfig]:
        bindings: dict[str, tuple[PortBinding, ...]] = {}
        if self.publish:
            bindings = {"80/tcp": (PortBinding(host_port=str(free_port())),)}
        return (ContainerConfig(image="busybox", cmd=self.cmd, stop_timeout=1),
                HostConfig(network_mode=self.network, port_bindings=bindings,
                           auto_remove=self.auto_remove,
                           restart_policy=RestartPolicy(name=self.policy,
                                                        maximum_retry_count=self.max_retry)))


def draw_shape(rng: random.Random) -> Shape:
    """Draw a container: a long sleeper or a shell that exits at a random time."""
    if rng.random() < 0.35:
        cmd: tuple[str, ...] = ("sleep", "3600")
    else:
        cmd = ("sh", "-c", f"sleep {rng.uniform(0.2, 2.5):.2f}; exit {rng.choice((0, 1, 3))}")
    policy, max_retry, auto_remove = rng.choices(
        [("no", 0, False), ("always", 0, False), ("unless-stopped", 0, False),
         ("on-failure", 0, False), ("on-failure", 2, False), ("no", 0, True)],
        weights=[30, 20, 15, 10, 10, 15])[0]
    network = "none" if rng.random() < 0.15 else "bridge"
    return Shape(cmd=cmd, policy=policy, max_retry=max_retry, auto_remove=auto_remove,
                 network=network, publish=network == "bridge" and rng.random() < 0.1)


class Registry:
    """The containers the workload created and has not seen removed (shared by drivers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.live: dict[str, Shape] = {}
        self.created = 0

    def add(self, cid: str, shape: Shape) -> None:
        with self._lock:
            self.live[cid] = shape
            self.created += 1

    def drop(self, cid: str) -> None:
        with self._lock:
            self.live.pop(cid, None)

    def pick(self, rng: random.Random) -> str | None:
        with self._lock:
            cids = sorted(self.live)
        return rng.choice(cids) if cids else None

    def count(self) -> int:
        with self._lock:
            return len(self.live)


_OPS = ("run", "create", "start", "stop", "restart", "kill", "rm", "rm -f", "pause")
_WEIGHTS = (14, 4, 12, 12, 10, 10, 4, 12, 12)


class Driver(threading.Thread):
    """One workload thread: seeded operations until stopped, each through the gate."""

    def __init__(self, index: int, seed: int | str, client: RecordingClient, registry: Registry,
                 gate: Gate, stop: threading.Event, *, token: str, max_live: int) -> None:
        super().__init__(name=f"chaos-driver-{index}", daemon=True)
        self.index = index
        self.rng = random.Random(f"{seed}-{index}")
        self.client = client
        self.ledger = client.ledger
        self.registry = registry
        self.gate = gate
        self.stop_event = stop
        self.token = token
        self.max_live = max_live
        self.made = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                if not self.gate.enter(self.stop_event):
                    return
                try:
                    self.step()
                finally:
                    self.gate.leave()
        except BaseException as exc:  # a harness bug: the run reports it
            self.failure = exc

    def step(self) -> None:
        op = self.rng.choices(_OPS, weights=_WEIGHTS)[0]
        target = self.registry.pick(self.rng)
        if target is None or (op in ("run", "create") and self.registry.count() >= self.max_live):
            op = "pause" if target is not None else "run"
        # Draw everything the operation needs now, so the sequence of draws is the seed's.
        shape = draw_shape(self.rng)
        timeout = self.rng.choice((0, 1))
        signal = self.rng.choice(("SIGKILL", "SIGTERM", "SIGUSR1"))
        nap = self.rng.uniform(0.05, 0.4)
        self.ledger.count(self.ledger.ops, op)
        try:
            self._do(op, target or "", shape, timeout, signal, nap)
        except NotFound:
            if target:
                self.registry.drop(target)  # AutoRemove, or another driver removed it
            self.ledger.count(self.ledger.op_errors, f"{op}: NotFound")
        except (MoorError, redislib.RedisError) as exc:
            self.ledger.count(self.ledger.op_errors, f"{op}: {type(exc).__name__}")

    def _do(self, op: str, target: str, shape: Shape, timeout: int, signal: str,
            nap: float) -> None:
        client = self.client
        if op in ("run", "create"):
            self.made += 1
            config, host = shape.configs()
            cid = client.create(config, host, name=f"chaos-{self.token}-{self.index}-{self.made}")
            self.registry.add(cid, shape)
            if op == "run":
                client.start(cid)
        elif op == "start":
            client.start(target)
        elif op == "stop":
            client.stop(target, timeout=timeout)
        elif op == "restart":
            client.restart(target, timeout=timeout)
        elif op == "kill":
            client.kill(target, signal=signal)
        elif op == "rm":
            client.remove(target)
            self.registry.drop(target)
        elif op == "rm -f":
            self.remove_force(target)
        else:
            time.sleep(nap)

    def remove_force(self, cid: str) -> None:
        """rm -f, timed from the submit to the destroyed fact.

        A removal already in progress (another driver's, or AutoRemove's) answers 409 at
        once, as Docker does; this rm -f then completes when that removal does.
        """
        started = time.monotonic()
        outcome = "destroyed"
        try:
            self.client.remove(cid, force=True)
        except NotFound:
            outcome = "not found"
            raise
        except Conflict as exc:
            if "already in progress" not in exc.message:
                outcome = f"Conflict: {exc.message}"
                raise
            if not self._gone(cid, self.client.timeout):
                outcome = f"still there {self.client.timeout:g}s after: {exc.message}"
                raise
        except (MoorError, redislib.RedisError) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            with self.ledger.lock:
                self.ledger.removals.append(Removal(cid, started, time.monotonic(), outcome))
            if outcome in ("destroyed", "not found"):
                self.registry.drop(cid)

    def _gone(self, cid: str, timeout: float) -> bool:
        """Wait until the container's snapshot is gone (destroyed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.client.redis.hexists(self.client.keys.containers, cid):
                return True
            time.sleep(0.05)
        return False
