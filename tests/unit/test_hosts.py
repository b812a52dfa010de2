"""Hosts, pure: placement, joining and slices, loss and return, the guards, job routing.

Each scenario folds commands through the decider (engine.core.decider.apply_command) and
checks that a replay of the records rebuilds the live world.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import msgspec
import pytest

from commands import schema as c
from engine.core.decider import apply_command
from engine.core.evolve import fold
from engine.core.placement import place
from engine.core.react import react, resume, start_plan
from engine.core.state import World, host_lost, status_of
from engine.errors import Unavailable
from engine.outbox import decode_job, encode_job
from events import model as e
from events.specs import ContainerConfig, ExecConfig, HostConfig, ImageConfig, NetworkSpec
from projections.views.inspect import inspect_container
from projections.views.ps import list_containers

IMAGE_ID = "sha256:" + "1" * 64
NETWORK = NetworkSpec(name="bridge", subnet="10.77.0.0/16", gateway="10.77.0.1", bridge="moor0")


def cid(n: int) -> str:
    return f"{n:064x}"


class Engine:
    """A world driven by commands, with every record kept for the replay check."""

    def __init__(self) -> None:
        self.world = World()
        self.records: list[e.EventRecord] = []
        self.clock = 1_700_000_000_000_000_000
        self.send(c.DefineNetwork(network=NETWORK))
        self.send(c.RegisterImage(image_id=IMAGE_ID, repo_tags=("busybox",),
                                  config=ImageConfig(cmd=("sh",))))

    def send(self, cmd: c.Command, container: str = "", command_id: str = "") -> list[Any]:
        self.clock += 1000
        env = c.Envelope(command_id=command_id or f"cmd-{self.clock}", container_id=container,
                         issued_at=self.clock)
        outcome = apply_command(self.world, env, cmd)
        self.records += outcome.records
        return [r.event for r in outcome.records]

    def join(self, host: str, capacity: int = 10, **labels: str) -> list[Any]:
        return self.send(c.JoinHost(host=host, labels=labels, capacity=capacity,
                                    bridge=f"br-{host}"))

    def create(self, n: int, **labels: str) -> list[Any]:
        return self.send(c.CreateContainer(config=ContainerConfig(image="busybox",
                                                                  labels=labels),
                                           host_config=HostConfig()), container=cid(n))

    def run(self, n: int, pid: int = 100, **labels: str) -> None:
        """Create, start, and report every saga step as a worker would."""
        self.create(n, **labels)
        [initiated] = self.send(c.StartContainer(ref=cid(n)))
        gen = initiated.generation
        for report in (c.ReportMounted(generation=gen, rootfs="/r"),
                       c.ReportSandbox(generation=gen, sandbox_key="/run/netns/x"),
                       c.ReportEndpoint(generation=gen, endpoint_id="mv1"),
                       c.ReportProcessStarted(generation=gen, pid=pid, started_at=self.clock)):
            self.send(report, container=cid(n))

    def host_of(self, n: int) -> str:
        return self.world.containers[cid(n)].host

    def rejected(self, events: list[Any]) -> tuple[int, str]:
        [rejection] = events
        assert isinstance(rejection, e.CommandRejected), events
        return rejection.status, rejection.message

    def replayed(self) -> bool:
        return msgspec.to_builtins(fold(self.records)) == msgspec.to_builtins(self.world)


# --- placement -------------------------------------------------------------------------

def test_no_host_joined_places_nowhere_whatever_the_labels() -> None:
    eng = Engine()
    eng.create(1, **{"moorage.host": "h9"})
    assert eng.host_of(1) == ""
    [job] = react(eng.world, eng.records[-1]) or [None]  # nothing to do at create
    assert job is None


def test_least_loaded_by_containers_per_capacity_ties_by_host_id() -> None:
    eng = Engine()
    eng.join("h2", capacity=2)
    eng.join("h1", capacity=4)
    placed = []
    for n in range(1, 7):
        eng.create(n)
        placed.append(eng.host_of(n))
    # Loads (h1/4, h2/2): 0=0 tie -> h1; 1/4>0 -> h2; 1/4<1/2 -> h1; 2/4=1/2 tie -> h1;
    # 3/4>1/2 -> h2; h2 full -> h1; both full -> refused.
    assert placed == ["h1", "h2", "h1", "h1", "h2", "h1"]
    status, message = eng.rejected(eng.create(7))
    assert (status, message) == (503, "no suitable node (2 hosts at capacity)")
    assert eng.replayed()


def test_a_pin_wins_and_constraints_filter() -> None:
    eng = Engine()
    eng.join("a1", zone="a")
    eng.join("b1", zone="b", disk="ssd")
    eng.create(1, **{"moorage.host": "b1"})
    eng.create(2, **{"moorage.constraint.zone": "b"})
    eng.create(3, **{"moorage.constraint.disk": "ssd", "moorage.constraint.zone": "b"})
    eng.create(4)
    assert [eng.host_of(n) for n in (1, 2, 3, 4)] == ["b1", "b1", "b1", "a1"]
    assert eng.rejected(eng.create(5, **{"moorage.host": "zz"})) == \
        (503, 'no suitable node (host "zz" has not joined)')
    assert eng.rejected(eng.create(6, **{"moorage.constraint.zone": "c"})) == \
        (503, "no suitable node (scheduling constraints not satisfied on 2 hosts)")
    assert eng.rejected(eng.create(7, **{"moorage.host": "a1",
                                         "moorage.constraint.zone": "b"})) == \
        (503, 'no suitable node (host "a1" does not satisfy the constraints)')


def test_placement_is_a_function_of_the_world() -> None:
    eng = Engine()
    for host in ("h3", "h1", "h2"):
        eng.join(host)
    before = msgspec.to_builtins(eng.world)
    assert place(eng.world, {}) == place(eng.world, {}) == "h1"
    assert msgspec.to_builtins(eng.world) == before


def test_lost_hosts_are_never_chosen() -> None:
    eng = Engine()
    eng.join("h1")
    eng.join("h2")
    eng.send(c.MarkHostLost(host="h1", losses=0))
    for n in (1, 2, 3):
        eng.create(n)
    assert {eng.host_of(n) for n in (1, 2, 3)} == {"h2"}
    assert eng.rejected(eng.create(4, **{"moorage.host": "h1"})) == \
        (503, 'no suitable node (host "h1" is lost)')
    eng.send(c.MarkHostLost(host="h2", losses=0))
    assert eng.rejected(eng.create(5)) == (503, "no suitable node (2 hosts lost)")
    with pytest.raises(Unavailable):
        place(eng.world, {})


# --- joining and slices ----------------------------------------------------------------

def test_each_host_gets_its_own_slice_kept_across_rejoin() -> None:
    eng = Engine()
    [joined] = eng.join("h1", zone="a")
    assert joined == e.HostJoined(host="h1", labels={"zone": "a"}, capacity=10,
                                  subnet="10.77.1.0/24", bridge="br-h1")
    eng.join("h2")
    [again] = eng.join("h1", capacity=3, zone="b")
    assert (again.subnet, again.capacity, again.labels) == ("10.77.1.0/24", 3, {"zone": "b"})
    assert eng.world.hosts["h2"].subnet == "10.77.2.0/24"
    assert eng.replayed()


def test_a_slice_is_never_one_that_holds_an_address_already() -> None:
    eng = Engine()
    # Single-host containers hold addresses of slice 0 (and here beyond it).
    eng.world.addresses["bridge/10.77.1.9"] = cid(99)
    [joined] = eng.join("h1")
    assert joined.subnet == "10.77.2.0/24"


def test_addresses_come_from_the_hosts_slice_and_never_collide() -> None:
    eng = Engine()
    eng.run(1)  # before any host: single-host mode, the whole network
    eng.join("h1")
    eng.join("h2")
    for n, host in ((2, "h1"), (3, "h2"), (4, "h1"), (5, "h2")):
        eng.run(n, **{"moorage.host": host})
    eng.world.hosts.clear()  # (only for this lookup; replay below uses the records)
    world = fold(eng.records)
    ips = {n: world.containers[cid(n)].endpoint.ip_address for n in range(1, 6)}
    assert ips == {1: "10.77.0.2", 2: "10.77.1.2", 3: "10.77.2.2", 4: "10.77.1.3",
                   5: "10.77.2.3"}
    ctr = world.containers[cid(3)]
    assert (ctr.endpoint.gateway, ctr.endpoint.prefix_len) == ("10.77.2.1", 24)
    plan = start_plan(world, ctr)
    assert plan.network is not None
    assert (plan.network.subnet, plan.network.gateway, plan.network.bridge) == \
        ("10.77.2.0/24", "10.77.2.1", "br-h2")
    assert ipaddress.IPv4Address(ips[3]) in ipaddress.IPv4Network(plan.network.subnet)


def test_a_container_of_no_host_skips_the_hosts_slices() -> None:
    eng = Engine()
    eng.join("h1")
    for n in range(1, 255):  # fill the rest of slice 0 and go on past h1's slice
        eng.world.addresses[f"bridge/10.77.0.{n}"] = cid(1000 + n)
    from engine.core.lifecycle import endpoint_for

    ctr = _bare_container()  # created before h1 joined: host ""
    endpoint = endpoint_for(eng.world, ctr)
    assert endpoint is not None and endpoint.ip_address == "10.77.0.255"
    eng.world.addresses["bridge/10.77.0.255"] = cid(2000)
    endpoint = endpoint_for(eng.world, ctr)
    assert endpoint is not None and endpoint.ip_address == "10.77.2.0"


def _bare_container() -> Any:
    from engine.core.state import Container

    return Container(id=cid(1), name="x", image="busybox", image_id=IMAGE_ID,
                     config=ContainerConfig(image="busybox"),
                     host_config=HostConfig(network_mode="bridge"), created=1)


def test_a_join_is_refused_before_the_default_network_exists() -> None:
    world = World()
    env = c.Envelope(command_id="j", issued_at=1)
    outcome = apply_command(world, env, c.JoinHost(host="h1", capacity=2))
    assert [type(r.event) for r in outcome.records] == [e.HostJoined]
    assert world.hosts["h1"].subnet == ""  # no default network: no slice to give
    bad = apply_command(world, env, c.JoinHost(host="Bad Id", capacity=2))
    assert bad.result.status == 400


# --- loss and return -------------------------------------------------------------------

def test_loss_and_return_are_facts_and_shown() -> None:
    eng = Engine()
    eng.join("h1")
    eng.join("h2")
    eng.run(1, **{"moorage.host": "h1"})
    eng.run(2, **{"moorage.host": "h2"})
    assert eng.send(c.MarkHostLost(host="h1", losses=0)) == [e.HostLost(host="h1")]
    # A second notice of the same lapse (another leader's) is not a second loss.
    assert eng.rejected(eng.send(c.MarkHostLost(host="h1", losses=0)))[0] == 304
    one, two = eng.world.containers[cid(1)], eng.world.containers[cid(2)]
    assert host_lost(eng.world, one) and not host_lost(eng.world, two)
    assert status_of(one, True) == "lost" and status_of(two) == "running"
    items = {i["Id"]: i for i in list_containers(eng.world, all=True, now_ns=eng.clock)}
    assert (items[cid(1)]["State"], items[cid(1)]["Status"]) == ("lost", "Lost (host h1)")
    assert items[cid(2)]["State"] == "running"
    assert [i["Id"] for i in list_containers(eng.world, filters={"status": ["lost"]},
                                             now_ns=eng.clock)] == [cid(1)]
    doc = inspect_container(eng.world, one)
    assert doc["State"]["Status"] == "lost" and doc["State"]["Host"] == "h1"
    assert doc["Node"]["Name"] == "h1" and doc["Node"]["Status"] == "lost"
    # Back: the lease beats again.
    assert eng.send(c.MarkHostReturned(host="h1", losses=1)) == [e.HostReturned(host="h1")]
    assert not host_lost(eng.world, eng.world.containers[cid(1)])
    # Lost again later: a new loss (its own command id and count).
    assert eng.send(c.MarkHostLost(host="h1", losses=1)) == [e.HostLost(host="h1")]
    # A rejoin of a lost host records its return, then the join.
    assert [type(ev) for ev in eng.join("h1")] == [e.HostReturned, e.HostJoined]
    assert eng.world.hosts["h1"].alive and eng.world.hosts["h1"].losses == 2
    assert eng.replayed()


def test_single_host_inspect_and_ps_are_unchanged() -> None:
    eng = Engine()
    eng.run(1)
    doc = inspect_container(eng.world, eng.world.containers[cid(1)])
    assert "Node" not in doc and "Host" not in doc["State"]


@pytest.mark.parametrize("cmd", [
    c.StartContainer(ref=cid(1)), c.StopContainer(ref=cid(1)), c.KillContainer(ref=cid(1)),
    c.RestartContainer(ref=cid(1)), c.PauseContainer(ref=cid(1)),
    c.UnpauseContainer(ref=cid(1)),
    c.CreateExec(ref=cid(1), exec_id="e" * 64, config=ExecConfig(cmd=("true",))),
], ids=lambda cmd: type(cmd).__name__)
def test_a_lost_hosts_container_answers_409(cmd: c.Command) -> None:
    eng = Engine()
    eng.join("h1")
    eng.run(1, **{"moorage.host": "h1"})
    eng.send(c.MarkHostLost(host="h1", losses=0))
    status, message = eng.rejected(eng.send(cmd))
    assert status == 409
    assert message == (f"container {cid(1)} is on host h1, which is lost (its heartbeat "
                       "lapsed): it cannot be acted on until the host returns; rm -f "
                       "removes it")


def test_exec_start_on_a_lost_host_answers_409() -> None:
    eng = Engine()
    eng.join("h1")
    eng.run(1, **{"moorage.host": "h1"})
    eng.send(c.CreateExec(ref=cid(1), exec_id="e" * 64, config=ExecConfig(cmd=("true",))))
    eng.send(c.MarkHostLost(host="h1", losses=0))
    assert eng.rejected(eng.send(c.StartExec(exec_id="e" * 64)))[0] == 409


def test_rm_f_of_a_lost_hosts_container_needs_no_host() -> None:
    eng = Engine()
    eng.join("h1")
    eng.run(1, **{"moorage.host": "h1"})
    eng.send(c.MarkHostLost(host="h1", losses=0))
    assert eng.rejected(eng.send(c.RemoveContainer(ref=cid(1))))[0] == 409
    events = eng.send(c.RemoveContainer(ref=cid(1), force=True))
    # No signal: nobody is there to deliver it.
    assert [type(ev) for ev in events] == [e.RemovalStarted, e.ContainerMarkedDead]
    assert status_of(eng.world.containers[cid(1)], True) == "removing"
    assert eng.rejected(eng.send(c.RemoveContainer(ref=cid(1), force=True)))[0] == 409
    # The host watch drops it (nobody on the host can report it removed).
    assert [type(ev) for ev in eng.send(c.DropLostContainer(generation=1),
                                        container=cid(1))] == [e.ContainerDestroyed]
    assert cid(1) not in eng.world.containers and cid(1) in eng.world.destroyed
    assert not any(key.endswith("10.77.1.2") for key in eng.world.addresses)
    assert eng.replayed()


def test_a_drop_is_refused_once_the_host_is_back() -> None:
    eng = Engine()
    eng.join("h1")
    eng.run(1, **{"moorage.host": "h1"})
    eng.send(c.MarkHostLost(host="h1", losses=0))
    eng.send(c.RemoveContainer(ref=cid(1), force=True))
    eng.send(c.MarkHostReturned(host="h1", losses=1))
    status, _ = eng.rejected(eng.send(c.DropLostContainer(generation=1), container=cid(1)))
    assert status == 304 and cid(1) in eng.world.containers  # its removal job reports it


# --- scoping: the engine id -------------------------------------------------------------

def test_the_host_id_is_part_of_the_engine_id_and_none_keeps_todays(tmp_path: Any) -> None:
    from engine.config import derive_engine_id

    root, prefix = str(tmp_path), "moor:v1"
    alone = derive_engine_id(root, prefix)
    assert derive_engine_id(root, prefix, "0", "") == alone  # single-host mode: unchanged
    ids = {derive_engine_id(root, prefix, "0", h) for h in ("ha", "hb")}
    assert len(ids) == 2 and alone not in ids  # two hosts on one data root never share


# --- jobs go to the host's queue -------------------------------------------------------

def test_jobs_go_to_the_containers_host_and_engine_wide_ones_everywhere() -> None:
    eng = Engine()
    eng.join("h1")
    eng.join("h2")
    eng.create(1, **{"moorage.host": "h2"})
    eng.send(c.StartContainer(ref=cid(1)))
    [start] = react(eng.world, eng.records[-1])
    assert start.host == "h2" and start.job_id.startswith("start-")
    again = decode_job(encode_job(start))
    assert (again.func, again.job_id, again.host) == (start.func, start.job_id, "h2")
    assert [j.host for j in resume(eng.world)] == ["h2"]
    eng.send(c.CreateVolume(name="data"))
    jobs = react(eng.world, eng.records[-1])
    assert sorted((j.host, j.job_id.rsplit("@", 1)[1]) for j in jobs) == \
        [("h1", "h1"), ("h2", "h2")]


def test_single_host_jobs_stay_on_the_default_queue_byte_for_byte() -> None:
    eng = Engine()
    eng.create(1)
    eng.send(c.StartContainer(ref=cid(1)))
    [start] = react(eng.world, eng.records[-1])
    assert start.host == ""
    assert encode_job(start)[:1] == b"\x93"  # the three items jobs always had


def test_worker_flags_become_the_hosts_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from engine.config import host_capacity, host_id, host_labels
    from moor.programcli import _host_env

    for name in ("MOOR_HOST_ID", "MOOR_HOST_LABELS", "MOOR_HOST_CAPACITY"):
        monkeypatch.setenv(name, "")  # restored (unset) after the test
    assert (host_id(), host_labels(), host_capacity()) == ("", {}, 100)
    _host_env(argparse.Namespace(host_id="h1", host_label=["zone=a", "disk=ssd"], capacity=5))
    assert (host_id(), host_labels(), host_capacity()) == ("h1", {"zone": "a", "disk": "ssd"}, 5)
