"""What every handler needs: Redis, the shard's keys, the data root, a control-plane client."""

from __future__ import annotations

import asyncio
import functools
import pwd
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from commands.client import Client
from engine.core.state import World
from engine.keys import Keys
from projections.stream import load_live, load_live_all

__all__ = ["API_VERSION", "ENGINE_VERSION", "MIN_API_VERSION", "ApiContext", "CONTEXT",
           "ctx", "run"]

API_VERSION = "1.51"  # Docker Engine 28.3 to 28.5
MIN_API_VERSION = "1.24"
ENGINE_VERSION = "28.5.2"

T = TypeVar("T")


@dataclass
class ApiContext:
    """The server's connection to the engine: one shard (`redis`, `keys`), or in a sharded
    deployment every shard (`shards`, "0" first; `redis` and `keys` are shard 0's)."""

    redis: Any
    keys: Keys
    data_root: str
    timeout: float = 30.0
    shards: dict[str, tuple[Any, Keys]] | None = None
    replicas: int = 0  # WAIT for this many replicas before a result counts (a cluster)

    def client(self, request: web.Request) -> Client:
        """Return a client whose commands record who asked (peer uid) and with what; in a
        sharded deployment it routes each command to its shard."""
        actor, reason = _actor(request), request.headers.get("User-Agent", "")
        if self.shards is None:
            return Client(self.redis, self.keys, actor=actor, reason=reason,
                          timeout=self.timeout, replicas=self.replicas)
        from commands.client.router import ShardedClient

        return ShardedClient({s: Client(r, k, actor=actor, reason=reason, timeout=self.timeout,
                                        replicas=self.replicas)
                              for s, (r, k) in self.shards.items()})

    def world(self) -> World:
        """The live state: the shard's, or every shard's merged (projections.stream)."""
        if self.shards is None:
            return load_live(self.redis, self.keys)[0]
        return load_live_all(self.shards)

    def live(self, ref: str) -> tuple[Any, str]:
        """Return the container `ref` names and its shard's events cursor (the snapshot's
        checkpoint), or raise Docker's 404."""
        from projections.views.inspect import find_container

        if self.shards is None:
            world, cursor = load_live(self.redis, self.keys)
            return find_container(world, ref), cursor
        found = find_container(self.world(), ref)
        world, cursor = load_live(*self.store(found.id))
        return world.containers.get(found.id, found), cursor

    def shard_context(self, container_id: str = "") -> ApiContext:
        """Return this context narrowed to the shard of a container (itself unsharded)."""
        if self.shards is None:
            return self
        from dataclasses import replace

        redis, keys = self.store(container_id)
        return replace(self, redis=redis, keys=keys, shards=None)

    def store(self, container_id: str = "") -> tuple[Any, Keys]:
        """Return (redis, keys) of the shard a container (or exec) id belongs to."""
        if self.shards is None or not container_id:
            return self.redis, self.keys
        from engine.shards import shard_of_id

        return self.shards[shard_of_id(container_id, len(self.shards))]

    def engine(self, container_id: str = "") -> str:
        """Return the engine id of the worker that runs a container (its shard's)."""
        from engine.config import engine_id

        keys = self.store(container_id)[1]
        return engine_id(self.data_root, keys.prefix, keys.shard)


CONTEXT = web.AppKey("moorage", ApiContext)


def ctx(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work (Redis, files) in the loop's thread pool."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def _actor(request: web.Request) -> str:
    """Name the caller: on a unix socket, its kernel-given credentials and user name
    (`docker-api uid=1000 pid=4242 user=alice`); over TCP, the peer address.

    The principal the engine records is the API's own (the control principal): anyone who
    may open the socket acts through it, as with dockerd. The peer's credentials say who.
    """
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", raw)
        except OSError:
            return "docker-api"
        return f"docker-api uid={uid} pid={pid} user={_user_name(uid)}"
    return f"docker-api {request.remote or ''}".strip()


@functools.lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    """Return the login name of a uid, or "?" when it has none (a container's uid)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "?"
