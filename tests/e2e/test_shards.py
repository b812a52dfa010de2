"""`moor up --shards 3` through the docker CLI: real containers in three shards, each with
its own reducer, worker, subnet slice and bridge, behind one Docker API that routes each
command to its shard and merges what it lists (docs/decisions/0015-scale-out.md).

The engine runs on the session's Redis under keys of its own (a plain server: the shards
are hash-tagged all the same; Redis Cluster is tests/integration/test_cluster_*.py's).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as redislib

from engine.config import default_cgroup_parent, derive_engine_id
from engine.keys import keys_for
from engine.shards import home_of_name, shard_of_id
from tests.conftest import RedisServer
from tests.e2e.conftest import REPO, pick_subnet, program_env, require_busybox, wait_for
from tests.imagebuild import busybox_rootfs_tar

pytestmark = pytest.mark.privileged

SHARDS = 3


@dataclass
class Sharded:
    """A `moor up --shards 3` and what it needs to be driven and torn down."""

    env: dict[str, str]
    workdir: str
    data_root: str
    prefix: str
    bridge: str
    subnet: str
    redis: Any
    up: subprocess.Popen[bytes] | None = None
    created: list[str] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return os.path.join(self.data_root, "docker.sock")

    def docker(self, *args: str, check: bool = True, timeout: float = 60
               ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, DOCKER_HOST=f"unix://{self.socket}")
        done = subprocess.run(["docker", *args], env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}\n"
                                 f"{done.stdout}\n{done.stderr}\n{self.log()}")
        return done

    def moor(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "moor.cli", *args], cwd=REPO,
                              env=self.env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"moor {' '.join(args)} exited {done.returncode}\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def log(self) -> str:
        path = Path(self.workdir, "up.log")
        return path.read_text()[-4000:] if path.exists() else ""

    def run(self, name: str, *cmd: str) -> str:
        cid = self.docker("run", "-d", "--name", name, "busybox", *(cmd or ("sleep", "300"))
                          ).stdout.strip()
        self.created.append(cid)
        return cid

    def engine_ids(self) -> list[str]:
        return [derive_engine_id(self.data_root, self.prefix, str(i)) for i in range(SHARDS)]

    def slices(self) -> list[ipaddress.IPv4Network]:
        return list(ipaddress.IPv4Network(self.subnet).subnets(prefixlen_diff=2))[:SHARDS]


def _created(eng: Sharded) -> list[str]:
    """Every container any shard's journal saw created (the teardown's list to scrub)."""
    from commands.codec import CODEC
    from events import model as e

    found = list(eng.created)
    for k in (keys_for(str(i), prefix=eng.prefix, count=SHARDS) for i in range(SHARDS)):
        for _, fields in eng.redis.xrange(k.events):
            record = CODEC.record(fields[b"d"])
            if isinstance(record.event, e.ContainerCreated):
                found.append(record.meta.container_id)
    return list(dict.fromkeys(found))


def _supervisors(shorts: set[str]) -> list[int]:
    """Return the pids of the supervisors (`moor-supervisor <short id>`) of these containers."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            words = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").split()
        except OSError:
            continue
        if len(words) >= 2 and words[0] == b"moor-supervisor" and words[1].decode() in shorts:
            found.append(int(entry))
    return found


def _teardown(eng: Sharded) -> list[str]:
    """Remove the containers, stop moor up by PID, then scrub whatever a container left
    (processes, mounts, namespaces, links), release each shard's bridge, chains and cgroup
    parent, delete the keys and the data root; return what had to be scrubbed or is left."""
    from tests.chaos import cleanup, hostprobe
    from workers.net import portmap
    from workers.net.netconf import BridgeConfig

    problems: list[str] = []
    cids = _created(eng)
    if eng.up is not None and eng.up.poll() is None:
        listed = eng.moor("ps", "-aq", "--no-trunc", check=False).stdout.split()
        if listed:
            eng.moor("rm", "-f", *listed, check=False)
        eng.up.terminate()
        try:
            eng.up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            eng.up.kill()
            eng.up.wait()
            problems.append("moor up did not stop on SIGTERM")
    parents = [default_cgroup_parent(eid) for eid in eng.engine_ids()]
    shorts = {cid[:12] for cid in cids}
    for pid in _supervisors(shorts):  # supervisors of containers nobody removed
        problems += cleanup._kill(pid)
    for parent in parents:  # and their processes
        for pids in hostprobe.container_pids(parent).values():
            for pid in pids:
                problems += cleanup._kill(pid)
    problems += cleanup._unmount_under(eng.data_root)
    for cid in cids:
        problems += cleanup._scrub_network(cid)
    for shard, (eid, net) in enumerate(zip(eng.engine_ids(), eng.slices(), strict=True)):
        cfg = BridgeConfig(name=f"{eng.bridge}s{shard}", subnet=str(net))
        portmap.release_chains(cfg, eid)
        cleanup._delete_link(cfg.name)
        problems += cleanup._rmdir_cgroups(parents[shard])
        problems += [f"shard {shard} iptables {line}" for line in hostprobe.iptables_lines(eid)]
    keys = list(eng.redis.scan_iter(match=f"{eng.prefix}:*", count=1000))
    if keys:
        eng.redis.delete(*keys)
    for k in (keys_for(str(i), prefix=eng.prefix, count=SHARDS) for i in range(SHARDS)):
        for key in eng.redis.scan_iter(match=f"rq:*{k.queue}*", count=1000):
            eng.redis.delete(key)
    if hostprobe.mounts_under(eng.data_root):
        problems.append(f"{eng.data_root} still has mounts")
    else:
        shutil.rmtree(eng.workdir, ignore_errors=True)
    for cid in cids:
        problems += [f"netns {n} left" for n in hostprobe.netns_entries(cid)]
    eng.redis.close()
    return problems


