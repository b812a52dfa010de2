"""engine.resp, the CLI's redis-py-free connection, against a real redis-server: every
method answers as redis-py does (decode_responses=False), errors land in the classes the
callers catch, and `moor ps` / `moor start` import neither redis-py nor asyncio."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from commands import schema as c
from commands.client import Client
from engine.errors import Internal, Unavailable
from engine.resp import (
    RespConnectionError,
    RespRedis,
    RespResponseError,
    Unsupported,
    connection_errors,
    parse_url,
    redis_errors,
)
from projections.stream import load_live, tail_id
from tests.conftest import RedisServer, free_port
from tests.harness import fresh_keys


@pytest.fixture
def pair(redis_server: RedisServer) -> Iterator[tuple[RespRedis, Any, str]]:
    """(engine.resp connection, redis-py client, a key prefix) on the session's server."""
    lite = RespRedis.from_url(redis_server.url)
    real = redis.Redis.from_url(redis_server.url)
    prefix = f"moortest:resp:{uuid.uuid4().hex[:8]}"
    yield lite, real, prefix
    batch = list(real.scan_iter(match=f"{prefix}*"))
    if batch:
        real.delete(*batch)
    lite.close()
    real.close()


def test_reads_answer_as_redis_py(pair: tuple[RespRedis, Any, str]) -> None:
    lite, real, p = pair
    real.hset(f"{p}:h", mapping={"a": b"\x00\xff", "b": "2", "c": 3})
    stream = f"{p}:s"
    for i in range(5):
        real.xadd(stream, {"d": f"v{i}".encode(), "n": i})
    real.delete(f"{p}:empty")
    real.xadd(f"{p}:empty", {"x": 1})
    real.xtrim(f"{p}:empty", maxlen=0)

    assert lite.ping() is real.ping() is True
    assert lite.hget(f"{p}:h", "a") == real.hget(f"{p}:h", "a") == b"\x00\xff"
    assert lite.hget(f"{p}:h", "nope") is real.hget(f"{p}:h", "nope") is None
    assert lite.hget(f"{p}:missing", "a") is None
    assert lite.hgetall(f"{p}:h") == real.hgetall(f"{p}:h")
    assert lite.hgetall(f"{p}:missing") == real.hgetall(f"{p}:missing") == {}
    assert lite.xrange(stream) == real.xrange(stream)
    assert lite.xrange(stream, "-", "+", count=2) == real.xrange(stream, "-", "+", count=2)
    assert lite.xrevrange(stream, count=1) == real.xrevrange(stream, count=1)
    assert lite.xrevrange(f"{p}:empty", count=1) == real.xrevrange(f"{p}:empty", count=1) == []
    assert lite.xread({stream: "0-0"}, count=3) == real.xread({stream: "0-0"}, count=3)
    assert lite.xread({stream: "0-0"}, count=500, block=10) == real.xread(
        {stream: "0-0"}, count=500, block=10)
    last = real.xrevrange(stream, count=1)[0][0]
    assert lite.xread({stream: last}, count=5, block=20) == real.xread(
        {stream: last}, count=5, block=20) == []

    real.rpush(f"{p}:l", b"one", b"two")
    assert lite.blpop([f"{p}:l"], timeout=0.1) == (f"{p}:l".encode(), b"one")
    assert real.blpop([f"{p}:l"], timeout=0.1) == (f"{p}:l".encode(), b"two")
    assert lite.blpop([f"{p}:l"], timeout=0.05) is real.blpop([f"{p}:l"], timeout=0.05) is None

    pipe = lite.pipeline(transaction=True)
    pipe.hgetall(f"{p}:h")
    pipe.hgetall(f"{p}:missing")
    pipe.hget(f"{p}:h", "b")
    real_pipe = real.pipeline(transaction=True)
    real_pipe.hgetall(f"{p}:h")
    real_pipe.hgetall(f"{p}:missing")
    real_pipe.hget(f"{p}:h", "b")
    assert pipe.execute() == real_pipe.execute()
    assert lite.pipeline().execute() == []


def test_xadd_writes_what_redis_py_writes(pair: tuple[RespRedis, Any, str]) -> None:
    lite, real, p = pair
    fields: dict[str, bytes | str | int | float] = {"env": b"\x01\x02", "cmd": "text",
                                                    "n": 7, "f": 1.5}
    lite_id = lite.xadd(f"{p}:a", fields)
    real_id = real.xadd(f"{p}:b", fields)
    assert type(lite_id) is type(real_id) is bytes
    assert real.xrange(f"{p}:a")[0][1] == real.xrange(f"{p}:b")[0][1]
    assert real.xrange(f"{p}:a")[0][0] == lite_id


def test_the_loaders_and_client_work_on_it(pair: tuple[RespRedis, Any, str]) -> None:
    lite, real, _ = pair
    keys = fresh_keys()
    try:
        assert load_live(lite, keys)[1] == load_live(real, keys)[1] == "0-0"
        assert tail_id(lite, keys) == tail_id(real, keys)
        client = Client(lite, keys, actor="test", timeout=0.2)
        command_id = client.send(c.StartContainer(ref="web"), reply=True)
        (entry_id, fields), = real.xrange(keys.commands)
        assert set(fields) == {b"env", b"cmd"}
        assert command_id
        with pytest.raises(Exception, match="no result for command"):
            client.wait_result(command_id, timeout=0.05)
    finally:
        batch = list(real.scan_iter(match=f"{keys.prefix}:*"))
        if batch:
            real.delete(*batch)


