"""Given/when/then tests of the pure decider: Docker's guards, texts and the start saga.

`given(*steps).when(step).then(*expected)`: a step is a command (lifecycle commands carry
their target in `ref`) or a `(container id, command)` pair (create and worker reports carry
it in the envelope). `expected` is event types or instances, or one `(status, message)`
rejection. Every `then` also checks that replaying the records rebuilds the live world.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from commands import schema as c
from commands.codec import CODEC
from engine.core.decider import Outcome, apply_command
from engine.core.evolve import fold
from engine.core.names import generate_name
from engine.core.react import Job, react, resume, start_plan
from engine.core.state import World, status_of
from events import model as e
from events.specs import ContainerConfig, HostConfig, ImageConfig, NetworkSpec, RestartPolicy

Step = c.Command | tuple[str, c.Command]

A = "a" * 64
B = "b" * 64
C = "c" * 64
IMAGE_ID = "sha256:" + "1" * 64
OTHER_IMAGE_ID = "sha256:" + "2" * 64
NETWORK = c.DefineNetwork(network=NetworkSpec(name="bridge", subnet="172.17.0.0/16",
                                              gateway="172.17.0.1", bridge="docker0"))
IMAGE = c.RegisterImage(image_id=IMAGE_ID, repo_tags=("busybox",),
                        config=ImageConfig(cmd=("sh",)))
BASE: tuple[Step, ...] = (NETWORK, IMAGE)
CONFLICT = ('Conflict. The container name "/{name}" is already in use by container "{id}". '
            "You have to remove (or rename) that container to be able to reuse that name.")


# --- the tiny DSL ------------------------------------------------------------------------

def plain(world: World) -> Any:
    """Return a comparable copy of a world (the tombstone set sorted)."""
    out = msgspec.to_builtins(world)
    out["destroyed"] = sorted(out["destroyed"])
    return out


class Then:
    """The outcome of `when`: assert on events, then inspect the world."""

    def __init__(self, scenario: Given, outcome: Outcome) -> None:
        self.scenario = scenario
        self.outcome = outcome
        self.events: list[Any] = [r.event for r in outcome.records]
        self.world = scenario.world

    def then(self, *expected: Any) -> Then:
        if len(expected) == 1 and isinstance(expected[0], tuple):
            status, message = expected[0]
            assert len(self.events) == 1, self.events
            rejected = self.events[0]
            assert isinstance(rejected, e.CommandRejected), self.events
            assert (rejected.status, rejected.message) == (status, message)
            assert not self.outcome.result.ok
            assert (self.outcome.result.status, self.outcome.result.message) == (status, message)
        else:
            assert len(self.events) == len(expected), self.events
            for got, want in zip(self.events, expected, strict=True):
                if isinstance(want, type):
                    assert isinstance(got, want), (got, want)
                else:
                    assert got == want
        assert plain(fold(self.scenario.records)) == plain(self.world)
        return self

    def container(self, cid: str = A) -> Any:
        return self.world.containers[cid]


class Given:
    """A world built by applying steps through the decider, recording every record."""

    def __init__(self, steps: tuple[Step, ...]) -> None:
        self.world = World()
        self.records: list[e.EventRecord] = []
        self.count = 0
        for step in steps:
            self.apply(step)

    def apply(self, step: Step) -> Outcome:
        target, cmd = step if isinstance(step, tuple) else ("", step)
        self.count += 1
        env = c.Envelope(command_id=f"cmd-{self.count}", container_id=target,
                         issued_at=self.count * 1_000, actor="test")
        outcome = apply_command(self.world, env, cmd)
        self.records.extend(outcome.records)
        return outcome

    def when(self, step: Step) -> Then:
        return Then(self, self.apply(step))


def given(*steps: Step, base: bool = True) -> Given:
    return Given((*BASE, *steps) if base else steps)


def create(name: str = "web", cid: str = A, image: str = "busybox",
           host: HostConfig | None = None, **config: Any) -> Step:
    return cid, c.CreateContainer(config=ContainerConfig(image=image, **config), name=name,
                                  host_config=host or HostConfig())


def mounted(g: int = 1, cid: str = A) -> Step:
    return cid, c.ReportMounted(generation=g, rootfs=f"/run/moor/{cid[:12]}/rootfs")


def sandbox(g: int = 1, cid: str = A) -> Step:
    return cid, c.ReportSandbox(generation=g, sandbox_key=f"/run/netns/moor-{cid[:12]}")


def joined(g: int = 1, cid: str = A) -> Step:
    return cid, c.ReportEndpoint(generation=g, endpoint_id=f"ep-{cid[:8]}-{g}")


def spawned(g: int = 1, cid: str = A, pid: int = 4242) -> Step:
    return cid, c.ReportProcessStarted(generation=g, pid=pid, started_at=77)


def exited(g: int = 1, cid: str = A, code: int = 0, oom: bool = False) -> Step:
    return cid, c.ReportProcessExited(generation=g, exit_code=code, finished_at=99,
                                      oom_killed=oom)


def failed(step: str, g: int = 1, cid: str = A, code: int = 127) -> Step:
    return cid, c.ReportStepFailed(generation=g, step=step, error=f"{step} broke",
                                   exit_code=code)


def removed(cid: str = A) -> Step:
    return cid, c.ReportRemoved()


def saga(g: int = 1, cid: str = A) -> tuple[Step, ...]:
    return mounted(g, cid), sandbox(g, cid), joined(g, cid), spawned(g, cid)


def running(name: str = "web", cid: str = A, **kw: Any) -> tuple[Step, ...]:
    return create(name, cid, **kw), c.StartContainer(ref=cid), *saga(1, cid)


def start(ref: str = "web") -> c.StartContainer:
    return c.StartContainer(ref=ref)


def stop(ref: str = "web", **kw: Any) -> c.StopContainer:
    return c.StopContainer(ref=ref, **kw)


def kill(ref: str = "web", signal: str = "SIGKILL") -> c.KillContainer:
    return c.KillContainer(ref=ref, signal=signal)


def restart(ref: str = "web", **kw: Any) -> c.RestartContainer:
    return c.RestartContainer(ref=ref, **kw)


def rm(ref: str = "web", force: bool = False) -> c.RemoveContainer:
    return c.RemoveContainer(ref=ref, force=force)


def rename(new: str, ref: str = "web") -> c.RenameContainer:
    return c.RenameContainer(ref=ref, new_name=new)


def rmi(ref: str = "busybox", force: bool = False) -> c.RemoveImage:
    return c.RemoveImage(ref=ref, force=force)


def policy(name: str, retries: int = 0, auto_remove: bool = False) -> HostConfig:
    return HostConfig(restart_policy=RestartPolicy(name=name, maximum_retry_count=retries),
                      auto_remove=auto_remove)


def ignored(reason: str) -> Any:
    """Match a ReportIgnored by its reason (report and generation are checked elsewhere)."""
    class _Match:
        def __eq__(self, other: object) -> bool:
            return isinstance(other, e.ReportIgnored) and other.reason == reason

        def __repr__(self) -> str:
            return f"ReportIgnored(reason={reason!r})"
    return _Match()


def invalid_name(name: str) -> str:
    return f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"


STOPPED = (*running(), stop(), exited(1))
EP = "172.17.0.2"


# --- create --------------------------------------------------------------------------------

def test_create_records_the_container() -> None:
    assert given().when(create()).then(e.ContainerCreated).container().name == "web"


def test_create_id_must_be_64_hex() -> None:
    given().when(create(cid="abc")).then(
        (400, "invalid container id: 'abc' (64 lowercase hex expected)"))


def test_create_id_must_be_lowercase() -> None:
    given().when(create(cid="A" * 64)).then(
        (400, f"invalid container id: '{'A' * 64}' (64 lowercase hex expected)"))


def test_create_id_taken() -> None:
    given(create()).when(create("db")).then((409, f"container id {A} is already in use"))


def test_create_id_of_a_destroyed_container_stays_taken() -> None:
    given(create(), rm(), removed()).when(create()).then(
        (409, f"container id {A} is already in use"))


@pytest.mark.parametrize("name", ["a", "-web", "_web", ".web", "we b", "web/x", "wéb", "//web"])
def test_create_name_rule(name: str) -> None:
    given().when(create(name)).then((400, invalid_name(name)))


@pytest.mark.parametrize("name", ["ab", "a1", "Web_1.x-y", "/web", "0"*2])
def test_create_name_rule_accepts(name: str) -> None:
    given().when(create(name)).then(e.ContainerCreated)


def test_create_strips_the_leading_slash() -> None:
    assert given().when(create("/web")).then(e.ContainerCreated).events[0].name == "web"


def test_create_name_conflict() -> None:
    given(create()).when(create(cid=B)).then((409, CONFLICT.format(name="web", id=A)))


def test_create_name_conflict_with_slash() -> None:
    given(create()).when(create("/web", cid=B)).then((409, CONFLICT.format(name="web", id=A)))


def test_generated_name_is_deterministic() -> None:
    first = given().when(create("")).then(e.ContainerCreated).events[0].name
    again = given().when(create("")).then(e.ContainerCreated).events[0].name
    assert first == again == generate_name(A, {})
    assert "_" in first


def test_generated_name_avoids_taken_names() -> None:
    taken = generate_name(B, {})
    got = given(create(taken, cid=A)).when(create("", cid=B)).then(e.ContainerCreated)
    assert got.events[0].name != taken and got.events[0].name.startswith(taken)


def test_generated_name_never_takes_a_held_short_id() -> None:
    taken: dict[str, str] = {}
    while (name := generate_name(B, taken)) != B[:12]:
        taken[name] = "x"
    holders = [create(n, cid=f"{i:x}" * 64) for i, n in enumerate([B[:12], *taken], start=3)]
    given(*holders).when(create("", cid=B)).then(
        (409, CONFLICT.format(name=B[:12], id="3" * 64)))


def test_create_image_unknown() -> None:
    given().when(create(image="nope")).then((404, "No such image: nope:latest"))


def test_create_image_by_id_prefix() -> None:
    given().when(create(image="1111")).then(e.ContainerCreated)


def test_create_working_dir_must_be_absolute() -> None:
    given().when(create(working_dir="tmp")).then(
        (400, "the working directory 'tmp' is invalid, it needs to be an absolute path"))


def test_create_invalid_stop_signal() -> None:
    given().when(create(stop_signal="SIGFOO")).then((400, "invalid signal: SIGFOO"))


@pytest.mark.parametrize(("host", "message"), [
    (policy("sometimes"), "invalid restart policy: unknown policy 'sometimes'; use one of "
     "'no', 'always', 'on-failure', or 'unless-stopped'"),
    (policy("always", 3), "invalid restart policy: maximum retry count can only be used with "
     "'on-failure'"),
    (policy("always", -1), "invalid restart policy: maximum retry count can only be used with "
     "'on-failure' and cannot be negative"),
    (policy("on-failure", -1), "invalid restart policy: maximum retry count cannot be negative"),
    (policy("always", auto_remove=True), "can't create 'AutoRemove' container with restart "
     "policy"),
    (policy("on-failure", 2, auto_remove=True), "can't create 'AutoRemove' container with "
     "restart policy"),
    (HostConfig(memory=6 * 1024 * 1024 - 1), "Minimum memory limit allowed is 6MB"),
    (HostConfig(cap_add=("CAP_FOO",)), 'invalid CapAdd: unknown capability: "CAP_FOO"'),
    (HostConfig(cap_drop=("chown", "nope")), 'invalid CapDrop: unknown capability: "CAP_NOPE"'),
    (HostConfig(security_opt=("no-new-privileges=maybe",)),
     'invalid --security-opt 2: "no-new-privileges=maybe"'),
    (HostConfig(security_opt=("nnp",)), 'invalid --security-opt 1: "nnp"'),
])
def test_create_host_config_errors(host: HostConfig, message: str) -> None:
    given().when(create(host=host)).then((400, message))


def test_create_records_security_options_as_given() -> None:
    host = HostConfig(cap_add=("net_admin", "ALL"), cap_drop=("CAP_CHOWN",),
                      security_opt=("no-new-privileges:true",))
    got = given().when(create(host=host)).then(e.ContainerCreated)
    assert got.container().host_config == host


def test_create_empty_policy_becomes_no() -> None:
    got = given().when(create(host=policy(""))).then(e.ContainerCreated)
    assert got.container().host_config.restart_policy.name == "no"


def test_create_default_network_mode_is_bridge() -> None:
    got = given().when(create(host=HostConfig(network_mode="default"))).then(e.ContainerCreated)
    assert got.container().host_config.network_mode == "bridge"


def test_create_unknown_user_network() -> None:
    given().when(create(host=HostConfig(network_mode="backend"))).then(
        (404, "network backend not found"))


def test_create_memory_of_6mb_is_fine() -> None:
    given().when(create(host=HostConfig(memory=6 * 1024 * 1024))).then(e.ContainerCreated)


def test_create_no_command_specified() -> None:
    bare = c.RegisterImage(image_id=OTHER_IMAGE_ID, repo_tags=("scratchy",))
    given(bare).when(create(image="scratchy")).then((400, "no command specified"))


def test_create_empty_entrypoint_means_none() -> None:
    given().when(create(entrypoint=("",))).then((400, "no command specified"))


def test_create_validates_before_looking_up_the_image() -> None:
    given().when(create(image="nope", working_dir="x")).then(
        (400, "the working directory 'x' is invalid, it needs to be an absolute path"))


def test_create_merges_the_image_config() -> None:
    img = c.RegisterImage(image_id=OTHER_IMAGE_ID, repo_tags=("app:1",), config=ImageConfig(
        cmd=("serve",), entrypoint=("/init",), env=("A=1", "PATH=/bin"), working_dir="/srv",
        stop_signal="SIGQUIT", labels={"from": "image"}))
    ctr = given(img).when(create(image="app:1", env=("A=2",), labels={"x": "y"})).then(
        e.ContainerCreated).container()
    assert (ctr.config.entrypoint, ctr.config.cmd) == (("/init",), ("serve",))
    assert ctr.config.env == ("PATH=/bin", "A=2")
    assert (ctr.config.working_dir, ctr.config.stop_signal) == ("/srv", "SIGQUIT")
    assert ctr.config.labels == {"from": "image", "x": "y"}
    assert ctr.config.hostname == A[:12]
    assert ctr.image_id == OTHER_IMAGE_ID and ctr.image == "app:1"


def test_create_user_entrypoint_drops_the_image_cmd() -> None:
    img = c.RegisterImage(image_id=OTHER_IMAGE_ID, repo_tags=("app:1",),
                          config=ImageConfig(cmd=("serve",), entrypoint=("/init",)))
    ctr = given(img).when(create(image="app:1", entrypoint=("/bin/true",))).then(
        e.ContainerCreated).container()
    assert (ctr.config.entrypoint, ctr.config.cmd) == (("/bin/true",), None)


def test_create_user_cmd_keeps_the_image_entrypoint() -> None:
    img = c.RegisterImage(image_id=OTHER_IMAGE_ID, repo_tags=("app:1",),
                          config=ImageConfig(cmd=("serve",), entrypoint=("/init",)))
    ctr = given(img).when(create(image="app:1", cmd=("debug",))).then(
        e.ContainerCreated).container()
    assert (ctr.config.entrypoint, ctr.config.cmd) == (("/init",), ("debug",))


def test_created_status() -> None:
    assert status_of(given().when(create()).then(e.ContainerCreated).container()) == "created"


# --- start ---------------------------------------------------------------------------------

def test_start_reserves_the_lowest_address() -> None:
    got = given(create()).when(start()).then(e.StartInitiated)
    ev = got.events[0]
    assert (ev.generation, ev.endpoint.ip_address, ev.endpoint.prefix_len) == (1, EP, 16)
    assert ev.endpoint.mac_address == "02:42:ac:11:00:02" and not ev.restart
    assert got.container().saga == ("mount", "sandbox", "endpoint", "spawn")
    assert got.world.addresses == {f"bridge/{EP}": A}


def test_start_running_is_not_modified() -> None:
    given(*running()).when(start()).then((304, "container is already running"))


def test_start_during_the_saga_is_not_modified() -> None:
    given(create(), start(), mounted()).when(start()).then((304, "container is already running"))


def test_start_removing_is_refused() -> None:
    given(create(), rm()).when(start()).then(
        (409, "container is marked for removal and cannot be started"))


def test_start_dead_is_refused() -> None:
    got = given(create(), rm(), failed("remove")).when(start())
    got.then((409, "container is marked for removal and cannot be started"))
    assert status_of(got.container()) == "dead"


def test_start_network_not_found() -> None:
    given(IMAGE, create(), base=False).when(start()).then((404, "network bridge not found"))


def test_start_unknown_container() -> None:
    given().when(start("nope")).then((404, "No such container: nope"))


def test_start_network_none_has_no_endpoint() -> None:
    got = given(create(host=HostConfig(network_mode="none"))).when(start()).then(
        e.StartInitiated(generation=1, endpoint=None))
    assert got.container().saga == ("mount", "sandbox", "spawn") and got.world.addresses == {}


def test_start_network_host_saga() -> None:
    got = given(create(host=HostConfig(network_mode="host"))).when(start())
    assert got.then(e.StartInitiated).container().saga == ("mount", "spawn")


def test_start_exited_begins_a_new_generation() -> None:
    got = given(*STOPPED).when(start()).then(e.StartInitiated)
    assert got.events[0].generation == 2 and got.events[0].endpoint.ip_address == EP


# --- stop ----------------------------------------------------------------------------------

def test_stop_created_is_not_modified() -> None:
    given(create()).when(stop()).then((304, "container is already stopped"))


def test_stop_exited_is_not_modified() -> None:
    given(*STOPPED).when(stop()).then((304, "container is already stopped"))


def test_stop_defaults() -> None:
    given(*running()).when(stop()).then(
        e.SignalRequested(generation=1, signal=15, purpose="stop", timeout=10))


def test_stop_signal_from_config() -> None:
    given(*running(stop_signal="SIGINT")).when(stop()).then(
        e.SignalRequested(generation=1, signal=2, purpose="stop", timeout=10))


def test_stop_timeout_from_config() -> None:
    given(*running(stop_timeout=3)).when(stop()).then(
        e.SignalRequested(generation=1, signal=15, purpose="stop", timeout=3))


def test_stop_request_overrides_config() -> None:
    given(*running(stop_signal="SIGINT", stop_timeout=3)).when(
        stop(signal="HUP", timeout=0)).then(
        # not the configured StopSignal: the restart policy is not cancelled (§2)
        e.SignalRequested(generation=1, signal=1, purpose="stop", timeout=0,
                          cancels_restart=False))


def test_stop_invalid_signal() -> None:
    given(*running()).when(stop(signal="SIGFOO")).then((400, "invalid signal: SIGFOO"))


def test_stop_during_the_saga_is_accepted() -> None:
    assert given(create(), start()).when(stop()).then(e.SignalRequested).container().stop_pending


# --- kill ----------------------------------------------------------------------------------

def test_kill_not_running() -> None:
    given(create()).when(kill()).then(
        (409, f"cannot kill container: web: container {A} is not running"))


def test_kill_invalid_signal_is_checked_first() -> None:
    given(create()).when(kill(signal="SIGFOO")).then((400, "invalid signal: SIGFOO"))


@pytest.mark.parametrize("signal", ["0", "65", "NOPE"])
def test_kill_invalid_signal(signal: str) -> None:
    given(*running()).when(kill(signal=signal)).then((400, f"invalid signal: {signal}"))


@pytest.mark.parametrize(("signal", "number"), [("SIGKILL", 9), ("hup", 1), ("15", 15), ("", 9)])
def test_kill_running(signal: str, number: int) -> None:
    got = given(*running()).when(kill(signal=signal))
    got.then(e.SignalRequested(generation=1, signal=number, purpose="kill"))
    assert got.container().manually_stopped and not got.container().stop_pending


def test_kill_then_exit_has_no_stop_event() -> None:
    given(*running(), kill()).when(exited(code=137)).then(e.NetworkDisconnected, e.ContainerDied)


# --- restart -------------------------------------------------------------------------------

def test_restart_created_starts_it() -> None:
    assert given(create()).when(restart()).then(e.StartInitiated).events[0].restart


def test_restart_created_then_saga_reports_restarted() -> None:
    given(create(), restart(), *saga()[:3]).when(spawned()).then(
        e.ContainerStarted, e.ContainerRestarted(generation=1))


def test_restart_running_stops_first() -> None:
    given(*running()).when(restart()).then(
        e.SignalRequested(generation=1, signal=15, purpose="restart", timeout=10))


def test_restart_running_exit_starts_the_next_generation() -> None:
    got = given(*running(), restart()).when(exited()).then(
        e.NetworkDisconnected, e.ContainerDied, e.ContainerStopped, e.StartInitiated)
    assert got.events[-1].generation == 2 and got.events[-1].restart
    assert got.events[-1].endpoint.ip_address == EP
    assert got.world.addresses == {f"bridge/{EP}": A}


def test_restart_running_completes() -> None:
    got = given(*running(), restart(), exited(), *saga(2)[:3]).when(spawned(2)).then(
        e.ContainerStarted(generation=2, pid=4242, started_at=77),
        e.ContainerRestarted(generation=2))
    assert status_of(got.container()) == "running" and not got.container().restart_pending


def test_restart_exit_before_the_start_report_does_not_loop() -> None:
    # The new generation's process exited before the worker reported it started: it ran,
    # the restart is complete, and nobody asked for another one.
    got = given(*running(), restart(), exited(), *saga(2)[:3]).when(exited(2, code=1)).then(
        e.ContainerStarted, e.ContainerRestarted, e.NetworkDisconnected, e.ContainerDied)
    assert status_of(got.container()) == "exited" and got.container().generation == 2


def test_restart_marked_for_removal_is_a_500() -> None:
    given(create(), rm()).when(restart()).then(
        (500, "Cannot restart container web: container is marked for removal and cannot be "
              "started"))


def test_restart_without_network_is_a_500() -> None:
    given(IMAGE, create(), base=False).when(restart()).then(
        (500, "Cannot restart container web: network bridge not found"))


def test_restart_unknown_stays_404() -> None:
    given().when(restart("nope")).then((404, "No such container: nope"))


def test_restart_invalid_signal_is_a_500() -> None:
    given(*running()).when(restart(signal="SIGFOO")).then(
        (500, "Cannot restart container web: invalid signal: SIGFOO"))


# --- rm ------------------------------------------------------------------------------------

def test_rm_running_without_force() -> None:
    given(*running()).when(rm()).then(
        (409, 'cannot remove container "web": container is running: stop the container before '
              "removing or force remove"))


def test_rm_starting_without_force() -> None:
    given(create(), start()).when(rm(A[:12])).then(
        (409, f'cannot remove container "{A[:12]}": container is running: stop the container '
              "before removing or force remove"))


def test_rm_in_progress() -> None:
    given(create(), rm()).when(rm()).then((409, "removal of container web is already in progress"))


def test_rm_in_progress_with_force() -> None:
    given(*running(), rm(force=True)).when(rm(force=True)).then(
        (409, "removal of container web is already in progress"))


def test_rm_force_running_kills() -> None:
    got = given(*running()).when(rm(force=True)).then(
        e.RemovalStarted(force=True), e.SignalRequested(generation=1, signal=9, purpose="remove"))
    assert status_of(got.container()) == "running"


def test_rm_force_running_then_exit_marks_dead() -> None:
    got = given(*running(), rm(force=True)).when(exited(code=137)).then(
        e.NetworkDisconnected, e.ContainerDied, e.ContainerMarkedDead)
    assert status_of(got.container()) == "removing" and got.world.addresses == {}


def test_rm_stopped() -> None:
    got = given(*STOPPED).when(rm()).then(e.RemovalStarted(force=False), e.ContainerMarkedDead)
    assert status_of(got.container()) == "removing"


def test_rm_keeps_the_name_until_destroyed() -> None:
    given(create(), rm()).when(create(cid=B)).then((409, CONFLICT.format(name="web", id=A)))


def test_rm_destroyed_releases_the_name() -> None:
    got = given(create(), rm()).when(removed()).then(e.ContainerDestroyed(name="web"))
    assert A not in got.world.containers and A in got.world.destroyed and got.world.names == {}
    got.scenario.apply(create(cid=B))
    assert got.world.names == {"web": B}


def test_removed_report_when_not_removing_is_ignored() -> None:
    given(create()).when(removed()).then(ignored("container is not being removed"))


def test_removal_failure_leaves_it_dead() -> None:
    got = given(create(), rm()).when(failed("remove")).then(e.RemovalFailed(error="remove broke"))
    assert status_of(got.container()) == "dead" and got.container().error == "remove broke"
    got.scenario.apply(rm())
    assert got.scenario.when(removed()).then(e.ContainerDestroyed).world.containers == {}


def test_remove_failure_without_removal_is_ignored() -> None:
    given(create()).when(failed("remove")).then(ignored("no removal in progress"))


@pytest.mark.parametrize("step", [start(A), stop(A), kill(A), restart(A), rm(A), rename("x1", A)])
def test_destroyed_is_terminal_for_commands(step: Step) -> None:
    given(create(), rm(), removed()).when(step).then((404, f"No such container: {A}"))


@pytest.mark.parametrize("step", [mounted(), exited(), failed("spawn"), removed(), spawned()])
def test_destroyed_is_terminal_for_reports(step: Step) -> None:
    got = given(create(), rm(), removed()).when(step).then(ignored("no such container"))
    assert got.world.containers == {} and got.outcome.records[0].meta.version == 0


# --- rename --------------------------------------------------------------------------------

def test_rename() -> None:
    got = given(create()).when(rename("api")).then(e.ContainerRenamed(old_name="web",
                                                                      new_name="api"))
    assert got.world.names == {"api": A}
    got.scenario.apply(create("web", cid=B))
    assert got.world.names == {"api": A, "web": B}


def test_rename_empty() -> None:
    given(create()).when(rename("")).then((400, "Neither old nor new names may be empty"))


def test_rename_same_name() -> None:
    given(create()).when(rename("/web")).then(
        (400, "Renaming a container with the same name as its current name"))


def test_rename_taken() -> None:
    given(create(), create("db", cid=B)).when(rename("db")).then(
        (409, "Error when allocating new name: " + CONFLICT.format(name="db", id=B)))


def test_rename_invalid() -> None:
    given(create()).when(rename("x")).then((400, invalid_name("x")))


def test_rename_unknown() -> None:
    given().when(rename("api", ref="nope")).then((404, "No such container: nope"))


# --- lookup --------------------------------------------------------------------------------

def test_lookup_name_wins_over_id_prefix() -> None:
    got = given(create("web", cid=A), create("aaaa", cid=B)).when(start("aaaa"))
    assert got.then(e.StartInitiated).outcome.container_id == B


def test_lookup_full_id_wins_over_name() -> None:
    got = given(create("web", cid=A), create(A, cid=B)).when(start(A))
    assert got.then(e.StartInitiated).outcome.container_id == A


def test_lookup_unique_prefix() -> None:
    assert given(create()).when(start("aaa")).then(e.StartInitiated).outcome.container_id == A


def test_lookup_slash_name() -> None:
    assert given(create()).when(start("/web")).then(e.StartInitiated).outcome.container_id == A


def test_lookup_ambiguous_prefix() -> None:
    ids = ("abc1" + "0" * 60, "abc2" + "0" * 60)
    given(create("one", cid=ids[0]), create("two", cid=ids[1])).when(start("abc")).then(
        (400, "multiple IDs found with provided prefix: abc"))


def test_lookup_empty_ref() -> None:
    given(create()).when(start("")).then((400, 'invalid name or ID supplied: ""'))


def test_rejection_is_recorded_against_the_container() -> None:
    got = given(*running()).when(start())
    assert got.outcome.records[0].meta.container_id == A
    assert got.outcome.records[0].meta.version == got.container().version


# --- the start saga --------------------------------------------------------------------------

def test_saga_steps_in_order() -> None:
    scenario = given(create(), start())
    rootfs = f"/run/moor/{A[:12]}/rootfs"
    scenario.when(mounted()).then(e.RootfsMounted(generation=1, rootfs=rootfs))
    scenario.when(sandbox()).then(e.SandboxCreated)
    got = scenario.when(joined()).then(e.NetworkConnected)
    assert got.events[0].endpoint.endpoint_id == f"ep-{A[:8]}-1"
    assert got.container().connected
    got = scenario.when(spawned()).then(e.ContainerStarted(generation=1, pid=4242, started_at=77))
    ctr = got.container()
    assert status_of(ctr) == "running" and ctr.pid == 4242 and ctr.saga == ()


def test_saga_out_of_order_step_is_ignored() -> None:
    scenario = given(create(), start())
    before = plain(scenario.world)
    got = scenario.when(sandbox()).then(e.ReportIgnored(report="ReportSandbox", generation=1,
                                                        reason="step sandbox not awaited"))
    assert_only_version_changed(before, got)


def test_saga_duplicate_report_is_ignored() -> None:
    given(create(), start(), mounted()).when(mounted()).then(ignored("step mount not awaited"))


def test_saga_report_for_a_stale_generation_is_ignored() -> None:
    scenario = given(*STOPPED, start())
    before = plain(scenario.world)
    got = scenario.when(mounted(1)).then(e.ReportIgnored(
        report="ReportMounted", generation=1, reason="stale generation (current 2)"))
    assert_only_version_changed(before, got)


@pytest.mark.parametrize("step", [exited(1), failed("spawn", 1), spawned(1), joined(1)])
def test_stale_reports_change_nothing(step: Step) -> None:
    scenario = given(*STOPPED, start(), mounted(2), sandbox(2))
    before = plain(scenario.world)
    got = scenario.when(step).then(ignored("stale generation (current 2)"))
    assert_only_version_changed(before, got)


def assert_only_version_changed(before: Any, got: Then) -> None:
    after = plain(got.world)
    before["containers"][A]["version"] += 1
    assert after == before


def test_saga_start_report_when_nothing_awaited() -> None:
    given(*running()).when(spawned()).then(ignored("step spawn not awaited"))


def test_step_failure_before_connect() -> None:
    got = given(create(), start()).when(failed("mount")).then(
        e.StartFailed(generation=1, step="mount", error="mount broke", exit_code=127))
    ctr = got.container()
    assert status_of(ctr) == "created" and ctr.exit_code == 127 and ctr.error == "mount broke"
    assert got.world.addresses == {} and ctr.endpoint is None


def test_step_failure_after_connect_disconnects() -> None:
    got = given(create(), start(), mounted(), sandbox(), joined()).when(failed("spawn")).then(
        e.NetworkDisconnected(generation=1, network="bridge"),
        e.StartFailed(generation=1, step="spawn", error="spawn broke", exit_code=127))
    assert got.world.addresses == {} and not got.container().connected


def test_step_failure_default_exit_code_is_128() -> None:
    given(create(), start()).when(failed("mount", code=0)).then(
        e.StartFailed(generation=1, step="mount", error="mount broke", exit_code=128))


def test_step_failure_when_no_start_is_in_flight() -> None:
    given(*running()).when(failed("spawn")).then(ignored("no start in flight"))


def test_step_failure_during_removal_marks_dead() -> None:
    given(create(), start(), rm(force=True)).when(failed("mount")).then(
        e.StartFailed, e.ContainerMarkedDead)


def test_step_failure_auto_remove() -> None:
    given(create(host=HostConfig(auto_remove=True)), start(), mounted(), sandbox(),
          joined()).when(failed("spawn")).then(
        e.NetworkDisconnected, e.StartFailed, e.RemovalStarted(force=True), e.ContainerMarkedDead)


def test_step_failure_then_start_again() -> None:
    got = given(create(), start(), failed("mount")).when(start()).then(e.StartInitiated)
    assert got.events[0].generation == 2


def test_exit_before_the_start_report() -> None:
    got = given(create(), start(), mounted(), sandbox(), joined()).when(exited(code=3)).then(
        e.ContainerStarted(generation=1, pid=0, started_at=99), e.NetworkDisconnected,
        e.ContainerDied(generation=1, exit_code=3, finished_at=99))
    assert status_of(got.container()) == "exited" and got.container().exit_code == 3


def test_exit_before_spawn_is_awaited_is_ignored() -> None:
    given(create(), start(), mounted()).when(exited()).then(ignored("process not running"))


def test_exit() -> None:
    got = given(*running()).when(exited(code=2)).then(
        e.NetworkDisconnected(generation=1, network="bridge"),
        e.ContainerDied(generation=1, exit_code=2, finished_at=99))
    ctr = got.container()
    assert status_of(ctr) == "exited" and (ctr.pid, ctr.exit_code, ctr.finished_at) == (0, 2, 99)
    assert got.world.addresses == {} and ctr.endpoint is None


def test_exit_after_stop() -> None:
    got = given(*running(), stop()).when(exited(code=143)).then(
        e.NetworkDisconnected, e.ContainerDied, e.ContainerStopped(generation=1))
    assert not got.container().stop_pending and got.container().manually_stopped


def test_exit_oom() -> None:
    got = given(*running()).when(exited(code=137, oom=True)).then(
        e.ContainerOOMKilled(generation=1), e.NetworkDisconnected, e.ContainerDied)
    assert got.container().oom_killed


def test_exit_duplicate_is_ignored() -> None:
    given(*STOPPED).when(exited(1)).then(ignored("process not running"))


def test_exit_network_none_has_no_disconnect() -> None:
    given(create(host=HostConfig(network_mode="none")), start(), mounted(), sandbox(),
          spawned()).when(exited()).then(e.ContainerDied)


def test_exit_auto_remove() -> None:
    got = given(*running(host=HostConfig(auto_remove=True))).when(exited()).then(
        e.NetworkDisconnected, e.ContainerDied, e.RemovalStarted(force=True),
        e.ContainerMarkedDead)
    assert status_of(got.container()) == "removing"
    assert got.scenario.when(removed()).then(e.ContainerDestroyed).world.names == {}


def test_exit_auto_remove_after_stop() -> None:
    given(*running(host=HostConfig(auto_remove=True)), stop()).when(exited()).then(
        e.NetworkDisconnected, e.ContainerDied, e.ContainerStopped, e.RemovalStarted,
        e.ContainerMarkedDead)


def test_exit_of_a_restart_with_auto_remove_restarts() -> None:
    given(*running(host=HostConfig(auto_remove=True)), restart()).when(exited()).then(
        e.NetworkDisconnected, e.ContainerDied, e.ContainerStopped, e.StartInitiated)


def test_restart_then_force_rm_wins() -> None:
    given(*running(), restart(), rm(force=True)).when(exited()).then(
        e.NetworkDisconnected, e.ContainerDied, e.ContainerStopped, e.ContainerMarkedDead)


# --- IPAM ----------------------------------------------------------------------------------

def test_ipam_lowest_free_and_reuse() -> None:
    scenario = given(*running("web", A), *running("db", B))
    assert scenario.world.addresses == {f"bridge/{EP}": A, "bridge/172.17.0.3": B}
    scenario.apply(exited(1, A))
    assert scenario.world.addresses == {"bridge/172.17.0.3": B}
    got = scenario.when(create("cache", C)).then(e.ContainerCreated)
    got = scenario.when(start("cache")).then(e.StartInitiated)
    assert got.events[0].endpoint.ip_address == EP
    got = scenario.when(start("web")).then(e.StartInitiated)
    assert got.events[0].endpoint.ip_address == "172.17.0.4"


def test_ipam_released_on_remove() -> None:
    scenario = given(*running("web", A), rm("web", force=True), exited(1, A), removed(A))
    assert scenario.world.addresses == {}
    scenario.apply(create("db", B))
    assert scenario.when(start("db")).then(e.StartInitiated).events[0].endpoint.ip_address == EP


def test_ipam_exhausted() -> None:
    tiny = c.DefineNetwork(network=NetworkSpec(name="tiny", subnet="10.9.0.0/30",
                                               gateway="10.9.0.1", bridge="br-tiny"))
    host = HostConfig(network_mode="tiny")
    given(tiny, create("one", A, host=host), start("one"), create("two", B, host=host)).when(
        start("two")).then((503, "no available addresses on this pool"))


# --- engine-wide facts -------------------------------------------------------------------------

def test_network_defined_twice() -> None:
    given().when(NETWORK).then((304, "network bridge is already defined"))


def test_network_redefined_differently() -> None:
    other = c.DefineNetwork(network=NetworkSpec(name="bridge", subnet="10.0.0.0/24",
                                                gateway="10.0.0.1", bridge="docker0"))
    given().when(other).then((409, "network with name bridge already exists"))


def test_register_image_invalid_id() -> None:
    given().when(c.RegisterImage(image_id="sha256:abc")).then((400, "invalid image id: sha256:abc"))


def test_register_image_normalizes_and_dedupes_tags() -> None:
    got = given().when(c.RegisterImage(image_id=OTHER_IMAGE_ID,
                                       repo_tags=("app", "app:latest", "app:1")))
    assert got.then(e.ImageRegistered).events[0].repo_tags == ("app:latest", "app:1")


def test_register_image_moves_a_tag() -> None:
    got = given().when(c.RegisterImage(image_id=OTHER_IMAGE_ID, repo_tags=("busybox",)))
    got.then(e.ImageRegistered)
    assert got.world.tags == {"busybox:latest": OTHER_IMAGE_ID}
    assert got.world.images[IMAGE_ID].repo_tags == ()


def test_rmi_used_by_running() -> None:
    given(*running()).when(rmi(IMAGE_ID)).then(
        (409, f"conflict: unable to delete {IMAGE_ID[7:19]} (cannot be forced) - image is being "
              f"used by running container {A[:12]}"))


def test_rmi_used_by_running_even_forced() -> None:
    given(create(), start()).when(rmi(IMAGE_ID, force=True)).then(
        (409, f"conflict: unable to delete {IMAGE_ID[7:19]} (cannot be forced) - image is being "
              f"used by running container {A[:12]}"))


def test_rmi_used_by_stopped() -> None:
    given(create()).when(rmi(IMAGE_ID)).then(
        (409, f"conflict: unable to delete {IMAGE_ID[7:19]} (must be forced) - image is being "
              f"used by stopped container {A[:12]}"))


def test_rmi_by_reference_used_needs_force() -> None:
    given(*running()).when(rmi()).then(
        (409, f'conflict: unable to remove repository reference "busybox" (must force) - '
              f"container {A[:12]} is using its referenced image {IMAGE_ID[7:19]}"))


def test_rmi_forced_with_a_stopped_user_untags_only() -> None:
    got = given(create()).when(rmi(force=True)).then(
        e.ImageRemoved(image_id=IMAGE_ID, untagged=("busybox:latest",), deleted=False))
    assert IMAGE_ID in got.world.images and got.world.tags == {}


def test_rmi_unused() -> None:
    got = given().when(rmi()).then(
        e.ImageRemoved(image_id=IMAGE_ID, untagged=("busybox:latest",), deleted=False),
        e.ImageRemoved(image_id=IMAGE_ID, deleted=True))
    assert got.world.images == {} and got.world.tags == {}
    got.scenario.when(create()).then((404, "No such image: busybox:latest"))


def test_rmi_one_of_several_tags_untags() -> None:
    both = c.RegisterImage(image_id=IMAGE_ID, repo_tags=("busybox", "box:1"))
    got = given(both, *running()).when(rmi("box:1")).then(
        e.ImageRemoved(image_id=IMAGE_ID, untagged=("box:1",), deleted=False))
    assert got.world.tags == {"busybox:latest": IMAGE_ID}


def test_rmi_unknown() -> None:
    given().when(rmi("nope")).then((404, "No such image: nope:latest"))


def test_rmi_after_the_user_is_destroyed() -> None:
    given(create(), rm(), removed()).when(rmi()).then(
        e.ImageRemoved(image_id=IMAGE_ID, untagged=("busybox:latest",), deleted=False),
        e.ImageRemoved(image_id=IMAGE_ID, deleted=True))


# --- react and resume ----------------------------------------------------------------------

def jobs_of(scenario: Given) -> list[Job]:
    """Return the jobs each record triggers, folding a fresh world alongside."""
    world = World()
    jobs: list[Job] = []
    for record in scenario.records:
        fold([record], world)
        jobs.extend(react(world, record))
    return jobs


def test_react_job_ids_are_deterministic() -> None:
    steps = (*running(), restart(), exited(), *saga(2), rm(force=True), exited(2), removed())
    first, second = jobs_of(given(*steps)), jobs_of(given(*steps))
    assert first == second
    versions = [r.meta.version for r in given(*steps).records
                if isinstance(r.event, e.SignalRequested)]
    assert [j.job_id for j in first] == [
        f"start-{A}-1", f"signal-{A}-{versions[0]}", f"teardown-{A}-1", f"start-{A}-2",
        f"signal-{A}-{versions[1]}", f"teardown-{A}-2", f"remove-{A}"]
    assert first[0].func == "workers.jobs.start_container"
    # Primitives only: the kwargs survive rq's JSON, and the worker types the plan back.
    kwargs = json.loads(json.dumps([j.kwargs for j in first]))
    plan = CODEC.plan(kwargs[0]["plan"])
    at_start = given(create(), start())
    assert plan == start_plan(at_start.world, at_start.world.containers[A])
    assert (plan.container_id, plan.name, plan.image_id) == (A, "web", IMAGE_ID)
    assert plan.config.cmd == ("sh",) and plan.host_config.network_mode == "bridge"
    assert (plan.generation, plan.endpoint and plan.endpoint.ip_address) == (1, EP)
    assert plan.steps == ("mount", "sandbox", "endpoint", "spawn")
    assert plan.network is not None and plan.network.subnet == "172.17.0.0/16"


def test_react_signal_job_carries_the_request() -> None:
    jobs = jobs_of(given(*running(stop_timeout=4), stop()))
    assert jobs[-1].kwargs == {"container_id": A, "generation": 1, "signal": 15, "timeout": 4,
                               "purpose": "stop"}


def test_resume_reissues_the_same_start_job() -> None:
    scenario = given(create(), start(), mounted())
    (owed,) = resume(scenario.world)
    (first,) = jobs_of(scenario)
    assert (owed.func, owed.job_id) == (first.func, first.job_id) == (
        "workers.jobs.start_container", f"start-{A}-1")
    assert CODEC.plan(owed.kwargs["plan"]).steps == ("sandbox", "endpoint", "spawn")
    assert resume(fold(scenario.records)) == resume(scenario.world)


def test_resume_reissues_removal() -> None:
    scenario = given(*running("web", A), create("db", B), rm("db"))
    assert resume(scenario.world) == [Job("workers.jobs.remove_container", f"remove-{B}",
                                          {"container_id": B, "generation": 0,
                                           "ports": False})]
    assert resume(fold(scenario.records)) == resume(scenario.world)


# --- restart policies (Docker's restart manager: back-off 100 ms, doubling, reset after 10 s) --

def resumed(g: int = 1, cid: str = A) -> Step:
    return cid, c.ResumeRestart(generation=g)


def test_policy_always_schedules_a_restart_after_an_exit() -> None:
    got = given(*running(host=policy("always"))).when(exited(code=3)).then(
        e.NetworkDisconnected, e.ContainerDied,
        e.RestartScheduled(generation=1, delay_ms=100, restart_count=1, due=99 + 100_000_000))
    assert status_of(got.container()) == "restarting" and got.container().pid == 0


def test_policy_restart_resumes_with_a_new_generation_then_doubles_the_back_off() -> None:
    got = given(*running(host=policy("always")), exited()).when(resumed()).then(
        e.StartInitiated)
    assert got.events[0].generation == 2 and not got.events[0].manual
    assert status_of(got.container()) == "restarting"
    again = given(*running(host=policy("always")), exited(), resumed(), mounted(2),
                  sandbox(2), joined(2)).when(spawned(2)).then(e.ContainerStarted)
    assert status_of(again.container()) == "running"
    # a quick second exit (the run lasted far less than 10 s) doubles the delay
    third = given(*running(host=policy("always")), exited(), resumed(), *saga(2)).when(
        exited(2)).then(e.NetworkDisconnected, e.ContainerDied, e.RestartScheduled(
            generation=2, delay_ms=200, restart_count=2, due=99 + 200_000_000))
    assert third.container().restart_count == 2


def test_policy_on_failure_ignores_a_clean_exit_and_honours_its_maximum() -> None:
    given(*running(host=policy("on-failure"))).when(exited(code=0)).then(
        e.NetworkDisconnected, e.ContainerDied)
    given(*running(host=policy("on-failure", 1)), exited(code=1), resumed(), *saga(2)).when(
        exited(2, code=1)).then(e.NetworkDisconnected, e.ContainerDied)


def test_policy_does_not_restart_after_a_manual_stop() -> None:
    given(*running(host=policy("unless-stopped")), stop()).when(exited(code=143)).then(
        e.NetworkDisconnected, e.ContainerDied, e.ContainerStopped)


def test_stop_during_the_back_off_records_only_stop() -> None:
    got = given(*running(host=policy("always")), exited()).when(stop()).then(
        e.ContainerStopped)
    assert status_of(got.container()) == "exited"
    got.scenario.when(resumed()).then(ignored("no restart pending"))


def test_force_remove_during_the_back_off_needs_no_signal() -> None:
    given(*running(host=policy("always")), exited()).when(rm(force=True)).then(
        e.RemovalStarted(force=True), e.ContainerMarkedDead)
    given(*running(host=policy("always")), exited()).when(rm()).then(
        (409, 'cannot remove container "web": container is restarting: stop the container '
              "before removing or force remove"))


def test_manual_restart_during_the_back_off_starts_at_once() -> None:
    got = given(*running(host=policy("always")), exited()).when(restart()).then(
        e.StartInitiated)
    assert got.events[0].manual and got.container().restart_count == 0


def test_compaction_is_a_fact_with_a_cut_off_from_the_command_itself() -> None:
    # No clock: the cut-off is the command's issued-at (ns) less the retention (ms).
    got = given().when(c.CompactLog(retain_ms=86_400_000))
    issued_ms = got.scenario.count * 1_000 // 1_000_000
    got.then(e.LogCompacted(cutoff_ms=issued_ms - 86_400_000, retain_ms=86_400_000))
    given().when(c.CompactLog(retain_ms=1_000)).then(
        (400, "retention must be at least 60s, got 1000ms"))


def test_a_process_up_during_rm_f_is_killed_and_never_recorded_started() -> None:
    # rm -f came while the start was in flight; the worker's spawn came up anyway.
    got = given(create(), start(), rm(force=True), mounted(), sandbox(), joined()).when(
        spawned()).then(
        e.ReportIgnored(report="ReportProcessStarted", generation=1,
                        reason="container is being removed"),
        e.SignalRequested(generation=1, signal=9, purpose="remove"))
    assert got.container().removal_in_progress and not got.container().running
    # its exit marks it dead (no start recorded, even though the exit "overtook" it)
    got.scenario.when(exited(code=137)).then(
        e.NetworkDisconnected, e.ContainerDied, e.ContainerMarkedDead)


# --- commit and noted actions (Docker's commit, top, archive events) ----------------------

def commit(ref: str = "web", tags: tuple[str, ...] = ("snap",)) -> c.CommitContainer:
    return c.CommitContainer(ref=ref, image_id=OTHER_IMAGE_ID, repo_tags=tags,
                             config=ImageConfig(cmd=("sh",)), comment="why")


def test_commit_records_image_create_tag_then_the_containers_commit() -> None:
    got = given(*running()).when(commit()).then(
        e.ImageRegistered(image_id=OTHER_IMAGE_ID, config=ImageConfig(cmd=("sh",)),
                          origin="commit"),
        e.ImageTagged(image_id=OTHER_IMAGE_ID, tag="snap:latest"),
        e.ContainerCommitted(image_id=OTHER_IMAGE_ID, image_ref="snap:latest", comment="why"))
    assert all(r.meta.container_id == A for r in got.outcome.records)
    assert got.world.images[OTHER_IMAGE_ID].repo_tags == ("snap:latest",)
    assert got.world.tags["snap:latest"] == OTHER_IMAGE_ID


def test_commit_tag_moves_from_the_image_it_named() -> None:
    got = given(*running()).when(commit(tags=("busybox",)))
    got.then(e.ImageRegistered, e.ImageTagged, e.ContainerCommitted)
    assert got.world.tags == {"busybox:latest": OTHER_IMAGE_ID}
    assert got.world.images[IMAGE_ID].repo_tags == ()


def test_commit_refuses_a_dead_removed_or_gone_container() -> None:
    given(create(), rm()).when(commit(A)).then(
        (409, f"You cannot commit container {A} which is Dead"))
    given(create(), rm(), removed()).when(commit(A)).then((404, f"No such container: {A}"))
    marked = given(*running(), rm(force=True))
    marked.when(commit(A)).then(
        (409, f"You cannot commit container {A} which is being removed"))


def test_noted_actions_are_container_events_and_unknown_ones_are_refused() -> None:
    got = given(*running()).when(c.NoteContainerAction(ref="web", action="top"))
    got.then(e.ContainerActionNoted(action="top"))
    given(*running()).when(c.NoteContainerAction(ref="web", action="reboot")).then(
        (400, "unknown container action 'reboot': expected one of archive-path, attach, "
              "detach, export, extract-to-dir, resize, top"))
    given().when(c.NoteContainerAction(ref="ghost", action="top")).then(
        (404, "No such container: ghost"))
