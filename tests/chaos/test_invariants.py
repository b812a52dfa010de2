"""The chaos invariants fail when they should: each is fed a broken history and must say so.

No engine runs here (fakeredis, synthetic journals): a check that cannot fail would let
the chaos run pass whatever the engine did.
"""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import msgspec
import pytest

from commands import schema as c
from commands.codec import CODEC, CommandResult
from engine.core.state import Container
from engine.keys import keys_for
from engine.snapshot import fold_for_snapshot, queue_snapshot_writes
from events import model as e
from events.specs import ContainerConfig, HostConfig, RestartPolicy
from tests.chaos import hoststate, invariants, restore
from tests.chaos.journal import Journal, read_journal
from tests.chaos.observer import Spawn
from tests.chaos.workload import Ledger, Removal, Sent

CID = "c" * 64
KEYS = keys_for(prefix="moorchaostest")


class _History:
    """A journal written to a fake Redis, one decision (command) at a time."""

    def __init__(self) -> None:
        self.redis: Any = fakeredis.FakeRedis()
        self.version = 0
        self.ids: dict[str, str] = {}  # command id -> its last event id

    def decide(self, command_id: str, *events: e.Event, cid: str = CID) -> str:
        last = ""
        for event in events:
            self.version += 1
            meta = e.EventMeta(container_id=cid, version=self.version, command_id=command_id,
                               at=time.time_ns(), actor="test")
            last = self.redis.xadd(KEYS.events, {"d": CODEC.encode(
                e.EventRecord(meta=meta, event=event))}).decode()
        self.ids[command_id] = last
        return last

    def journal(self) -> Journal:
        return Journal(read_journal(self.redis, KEYS))


def _created() -> e.ContainerCreated:
    return e.ContainerCreated(name="x", image="busybox", image_id="sha256:" + "a" * 64,
                              config=ContainerConfig(image="busybox", cmd=("true",)),
                              host_config=HostConfig(network_mode="none"), created=1)


def _acked(command_id: str, events: list[str], last: str) -> Sent:
    return Sent(command_id, "StartContainer", CID, 0.0, acked=True, last_event_id=last,
                result=CommandResult(command_id=command_id, ok=True, container_id=CID,
                                     events=tuple(events)))


def test_commands_check_finds_lost_twice_mismatched_and_stranded() -> None:
    h = _History()
    created = h.decide("create", _created())
    started = h.decide("start", e.StartInitiated(generation=1))
    h.decide("report", e.ReportIgnored(report="ReportMounted", generation=1, reason="r"))
    h.decide("start", e.StartInitiated(generation=1))  # the same command decided again
    ledger = Ledger()
    ledger.sent += [_acked("create", ["ContainerCreated"], created),
                    _acked("start", ["StartInitiated"], started),
                    _acked("gone", ["ContainerStarted"], "1-0"),  # never in the journal
                    _acked("report", ["ContainerStarted"], h.ids["report"])]
    env = c.Envelope(command_id="stranded", container_id=CID, issued_at=1)
    h.redis.xadd(KEYS.commands, CODEC.entry(env, c.StartContainer(ref=CID)), id="1000-0")
    recent = c.Envelope(command_id="in-flight", container_id=CID, issued_at=1)
    h.redis.xadd(KEYS.commands, CODEC.entry(recent, c.StartContainer(ref=CID)))
    found, counts = invariants.check_commands(h.journal(), ledger, h.redis, KEYS)
    kinds = sorted(v.invariant for v in found)
    assert kinds == ["acknowledged-mismatch", "applied-twice", "lost", "stranded"], found
    assert counts["acknowledged"] == 4 and counts["lost"] == 1 and counts["applied twice"] == 1


def test_commands_check_passes_a_clean_history() -> None:
    h = _History()
    last = h.decide("create", _created())
    ledger = Ledger()
    ledger.sent.append(_acked("create", ["ContainerCreated"], last))
    env = c.Envelope(command_id="create", container_id=CID, issued_at=1)
    h.redis.xadd(KEYS.commands, CODEC.entry(env, c.StartContainer(ref=CID)))
    assert invariants.check_commands(h.journal(), ledger, h.redis, KEYS)[0] == []


def test_replay_check_finds_a_snapshot_that_differs_from_the_journal() -> None:
    h = _History()
    h.decide("create", _created())
    h.decide("start", e.StartInitiated(generation=1))
    world, versions, checkpoint = fold_for_snapshot(read_journal(h.redis, KEYS))
    pipe = h.redis.pipeline(transaction=True)
    queue_snapshot_writes(pipe, KEYS, world, versions, checkpoint)
    pipe.execute()
    assert invariants.check_replay(h.redis, KEYS) == []
    damaged = msgspec.structs.replace(world.containers[CID], exit_code=7)
    h.redis.hset(KEYS.containers, CID, msgspec.msgpack.encode(damaged))
    found = invariants.check_replay(h.redis, KEYS)
    assert [(v.invariant, v.container) for v in found] == [("replay", CID)]
    assert "exit_code" in found[0].detail


