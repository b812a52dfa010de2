"""A rule-based state machine over random commands AND worker reports, on a live World.

Commands and reports (for the current, older and future generations, plus exact
duplicates) go through `engine.core.decider.apply_command`, as the reducer does; every record is
kept. After every step the invariants below must hold:

(a) folding all records from scratch gives the live world;
(b) evolve never raises on decide's output (nor does decide itself);
(c) a destroyed container is terminal: never in `containers` again, and any later command
    or report on its id is rejected or ignored;
(d) names and addresses: the World's indexes agree with the containers, so no two live
    containers share a name or an address;
(e) a container removing or dead never gets StartInitiated, nor ContainerStarted for a
    new generation;
(f) a report of an older generation changes nothing but the version (one ReportIgnored);
(g) the snapshot round trip (engine.snapshot.world_from_parts) gives the live world;
(h) a container restarts only as often as somebody asked (no restart loops);
plus: a running container has no start in flight, a dead one neither runs nor starts, and
a container holds an address only while it runs or starts.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from commands import schema as c
from commands.codec import CODEC
from engine.core.decider import Outcome, apply_command
from engine.core.evolve import fold
from engine.core.ipam import address_key
from engine.core.state import World, status_of
from engine.snapshot import encode_world_parts, world_from_parts
from events import model as e
from events import saga
from events.specs import ContainerConfig, HostConfig, ImageConfig, NetworkSpec, RestartPolicy

IDS = tuple(f"{('ab', 'cd', 'ef')[i % 3]}{i:062x}" for i in range(12))  # shared prefixes
NAMES = ("", "", "web", "db", "cache", "x")  # "" = generated; "x" breaks the name rule
REFS = ("web", "db", "cache", "/web", "ab", "cd", "nope", "", IDS[0], IDS[1][:12])
BUSYBOX = "sha256:" + "1" * 64
ALPINE = "sha256:" + "2" * 64
BARE = "sha256:" + "3" * 64
IMAGES = (
    c.RegisterImage(image_id=BUSYBOX, repo_tags=("busybox",), config=ImageConfig(cmd=("sh",))),
    c.RegisterImage(image_id=ALPINE, repo_tags=("alpine", "alpine:3", "alpine:latest"),
                    config=ImageConfig(entrypoint=("/init",), stop_signal="SIGQUIT")),
    c.RegisterImage(image_id=BARE, repo_tags=("bare",)),
)
IMAGE_REFS = ("busybox", "alpine", "alpine:3", "bare", "nope", BUSYBOX, "sha256:2222")
CREATE_IMAGES = ("busybox", "busybox", "alpine", "alpine:3", BUSYBOX, "bare", "nope")
NETWORKS = (
    c.DefineNetwork(network=NetworkSpec(name="bridge", subnet="172.17.0.0/16",
                                        gateway="172.17.0.1", bridge="docker0")),
    # 5 usable addresses: the machine can exhaust it
    c.DefineNetwork(network=NetworkSpec(name="tiny", subnet="10.9.0.0/29", gateway="10.9.0.1",
                                        bridge="br-tiny")),
)
MODES = ("bridge", "bridge", "bridge", "none", "host", "tiny", "tiny", "missing")
STEPS = (*saga.STEPS, saga.REMOVE)  # what a ReportStepFailed may name
SIGNALS = ("SIGKILL", "SIGTERM", "HUP", "BOGUS", "")
SAGA_REPORTS = {report.completes: report for report in c.SAGA_REPORTS}
QUIET = (e.CommandRejected, e.ReportIgnored)


def plain(world: World) -> Any:
    """Return a comparable copy of a world (the tombstone set sorted)."""
    out = msgspec.to_builtins(world)
    out["destroyed"] = sorted(out["destroyed"])
    return out


def snapshot_round_trip(world: World) -> World:
    """Write the world as the reducer's snapshot hashes would hold it, and load it back."""
    enc = msgspec.msgpack.Encoder()
    containers = {cid.encode(): enc.encode(ctr) for cid, ctr in world.containers.items()}
    versions = {cid.encode(): str(ctr.version).encode() for cid, ctr in world.containers.items()}
    versions.update({cid.encode(): b"1" for cid in world.destroyed})
    parts = {b"parts": encode_world_parts(world), b"checkpoint": b"1-0"}
    return world_from_parts(containers, versions, parts)


