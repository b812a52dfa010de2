"""Open the engine's Redis and keys for a program: one place, so every program asks alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from commands.client import Client
    from engine.keys import Keys

__all__ = ["client_for", "open_lite", "open_redis", "redis_and_keys"]


def open_redis(explicit: str | None = None, *, lite: bool = False) -> Any:
    """Return a redis-py client on `explicit`, else MOOR_REDIS_URL, else the embedded server.

    Without CLIENT SETINFO: it costs a round trip per connection and, the first time,
    redis-py's package-metadata lookup (importlib.metadata), a few ms of every CLI call.
    With `lite`, a short CLI call gets engine.resp's connection instead when it can
    (open_lite): no redis-py import, ~65 ms of a `moor ps`.
    """
    if lite:
        conn = open_lite(explicit)
        if conn is not None:
            return conn
    import redis

    from moor.embedded import NO_CLIENT_INFO, resolve_redis_url

    return redis.Redis.from_url(resolve_redis_url(explicit), **NO_CLIENT_INFO)


def open_lite(explicit: str | None = None) -> Any:
    """Return an engine.resp connection to the Redis the user named, or None.

    With no URL named, the embedded server is used when it already answers on its socket
    under the data root; else None (use redis-py: finding, checking or starting the
    embedded server is the launcher's, which imports redis-py). None too for URLs
    engine.resp does not speak (rediss://, query options).
    """
    import os

    from engine.config import data_root, named_redis_url
    from engine.resp import RespError, RespRedis, Unsupported

    url = named_redis_url(explicit)
    if not url:
        # where moor.embedded's launcher serves: <data root>/redis/redis.sock
        sock = os.path.join(os.path.abspath(data_root()), "redis", "redis.sock")
        if not os.path.exists(sock):
            return None
        try:
            conn = RespRedis.from_url(f"unix://{sock}")
            conn.ping()
            return conn
        except RespError:
            return None
    try:
        return RespRedis.from_url(url)
    except Unsupported:
        return None


def redis_and_keys(explicit: str | None = None, prefix: str | None = None, *,
                   lite: bool = False) -> tuple[Any, Keys]:
    """Return the Redis client and the shard's keys (MOOR_PREFIX unless `prefix`)."""
    from engine.config import key_prefix
    from engine.keys import keys_for

    return open_redis(explicit, lite=lite), keys_for(prefix=prefix or key_prefix())


def client_for(redis_url: str | None, *, actor: str, reason: str = "",
               timeout: float = 30.0, lite: bool = False) -> Client:
    """Return the control-plane client for one CLI call (`lite`: see open_redis)."""
    from commands.client import Client

    redis, keys = redis_and_keys(redis_url, lite=lite)
    return Client(redis, keys, actor=actor, reason=reason, timeout=timeout)
