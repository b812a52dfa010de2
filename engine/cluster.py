"""Reach one shard on Redis Cluster: a plain client pinned to the primary of the shard's slot.

Every key of a shard carries the hash tag `{S}` (engine.keys), so a whole shard lives in
one hash slot, on one primary at a time. Its reducer and its clients need no cluster
client: a `redis.Redis` whose connections go to the slot's current owner runs every
command and Lua script of the shard unchanged. Ownership moves on a failover or a
resharding; a connection then hears MOVED (another node owns the slot), READONLY (the
node was demoted to a replica) or fails outright (the primary died). Each of those drops
the connection and forgets the owner, so the next connection asks the cluster again
(CLUSTER SLOTS on any known node) and goes to the new owner. The error itself still
reaches the caller: a reducer steps down and leads again with a new epoch
(engine.reducer), a client retries (docs/decisions/0015-scale-out.md).
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.connection import Connection, ConnectionPool
from redis.crc import key_slot

from engine.seeds import seeds_of

__all__ = ["ShardConnection", "cluster_client", "cluster_nodes", "is_cluster", "on_cluster",
           "shard_redis", "slot_of"]

_LOOKUP_TIMEOUT = 1.0  # seconds per node asked for the slot map

# Answers that mean this node no longer serves the slot (or the cluster is rearranging).
_MOVED = (redis.exceptions.MovedError, redis.exceptions.AskError,
          redis.exceptions.ReadOnlyError, redis.exceptions.ClusterDownError,
          redis.exceptions.TryAgainError)


def slot_of(tag: str) -> int:
    """Return the hash slot of a shard's keys (all tagged `{tag}`: engine.keys.Keys.tag)."""
    return key_slot(tag.encode())


def is_cluster(url: str, **kwargs: Any) -> bool:
    """Tell whether the server at `url` (its first seed) runs with cluster mode enabled.

    A unix socket is never a cluster's; several seeds always are. A server that refuses
    INFO (an ACL user without it) is taken for a plain one: MOOR_CLUSTER=1 says otherwise.
    """
    if url.startswith("unix:"):
        return False
    if "," in url:
        return True
    client = redis.Redis.from_url(url, socket_timeout=_LOOKUP_TIMEOUT, **kwargs)
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    except redis.ResponseError:  # NOPERM
        return False
    finally:
        client.close()


def on_cluster(url: str | None, shards: int, **auth: Any) -> bool:
    """Tell whether a deployment's Redis is a Redis Cluster: MOOR_CLUSTER=0/1 says so;
    else several seeds mean yes, one shard on one named server no (no round trip), and a
    sharded deployment asks the server. The one home of that rule (programs and workers)."""
    from engine.config import cluster_flag

    flag = cluster_flag()
    if flag is not None:
        return flag
    if not url or (shards == 1 and "," not in url):
        return False
    return is_cluster(url, **{k: v for k, v in auth.items() if k in ("username", "password")})