def test_error_replies_are_redis_errors(pair: tuple[RespRedis, Any, str]) -> None:
    lite, real, p = pair
    real.set(f"{p}:str", "x")
    with pytest.raises(RespResponseError, match="WRONGTYPE") as caught:
        lite.hgetall(f"{p}:str")
    assert isinstance(caught.value, redis_errors())
    assert not isinstance(caught.value, connection_errors())
    pipe = lite.pipeline(transaction=True)
    pipe.hgetall(f"{p}:str")
    with pytest.raises(RespResponseError, match="WRONGTYPE"):
        pipe.execute()
    assert lite.ping()  # the connection is still usable after an error reply

    keys = fresh_keys()
    real.set(keys.containers, "not a hash")
    try:
        with pytest.raises(Internal):
            load_live(lite, keys)
        with pytest.raises(Internal):
            load_live(real, keys)
    finally:
        real.delete(keys.containers)


def test_connection_refused_is_a_connection_error() -> None:
    lite = RespRedis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(RespConnectionError) as caught:
        lite.ping()
    assert isinstance(caught.value, connection_errors())
    assert isinstance(caught.value, redis_errors())
    keys = fresh_keys()
    with pytest.raises(Unavailable):
        load_live(lite, keys)
    with pytest.raises(Unavailable):
        Client(lite, keys).send(c.StartContainer(ref="web"))


def test_redis_py_errors_are_still_caught(redis_server: RedisServer) -> None:
    assert issubclass(redis.ConnectionError, connection_errors())
    assert issubclass(redis.ResponseError, redis_errors())
    dead = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(Unavailable):
        load_live(dead, fresh_keys())


def test_auth_and_select(pair: tuple[RespRedis, Any, str], redis_server: RedisServer) -> None:
    _, real, p = pair
    user = f"moorlite{uuid.uuid4().hex[:6]}"
    real.acl_setuser(user, enabled=True, passwords=["+s3cr:et"], keys=["*"], channels=["*"],
                     commands=["+@all"])
    try:
        other = redis.Redis(port=redis_server.port, db=3)
        other.hset(f"{p}:db3", "k", "v")
        url = f"redis://{user}:s3cr%3Aet@127.0.0.1:{redis_server.port}/3"
        with RespRedis.from_url(url) as lite:
            assert lite.hgetall(f"{p}:db3") == {b"k": b"v"}
        with pytest.raises(RespConnectionError), \
                RespRedis.from_url(url.replace("s3cr%3Aet", "wrong")) as bad:
            bad.ping()
        other.delete(f"{p}:db3")
        other.close()
    finally:
        real.acl_deluser(user)


def test_url_parsing() -> None:
    assert parse_url("unix:///run/moor/redis.sock") == {
        "username": None, "password": None, "db": 0, "path": "/run/moor/redis.sock"}
    assert parse_url("redis://:pw@h:7000/2") == {
        "username": None, "password": "pw", "db": 2, "host": "h", "port": 7000}
    assert parse_url("redis://h") == {
        "username": None, "password": None, "db": 0, "host": "h", "port": 6379}
    for url in ("rediss://h:6380/0", "redis://h/0?socket_timeout=1", "unix:///s?db=2",
                "redis://h/x"):
        with pytest.raises(Unsupported):
            parse_url(url)


def _imported(argv: list[str], server: RedisServer) -> set[str]:
    env = dict(os.environ, MOOR_REDIS_URL=server.url, MOOR_PREFIX=fresh_keys().prefix)
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "moor.cli", *argv],
                          env=env, capture_output=True, text=True, timeout=60)
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert names, done.stderr
    return names


@pytest.mark.parametrize("argv", [["ps"], ["inspect", "nothing"],
                                  ["--timeout", "0.2", "start", "nothing"]])
def test_short_commands_import_no_redis_py(redis_server: RedisServer, argv: list[str]) -> None:
    names = _imported(argv, redis_server)
    heavy = {n for n in names if n.split(".")[0] in ("redis", "asyncio")}
    assert not heavy, sorted(heavy)
    assert "engine.resp" in names


def test_the_embedded_default_is_reached_without_redis_py(tmp_path) -> None:
    """No URL named: a running embedded server is found by its socket, not the launcher."""
    from moor.embedded import ensure_embedded, stop_embedded

    root = tmp_path / "data"
    server = ensure_embedded(root)
    try:
        env = {k: v for k, v in os.environ.items() if k != "MOOR_REDIS_URL"}
        env.update(MOOR_DATA_ROOT=str(root), MOOR_PREFIX=fresh_keys().prefix)
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "moor.cli", "ps"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("CONTAINER ID")
        names = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
                 if line.startswith("import time:") and "|" in line}
        assert "engine.resp" in names
        assert not {n for n in names if n.split(".")[0] in ("redis", "asyncio")}
    finally:
        assert stop_embedded(root)
        assert server.pid
