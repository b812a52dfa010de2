"""Open the engine's Redis and keys for a program: one place, so every program asks alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from commands.client import Client
    from engine.keys import Keys

__all__ = ["client_for", "open_redis", "redis_and_keys"]


def open_redis(explicit: str | None = None) -> Any:
    """Return a redis-py client on `explicit`, else MOOR_REDIS_URL, else the embedded server.

    Without CLIENT SETINFO: it costs a round trip per connection and, the first time,
    redis-py's package-metadata lookup (importlib.metadata), a few ms of every CLI call.
    """
    import redis

    from moor.embedded import NO_CLIENT_INFO, resolve_redis_url

    return redis.Redis.from_url(resolve_redis_url(explicit), **NO_CLIENT_INFO)


def redis_and_keys(explicit: str | None = None, prefix: str | None = None) -> tuple[Any, Keys]:
    """Return the Redis client and the shard's keys (MOOR_PREFIX unless `prefix`)."""
    from engine.config import key_prefix
    from engine.keys import keys_for

    return open_redis(explicit), keys_for(prefix=prefix or key_prefix())


def client_for(redis_url: str | None, *, actor: str, reason: str = "",
               timeout: float = 30.0) -> Client:
    """Return the control-plane client for one CLI call."""
    from commands.client import Client

    redis, keys = redis_and_keys(redis_url)
    return Client(redis, keys, actor=actor, reason=reason, timeout=timeout)