@pytest.fixture
def sharded(redis_server: RedisServer, privileged: None) -> Iterator[Sharded]:
    busybox = require_busybox()
    token = secrets.token_hex(3)
    workdir = tempfile.mkdtemp(prefix=f"moor-e2e-sh-{token}-")
    data_root = os.path.join(workdir, "data")
    os.makedirs(data_root)
    prefix, bridge = f"moorsh{token}", f"moorh{token}"
    subnet = pick_subnet(token)
    env = program_env(redis_server.url, data_root, prefix, subnet, bridge,
                      MOOR_SHARDS=str(SHARDS), MOOR_METRICS_ADDR="off")
    eng = Sharded(env=env, workdir=workdir, data_root=data_root, prefix=prefix, bridge=bridge,
                  subnet=subnet, redis=redislib.Redis.from_url(redis_server.url))
    try:
        with open(os.path.join(workdir, "up.log"), "ab") as out:
            eng.up = subprocess.Popen([sys.executable, "-m", "moor.cli", "up", "--shards",
                                       str(SHARDS)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=subprocess.STDOUT)
        every = [keys_for(str(i), prefix=prefix, count=SHARDS) for i in range(SHARDS)]

        def ready() -> bool:
            if eng.up is not None and eng.up.poll() is not None:
                raise AssertionError(f"moor up exited {eng.up.returncode}\n{eng.log()}")
            workers = all(eng.redis.smembers(f"rq:workers:{k.queue}") for k in every)
            networks = all(eng.redis.hexists(k.world, "parts") for k in every)
            return workers and networks and os.path.exists(eng.socket)
        wait_for(ready, 90, "moor up --shards 3 to start its children", eng.log)
        tar = busybox_rootfs_tar(os.path.join(workdir, "busybox.tar"), busybox)
        eng.moor("image", "import", tar, "busybox:latest")
        yield eng
    finally:
        problems = _teardown(eng)
        assert not problems, "sharded engine teardown: " + "; ".join(problems)


def _names_in(shard: str, stem: str, count: int) -> list[str]:
    found = [f"{stem}{i}" for i in range(200) if home_of_name(f"{stem}{i}", SHARDS) == shard]
    return found[:count]


def test_three_shards_run_containers_behind_one_docker_api(sharded: Sharded) -> None:
    eng = sharded
    names = [n for s in range(SHARDS) for n in _names_in(str(s), "web", 2)]
    ids = {name: eng.run(name) for name in names}
    # Each container lives in its name's home shard, and every shard got some.
    assert {name: shard_of_id(cid, SHARDS) for name, cid in ids.items()} == \
        {name: home_of_name(name, SHARDS) for name in names}
    # One `docker ps` lists the containers of every shard.
    listed = eng.docker("ps", "--format", "{{.Names}}").stdout.split()
    assert sorted(listed) == sorted(names)
    # Each shard's containers take addresses from its own slice, on its own bridge.
    for name, cid in ids.items():
        doc = json.loads(eng.docker("inspect", name).stdout)[0]
        ip = ipaddress.IPv4Address(doc["NetworkSettings"]["IPAddress"])
        assert ip in eng.slices()[int(shard_of_id(cid, SHARDS))], (name, ip)
        assert os.path.exists(f"/sys/class/net/{eng.bridge}s{shard_of_id(cid, SHARDS)}")
    addresses = [json.loads(eng.docker("inspect", n).stdout)[0]["NetworkSettings"]["IPAddress"]
                 for n in names]
    assert len(addresses) == len(set(addresses)) == len(names)
    # exec, logs and stats reach the container's own shard and worker.
    for name in (names[0], names[-1]):
        assert eng.docker("exec", name, "hostname").stdout.strip() == ids[name][:12]
    echo = eng.docker("run", "--rm", "--name", _names_in("2", "echo", 1)[0], "busybox", "echo",
                      "from shard 2").stdout
    assert echo == "from shard 2\n"
    stats = eng.docker("stats", "--no-stream", "--format", "{{.Name}}", *names).stdout.split()
    assert sorted(stats) == sorted(names)


def test_a_rename_across_shards_holds_the_name_everywhere(sharded: Sharded) -> None:
    eng = sharded
    old = _names_in("0", "api", 1)[0]
    new = _names_in("2", "svc", 1)[0]
    cid = eng.run(old)
    since = str(int(time.time()) - 1)
    eng.docker("rename", old, new)
    assert eng.docker("ps", "--format", "{{.Names}}").stdout.split() == [new]
    assert eng.docker("inspect", "--format", "{{.Name}}", new).stdout.strip() == f"/{new}"
    # The new name is held in its home shard for the container of shard 0: taken.
    taken = eng.docker("run", "-d", "--name", new, "busybox", "true", check=False)
    assert taken.returncode != 0
    assert (f'Conflict. The container name "/{new}" is already in use by container "{cid}"'
            in taken.stderr), taken.stderr
    # The old name is free again in its own home.
    again = eng.run(old)
    assert shard_of_id(again, SHARDS) == "0"
    # `docker events` merges the shards: the rename, from shard 0, is there once.
    events = eng.docker("events", "--since", since, "--until", str(int(time.time()) + 1),
                        "--format", "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}").stdout
    assert events.splitlines().count(f"container rename {new}") == 1, events
    assert re.search(rf"^container start {re.escape(old)}$", events, re.M), events
    eng.docker("rm", "-f", new, old)
    assert eng.docker("ps", "-aq").stdout.strip() == ""
    # Every shard's journal replays to its live state.
    verify = eng.moor("replay", "--verify").stdout
    assert verify.count("verify: OK") == SHARDS, verify
