"""Two hosts simulated on one machine: one reducer, two `moor worker --host-id` (issue 13),
on a plain Redis and on a real Redis Cluster (3 primaries + 3 replicas, tests/cluster.py:
the engine's keys on the primary of their slot, rq's queues on a plain Redis beside it).

Each host has its own data root, bridge and slice of the default network (10.217.0.0/16,
cut into /24s by the reducer), and its own engine id (data root, prefix and host id), so
its netns names, link aliases, iptables chains and cgroup parent are its own. Containers
are placed on each (a pin, least loaded, a label constraint) and run side by side; a
restarted worker reconciles one host and leaves every resource of the other as it was.
Everything is stopped by PID and released at the end, and the test proves nothing is left.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redislib

from commands.client import Client
from engine.config import default_cgroup_parent, derive_engine_id
from engine.keys import keys_for
from engine.snapshot import load_world
from events import model as e
from events.specs import ContainerConfig, HostConfig
from tests.conftest import RedisServer
from tests.e2e.conftest import (
    REPO,
    Engine,
    Steps,
    _delete_keys,
    check_capabilities,
    host_routes,
    program_env,
    ps_status,
    require_busybox,
    stop_process,
    wait_for,
)
from tests.e2e.test_two_engines import host_facts, netns_with
from tests.imagebuild import busybox_rootfs_tar
from workers.proc.process import start_ticks

pytestmark = pytest.mark.privileged

SUBNET = "10.217.0.0/16"  # the default network the hosts' slices are cut from


@dataclass
class SimHost:
    """One simulated host: its worker's environment, data root and engine id."""

    name: str
    engine: Engine  # the worker's handle (its env, data root, logs)
    eid: str

    def slice(self) -> str:
        world, _ = load_world(self.engine.redis, self.engine.keys)
        return world.hosts[self.name].subnet

    def start(self) -> None:
        self.engine.worker = self.engine._spawn("worker", [sys.executable, "-m", "moor.cli",
                                                          "worker"])

    def python(self, code: str, *args: str) -> None:
        """Run Python as this host's programs would (its environment, its engine id)."""
        subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=self.engine.env,
                       check=True, capture_output=True, timeout=60)


@dataclass
class Cluster:
    """The reducer's handle (the control plane) and the hosts."""

    control: Engine
    hosts: dict[str, SimHost]
    queues: Any = None  # where rq's keys live (the engine's Redis unless on a cluster)

    def joined(self) -> dict[str, Any]:
        world, _ = load_world(self.control.redis, self.control.keys)
        return {h: rec for h, rec in world.hosts.items() if rec.alive and rec.subnet}

    def run(self, *cmd: str, labels: dict[str, str]) -> str:
        client = self.control.client
        cid = client.create(ContainerConfig(image="busybox", cmd=cmd, labels=labels),
                            HostConfig())
        self.control.track(cid)
        client.start(cid)
        ctr = self.control.container(cid)
        assert ctr is not None and ctr.host in self.hosts, ctr
        self.hosts[ctr.host].engine.note_pids(cid)  # its supervisor: under that data root
        return cid


def _engine(redis_url: str, workdir: str, name: str, prefix: str, bridge: str,
            **extra: str) -> Engine:
    data_root = os.path.join(workdir, name)
    os.makedirs(data_root)
    env = program_env(redis_url, data_root, prefix, SUBNET, bridge, **extra)
    keys = keys_for(prefix=prefix)
    if "," in redis_url:  # a Redis Cluster's seeds: the shard's primary, WAIT for a replica
        from engine.cluster import shard_redis

        r = shard_redis(redis_url, keys.tag)
        client = Client(r, keys, actor=f"e2e-{name}", timeout=30, replicas=1, retry_for=30)
    else:
        r = redislib.Redis.from_url(redis_url)
        client = Client(r, keys, actor=f"e2e-{name}", timeout=30)
    return Engine(token=name, env=env, redis=r, keys=keys, client=client, data_root=data_root,
                  workdir=workdir, bridge=bridge, subnet=SUBNET)


