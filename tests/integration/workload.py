"""A deterministic lifecycle workload for fault tests: commands and worker reports, up front.

The run does not depend on the reducer's answers: container ids, command ids and issue
times are fixed, targets are named as the generator believes they are named, and worker
reports carry the generation the generator guesses. Some guesses are wrong on purpose, so
the run mixes accepted commands, Docker-style rejections, ignored (stale) reports and
exact duplicates (same command_id), all reproducible from the seed.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

import msgspec

from commands import schema as c
from commands.codec import CODEC, CommandResult, DecodeError
from engine.core.admission import Origin
from engine.core.decider import apply_command
from engine.core.state import World
from engine.keys import REPORTS, Keys
from events import model as e
from events.specs import ContainerConfig, HostConfig, RestartPolicy
from tests.harness import IMAGE_ID, SUBNET

__all__ = ["BASE_NS", "Item", "builtins", "fields_of", "generate", "pure_fold", "state_of",
           "stream_of", "xadd_all"]

BASE_NS = 1_750_000_000_000_000_000
Item = tuple[c.Envelope, c.Command]

_STEPS = {"bridge": ("mount", "sandbox", "endpoint", "spawn"),
          "none": ("mount", "sandbox", "spawn"), "host": ("mount", "spawn")}


def container_id(tag: str, k: int) -> str:
    """Return a deterministic 64-hex container id."""
    return hashlib.sha256(f"{tag}-{k}".encode()).hexdigest()


class _Gen:
    def __init__(self, tag: str, seed: int) -> None:
        self.tag = tag
        self.rng = random.Random(seed)
        self.items: list[Item] = []
        self.live: dict[str, dict[str, Any]] = {}  # cid -> what the generator believes
        self.made = 0

    def add(self, cmd: c.Command, cid: str = "") -> None:
        n = len(self.items)
        env = c.Envelope(command_id=f"{self.tag}-{n:05d}", container_id=cid,
                         issued_at=BASE_NS + n * 1_000_000, actor="workload",
                         correlation_id=f"{self.tag}-corr-{n // 7}")
        self.items.append((env, cmd))

    def pick(self) -> tuple[str, dict[str, Any]] | None:
        if not self.live:
            return None
        cid = self.rng.choice(sorted(self.live))
        return cid, self.live[cid]

    def ref(self, cid: str, info: dict[str, Any]) -> str:
        return cid[:12] if self.rng.random() < 0.2 else info["name"]

    def gen_guess(self, info: dict[str, Any]) -> int:
        return info["gen"] + (self.rng.choice((-1, 1)) if self.rng.random() < 0.1 else 0)

    # --- one step of the run --------------------------------------------------------

    def step(self) -> None:
        rng = self.rng
        roll = rng.random()
        target = self.pick()
        if roll < 0.14 or target is None:
            self.create()
        elif roll < 0.32:
            self.start(*target)
        elif roll < 0.38:
            self.saga(*target)
        elif roll < 0.50:
            self.stop_or_kill(*target)
        elif roll < 0.56:
            self.restart(*target)
        elif roll < 0.64:
            self.rename(*target)
        elif roll < 0.76:
            self.remove(*target)
        elif roll < 0.84 and self.items:
            self.items.append(self.items[rng.randrange(len(self.items))])  # a re-delivery
        elif roll < 0.92:
            self.odd_report()
        elif roll < 0.96:
            self.rejection()
        else:
            self.catalog(target)

    def create(self) -> None:
        rng = self.rng
        cid = container_id(self.tag, self.made)
        self.made += 1
        mode = rng.choice(("bridge", "bridge", "bridge", "none", "host"))
        name = f"{self.tag}-n{self.made}"
        if self.live and rng.random() < 0.1:
            name = rng.choice(sorted(i["name"] for i in self.live.values()))  # 409
        elif rng.random() < 0.03:
            name = "bad name!"  # 400
        policy = rng.choice(("no", "no", "always", "on-failure:2"))
        host = HostConfig(network_mode=mode, restart_policy=RestartPolicy(
            name=policy.split(":")[0], maximum_retry_count=int(policy[-1]) if ":" in
            policy else 0), auto_remove=policy == "no" and rng.random() < 0.1)
        config = ContainerConfig(image="busybox", cmd=("sleep", str(rng.randint(1, 99))),
                                 env=(f"K={rng.randint(0, 9)}",))
        if rng.random() < 0.3:  # named volumes shared between containers, anonymous ones
            host = msgspec.structs.replace(host, binds=(f"vol{rng.randint(0, 3)}:/data",))
            config = msgspec.structs.replace(config, volumes=("/anon",))
        self.add(c.CreateContainer(name=name, config=config, host_config=host), cid)
        self.live.setdefault(cid, {"name": name, "gen": 0, "mode": mode, "state": "created",
                                   "auto_remove": host.auto_remove})

    def start(self, cid: str, info: dict[str, Any]) -> None:
        self.add(c.StartContainer(ref=self.ref(cid, info)))
        if info["state"] in ("created", "exited"):
            info["gen"] += 1
            info["state"] = "starting"
            if self.rng.random() < 0.7:
                self.saga(cid, info)

    def saga(self, cid: str, info: dict[str, Any]) -> None:
        gen = self.gen_guess(info) if info["state"] == "starting" else self.rng.randint(0, 3)
        steps = _STEPS[info["mode"]]
        fail_at = self.rng.choice((None,) * 6 + steps)
        for step in steps:
            if step == fail_at:
                self.add(c.ReportStepFailed(generation=gen, step=step, error=f"{step} broke"),
                         cid)
                info["state"] = "exited"
                return
            self.add(_report(step, cid, gen, len(self.items)), cid)
        if info["state"] == "starting":
            info["state"] = "running"

    def exited(self, cid: str, info: dict[str, Any], code: int) -> None:
        self.add(c.ReportProcessExited(generation=self.gen_guess(info), exit_code=code,
                                       finished_at=BASE_NS + len(self.items),
                                       oom_killed=self.rng.random() < 0.05), cid)
        if info["state"] == "running":
            info["state"] = "dead" if info["auto_remove"] else "exited"

    def stop_or_kill(self, cid: str, info: dict[str, Any]) -> None:
        rng = self.rng
        if rng.random() < 0.6:
            self.add(c.StopContainer(ref=self.ref(cid, info), timeout=rng.choice((None, 0, 3))))
        else:
            self.add(c.KillContainer(ref=self.ref(cid, info),
                                     signal=rng.choice(("SIGKILL", "SIGTERM", "SIGNOPE"))))
        if rng.random() < 0.85:
            self.exited(cid, info, rng.choice((0, 137, 143)))

    def restart(self, cid: str, info: dict[str, Any]) -> None:
        self.add(c.RestartContainer(ref=self.ref(cid, info), timeout=1))
        if info["state"] == "running":
            self.exited(cid, info, 143)
            if info["state"] == "exited":  # the reducer begins the next start by itself
                info["gen"] += 1
                info["state"] = "starting"
                self.saga(cid, info)
        elif info["state"] in ("created", "exited"):
            info["gen"] += 1
            info["state"] = "starting"
            self.saga(cid, info)

    def rename(self, cid: str, info: dict[str, Any]) -> None:
        rng = self.rng
        if rng.random() < 0.2:
            new = rng.choice(sorted(i["name"] for i in self.live.values()))  # 409 or 400
        else:
            new = f"{self.tag}-r{len(self.items)}"
        self.add(c.RenameContainer(ref=self.ref(cid, info), new_name=new))
        if new != info["name"] and all(i["name"] != new for i in self.live.values()):
            info["name"] = new

    def remove(self, cid: str, info: dict[str, Any]) -> None:
        rng = self.rng
        force = rng.random() < 0.6
        if info["state"] != "dead":
            self.add(c.RemoveContainer(ref=self.ref(cid, info), force=force))
            if info["state"] in ("running", "starting"):
                if not force:
                    return  # 409: stop it first
                self.exited(cid, info, 137)
        if rng.random() < 0.15:
            self.add(c.ReportStepFailed(generation=info["gen"], step="remove",
                                        error="device busy"), cid)
            return  # RemovalFailed: it stays, out of removal
        self.add(c.ReportRemoved(generation=info["gen"]), cid)
        if rng.random() < 0.9:
            del self.live[cid]

    def catalog(self, target: tuple[str, dict[str, Any]] | None) -> None:
        """Engine-wide facts: volumes made and removed (maybe in use), commits that tag."""
        rng = self.rng
        choice = rng.randrange(3)
        if choice == 0:
            self.add(c.CreateVolume(name=f"vol{rng.randint(0, 5)}"))
        elif choice == 1:
            self.add(c.RemoveVolume(name=f"vol{rng.randint(0, 5)}", force=rng.random() < 0.3))
        elif target is not None:
            self.add(c.CommitContainer(ref=self.ref(*target),
                                       image_id="sha256:" + f"{len(self.items):064x}",
                                       repo_tags=(f"snap:{rng.randint(0, 2)}",)))

    def odd_report(self) -> None:
        rng = self.rng
        cid = container_id(self.tag, rng.randrange(self.made + 5))  # maybe unknown or gone
        gen = rng.randint(0, 4)
        step = rng.choice(("mount", "sandbox", "endpoint", "spawn"))
        self.add(_report(step, cid, gen, len(self.items)), cid)

    def rejection(self) -> None:
        rng = self.rng
        choice = rng.randrange(5)
        if choice == 0:
            self.add(c.StartContainer(ref="no-such-container"))
        elif choice == 1:
            # Not busybox: its "in use by container X" text names whichever user comes
            # first in dict order, which a snapshot reload does not keep (see
            # test_crash_recovery's xfail); a restart would then record another text.
            self.add(c.RemoveImage(ref="nope:latest"))
        elif choice == 2:
            self.add(c.DefineNetwork(network=SUBNET))  # 304: already defined
        elif choice == 3:
            self.add(c.CreateContainer(config=ContainerConfig(image="nope:latest")),
                     container_id(self.tag, 10_000 + len(self.items)))
        else:
            self.add(c.CreateContainer(config=ContainerConfig(image="busybox")), "not-hex")


def _report(step: str, cid: str, gen: int, n: int) -> c.Command:
    if step == "mount":
        return c.ReportMounted(generation=gen, rootfs=f"/merged/{cid[:12]}")
    if step == "sandbox":
        return c.ReportSandbox(generation=gen, sandbox_key=f"/run/netns/{cid[:12]}")
    if step == "endpoint":
        return c.ReportEndpoint(generation=gen, endpoint_id=cid[:16])
    return c.ReportProcessStarted(generation=gen, pid=1000 + n, started_at=BASE_NS + n)


def generate(n: int, *, tag: str = "w", seed: int = 7) -> list[Item]:
    """Return exactly n (envelope, command) pairs: a seeded, reproducible lifecycle run."""
    gen = _Gen(tag, seed)
    gen.add(c.DefineNetwork(network=SUBNET))
    gen.add(c.RegisterImage(image_id=IMAGE_ID, repo_tags=("busybox:latest",)))
    while len(gen.items) < n:
        gen.step()
    return gen.items[:n]


def fields_of(item: Item) -> dict[str, bytes]:
    """Return the commands-stream fields of one item (what Client.send writes)."""
    env, cmd = item
    return {"env": CODEC.encode(env), "cmd": CODEC.encode(cmd)}


def xadd_all(redis: Any, target: str | Keys, entries: list[dict[str, Any]]) -> list[bytes]:
    """Append entries in order, pipelined; return their stream ids.

    `target` is one stream, or a shard's keys: then each entry goes to the inbox a real
    writer uses (reports to the reports stream, the rest to the commands stream), with
    ids that keep the given order across both (the reducer decides in id order).
    """
    if isinstance(target, str):
        ids: list[bytes] = []
        for start in range(0, len(entries), 200):
            pipe = redis.pipeline(transaction=False)
            for fields in entries[start:start + 200]:
                pipe.xadd(target, fields)
            ids.extend(pipe.execute())
        return ids
    ms = max([time.time_ns() // 1_000_000] + [
        int(last[0][0].split(b"-")[0]) + 1
        for stream in (target.commands, target.reports)
        if (last := redis.xrevrange(stream, count=1))])
    routed = [(stream_of(target, fields), f"{ms}-{n}".encode(), fields)
              for n, fields in enumerate(entries, start=1)]
    for start in range(0, len(routed), 200):
        pipe = redis.pipeline(transaction=False)
        for stream, entry_id, fields in routed[start:start + 200]:
            pipe.xadd(stream, fields, id=entry_id)
        pipe.execute()
    return [entry_id for _, entry_id, _ in routed]


def stream_of(keys: Keys, fields: dict[str, Any]) -> str:
    """Return the inbox stream a real writer appends an entry to (commands if unreadable)."""
    try:
        cmd = CODEC.command(fields["cmd"])
    except (KeyError, TypeError, *DecodeError):
        return keys.commands
    return keys.reports if isinstance(cmd, c.REPORT_TYPES) else keys.commands


def pure_fold(items: list[Item]) -> tuple[World, list[e.EventRecord], dict[str, CommandResult]]:
    """Fold items with the pure decider alone (first delivery of each command id wins),
    each as the principal of the inbox xadd_all routes it to."""
    world = World()
    records: list[e.EventRecord] = []
    results: dict[str, CommandResult] = {}
    control, worker = Origin("control"), Origin("worker", REPORTS)
    for env, cmd in items:
        if env.command_id in results:
            continue
        outcome = apply_command(world, env, cmd,
                                worker if isinstance(cmd, c.REPORT_TYPES) else control)
        records.extend(outcome.records)
        results[env.command_id] = outcome.result
    return world, records, results


def builtins(obj: Any) -> Any:
    """Return a comparable plain form of a Struct."""
    return msgspec.to_builtins(obj)


def state_of(world: World) -> Any:
    """Return a World in a plain form that compares equal for equal states.

    `World.snapshot()` turns the `destroyed` set into a list in iteration order, which
    depends on how the set was built (fold order vs the snapshot's hash order).
    """
    return msgspec.to_builtins(world, order="sorted")
