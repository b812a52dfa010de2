"""The state snapshot in Redis: a cache of the fold, rebuilt from the events stream at will.

Layout (keys in engine.keys):
- `containers` hash: container id -> msgpack Container (deleted when destroyed)
- `versions` hash: container id -> version; a destroyed id keeps its final version, which
  is how tombstones survive a reload
- `world` hash: "parts" -> msgpack WorldParts (images, networks, volumes, the host's
  boot id);
  "checkpoint" -> the last events-stream id the snapshot includes
Names, tags, addresses and exec ids are derived on load, so they cannot disagree with containers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from engine.core.evolve import evolve
from engine.core.ipam import address_key
from engine.core.state import Container, Host, Image, Volume, World
from engine.keys import Keys
from events.model import EventRecord
from events.netspecs import NetworkInfo
from events.specs import NetworkSpec

__all__ = [
    "WorldParts",
    "encode_world_parts",
    "fold_for_snapshot",
    "load_world",
    "queue_snapshot_writes",
    "world_from_parts",
]

_CONTAINER = msgspec.msgpack.Decoder(Container)
_ENC = msgspec.msgpack.Encoder()


class WorldParts(msgspec.Struct, kw_only=True):
    """The engine-wide part of the snapshot: rarely changes, written whole when it does."""

    images: dict[str, Image] = {}
    networks: dict[str, NetworkSpec] = {}
    host_boot_id: str = ""  # the boot the host's containers were last restored after
    volumes: dict[str, Volume] = {}
    network_info: dict[str, NetworkInfo] = {}  # user-defined networks
    links: dict[str, str] = {}  # legacy links: "<parent id>/<alias>" -> child id
    reserved: dict[str, str] = {}  # names held for other shards' containers
    hosts: dict[str, Host] = {}  # joined hosts (engine.core.hosts)


_PARTS = msgspec.msgpack.Decoder(WorldParts)


def encode_world_parts(world: World) -> bytes:
    """Return the engine-wide parts of the snapshot (written when they change)."""
    return _ENC.encode(WorldParts(images=world.images, networks=world.networks,
                                  host_boot_id=world.host_boot_id, volumes=world.volumes,
                                  network_info=world.network_info, links=world.links,
                                  reserved=world.reserved, hosts=world.hosts))


def world_from_parts(containers: dict[bytes, bytes], versions: dict[bytes, bytes],
                     parts: dict[bytes, bytes]) -> World:
    """Rebuild a World (with its derived indexes) from the snapshot's hashes."""
    world = World()
    if b"parts" in parts:
        decoded = _PARTS.decode(parts[b"parts"])
        world.images = decoded.images
        world.networks = decoded.networks
        world.host_boot_id = decoded.host_boot_id
        world.volumes = decoded.volumes
        world.network_info = decoded.network_info
        world.links = decoded.links
        world.reserved = decoded.reserved
        world.hosts = decoded.hosts
    for image in world.images.values():
        for tag in image.repo_tags:
            world.tags[tag] = image.id
    for raw in containers.values():
        ctr = _CONTAINER.decode(raw)
        world.containers[ctr.id] = ctr
        world.names[ctr.name] = ctr.id
        if ctr.endpoint is not None:
            world.addresses[address_key(ctr.endpoint.network, ctr.endpoint.ip_address)] = ctr.id
        for extra in ctr.endpoints.values():
            world.addresses[address_key(extra.network, extra.ip_address)] = ctr.id
        for exec_id in ctr.execs:
            world.execs[exec_id] = ctr.id
    for cid in versions:
        text = cid.decode()
        if text not in world.containers:
            world.destroyed.add(text)
    return world


def load_world(redis: Any, keys: Keys) -> tuple[World, str]:
    """Read the snapshot; return the World and the events-stream id it is current to."""
    pipe = redis.pipeline(transaction=True)
    pipe.hgetall(keys.containers)
    pipe.hgetall(keys.versions)
    pipe.hgetall(keys.world)
    containers, versions, parts = pipe.execute()
    checkpoint = parts.get(b"checkpoint", b"0-0").decode()
    return world_from_parts(containers, versions, parts), checkpoint


def fold_for_snapshot(records: Iterable[tuple[str, EventRecord]]
                      ) -> tuple[World, dict[str, int], str]:
    """Fold (id, record) pairs; return the World, every container's version (tombstones
    keep their final one) and the last id, i.e. everything a snapshot holds."""
    world = World()
    versions: dict[str, int] = {}
    checkpoint = "0-0"
    for stream_id, record in records:
        evolve(world, record)
        if record.meta.container_id and record.meta.version:
            versions[record.meta.container_id] = record.meta.version
        checkpoint = stream_id
    return world, versions, checkpoint


def queue_snapshot_writes(pipe: Any, keys: Keys, world: World, versions: dict[str, int],
                          checkpoint: str) -> None:
    """Queue on a pipeline the writes that replace the snapshot with `world`."""
    pipe.delete(keys.containers, keys.versions, keys.world, keys.names)
    if world.names or world.reserved:
        pipe.hset(keys.names, mapping={**world.reserved, **world.names})
    if world.containers:
        pipe.hset(keys.containers, mapping={cid: _ENC.encode(ctr)
                                            for cid, ctr in world.containers.items()})
    if versions:
        pipe.hset(keys.versions, mapping=versions)
    pipe.hset(keys.world, mapping={"parts": encode_world_parts(world), "checkpoint": checkpoint,
                                   "count": len(world.containers)})