def test_effects_check_finds_a_second_start_a_second_spawn_and_a_lost_exit() -> None:
    h = _History()
    h.decide("create", _created())
    first = int(h.decide("start", e.StartInitiated(generation=1)).partition("-")[0])
    h.decide("s1", e.ContainerStarted(generation=1, pid=100, started_at=1))
    h.decide("s2", e.ContainerStarted(generation=1, pid=101, started_at=2))
    h.decide("restart", e.StartInitiated(generation=2), cid="d" * 64)
    spawns = [Spawn(CID, 100, 5, first + 1), Spawn(CID, 555, 6, first + 2),
              Spawn(CID, 7, 7, first - 1000)]
    found = invariants.check_effects(h.journal(), spawns, killed_runs=[(CID, 1)])
    details = sorted(f"{v.invariant}: {v.detail}" for v in found)
    assert any("ContainerStarted recorded 2 times" in d for d in details), details
    assert any("generation 1 was spawned 2 times" in d for d in details), details
    assert any("pid 7 before any start attempt" in d for d in details), details
    assert any(d.startswith("lost-exit") for d in details), details


def test_effects_check_accepts_one_spawn_per_generation() -> None:
    h = _History()
    h.decide("create", _created())
    one = int(h.decide("start", e.StartInitiated(generation=1)).partition("-")[0])
    h.decide("s1", e.ContainerStarted(generation=1, pid=100, started_at=1))
    h.decide("exit", e.ContainerDied(generation=1, exit_code=0, finished_at=2))
    time.sleep(0.002)  # the next attempt gets a later stream id
    two = int(h.decide("again", e.StartInitiated(generation=2)).partition("-")[0])
    spawns = [Spawn(CID, 100, 5, one), Spawn(CID, 200, 6, two + 1)]  # gen 2: report lost
    assert invariants.check_effects(h.journal(), spawns, killed_runs=[(CID, 1)]) == []


def test_removal_check_discounts_only_the_time_under_a_fault() -> None:
    slow = Removal(CID, 100.0, 107.0, "destroyed")
    assert [v.invariant for v in invariants.check_removals([slow], [], 0.0)] == ["rm-f-5s"]
    assert invariants.check_removals([slow], [(101.0, 104.0)], 0.0) == []
    never = Removal(CID, 100.0, 110.0, "Timeout: no result")
    assert [v.invariant for v in invariants.check_removals([never], [], 0.0)] == ["rm-f-5s"]


def test_host_check_flags_a_running_container_without_its_process() -> None:
    ghost = Container(id=CID, name="x", image="busybox", image_id="i",
                      config=ContainerConfig(image="busybox"), host_config=HostConfig(),
                      created=1, running=True, pid=2**22 + 1, started_at=1, generation=1)
    why = hoststate.host_mismatch(ghost, "moorchaos-none", "/nonexistent", {})
    assert why is not None and "no such process" in why
    stopped = msgspec.structs.replace(ghost, running=False, pid=0)
    assert hoststate.host_mismatch(stopped, "moorchaos-none", "/nonexistent", {}) is None
    assert "run in its cgroup" in str(hoststate.host_mismatch(
        stopped, "moorchaos-none", "/nonexistent", {CID: [1]}))


@pytest.mark.parametrize(("policy", "retries", "stopped", "code", "count", "expected"), [
    ("always", 0, True, 0, 0, True),
    ("unless-stopped", 0, True, 1, 0, False),
    ("unless-stopped", 0, False, 0, 0, True),
    ("on-failure", 0, True, 137, 5, True),
    ("on-failure", 2, False, 3, 2, False),
    ("on-failure", 0, False, 0, 0, False),
    ("no", 0, False, 255, 0, False),
])
def test_restore_policy_test_follows_docker(policy: str, retries: int, stopped: bool,
                                            code: int, count: int, expected: bool) -> None:
    ctr = Container(id=CID, name="x", image="busybox", image_id="i",
                    config=ContainerConfig(image="busybox"),
                    host_config=HostConfig(restart_policy=RestartPolicy(
                        name=policy, maximum_retry_count=retries)),
                    created=1, manually_stopped=stopped, restart_count=count, started_at=1)
    assert restore.should_restart(ctr, code)[0] is expected
