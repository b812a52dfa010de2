"""Shards without Redis: routing rules, hash tags, names across shards, shares of a network.

The decisions run through tests/unit/test_decide.py's given/when/then (which also checks
that replaying the records rebuilds the live world).
"""

from __future__ import annotations

import ipaddress
import os
import string
from collections import Counter

import fakeredis
import pytest
from redis.crc import key_slot

from commands import schema as c
from commands.client import Client
from commands.client.router import ShardedClient, new_id_in
from engine.acl import acl_rules
from engine.config import default_network, engine_id
from engine.core.names import Held, generate_name
from engine.core.state import World
from engine.keys import hash_slot, keys_for, slot_tag
from engine.shards import home_of_name, shard_of_id
from events import model as e
from events.netspecs import EndpointSettings, Networking
from events.specs import ContainerConfig, HostConfig
from projections.stream import merged
from tests.unit.test_decide import A, B, CONFLICT, given

HOLDER = "9" * 64  # a container of another shard


# --- routing ---------------------------------------------------------------------------

def test_one_shard_routes_everything_to_shard_0() -> None:
    assert shard_of_id("f" * 64, 1) == home_of_name("web", 1) == "0"
    assert keys_for("0", count=1) == keys_for("0")  # the single-shard layout is unchanged


def test_ids_and_names_spread_over_the_shards_deterministically() -> None:
    ids = [new_id_in(str(i % 3), 3) for i in range(300)]
    assert [shard_of_id(cid, 3) for cid in ids] == [str(i % 3) for i in range(300)]
    assert all(not cid[:12].isdigit() for cid in ids)
    homes = Counter(home_of_name(f"name{i}", 3) for i in range(3000))
    assert set(homes) == {"0", "1", "2"} and min(homes.values()) > 900
    assert home_of_name("web", 3) == home_of_name("web", 3)
    # A short id of 8+ digits names the shard of the full id.
    assert shard_of_id(ids[7][:8], 3) == shard_of_id(ids[7], 3)


def test_hash_slot_is_redis_clusters_function() -> None:
    tags = ["0", "1.0", "2.13", "moor", "a-b_c", *("".join(p) for p in zip(
        string.ascii_letters, string.digits * 6, strict=False))]
    assert [hash_slot(t) for t in tags] == [key_slot(t.encode()) for t in tags]


@pytest.mark.parametrize("count", [2, 3, 4, 7])
def test_each_shard_tag_falls_in_its_even_share_of_the_slots(count: int) -> None:
    share = 16384 // count
    for shard in range(count):
        assert hash_slot(slot_tag(str(shard), count)) // share == shard


def test_every_key_of_a_shard_carries_its_tag() -> None:
    keys = keys_for("2", prefix="p", count=3)
    tagged = [keys.commands, keys.reports, keys.internal, keys.events, keys.containers,
              keys.versions, keys.world, keys.done, keys.lease, keys.epoch, keys.outbox,
              keys.names, keys.principals, keys.quarantine, keys.reply("x"), keys.sync(),
              keys.inbox("alice").key]
    assert {key_slot(k.encode()) for k in tagged} == {hash_slot(keys.tag)}
    assert keys.shard == "2" and keys.queue.endswith("-2-host")


# --- names across shards -------------------------------------------------------------------

def test_a_generated_name_is_homed_in_the_containers_shard() -> None:
    for shard in "012":
        cid = new_id_in(shard, 3)
        name = generate_name(cid, {}, shards=3)
        assert home_of_name(name, 3) == shard
        assert generate_name(cid, {}, shards=3) == name  # deterministic: replay decides alike
        other = generate_name(cid, {name: "x"}, shards=3)
        assert other != name and home_of_name(other, 3) == shard
    assert generate_name(A, {}) == generate_name(A, {}, shards=1)  # one shard: as before


def test_a_create_carries_the_shard_count_its_generated_name_follows() -> None:
    cid = new_id_in("1", 3)
    create = c.CreateContainer(config=ContainerConfig(image="busybox"), shards=3)
    name = given().when((cid, create)).then(e.ContainerCreated).events[0].name
    assert home_of_name(name, 3) == "1"


