"""Given/when/then tests of admission: the policy decided in the pure reducer, the inbox
kinds, and the principal stamped on every record.

`when(cmd, principal)` decides one command as if the reducer had read it from that
principal's inbox (engine.core.admission.Origin) under the scenario's policy; `then`
checks the events, and that replaying the records rebuilds the live world.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from commands import schema as c
from engine.core.admission import ALLOW_ALL, Origin, Policy, accepts
from engine.core.decider import Outcome, apply_command
from engine.core.evolve import fold
from engine.core.state import World
from engine.errors import InvalidParameter
from engine.keys import CONTROL, INTERNAL, REPORTS
from events import model as e
from events.specs import ContainerConfig, DeviceMapping, HostConfig, ImageConfig, NetworkSpec

A = "a" * 64
IMAGE_ID = "sha256:" + "1" * 64
POLICY = Policy(privileged=("ops",), capabilities=("ops", "ci"), devices=(),
                host_namespaces=("ops",))


class Scenario:
    """A world under a policy, built through the decider; records kept for replay."""

    def __init__(self, policy: Policy = POLICY) -> None:
        self.policy = policy
        self.world = World()
        self.records: list[e.EventRecord] = []
        self.count = 0
        self.when(c.DefineNetwork(network=NetworkSpec(name="bridge", subnet="172.17.0.0/16",
                                                      gateway="172.17.0.1", bridge="docker0")),
                  "reducer", INTERNAL)
        self.when(c.RegisterImage(image_id=IMAGE_ID, repo_tags=("busybox",),
                                  config=ImageConfig(cmd=("sh",))))

    def when(self, cmd: c.Command, principal: str = CONTROL, kind: str = CONTROL,
             cid: str = "", actor: str = "bob") -> Outcome:
        self.count += 1
        env = c.Envelope(command_id=f"cmd-{self.count}", container_id=cid,
                         issued_at=self.count * 1_000, actor=actor)
        outcome = apply_command(self.world, env, cmd, Origin(principal, kind, self.policy))
        self.records.extend(outcome.records)
        assert msgspec.to_builtins(fold(self.records)) == msgspec.to_builtins(self.world)
        return outcome


def create(**host: object) -> c.CreateContainer:
    return c.CreateContainer(config=ContainerConfig(image="busybox"), name="web",
                             host_config=HostConfig(**host))  # type: ignore[arg-type]


def refused(outcome: Outcome) -> e.CommandRejected:
    (record,) = outcome.records
    assert isinstance(record.event, e.CommandRejected), record.event
    assert not outcome.result.ok and outcome.result.status == 403
    return record.event


def test_a_privileged_create_by_an_unlisted_principal_is_a_recorded_refusal() -> None:
    s = Scenario()
    outcome = s.when(create(privileged=True), "ci", cid=A, actor="alice")
    rejected = refused(outcome)
    assert rejected.rule == "privileged"
    assert rejected.message == ("authorization denied by policy: principal ci (on behalf of "
                                "alice) may not create a container with --privileged "
                                "(rule privileged)")
    assert outcome.records[0].meta.principal == "ci"
    assert outcome.records[0].meta.actor == "alice"
    assert A not in s.world.containers


def test_a_listed_principal_may_create_it() -> None:
    s = Scenario()
    outcome = s.when(create(privileged=True), "ops", cid=A)
    assert [type(r.event) for r in outcome.records] == [e.ContainerCreated]
    assert outcome.records[0].meta.principal == "ops"


@pytest.mark.parametrize(("host", "principal", "rule"), [
    ({"cap_add": ("SYS_ADMIN",)}, CONTROL, "capabilities"),
    ({"cap_add": ("ALL",)}, "alice", "capabilities"),
    ({"devices": (DeviceMapping(path_on_host="/dev/fuse", path_in_container="/dev/fuse",
                                cgroup_permissions="rwm"),)}, "ops", "devices"),
    ({"device_cgroup_rules": ("c 10:229 rwm",)}, "ops", "devices"),
    ({"pid_mode": "host"}, "ci", "host_namespaces"),
    ({"network_mode": "host"}, CONTROL, "host_namespaces"),
    ({"ipc_mode": "host", "uts_mode": "host"}, "ci", "host_namespaces"),
])
def test_each_rule_refuses_what_it_names(host: dict[str, object], principal: str,
                                         rule: str) -> None:
    rejected = refused(Scenario().when(create(**host), principal, cid=A))
    assert rejected.rule == rule and f"(rule {rule})" in rejected.message


@pytest.mark.parametrize(("host", "principal"), [
    ({"cap_add": ("NET_RAW", "CHOWN")}, CONTROL),  # already in the default set
    ({"cap_drop": ("ALL",), "cap_add": ("NET_BIND_SERVICE",)}, CONTROL),
    ({"cap_add": ("NET_ADMIN",)}, "ci"),
    ({"network_mode": "none", "ipc_mode": "shareable"}, CONTROL),
    ({"pid_mode": "host", "cap_add": ("SYS_PTRACE",)}, "ops"),
])
def test_what_no_rule_forbids_is_created(host: dict[str, object], principal: str) -> None:
    outcome = Scenario().when(create(**host), principal, cid=A)
    assert [type(r.event) for r in outcome.records] == [e.ContainerCreated]


def test_the_default_policy_allows_everything() -> None:
    assert ALLOW_ALL.allows_all and not POLICY.allows_all
    outcome = Scenario(ALLOW_ALL).when(
        create(privileged=True, pid_mode="host", cap_add=("ALL",)), "anyone", cid=A)
    assert [type(r.event) for r in outcome.records] == [e.ContainerCreated]


def test_only_creates_are_checked() -> None:
    s = Scenario()
    s.when(create(privileged=True), "ops", cid=A)
    started = s.when(c.StartContainer(ref="web"), "ci")
    assert e.StartInitiated in [type(r.event) for r in started.records]


def test_records_without_an_origin_carry_no_principal() -> None:
    world = World()
    env = c.Envelope(command_id="x", issued_at=1, actor="a")
    outcome = apply_command(world, env, c.StartContainer(ref="nope"))
    assert outcome.records[0].meta.principal == ""


@pytest.mark.parametrize(("kind", "cmd", "ok"), [
    (CONTROL, c.StartContainer(ref="x"), True),
    (CONTROL, c.CompactLog(retain_ms=60_000), True),
    (CONTROL, c.ReportProcessExited(generation=1, exit_code=0, finished_at=1), False),
    (CONTROL, c.RestoreContainer(boot_id="b", generation=1), False),
    (CONTROL, c.ResumeRestart(generation=1), False),
    (REPORTS, c.ReportProcessExited(generation=1, exit_code=0, finished_at=1), True),
    (REPORTS, c.ReportHostBooted(boot_id="b"), True),
    (REPORTS, c.StartContainer(ref="x"), False),
    (REPORTS, c.ResumeRestart(generation=1), False),
    (INTERNAL, c.ResumeRestart(generation=1), True),
    (INTERNAL, c.DefineNetwork(network=NetworkSpec(name="n", subnet="10.0.0.0/8",
                                                   gateway="10.0.0.1", bridge="b")), True),
    (INTERNAL, c.ReportRemoved(generation=1), False),
])
def test_an_inbox_carries_only_its_kind(kind: str, cmd: c.Command, ok: bool) -> None:
    reason = accepts(kind, cmd)
    assert (reason == "") is ok, reason


# --- the policy file ---------------------------------------------------------------------------

def test_the_policy_comes_from_moor_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    from engine.config import load_policy

    monkeypatch.delenv("MOOR_POLICY", raising=False)
    assert load_policy() is ALLOW_ALL
    path = tmp_path / "policy.json"
    path.write_text('{"privileged": ["ops"], "host_namespaces": []}')
    monkeypatch.setenv("MOOR_POLICY", str(path))
    assert load_policy() == Policy(privileged=("ops",), host_namespaces=())
    path.write_text('{"privilegd": ["ops"]}')  # a typo stops the reducer: no silent allow
    with pytest.raises(InvalidParameter, match=r"privilegd"):
        load_policy()
    with pytest.raises(InvalidParameter, match="No such file"):
        load_policy(str(tmp_path / "missing.json"))


# --- the API socket's group (dockerd's -G) ------------------------------------------------------

def test_the_api_socket_group_is_a_name_or_a_gid() -> None:
    import grp

    from moor.api.server import socket_gid

    assert socket_gid("4242") == 4242
    assert socket_gid(grp.getgrgid(0).gr_name) == 0
    with pytest.raises(SystemExit, match="group 'no-such-group-x' not found"):
        socket_gid("no-such-group-x")


def test_a_privileged_exec_is_the_privileged_rule_too() -> None:
    from events.specs import ExecConfig

    s = Scenario()
    s.when(create(), "ci", cid=A)
    rejected = refused(s.when(c.CreateExec(ref="web", exec_id="e" * 64, config=ExecConfig(
        cmd=("sh",), privileged=True)), "ci"))
    assert rejected.rule == "privileged" and "may not run an exec with --privileged" in \
        rejected.message