def saga_report(step: str, generation: int, n: int) -> Any:
    """Return the report a worker sends when a saga step succeeded."""
    if step == saga.MOUNT:
        return c.ReportMounted(generation=generation, rootfs=f"/rootfs/{n}")
    if step == saga.SANDBOX:
        return c.ReportSandbox(generation=generation, sandbox_key=f"/netns/{n}")
    if step == saga.ENDPOINT:
        return c.ReportEndpoint(generation=generation, endpoint_id=f"ep-{n}")
    return c.ReportProcessStarted(generation=generation, pid=1000 + n, started_at=n)


def independent_model(records: list[e.EventRecord]) -> dict[str, tuple[Any, ...]]:
    """Derive each live container's name, pid, exit code, dead and removing flags and
    generation by scanning its events: the last fact of each kind wins."""
    model: dict[str, dict[str, Any]] = {}
    for record in records:
        cid, ev = record.meta.container_id, record.event
        if isinstance(ev, e.ContainerCreated):
            model[cid] = {"name": ev.name, "pid": 0, "exit_code": 0, "dead": False,
                          "removing": False, "generation": 0}
            continue
        m = model.get(cid)
        if m is None:
            continue
        if isinstance(ev, e.ContainerDestroyed):
            del model[cid]
        elif isinstance(ev, e.ContainerRenamed):
            m["name"] = ev.new_name
        elif isinstance(ev, e.StartInitiated):
            m["generation"] = ev.generation
        elif isinstance(ev, e.ContainerStarted):
            m["pid"], m["exit_code"] = ev.pid, 0
        elif isinstance(ev, e.ContainerDied):
            m["pid"], m["exit_code"] = 0, ev.exit_code
        elif isinstance(ev, e.StartFailed):
            m["exit_code"] = ev.exit_code
        elif isinstance(ev, e.ContainerMarkedDead):
            m["dead"] = True
        elif isinstance(ev, e.RemovalStarted):
            m["removing"] = True
        elif isinstance(ev, e.RemovalFailed):
            m["removing"] = False
    return {cid: (m["name"], m["pid"], m["exit_code"], m["dead"], m["removing"],
                  m["generation"]) for cid, m in model.items()}


