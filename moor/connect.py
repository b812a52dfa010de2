"""Open the engine's Redis and keys for a program: one place, so every program asks alike.

Each program connects as a role (engine.acl): `moor reducer` as the reducer, `moor
worker` as the worker, `moor api` as the default control principal, `moor import` and
`moor acl` as admin, every other command as the control principal MOOR_PRINCIPAL names
(default: the default one, "control"). The role's credential file under the data root
is used when the Redis URL names no user of its own; without one, no AUTH.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from commands.client import Client
    from engine.keys import Keys

__all__ = ["client_for", "on_cluster", "open_lite", "open_redis", "principal", "queue_redis",
           "redis_and_keys", "shard_stores"]


def principal() -> str:
    """Return the control principal this command acts as (MOOR_PRINCIPAL, else "control")."""
    return os.environ.get("MOOR_PRINCIPAL") or "control"


def _auth(url: str, role: str | None) -> dict[str, Any]:
    from engine.acl import connect_kwargs
    from engine.config import data_root

    return connect_kwargs(url, data_root(), role or principal())


def open_redis(explicit: str | None = None, *, lite: bool = False,
               role: str | None = None) -> Any:
    """Return a redis-py client on `explicit`, else MOOR_REDIS_URL, else the embedded server,
    authenticated as `role` (default: the control principal).

    Without CLIENT SETINFO: it costs a round trip per connection and, the first time,
    redis-py's package-metadata lookup (importlib.metadata), a few ms of every CLI call.
    With `lite`, a short CLI call gets engine.resp's connection instead when it can
    (open_lite): no redis-py import, ~65 ms of a `moor ps`.
    """
    if lite:
        conn = open_lite(explicit, role=role)
        if conn is not None:
            return conn
    import redis

    from moor.embedded import NO_CLIENT_INFO, resolve_redis_url

    url = resolve_redis_url(explicit)
    return redis.Redis.from_url(url, **NO_CLIENT_INFO, **_auth(url, role))


def open_lite(explicit: str | None = None, *, role: str | None = None) -> Any:
    """Return an engine.resp connection to the Redis the user named, or None.

    With no URL named, the embedded server is used when it already answers on its socket
    under the data root; else None (use redis-py: finding, checking or starting the
    embedded server is the launcher's, which imports redis-py). None too for URLs
    engine.resp does not speak (rediss://, query options).
    """
    from engine.config import data_root, named_redis_url
    from engine.resp import RespError, RespRedis, Unsupported, parse_url

    def connect(url: str) -> RespRedis:
        return RespRedis(**{**parse_url(url), **_auth(url, role)})

    url = named_redis_url(explicit)
    if not url:
        # where moor.embedded's launcher serves: <data root>/redis/redis.sock
        sock = os.path.join(os.path.abspath(data_root()), "redis", "redis.sock")
        if not os.path.exists(sock):
            return None
        try:
            conn = connect(f"unix://{sock}")
            conn.ping()
            return conn
        except (RespError, OSError, ValueError):
            return None
    try:
        return connect(url)
    except Unsupported:
        return None


def redis_and_keys(explicit: str | None = None, prefix: str | None = None, *,
                   lite: bool = False, role: str | None = None,
                   shard: str = "0") -> tuple[Any, Keys]:
    """Return the Redis client and a shard's keys (MOOR_PREFIX unless `prefix`).

    A sharded deployment (MOOR_SHARDS > 1) or a Redis Cluster gets the shard's own
    keys, and on a cluster a client pinned to the primary of the shard's slot."""
    from engine.config import key_prefix, shard_count

    count = shard_count()
    if count == 1 and shard == "0" and not _cluster_named(explicit):
        from engine.keys import keys_for

        return open_redis(explicit, lite=lite, role=role), keys_for(prefix=prefix or key_prefix())
    return shard_stores(explicit, prefix, role=role)[shard]


def _cluster_named(explicit: str | None) -> bool:
    """Tell, without a round trip, whether the user said the Redis is a cluster."""
    from engine.config import cluster_flag, named_redis_url

    flag = cluster_flag()
    return flag if flag is not None else "," in (named_redis_url(explicit) or "")


def on_cluster(explicit: str | None = None) -> bool:
    """Tell whether the engine's Redis is a Redis Cluster (engine.cluster.on_cluster)."""
    from engine.cluster import on_cluster as deployment_on_cluster
    from engine.config import named_redis_url, shard_count

    url = named_redis_url(explicit)
    return deployment_on_cluster(url, shard_count(), **(_auth(url, None) if url else {}))


def shard_stores(explicit: str | None = None, prefix: str | None = None, *,
                 role: str | None = None) -> dict[str, tuple[Any, Keys]]:
    """Return (redis, keys) of every shard: on a cluster, one client per shard pinned to
    its slot's primary; else one client shared by the shards' keys."""
    from engine.config import key_prefix, named_redis_url, shard_count
    from engine.keys import keys_for

    count = shard_count()
    every = [keys_for(str(i), prefix=prefix or key_prefix(), count=count) for i in range(count)]
    if on_cluster(explicit):
        from engine.cluster import shard_redis
        from moor.embedded import NO_CLIENT_INFO

        url = named_redis_url(explicit) or ""
        auth = _auth(url.split(",", 1)[0], role)
        return {k.shard: (shard_redis(url, k.tag, **NO_CLIENT_INFO, **auth), k) for k in every}
    shared = open_redis(explicit, role=role)
    return {k.shard: (shared, k) for k in every}


def queue_redis(explicit: str | None = None, *, role: str | None = None) -> Any:
    """Return the Redis of the rq queues: MOOR_QUEUE_URL's, None for the engine's own.

    On a cluster it must be named: rq cannot run on Redis Cluster."""
    from engine.config import queue_url

    url = queue_url()
    if url is None:
        if on_cluster(explicit):
            from engine.errors import InvalidParameter

            raise InvalidParameter("the engine's Redis is a cluster: set MOOR_QUEUE_URL to a "
                                   "plain Redis for the job queues (rq cannot run on Redis "
                                   "Cluster)")
        return None
    return open_redis(url, role=role)


def client_for(redis_url: str | None, *, actor: str, reason: str = "",
               timeout: float = 30.0, lite: bool = False) -> Client:
    """Return the control-plane client for one CLI call (`lite`: see open_redis): it
    appends to the commands stream of the principal it acts as."""
    from commands.client import Client
    from engine.config import shard_count

    if shard_count() > 1:
        from commands.client.router import ShardedClient

        replicas = 1 if on_cluster(redis_url) else 0
        return ShardedClient({
            shard: Client(redis, keys, actor=actor, reason=reason, timeout=timeout,
                          inbox=keys.inbox(principal()), replicas=replicas)
            for shard, (redis, keys) in shard_stores(redis_url).items()})
    redis, keys = redis_and_keys(redis_url, lite=lite)
    return Client(redis, keys, actor=actor, reason=reason, timeout=timeout,
                  inbox=keys.inbox(principal()))