@pytest.fixture(params=["redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, str], Any]:
    """(the engine's Redis URL, extra environment, the queues' client)."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url, {}, redislib.Redis.from_url(server.url)
    cluster: Any = request.getfixturevalue("redis_cluster")
    queues: Any = request.getfixturevalue("queue_redis_server")
    return cluster.url, {"MOOR_QUEUE_URL": queues.url}, redislib.Redis.from_url(queues.url)


@pytest.fixture
def cluster(backend: tuple[str, dict[str, str], Any]) -> Iterator[Cluster]:
    check_capabilities()
    busybox = require_busybox()
    if any(ipaddress.IPv4Network(SUBNET).overlaps(route) for route in host_routes()):
        pytest.fail(f"{SUBNET} overlaps a route of this host: pick another test subnet")
    token = secrets.token_hex(3)
    prefix = f"moore2eh{token}"
    workdir = os.path.realpath(os.environ.get("TMPDIR", "/tmp"))
    workdir = os.path.join(workdir, f"moor-e2e-hosts-{token}")
    os.makedirs(workdir)
    url, extra, queues = backend
    queues = queues if extra else None  # on a plain Redis the queues are the engine's
    control = _engine(url, workdir, "control", prefix, f"moorhr{token}",
                      MOOR_HOST_CHECK_MS="200", **extra)
    hosts = {}
    for name, zone in (("ha", "a"), ("hb", "b")):
        engine = _engine(url, workdir, name, prefix, f"moor{name}{token}", MOOR_HOST_ID=name,
                         MOOR_HOST_LABELS=f"zone={zone}", MOOR_HOST_CAPACITY="10", **extra)
        # Logs apart: each Engine writes <name>.log in the shared work dir.
        engine.workdir = os.path.join(workdir, f"{name}-logs")
        os.makedirs(engine.workdir)
        hosts[name] = SimHost(name, engine, derive_engine_id(engine.data_root, prefix, "0",
                                                             name))
    found = Cluster(control, hosts, queues)
    try:
        control.start_reducer()
        wait_for(lambda: load_world(control.redis, control.keys)[0].networks, 30,
                 "the reducer to define the default network",
                 lambda: control.log_tail("reducer"))
        for host in hosts.values():
            host.start()
        wait_for(lambda: set(found.joined()) == set(hosts), 30, "both hosts to join",
                 lambda: "\n".join(h.engine.log_tail("worker") for h in hosts.values()))
        tar = busybox_rootfs_tar(os.path.join(workdir, "busybox.tar"), busybox)
        for host in hosts.values():  # images are per host: each loads its own copy
            host.engine.moor("image", "import", tar, "busybox:latest")
        yield found
    finally:
        problems = _teardown(found, workdir)
        assert not problems, "teardown: " + "; ".join(problems)


def _teardown(found: Cluster, workdir: str) -> list[str]:
    from workers.net import network, portmap
    from workers.net.netconf import BridgeConfig
    from workers.proc import cgroups

    control = found.control
    step = Steps()
    slices = {name: host.slice() if found.joined().get(name) else ""
              for name, host in found.hosts.items()}
    if control.reducer is not None and control.reducer.poll() is None:
        step("rm -f", control.remove_all)
    for host in found.hosts.values():
        if host.engine.worker is not None:
            step(f"stop worker {host.name}",
                 functools.partial(stop_process, host.engine.worker))
    if control.reducer is not None:
        step("stop reducer", functools.partial(stop_process, control.reducer))
    # Whatever rm -f could not remove (a failed run): released under each host's own
    # names, and the supervisors this test saw started stopped by PID.
    cids = sorted(control.tracked)
    for host in found.hosts.values():
        step(f"release leftovers on {host.name}", functools.partial(
            host.python, _RELEASE, host.engine.data_root, *cids))
        for tracked in host.engine.tracked.values():
            for pid, ticks in tracked.pids:
                if start_ticks(pid) == ticks:
                    step(f"kill {pid}", functools.partial(os.kill, pid, signal.SIGKILL))
    for name, host in found.hosts.items():
        if not slices[name]:
            continue
        cfg = BridgeConfig(name=host.engine.bridge, subnet=slices[name])
        step(f"release bridge {name}", functools.partial(network.release_bridge, cfg))
        step(f"release chains {name}", functools.partial(portmap.release_chains, cfg, host.eid))
        step(f"release cgroup parent {name}",
             functools.partial(cgroups.release_parent, default_cgroup_parent(host.eid)))
    if found.queues is None:
        step("delete keys", lambda: _delete_keys(control.redis, control.keys))
    else:  # the engine's keys (one slot, on its primary), and rq's where they live
        step("delete keys", lambda: _delete_shard_keys(control.redis, control.keys))
        step("delete queue keys", lambda: _delete_keys(found.queues, control.keys))
    for cid in control.tracked:
        step(f"leaks of {cid[:12]}", functools.partial(_leaks, found, cid))
    for name, host in found.hosts.items():
        if os.path.exists(f"/sys/class/net/{host.engine.bridge}"):
            step.problems.append(f"bridge {host.engine.bridge} of {name} left")
        rules = subprocess.run(["iptables-save"], check=True, capture_output=True,
                               text=True).stdout
        if f"-{host.eid}" in rules:
            step.problems.append(f"iptables chains of {name} ({host.eid}) left")
    root = os.path.realpath(workdir)
    if any(root in line for line in Path("/proc/mounts").read_text().splitlines()):
        step.problems.append(f"{root} still has mounts: not deleted")
    else:
        step("delete workdir", lambda: shutil.rmtree(workdir))
    control.redis.close()
    for host in found.hosts.values():
        host.engine.redis.close()
    if found.queues is not None:
        found.queues.close()
    return step.problems


def _delete_shard_keys(redis: Any, keys: Any) -> None:
    batch = list(redis.scan_iter(match=f"{keys.prefix}:*", count=1000))
    if batch:
        redis.delete(*batch)


_RELEASE = """
import sys
from workers.net import network, portmap
from workers.proc import cgroups
from workers.storage import rootfs
root = sys.argv[1]
for cid in sys.argv[2:]:
    portmap.release_ports(cid)
    network.release_endpoint(cid)
    network.release_sandbox(cid, reuse=False)
    cgroups.release_cgroup(cid)
    rootfs.release_mount(root, cid)
"""


def _leaks(found: Cluster, cid: str) -> list[str]:
    """Return what any host still holds for a container (its data root included)."""
    left = []
    for host in found.hosts.values():
        left += [f"{host.name}: {leak}" for leak in host.engine.leaks(cid)]
    return left


def in_slice(ip: str, subnet: str) -> bool:
    return ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(subnet)


def test_two_hosts_run_side_by_side_and_reconcile_only_their_own(cluster: Cluster) -> None:
    control, ha, hb = cluster.control, cluster.hosts["ha"], cluster.hosts["hb"]
    slices = {"ha": ha.slice(), "hb": hb.slice()}
    assert sorted(slices.values()) == ["10.217.1.0/24", "10.217.2.0/24"]
    # The host id is part of each engine id (not only the data root that differs here).
    assert ha.eid != derive_engine_id(ha.engine.data_root, control.keys.prefix)
    assert ha.eid != hb.eid

    pinned = cluster.run("httpd", "-f", "-p", "80", labels={"moorage.host": "ha"})
    least = cluster.run("httpd", "-f", "-p", "80", labels={})  # ha holds 1, hb 0: hb
    zoned = cluster.run("sleep", "300", labels={"moorage.constraint.zone": "b"})
    placed = {cid: control.container(cid) for cid in (pinned, least, zoned)}
    assert {cid: ctr.host for cid, ctr in placed.items()} == \
        {pinned: "ha", least: "hb", zoned: "hb"}
    ips = {cid: ctr.endpoint.ip_address for cid, ctr in placed.items()}
    assert in_slice(ips[pinned], slices["ha"])
    assert in_slice(ips[least], slices["hb"]) and in_slice(ips[zoned], slices["hb"])
    assert ips[least] != ips[zoned]
    for cid in placed:
        assert ps_status(control, cid).startswith("Up")
        doc = control.inspect(cid)
        assert doc["State"]["Host"] == placed[cid].host and doc["Node"]["Status"] == "ready"

    # Each host's resources carry its own engine id; each bridge holds its slice's gateway.
    facts = {}
    for cid, ctr in placed.items():
        host = cluster.hosts[ctr.host]
        doc = control.inspect(cid)
        facts[cid] = host_facts(host.engine, cid, doc["State"]["Pid"],
                                doc["NetworkSettings"]["SandboxKey"])
        assert facts[cid]["netns"][0] == f"/run/netns/moor-{host.eid}-{cid}"
        assert facts[cid]["veth"] == (True, f"moor:{host.eid}:{cid}")
        groups, alive = facts[cid]["cgroups"]
        assert groups and all(g.endswith(f"/moorage/{host.eid}/{cid}") for g in groups)
        assert all(alive)
        assert facts[cid]["mount"]  # under its own host's data root
        inside = subprocess.run(["nsenter", "-t", str(doc["State"]["Pid"]), "-n", "ip", "-4",
                                 "-o", "addr", "show", "eth0"], check=True,
                                capture_output=True, text=True).stdout
        assert f" {ips[cid]}/24 " in inside
    for name, host in cluster.hosts.items():
        gateway = str(ipaddress.IPv4Network(slices[name]).network_address + 1)
        addrs = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", host.engine.bridge],
                               check=True, capture_output=True, text=True).stdout
        assert f" {gateway}/24 " in addrs
        alias = Path("/sys/class/net", host.engine.bridge, "ifalias").read_text().strip()
        assert alias == f"moor:bridge:{host.eid}"

    # Host ha's worker restarts: its reconcile runs before it takes jobs. It releases a
    # leftover of its own (planted under its own engine id) and touches nothing of hb's.
    own_orphan = secrets.token_hex(32)
    ha.python("import sys; from workers.net import network; "
              "network.ensure_sandbox(sys.argv[1])", own_orphan)
    assert netns_with(own_orphan) == [f"moor-{ha.eid}-{own_orphan}"]
    cursor = control.last_event_id()
    assert ha.engine.worker is not None
    stop_process(ha.engine.worker)
    ha.start()

    def orphan_released() -> list[e.DriftObserved]:
        return [r.event for _, r in control.events(after=cursor)
                if isinstance(r.event, e.DriftObserved) and r.event.container_id == own_orphan]

    wait_for(orphan_released, 30, "ha's reconcile to journal its own orphan",
             lambda: ha.engine.log_tail("worker"))
    # Journaled first, then released: wait for the release itself.
    wait_for(lambda: netns_with(own_orphan) == [], 30, "ha's reconcile to release it",
             lambda: ha.engine.log_tail("worker"))
    queues = cluster.queues or control.redis  # rq's keys: beside a cluster, on the queue Redis
    wait_for(lambda: ha.engine.worker is not None and any(
        queues.hget(key, "pid") == str(ha.engine.worker.pid).encode()
        for key in queues.smembers(f"rq:workers:{control.keys.host_queue('ha')}")),
        30, "ha's worker to take jobs again (its reconcile done)")
    for cid in (least, zoned):  # hb's: every resource as it was, nothing journaled
        doc = control.inspect(cid)
        assert host_facts(hb.engine, cid, doc["State"]["Pid"],
                          doc["NetworkSettings"]["SandboxKey"]) == facts[cid]
        assert ps_status(control, cid).startswith("Up")
    drifts = [r.event for _, r in control.events(after=cursor)
              if isinstance(r.event, e.DriftObserved) and r.event.container_id != own_orphan]
    assert drifts == []
    doc = control.inspect(pinned)  # and its own container is whole too
    assert host_facts(ha.engine, pinned, doc["State"]["Pid"],
                      doc["NetworkSettings"]["SandboxKey"]) == facts[pinned]
    assert cluster.joined()["ha"].alive
    # A stop's exit goes out from the container's supervisor, over the engine's Redis (on a
    # cluster: to the primary of the shard's slot, following MOVED from a seed).
    control.client.stop(zoned, timeout=1)
    died = [r for _, r in control.events(after=cursor)
            if isinstance(r.event, e.ContainerDied) and r.meta.container_id == zoned]
    assert len(died) == 1 and died[0].event.exit_code in (137, 143), died
    assert died[0].meta.actor.startswith("supervisor@"), died[0].meta  # not the worker
    assert ps_status(control, zoned).startswith("Exited")