def test_a_reservation_holds_the_name_against_creates_and_renames() -> None:
    web = c.CreateContainer(config=ContainerConfig(image="busybox"), name="web")
    reserve = c.ReserveName(name="api", holder=HOLDER)
    given().when(reserve).then(e.NameReserved(name="api", holder=HOLDER))
    given(reserve).when((A, c.CreateContainer(config=ContainerConfig(image="busybox"),
                                              name="api"))).then(
        (409, CONFLICT.format(name="api", id=HOLDER)))
    given(reserve, (A, web)).when(c.RenameContainer(ref="web", new_name="api")).then(
        (409, "Error when allocating new name: " + CONFLICT.format(name="api", id=HOLDER)))
    # A name one of this shard's containers has cannot be reserved for another.
    given((A, web)).when(c.ReserveName(name="web", holder=HOLDER)).then(
        (409, "Error when allocating new name: " + CONFLICT.format(name="web", id=A)))
    # Reserving again for the same holder changes nothing (a retried rename).
    given(reserve).when(reserve).then((304, f"name api is already reserved for {HOLDER}"))


def test_only_the_holder_releases_its_reservation() -> None:
    reserve = c.ReserveName(name="api", holder=HOLDER)
    given(reserve).when(c.ReleaseName(name="api", holder=B)).then(
        (304, f"name api is not reserved for {B}"))
    then = given(reserve).when(c.ReleaseName(name="api", holder=HOLDER)).then(
        e.NameReleased(name="api", holder=HOLDER))
    assert then.world.reserved == {}
    given(reserve, c.ReleaseName(name="api", holder=HOLDER)).when(
        (A, c.CreateContainer(config=ContainerConfig(image="busybox"), name="api"))).then(
        e.ContainerCreated)


def test_held_sees_containers_and_reservations() -> None:
    world = World(names={"web": A}, reserved={"api": HOLDER})
    held = Held(world)
    assert "web" in held and "api" in held and "db" not in held


# --- a user network's shares ---------------------------------------------------------------

def _net(shards: int) -> c.CreateNetwork:
    return c.CreateNetwork(name="appnet", network_id="d" * 64, subnet="10.213.9.0/24",
                           shards=shards)


def _on_appnet(cid: str, ip: str = "") -> tuple[str, c.CreateContainer]:
    networking = Networking(endpoints={"appnet": EndpointSettings(ipv4_address=ip)})
    return cid, c.CreateContainer(config=ContainerConfig(image="busybox"),
                                  host_config=HostConfig(network_mode="appnet"),
                                  networking=networking, shards=3)


def test_each_shard_gives_addresses_from_its_own_share_of_a_user_network() -> None:
    net = ipaddress.IPv4Network("10.213.9.0/24")
    from engine.core.networks import endpoint_on

    for shard in "012":
        cids = [new_id_in(shard, 3) for _ in range(3)]
        world = given(_net(3), *(_on_appnet(cid) for cid in cids)).world
        ips = []
        for cid in cids:  # each reserved in turn, as starts would
            ep = endpoint_on(world, world.containers[cid], "appnet")
            world.addresses[f"appnet/{ep.ip_address}"] = cid
            ips.append(ipaddress.IPv4Address(ep.ip_address))
        assert all((int(ip) - int(net.network_address)) % 3 == int(shard) for ip in ips)
        assert len(set(ips)) == 3 and ipaddress.IPv4Address("10.213.9.1") not in ips


def test_an_explicit_address_of_another_shards_share_is_refused() -> None:
    from engine.core.networks import endpoint_on
    from engine.errors import Forbidden

    cid = new_id_in("0", 3)  # shard 0 gives host numbers 3, 6, 9, ...
    world = given(_net(3), _on_appnet(cid, "10.213.9.7")).world
    with pytest.raises(Forbidden, match="belongs to another shard's share"):
        endpoint_on(world, world.containers[cid], "appnet")
    world = given(_net(3), _on_appnet(cid, "10.213.9.9")).world
    assert endpoint_on(world, world.containers[cid], "appnet").ip_address == "10.213.9.9"
    # One shard: every address, as before.
    world = given(_net(1), _on_appnet(cid, "10.213.9.7")).world
    assert endpoint_on(world, world.containers[cid], "appnet").ip_address == "10.213.9.7"


# --- configuration per shard ---------------------------------------------------------------

def test_each_shard_has_its_own_default_bridge_and_subnet_slice(monkeypatch) -> None:
    monkeypatch.setenv("MOOR_SUBNET", "10.219.0.0/16")
    monkeypatch.setenv("MOOR_BRIDGE", "moorx")
    specs = [default_network(str(i), 3) for i in range(3)]
    assert [s.bridge for s in specs] == ["moorxs0", "moorxs1", "moorxs2"]
    nets = [ipaddress.IPv4Network(s.subnet) for s in specs]
    assert all(n.subnet_of(ipaddress.IPv4Network("10.219.0.0/16")) for n in nets)
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    assert default_network("0", 1).subnet == "10.219.0.0/16"  # one shard: the whole subnet