class _SlotMap:
    """What a pool knows of the cluster: the nodes it can ask, and the slot's owner."""

    def __init__(self, seeds: list[tuple[str, int]], slot: int, kwargs: dict[str, Any]) -> None:
        self.nodes = list(seeds)
        self.slot = slot
        self.owner: tuple[str, int] | None = None
        self._kwargs = kwargs  # credentials and timeouts for the lookup connections
        self._lock = threading.Lock()

    def forget(self) -> None:
        self.owner = None

    def moved(self, exc: BaseException) -> None:
        """Take the new owner from a MOVED answer, else forget the owner."""
        host, port = getattr(exc, "host", None), getattr(exc, "port", None)
        if isinstance(exc, redis.exceptions.MovedError) and host and port:
            self.owner = (str(host), int(port))
        else:
            self.owner = None

    def resolve(self) -> tuple[str, int]:
        """Return the slot's primary, asking the known nodes in turn if it is not known."""
        with self._lock:
            if self.owner is not None:
                return self.owner
            errors = []
            for host, port in list(self.nodes):
                node = redis.Redis(host=host, port=port, socket_timeout=_LOOKUP_TIMEOUT,
                                   socket_connect_timeout=_LOOKUP_TIMEOUT, **self._kwargs)
                try:
                    ranges = node.execute_command("CLUSTER SLOTS")
                except redis.RedisError as exc:
                    errors.append(f"{host}:{port}: {exc}")
                    continue
                finally:
                    node.close()
                self._learn(ranges)
                if self.owner is not None:
                    return self.owner
                errors.append(f"{host}:{port}: slot {self.slot} has no primary")
            raise redis.ConnectionError("no cluster node tells who owns slot "
                                        f"{self.slot}: {'; '.join(errors)}")

    def _learn(self, ranges: Any) -> None:
        """Read a CLUSTER SLOTS answer: remember every node, and the slot's primary."""
        for entry in ranges:
            low, high, *nodes = entry
            for node in nodes:
                address = (_text(node[0]) or "127.0.0.1", int(node[1]))
                if address not in self.nodes:
                    self.nodes.append(address)
            if int(low) <= self.slot <= int(high) and nodes:
                self.owner = (_text(nodes[0][0]) or "127.0.0.1", int(nodes[0][1]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ShardConnection(Connection):
    """A connection to whichever primary owns the slot now (see the module's docstring)."""

    def __init__(self, *, slot_map: _SlotMap, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slot_map = slot_map

    def _resolve(self) -> None:
        if self._sock is None:  # redis-py's own check: only a new socket looks up
            self.host, self.port = self.slot_map.resolve()

    def connect(self) -> None:
        self._resolve()
        try:
            super().connect()
        except (redis.ConnectionError, redis.TimeoutError):
            self.slot_map.forget()  # the owner may be dead: ask again next time
            raise

    if hasattr(Connection, "connect_check_health"):
        # redis-py 6+: send_packed_command opens a dropped (or never opened) socket
        # through this, not connect(): a connection used directly (engine.writer makes
        # its own with make_connection) would otherwise dial the last owner for ever,
        # or redis-py's default localhost:6379 if it never had one.
        def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
            self._resolve()
            try:
                super().connect_check_health(*args, **kwargs)
            except (redis.ConnectionError, redis.TimeoutError):
                self.slot_map.forget()
                raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = super().read_response(*args, **kwargs)
        except _MOVED as exc:
            self.slot_map.moved(exc)
            self.disconnect()
            raise
        except (redis.ConnectionError, redis.TimeoutError):
            self.slot_map.forget()
            raise
        return response


def shard_redis(url: str, tag: str, **kwargs: Any) -> redis.Redis:
    """Return a client whose every connection goes to the primary owning the slot of hash
    tag `tag` (a shard's Keys.tag).

    `url` names one or more cluster nodes (redis://h1:p1,h2:p2/0); `kwargs` are
    redis.Redis options (credentials, timeouts) applied to every node.
    """
    parts = urlsplit(url)
    options = dict(kwargs)
    if parts.username and "username" not in options:
        options["username"] = parts.username
    if parts.password and "password" not in options:
        options["password"] = parts.password
    lookup = {k: v for k, v in options.items() if k in ("username", "password")}
    slot_map = _SlotMap(seeds_of(url), slot_of(tag), lookup)
    pool = ConnectionPool(connection_class=ShardConnection, slot_map=slot_map, **options)
    return redis.Redis(connection_pool=pool)


def cluster_nodes(url: str, **kwargs: Any) -> list[tuple[str, int]]:
    """Return every node of the cluster `url` seeds, primaries and replicas (ACLs, for
    one, are per node: a user must be set on each)."""
    slot_map = _SlotMap(seeds_of(url), 0, {k: v for k, v in kwargs.items()
                                            if k in ("username", "password")})
    slot_map.resolve()  # learns every node the slot map lists
    return list(slot_map.nodes)


def cluster_client(url: str, **kwargs: Any) -> Any:
    """Return a redis-py RedisCluster over the nodes `url` names (cross-slot reads, setup)."""
    from redis.cluster import ClusterNode, RedisCluster

    nodes = [ClusterNode(host, port) for host, port in seeds_of(url)]
    return RedisCluster(startup_nodes=nodes, **kwargs)