class Lifecycle(RuleBasedStateMachine):
    """Drive the decider like the reducer does, checking the invariants after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.records: list[e.EventRecord] = []
        self.count = 0
        self.last_report: tuple[str, Any] | None = None
        self.tombstones: set[str] = set()
        self.restarts_asked: dict[str, int] = {}
        self.restarts_begun: dict[str, int] = {}
        for cmd in (*NETWORKS, *IMAGES):
            self.apply("", cmd)

    # --- the one path, with the per-command checks ------------------------------------------

    def apply(self, target: str, cmd: Any) -> Outcome:
        before = plain(self.world)
        pre = dict(self.world.containers)
        self.count += 1
        env = c.Envelope(command_id=f"cmd-{self.count}", container_id=target,
                         issued_at=self.count * 1_000, actor="machine")
        outcome = apply_command(self.world, env, cmd)  # (b): raises on a bug
        self.records.extend(outcome.records)
        events = [r.event for r in outcome.records]
        assert events, "every command leaves at least one record"

        # (c) a destroyed id stays terminal
        ref = getattr(cmd, "ref", None)
        if target in self.tombstones or (ref in self.tombstones and
                                         not isinstance(cmd, c.RemoveImage)):
            assert all(isinstance(ev, QUIET) for ev in events), events
        for record in outcome.records:
            if record.meta.container_id in self.tombstones:
                assert isinstance(record.event, QUIET), record
        assert not self.tombstones & set(self.world.containers)

        # (e) no new start for a container being removed or dead
        for record in outcome.records:
            old = pre.get(record.meta.container_id)
            if isinstance(record.event, e.StartInitiated) and old is not None:
                assert not (old.removal_in_progress or old.dead), (old, record)
            if isinstance(record.event, e.ContainerStarted):
                assert old is not None and not (old.dead or old.removal_in_progress), (old, record)
                assert record.event.generation == old.generation, (old, record)

        # (f) a late report of an older generation changes nothing but the version
        if (isinstance(cmd, c.REPORT_TYPES) and not isinstance(cmd, c.ReportRemoved)
                and not (isinstance(cmd, c.ReportStepFailed) and cmd.step == "remove")
                and target in pre and getattr(cmd, "generation", 0) < pre[target].generation):
            assert [type(ev) for ev in events] == [e.ReportIgnored], events
            before["containers"][target]["version"] += 1
            assert plain(self.world) == before

        # (h) a container restarts only as often as somebody asked it to
        for record in outcome.records:
            cid = record.meta.container_id
            if isinstance(cmd, c.RestartContainer) and not isinstance(record.event, QUIET):
                self.restarts_asked[cid] = self.restarts_asked.get(cid, 0) + 1
            if isinstance(record.event, e.StartInitiated) and record.event.restart:
                self.restarts_begun[cid] = self.restarts_begun.get(cid, 0) + 1
                assert self.restarts_begun[cid] <= self.restarts_asked.get(cid, 0), record

        for record in outcome.records:
            if isinstance(record.event, e.ContainerDestroyed):
                self.tombstones.add(record.meta.container_id)
        return outcome

    def current(self, cid: str) -> int:
        ctr = self.world.containers.get(cid)
        return ctr.generation if ctr is not None else 0

    def generation(self, cid: str, which: str) -> int:
        cur = self.current(cid)
        return {"current": cur, "older": cur - 1, "oldest": 1, "next": cur + 1}[which]

    def report(self, cid: str, cmd: Any) -> None:
        self.last_report = (cid, cmd)
        self.apply(cid, cmd)

    def ref(self, data: st.DataObject) -> str:
        """Draw a reference: mostly one that names a live container in some way."""
        live = list(self.world.containers.values())
        if live and data.draw(st.integers(0, 5)) > 0:
            ctr = data.draw(st.sampled_from(live))
            return data.draw(st.sampled_from((ctr.id, ctr.name, "/" + ctr.name, ctr.id[:12])))
        return data.draw(st.sampled_from((*REFS, *sorted(self.tombstones))))

    def target(self, data: st.DataObject) -> str:
        """Draw a report's container: mostly live, sometimes destroyed or never created."""
        live = sorted(self.world.containers)
        if live and data.draw(st.integers(0, 5)) > 0:
            return data.draw(st.sampled_from(live))
        return data.draw(st.sampled_from((*IDS[:3], *sorted(self.tombstones))))

    # --- control plane --------------------------------------------------------------------

    @initialize(modes=st.lists(st.sampled_from(("bridge", "none", "host", "tiny")), min_size=1,
                               max_size=3), names=st.lists(st.sampled_from(NAMES[:5]),
                                                           min_size=3, max_size=3))
    def some_containers(self, modes: list[str], names: list[str]) -> None:
        """Start every run with a few valid containers, so the rules have something to do."""
        for cid, mode, name in zip(IDS, modes, names, strict=False):
            self.apply(cid, c.CreateContainer(config=ContainerConfig(image="busybox"), name=name,
                                              host_config=HostConfig(network_mode=mode)))

    # --- more containers --------------------------------------------------------------------

    @rule(data=st.data(), name=st.sampled_from(NAMES), mode=st.sampled_from(MODES),
          image=st.sampled_from(CREATE_IMAGES), policy=st.sampled_from(("no", "no", "always", "")),
          auto_remove=st.booleans(), stop_timeout=st.none() | st.integers(0, 30),
          stop_signal=st.sampled_from(("", "", "SIGINT", "SIGBOGUS")))
    def create(self, data: st.DataObject, name: str, mode: str, image: str, policy: str,
               auto_remove: bool, stop_timeout: int | None, stop_signal: str) -> None:
        unused = [i for i in IDS if i not in self.world.containers and i not in self.tombstones]
        fresh = bool(unused) and data.draw(st.integers(0, 5)) > 0
        cid = data.draw(st.sampled_from(unused if fresh else IDS))
        config = ContainerConfig(image=image, stop_timeout=stop_timeout, stop_signal=stop_signal)
        host = HostConfig(network_mode=mode, auto_remove=auto_remove,
                          restart_policy=RestartPolicy(name=policy))
        self.apply(cid, c.CreateContainer(config=config, name=name, host_config=host))

    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        self.apply("", c.StartContainer(ref=self.ref(data)))

    @rule(data=st.data(), timeout=st.none() | st.integers(0, 5), signal=st.sampled_from(SIGNALS))
    def stop(self, data: st.DataObject, timeout: int | None, signal: str) -> None:
        self.apply("", c.StopContainer(ref=self.ref(data), timeout=timeout, signal=signal))

    @rule(data=st.data(), signal=st.sampled_from(SIGNALS))
    def kill(self, data: st.DataObject, signal: str) -> None:
        self.apply("", c.KillContainer(ref=self.ref(data), signal=signal))

    @rule(data=st.data(), timeout=st.none() | st.integers(0, 5))
    def restart(self, data: st.DataObject, timeout: int | None) -> None:
        self.apply("", c.RestartContainer(ref=self.ref(data), timeout=timeout))

    @rule(data=st.data(), force=st.booleans())
    def rm(self, data: st.DataObject, force: bool) -> None:
        self.apply("", c.RemoveContainer(ref=self.ref(data), force=force))

    @rule(data=st.data(), new_name=st.sampled_from((*NAMES, "api", "/db")))
    def rename(self, data: st.DataObject, new_name: str) -> None:
        self.apply("", c.RenameContainer(ref=self.ref(data), new_name=new_name))

    @rule(fact=st.sampled_from(IMAGES + NETWORKS) | st.builds(
        c.RemoveImage, ref=st.sampled_from(IMAGE_REFS), force=st.booleans()))
    def engine_fact(self, fact: Any) -> None:
        self.apply("", fact)

    # --- worker and supervisor reports ------------------------------------------------------

    @rule(data=st.data(), kind=st.sampled_from((*SAGA_REPORTS, "exit", "failure", "removed")),
          which=st.sampled_from(("current", "current", "older", "oldest", "next")),
          code=st.sampled_from((0, 1, 127, 137)), oom=st.booleans(),
          step=st.sampled_from(STEPS))
    def random_report(self, data: st.DataObject, kind: str, which: str, code: int, oom: bool,
                      step: str) -> None:
        cid = self.target(data)
        g = self.generation(cid, which)
        if kind in SAGA_REPORTS:
            cmd = saga_report(kind, g, self.count)
        elif kind == "exit":
            cmd = c.ReportProcessExited(generation=g, exit_code=code, finished_at=self.count,
                                        oom_killed=oom)
        elif kind == "failure":
            cmd = c.ReportStepFailed(generation=g, step=step, error=f"{step} failed",
                                     exit_code=code)
        else:
            cmd = c.ReportRemoved(generation=g)
        self.report(cid, cmd)

    @rule(data=st.data(), steps=st.integers(1, 6),
          exits=st.sampled_from(("exit", "exit", "fail", "overtake")))
    def progress(self, data: st.DataObject, steps: int, exits: str) -> None:
        """Send what a container waits for, so runs reach running, restarts and destroyed.

        `fail` fails the awaited step; `overtake` reports the exit before the spawn.
        """
        busy = sorted(x.id for x in self.world.containers.values()
                      if x.saga or x.running or (x.dead and x.removal_in_progress))
        if not busy:
            return
        cid = data.draw(st.sampled_from(busy))
        for _ in range(steps):
            ctr = self.world.containers.get(cid)
            if ctr is None:
                return
            g = ctr.generation
            if ctr.saga and exits == "fail":
                cmd: Any = c.ReportStepFailed(generation=g, step=ctr.saga[0], error="boom")
            elif ctr.saga == ("spawn",) and exits == "overtake":
                cmd = c.ReportProcessExited(generation=g, exit_code=3, finished_at=self.count)
            elif ctr.saga:
                cmd = saga_report(ctr.saga[0], g, self.count)
            elif ctr.restarting:  # a policy restart's back-off is over
                cmd = c.ResumeRestart(generation=g)
            elif ctr.running:
                cmd = c.ReportProcessExited(generation=g, exit_code=0, finished_at=self.count)
            elif ctr.dead and ctr.removal_in_progress:
                cmd = c.ReportRemoved(generation=g)
            else:
                return
            self.report(cid, cmd)

    @precondition(lambda self: self.last_report is not None)
    @rule()
    def duplicate_last_report(self) -> None:
        assert self.last_report is not None
        self.apply(*self.last_report)

    # --- invariants after every step ----------------------------------------------------------

    @invariant()
    def replay_of_the_wire_equals_live_state(self) -> None:  # (a)
        # The records as the events stream holds them (encoded, decoded), folded afresh.
        wire = [CODEC.record(CODEC.encode(record)) for record in self.records]
        assert plain(fold(wire)) == plain(self.world)

    @invariant()
    def live_state_agrees_with_an_independent_model(self) -> None:  # (a')
        # The same facts read by a scan written apart from evolve: a bug in the fold
        # shows up here, where comparing evolve with itself (above) could not see it.
        assert independent_model(self.records) == {
            cid: (x.name, x.pid, x.exit_code, x.dead, x.removal_in_progress, x.generation)
            for cid, x in self.world.containers.items()}

    @invariant()
    def destroyed_is_terminal(self) -> None:  # (c)
        assert self.tombstones <= self.world.destroyed
        assert not self.world.destroyed & set(self.world.containers)

    @invariant()
    def names_and_addresses_are_consistent(self) -> None:  # (d)
        ctrs = self.world.containers.values()
        assert self.world.names == {x.name: x.id for x in ctrs}
        assert len(self.world.names) == len(self.world.containers)
        held = [(x.endpoint.network, x.endpoint.ip_address) for x in ctrs if x.endpoint]
        assert len(set(held)) == len(held)
        assert self.world.addresses == {address_key(x.endpoint.network, x.endpoint.ip_address):
                                        x.id for x in ctrs if x.endpoint}

    @invariant()
    def states_are_coherent(self) -> None:
        for x in self.world.containers.values():
            assert status_of(x) in ("created", "running", "restarting", "removing", "exited",
                                    "dead")
            # at most one live process per container (a policy restart in back-off or
            # starting again is Running+Restarting with no process yet)
            assert not (x.running and not x.restarting and x.saga), x
            if x.restarting:
                assert x.running and x.pid == 0 and x.host_config.restart_policy.name != "no"
            if x.dead:
                assert not x.running and not x.saga, x
            if x.endpoint is not None:  # a start reaches running or leaves no resources
                assert x.running or x.saga, x
            if x.running or x.saga:
                assert x.generation >= 1

    @invariant()
    def snapshot_round_trip_equals_live_state(self) -> None:  # (g)
        assert plain(snapshot_round_trip(self.world)) == plain(self.world)


Lifecycle.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLifecycle = Lifecycle.TestCase
