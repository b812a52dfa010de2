"""Names across 3 shards on a real Redis Cluster: routing, reservations, uniqueness.

A container lives in one shard for life (its id says which); a name's home shard holds
who has it: its own container, or a reservation for a container of another shard
(commands.client.router, engine.core.names, docs/decisions/0015-scale-out.md). These
tests drive the sharded client against one reducer per shard on the cluster fixture and
read each shard's facts and snapshot back: a name is never held by two containers.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
import redis

from commands import schema as c
from commands.client import Client
from commands.client.router import ShardedClient
from engine.cluster import shard_redis
from engine.core.state import Container
from engine.errors import Conflict, MoorError, NotFound
from engine.keys import Keys, keys_for
from engine.reservations import ReservationSweeper
from engine.shards import home_of_name, shard_of_id
from events import model as e
from tests.chaos.invariants import check_replay
from tests.cluster import LocalCluster
from events.specs import ContainerConfig, HostConfig
from tests.harness import ReducerThread, SagaDriver, busybox, cleanup, seed

SHARDS = 3
_CONTAINER = msgspec.msgpack.Decoder(Container)


class Deployment:
    """Three shards on the cluster, a reducer thread each, and a sharded client."""

    def __init__(self, cluster: LocalCluster, queues: redis.Redis, grace: float) -> None:
        prefix = f"moornames:{uuid.uuid4().hex[:10]}"
        self.keys = {str(i): keys_for(str(i), prefix=prefix, count=SHARDS)
                     for i in range(SHARDS)}
        self.redis = {s: shard_redis(cluster.url, k.tag) for s, k in self.keys.items()}
        self.queues = queues
        self.grace = grace
        self.stack = ExitStack()

    def reach(self, shard: str) -> tuple[Any, Keys]:
        return self.redis[shard], self.keys[shard]

    def start(self) -> None:
        for s, keys in self.keys.items():
            sweeper = ReservationSweeper(self.reach, SHARDS, interval=0.1, grace=self.grace)
            self.stack.enter_context(ReducerThread(self.redis[s], keys, queue_redis=self.queues,
                                                   sweeper=sweeper))
        # TEST-ONLY stand-ins for the shards' workers (tests.harness.SagaDriver).
        drivers = [SagaDriver(self.queues, k, Client(self.redis[s], k))
                   for s, k in self.keys.items()]
        done = threading.Event()

        def drive() -> None:
            while not done.is_set():
                for driver in drivers:
                    driver.run_pending()
                done.wait(0.02)
        thread = threading.Thread(target=drive, daemon=True)
        thread.start()
        self.stack.callback(thread.join, 10)
        self.stack.callback(done.set)

    def client(self) -> ShardedClient:
        return ShardedClient({s: Client(self.redis[s], k, replicas=1, timeout=15)
                              for s, k in self.keys.items()})

    def containers(self) -> list[Container]:
        """Every container of every shard, read from the snapshots."""
        return [_CONTAINER.decode(raw) for s, k in self.keys.items()
                for raw in self.redis[s].hvals(k.containers)]

    def facts(self, shard: str) -> list[e.EventRecord]:
        from commands.codec import CODEC

        return [CODEC.record(f[b"d"]) for _, f in self.redis[shard].xrange(self.keys[shard].events)]

    def stop(self) -> None:
        self.stack.close()
        for s, keys in self.keys.items():
            batch = list(self.redis[s].scan_iter(match=f"{keys.prefix}:*", count=1000))
            for start in range(0, len(batch), 500):
                self.redis[s].delete(*batch[start:start + 500])
            cleanup(self.queues, keys)
            self.redis[s].close()


def _deployment(cluster: LocalCluster, queue_url: str, grace: float) -> Iterator[Deployment]:
    queues = redis.Redis.from_url(queue_url)
    one = Deployment(cluster, queues, grace=grace)
    one.start()
    client = one.client()
    seed(client)  # the catalog goes to every shard
    yield one
    one.stop()
    queues.close()


@pytest.fixture
def deployment(redis_cluster: LocalCluster, queue_redis_server: Any) -> Iterator[Deployment]:
    yield from _deployment(redis_cluster, queue_redis_server.url, grace=0.5)


@pytest.fixture
def patient(redis_cluster: LocalCluster, queue_redis_server: Any) -> Iterator[Deployment]:
    """A deployment whose sweep waits a minute before it releases an unheld reservation."""
    yield from _deployment(redis_cluster, queue_redis_server.url, grace=60.0)


def _name_homed_in(shard: str, stem: str) -> str:
    """Return a name `stem-N` whose home is `shard`."""
    for n in range(1000):
        name = f"{stem}-{n}"
        if home_of_name(name, SHARDS) == shard:
            return name
    raise AssertionError("no name found")


def _holders(dep: Deployment) -> Counter[str]:
    """How many containers, over every shard, carry each name (a Counter: doubles show)."""
    return Counter(ctr.name for ctr in dep.containers())


def _index(dep: Deployment) -> dict[str, str]:
    """The names index of every shard, name -> holder (a name in two homes would clash)."""
    merged: dict[str, str] = {}
    for s, k in dep.keys.items():
        for name, holder in dep.redis[s].hgetall(k.names).items():
            if home_of_name(name.decode(), SHARDS) == s:
                assert name.decode() not in merged
                merged[name.decode()] = holder.decode()
    return merged


def test_the_catalog_reaches_every_shard_and_creates_go_home(deployment: Deployment) -> None:
    client = deployment.client()
    made = {}
    for i in range(9):
        name = f"web{i}"
        made[name] = client.create(busybox(), name=name)
    unnamed = [client.create(busybox()) for _ in range(6)]
    for name, cid in made.items():
        assert shard_of_id(cid, SHARDS) == home_of_name(name, SHARDS)
    # Unnamed creates take turns over the shards, and their generated names are homed
    # in the shard that holds them.
    assert sorted(Counter(shard_of_id(cid, SHARDS) for cid in unnamed).values()) == [2, 2, 2]
    for ctr in deployment.containers():
        assert home_of_name(ctr.name, SHARDS) == shard_of_id(ctr.id, SHARDS)
    # References by name, short id and long prefix route to the right shard.
    cid = made["web4"]
    assert client.locate("web4") == (shard_of_id(cid, SHARDS), cid)
    assert client.locate(cid[:12]) == (shard_of_id(cid, SHARDS), cid)
    assert client.locate(cid[:5])[1] in (cid, "")  # short prefixes look in every shard
    with pytest.raises(NotFound, match="No such container: nope"):
        client.rename("nope", "other")
    assert _index(deployment) == {ctr.name: ctr.id for ctr in deployment.containers()}
    for s, k in deployment.keys.items():
        assert not check_replay(deployment.redis[s], k)


def test_a_rename_across_shards_reserves_the_name_in_its_home(deployment: Deployment) -> None:
    client = deployment.client()
    cid = client.create(busybox(), name=_name_homed_in("0", "old"))
    new = _name_homed_in("2", "new")
    client.rename(cid, new)
    # The container stays in shard 0; shard 2, the name's home, holds it for it.
    assert client.container(new).id == cid and shard_of_id(cid, SHARDS) == "0"
    reserved = [r.event for r in deployment.facts("2") if isinstance(r.event, e.NameReserved)]
    assert reserved == [e.NameReserved(name=new, holder=cid)]
    # So a create of that name in its home is refused with Docker's text.
    with pytest.raises(Conflict, match=f'The container name "/{new}" is already in use by '
                                       f'container "{cid}"'):
        client.create(busybox(), name=new)
    # Renaming away gives the reservation back: the name is free again everywhere.
    client.rename(new, _name_homed_in("0", "back"))
    released = [r.event for r in deployment.facts("2") if isinstance(r.event, e.NameReleased)]
    assert released == [e.NameReleased(name=new, holder=cid)]
    other = client.create(busybox(), name=new)
    assert _holders(deployment)[new] == 1 and client.container(new).id == other
    for s, k in deployment.keys.items():
        assert not check_replay(deployment.redis[s], k)


def test_a_refused_rename_releases_its_reservation(deployment: Deployment) -> None:
    client = deployment.client()
    taken = client.create(busybox(), name=_name_homed_in("1", "taken"))
    mover = client.create(busybox(), name=_name_homed_in("0", "mover"))
    # A name held by a container of the target's own shard: the reservation there is
    # refused first, nothing to undo.
    with pytest.raises(Conflict):
        client.rename(mover, client.container(taken).name)
    # A rename refused in the container's shard (same name as now) is not reserved.
    with pytest.raises(MoorError):
        client.rename(mover, client.container(mover).name)
    assert not any(isinstance(r.event, e.NameReserved)
                   for s in deployment.keys for r in deployment.facts(s))


def test_a_reservation_without_a_holder_is_released_by_the_sweep(deployment: Deployment) -> None:
    client = deployment.client()
    holder = client.create(busybox(), name=_name_homed_in("1", "holder"))
    orphan = _name_homed_in("2", "orphan")
    # As if a client reserved, then died before renaming.
    client.submit(c.ReserveName(name=orphan, holder=holder))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(isinstance(r.event, e.NameReleased) for r in deployment.facts("2")):
            break
        time.sleep(0.1)
    released = [(r.event, r.meta.principal) for r in deployment.facts("2")
                if isinstance(r.event, e.NameReleased)]
    assert released == [(e.NameReleased(name=orphan, holder=holder), "reducer")]
    # A reservation its holder carries is kept.
    kept = _name_homed_in("2", "kept")
    client.rename(holder, kept)
    time.sleep(deployment.grace + 1.0)
    assert client.container(kept).id == holder
    assert [r.event for r in deployment.facts("2") if isinstance(r.event, e.NameReleased)] \
        == [e.NameReleased(name=orphan, holder=holder)]


def test_a_name_is_never_held_by_two_containers_across_shards(deployment: Deployment) -> None:
    """Cross-shard renames and creates race for a few names from many threads.

    The names are homed in shard 2 and the renamed containers live in shards 0 and 1, so
    every rename goes through a reservation: a create that ignored reservations, or a
    reservation that ignored containers, would let a name be carried twice.
    """
    contested = [_name_homed_in("2", f"hot{i}") for i in range(4)]
    client = deployment.client()
    movers = [client.create(busybox(), name=_name_homed_in(str(i % 2), f"mover{i}"))
              for i in range(8)]
    # Three of the four names start reserved for movers; the fourth is free, so every
    # move frees a name that the creates and the other moves then race for.
    for mover, name in zip(movers, contested[:3], strict=False):
        client.rename(mover, name)
    outcomes: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(12)

    def contend(worker: int) -> None:
        client = deployment.client()
        go.wait()
        for round_ in range(6):
            name = contested[(worker + round_) % len(contested)]
            try:
                if worker < len(movers):
                    client.rename(movers[worker], name)
                else:  # take the name, then let it go again (renamed out of the race)
                    made = client.create(busybox(), name=name)
                    client.rename(made, f"gone-{worker}-{round_}")
                result = "won"
            except Conflict:
                result = "conflict"
            except MoorError as err:  # e.g. renaming to the name it already has
                result = f"refused {err.status}"
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=contend, args=(w,)) for w in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(outcomes) == 12 * 6
    assert "won" in outcomes and "conflict" in outcomes  # the race really happened
    reserved = [r for r in deployment.facts("2") if isinstance(r.event, e.NameReserved)]
    assert reserved  # renames across shards did reserve
    holders = _holders(deployment)
    assert all(holders[name] <= 1 for name in contested), holders
    assert max(holders.values()) == 1
    # Every home shard's index names exactly the container that carries each name (a
    # reservation left by a refused rename is released by the sweep after its grace).
    time.sleep(deployment.grace + 1.5)
    assert _index(deployment) == {ctr.name: ctr.id for ctr in deployment.containers()}
    for s, k in deployment.keys.items():
        assert not check_replay(deployment.redis[s], k)


def test_a_create_goes_beside_the_container_it_refers_to(patient: Deployment) -> None:
    """`--volumes-from` (like `--link` and `container:` modes) names a container only its
    own shard knows: the create goes there, its name reserved in its home first."""
    client = patient.client()
    data = _name_homed_in("0", "data")
    source = client.create(busybox(), name=data)
    app = _name_homed_in("2", "app")
    cid = client.create(busybox(), HostConfig(volumes_from=(f"{data}:ro",)), name=app)
    assert shard_of_id(cid, SHARDS) == "0" == shard_of_id(source, SHARDS)
    assert client.locate(app) == ("0", cid)
    assert [r.event for r in patient.facts("2") if isinstance(r.event, e.NameReserved)] \
        == [e.NameReserved(name=app, holder=cid)]
    with pytest.raises(Conflict):  # the name is held everywhere, in its home too
        client.create(busybox(), name=app)
    # A create refused beside its reference gives the reservation back (it compensates).
    other = _name_homed_in("1", "other")
    with pytest.raises(NotFound, match="No such image: nope:latest"):
        client.create(ContainerConfig(image="nope"), HostConfig(volumes_from=(data,)),
                      name=other)
    assert [r.event.name for r in patient.facts("1") if isinstance(r.event, e.NameReleased)] \
        == [other]
    made = client.create(busybox(), name=other)
    assert client.container(other).id == made


def test_a_removed_holders_reservation_goes_without_waiting_for_the_grace(
        patient: Deployment) -> None:
    client = patient.client()
    data = _name_homed_in("0", "vol")
    client.create(busybox(), name=data)
    app = _name_homed_in("2", "web")
    cid = client.create(busybox(), HostConfig(volumes_from=(data,)), name=app)
    began = time.monotonic()
    client.remove(app)
    deadline = time.monotonic() + 20  # far less than the 60 s grace
    while time.monotonic() < deadline and not any(
            isinstance(r.event, e.NameReleased) for r in patient.facts("2")):
        time.sleep(0.1)
    released = [r.event for r in patient.facts("2") if isinstance(r.event, e.NameReleased)]
    assert released == [e.NameReleased(name=app, holder=cid)]
    assert time.monotonic() - began < 20
    assert shard_of_id(client.create(busybox(), name=app), SHARDS) == "2"
