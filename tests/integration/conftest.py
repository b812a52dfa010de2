"""Backends for integration tests: a real redis-server (session) and fakeredis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

from tests.harness import cleanup, fresh_keys


@pytest.fixture(params=["real", "fake"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    """Yield (redis client, keys) for a real server and for fakeredis, cleaned after."""
    if request.param == "real":
        server = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url)
    else:
        client = fakeredis.FakeRedis()
    keys = fresh_keys()
    yield client, keys
    cleanup(client, keys)
    client.close()
