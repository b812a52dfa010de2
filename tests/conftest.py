"""Shared fixtures: a real redis-server per test session, privilege gating, unique names."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

REQUIRE_PRIVILEGED = os.environ.get("MOOR_REQUIRE_PRIVILEGED") == "1"

# Tests that call the host functions directly (netns, links, rules, cgroups) name what
# they create with this run's own engine id, never a default engine's on this machine.
# Engines the tests start as programs get an environment without MOOR_* and derive theirs.
TEST_ENGINE_ID = os.environ.setdefault("MOOR_ENGINE_ID", "t" + secrets.token_hex(4))


@pytest.fixture(scope="session", autouse=True)
def _release_test_engine_cgroup_parent() -> Iterator[None]:
    """Remove this run's (empty) cgroup parent once every test is done."""
    yield
    if os.geteuid() == 0:
        from workers.proc import cgroups

        cgroups.release_parent()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server this test session started; stopped by PID."""

    port: int
    pid: int
    dir: str
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server abruptly (fault tests) and reap it."""
        self.proc.send_signal(sig)
        self.proc.wait(timeout=10)


def start_redis(workdir: str, appendonly: bool = True, port: int | None = None,
                exe: str | None = None) -> RedisServer:
    """Start a private redis-server on a free port with AOF everysec in workdir."""
    if exe is None:
        from moor.embedded import EmbeddedRedisError, find_redis_server

        try:
            exe = find_redis_server()
        except EmbeddedRedisError:
            pytest.fail("no redis-server (.ci/run installs Debian's)")
    port = port or free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
         "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec",
         "--save", "", "--daemonize", "no", "--logfile", os.path.join(workdir, "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return RedisServer(port=port, pid=proc.pid, dir=workdir, proc=proc)
        except OSError:
            time.sleep(0.02)
    proc.kill()
    proc.wait()
    pytest.fail(f"redis-server did not start on port {port}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session, on a free port, with AOF."""
    workdir = tempfile.mkdtemp(prefix="moor-test-redis-")
    server = start_redis(workdir)
    yield server
    if server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


# The local Redis Cluster (3 primaries + 3 replicas) and a plain Redis for rq's queues, one
# each per session whichever folder asks (tests/cluster.py).
from tests.cluster import queue_redis_server, redis_cluster  # noqa: E402, F401


@pytest.fixture
def run_id() -> str:
    """A short unique token for names of resources this test creates."""
    return secrets.token_hex(3)


def require_root() -> None:
    """Skip (or fail loudly under MOOR_REQUIRE_PRIVILEGED=1) when not root."""
    if os.geteuid() != 0:
        message = "privileged test needs root"
        if REQUIRE_PRIVILEGED:
            pytest.fail(message + " and MOOR_REQUIRE_PRIVILEGED=1 is set")
        pytest.skip(message)


@pytest.fixture
def privileged() -> None:
    """Gate a test on root privileges."""
    require_root()


def missing_capability(what: str) -> None:
    """Report a missing kernel capability: fail under MOOR_REQUIRE_PRIVILEGED=1, else skip."""
    if REQUIRE_PRIVILEGED:
        pytest.fail(f"missing capability: {what} (MOOR_REQUIRE_PRIVILEGED=1)")
    pytest.skip(f"missing capability: {what}")