def test_each_shards_worker_is_an_engine_of_its_own(monkeypatch) -> None:
    monkeypatch.delenv("MOOR_ENGINE_ID", raising=False)
    ids = {engine_id("/r", "p", str(i)) for i in range(3)}
    assert len(ids) == 3
    monkeypatch.setenv("MOOR_ENGINE_ID", "fixed")
    assert engine_id("/r", "p", "0") == "fixed"
    assert len({engine_id("/r", "p", str(i)) for i in range(3)}) == 3
    monkeypatch.setenv("MOOR_SHARD", "2")
    assert engine_id("/r", "p") == engine_id("/r", "p", "2")


def test_acl_rules_of_a_sharded_deployment_cover_every_shard() -> None:
    every = [keys_for(str(i), prefix="moor:v1", count=3) for i in range(3)]
    for role in ("reducer", "worker", "control"):
        rules = acl_rules(every[0], role, tuple(every[1:]))
        for keys in every:
            assert keys.tag in rules, (role, keys.tag)
    control = acl_rules(every[0], "control", tuple(every[1:]))
    assert all(f"~{k.commands} +xadd" in control and f"%R~{k.names}" in control
               for k in every)


# --- the sharded client's routing, on one fake server --------------------------------------

@pytest.fixture
def sharded() -> ShardedClient:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    return ShardedClient({str(i): Client(redis, keys_for(str(i), prefix="t", count=3))
                          for i in range(3)})


def test_commands_route_by_id_name_and_kind(sharded: ShardedClient) -> None:
    cid = new_id_in("2", 3)
    clients = sharded.clients
    clients["2"].redis.hset(clients["2"].keys.containers, cid, b"snapshot")
    home = home_of_name("web", 3)  # the name's home holds who has it
    clients[home].redis.hset(clients[home].keys.names, "web", cid)
    assert sharded.shard_of(c.StartContainer(ref=cid)) == "2"
    assert sharded.shard_of(c.StartContainer(ref="web")) == "2"  # via the name's home
    assert sharded.shard_of(c.StopContainer(ref=cid[:12])) == "2"
    assert sharded.shard_of(c.StartExec(exec_id=new_id_in("1", 3))) == "1"
    assert sharded.shard_of(c.ReserveName(name="api", holder=cid)) == home_of_name("api", 3)
    assert sharded.shard_of(c.RegisterImage(image_id="sha256:" + "a" * 64)) is None
    assert sharded.shard_of(c.StartContainer(ref="nope")) == home_of_name("nope", 3)
    assert sharded.shard_of(c.CreateContainer(config=ContainerConfig(image="x")),
                            container_id=cid) == "2"


def test_a_short_prefix_is_looked_up_in_every_shard(sharded: ShardedClient) -> None:
    cid = new_id_in("1", 3)
    one = sharded.clients["1"]
    one.redis.hset(one.keys.containers, cid, b"x")
    assert sharded.locate(cid[:3]) == ("1", cid)


def test_merged_yields_every_item_and_ends_with_its_sources() -> None:
    assert sorted(merged([iter([1, 2]), iter([]), iter([3])])) == [1, 2, 3]

    def broken():
        yield 1
        raise RuntimeError("shard down")
    with pytest.raises(RuntimeError, match="shard down"):
        list(merged([broken()]))


def test_no_environment_leaks_from_these_tests() -> None:
    assert "MOOR_SHARD" not in os.environ


# --- reaching a shard on a cluster -----------------------------------------------------------

def test_seeds_and_moved_answers_name_the_nodes_to_try() -> None:
    from engine.seeds import moved_url, seed_urls, seeds_of

    url = "redis://u:p@10.0.0.1:7001,10.0.0.2:7002/0"
    assert seeds_of(url) == [("10.0.0.1", 7001), ("10.0.0.2", 7002)]
    assert seed_urls(url) == ["redis://u:p@10.0.0.1:7001/0", "redis://u:p@10.0.0.2:7002/0"]
    assert seed_urls("unix:///run/r.sock") == ["unix:///run/r.sock"]
    # A supervisor's exit report follows MOVED to the slot's new owner, credentials kept.
    assert moved_url(url, "MOVED 5461 10.0.0.3:7003") == "redis://u:p@10.0.0.3:7003/0"
    assert moved_url(url, "READONLY You can't write against a read only replica.") is None
