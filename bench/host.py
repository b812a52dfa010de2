"""A private engine for the host benchmarks: redis-server, reducer, worker (and the API).

Everything runs on its own Redis, data root, key prefix, bridge and subnet, and is torn
down by PID at the end, so a benchmark never touches a running moorage.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["PrivateEngine", "percentile", "private_engine", "release_engine"]


def percentile(values: list[float], q: float) -> float:
    """Return the q-quantile (0..1) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclass
class PrivateEngine:
    env: dict[str, str]  # MOOR_* for this engine
    work: str  # its scratch directory
    redis_url: str
    socket: str  # the Docker API socket (when started with api=True)


@contextmanager
def private_engine(subnet: str, api: bool = False) -> Iterator[PrivateEngine]:
    """Start the engine's programs as subprocesses; yield them; stop and clean up."""
    from tests.conftest import start_redis

    work = tempfile.mkdtemp(prefix="moor-bench-")
    server = start_redis(work)
    tag = uuid.uuid4().hex[:6]
    env = dict(os.environ, MOOR_REDIS_URL=server.url, MOOR_DATA_ROOT=f"{work}/root",
               MOOR_PREFIX=f"moorbench{tag}", MOOR_SUBNET=subnet, MOOR_BRIDGE=f"moorbn{tag}")
    sock = f"{work}/docker.sock"
    programs: list[list[str]] = [["reducer"], ["worker"]]
    if api:
        programs.append(["api", "--socket", sock])
    procs = [subprocess.Popen([sys.executable, "-m", "moor.cli", *argv], env=env,
                              stdout=subprocess.DEVNULL) for argv in programs]
    try:
        yield PrivateEngine(env=env, work=work, redis_url=server.url, socket=sock)
    finally:
        for proc in procs:  # our own children, by PID
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        release_engine(env, server)
        shutil.rmtree(work, ignore_errors=True)


def release_engine(env: dict[str, str], server: Any) -> None:
    """Release what a private engine's programs left on the host once they stopped (its
    bridge, chains and cgroup parent), then stop its redis-server by PID.

    The programs inherited this process's MOOR_ENGINE_ID (tests.conftest sets one): the
    names to release are this process's own."""
    from workers.net import network, portmap
    from workers.net.netconf import BridgeConfig
    from workers.proc import cgroups

    cfg = BridgeConfig(name=env["MOOR_BRIDGE"], subnet=env["MOOR_SUBNET"])
    portmap.release_chains(cfg)
    network.release_bridge(cfg)
    cgroups.release_parent()
    server.proc.terminate()
    server.proc.wait(10)
