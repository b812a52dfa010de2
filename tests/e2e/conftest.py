"""End-to-end fixtures: one isolated moorage engine (reducer + worker) per test session.

The session's `moor_engine` runs the real programs as subprocesses against the session's
private redis-server: `python -m moor.cli reducer` and `python -m moor.cli worker`, with
a unique key prefix, bridge, subnet and data root, and the busybox image imported with
`moor image import`. Tests drive it through the `moor` CLI (`engine.moor(...)`) and assert
quickly through a Python `Client` and the snapshot.

Every test gets the engine through the function-scoped `engine` fixture, which force-removes
the containers the test left and proves that each one it created left nothing behind: no
mount, netns, veth, iptables rule, cgroup, process or directory. The session's teardown
stops both programs by PID, releases the test bridge and moorage's chains for it, deletes
the data root and the test's Redis keys, and checks the host once more.
"""

from __future__ import annotations

import functools
import glob
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis as redislib

from commands.client import Client
from commands.codec import CODEC
from engine.config import default_cgroup_parent, derive_engine_id
from engine.core.state import Container
from engine.errors import MoorError
from engine.keys import Keys, keys_for
from engine.snapshot import load_world
from events import model as e
from events.specs import ContainerConfig, HostConfig, PortBinding
from projections.stream import load_live
from projections.views.inspect import find_container, inspect_container
from tests.conftest import RedisServer, missing_capability, require_root
from tests.imagebuild import busybox_rootfs_tar, find_busybox
from workers.proc.process import start_ticks

REPO = str(Path(__file__).resolve().parents[2])
T = TypeVar("T")
STOP_GRACE = 15.0  # seconds a program gets to exit on SIGTERM before SIGKILL


# --- host probes --------------------------------------------------------------------------

def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def host_routes() -> list[ipaddress.IPv4Network]:
    """Return the destinations of the host's IPv4 routes (main table, default excluded)."""
    nets = []
    for line in _sh("ip", "-4", "-o", "route", "show", "table", "main").splitlines():
        dst = line.split()[0]
        if dst != "default":
            nets.append(ipaddress.IPv4Network(dst, strict=False))
    return nets


def pick_subnet(token: str) -> str:
    """Return a free 10.213.<n>.0/24 (n from the token, then the next free one)."""
    routes = host_routes()
    start = int(token, 16) % 200
    for i in range(200):
        net = ipaddress.IPv4Network(f"10.213.{(start + i) % 200 + 1}.0/24")
        if not any(net.overlaps(r) for r in routes):
            return str(net)
    missing_capability("a free 10.213.x.0/24 test subnet")
    raise AssertionError("unreachable")


def host_address() -> str:
    """Return the IPv4 address of the interface that holds the default route."""
    for line in _sh("ip", "-4", "-o", "route", "show", "default").splitlines():
        words = line.split()
        if "dev" in words:
            dev = words[words.index("dev") + 1]
            for addr in _sh("ip", "-4", "-o", "addr", "show", "dev", dev).splitlines():
                return addr.split()[3].split("/")[0]
    missing_capability("a host interface with an IPv4 default route")
    raise AssertionError("unreachable")


def check_capabilities() -> None:
    """Fail (MOOR_REQUIRE_PRIVILEGED=1) or skip when the host cannot run containers."""
    require_root()
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            subprocess.run(["modprobe", "overlay"], check=False, capture_output=True)
            with open("/proc/filesystems") as f2:
                if "overlay" not in f2.read():
                    missing_capability("overlay filesystem")
    for tool in ("ip", "iptables", "iptables-save", "iptables-restore", "nsenter"):
        if shutil.which(tool) is None:
            missing_capability(f"{tool} on PATH")
    if not os.path.exists("/proc/self/ns/pid") or not os.path.isdir("/sys/fs/cgroup"):
        missing_capability("pid namespaces and cgroups")


def proc_env(pid: int) -> dict[str, str]:
    """Return the environment a process was started with ({} if unreadable or gone)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)



def wait_for(cond: Callable[[], Any], timeout: float, what: str,
             detail: Callable[[], str] | None = None) -> Any:
    """Poll cond until it returns something truthy; fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(0.02)


# --- the engine ---------------------------------------------------------------------------

@dataclass
class Tracked:
    """Host facts of one container seen while it ran, for the leak checks."""

    cid: str
    pids: set[tuple[int, int]] = field(default_factory=set)  # (pid, start ticks)


@dataclass
class Engine:
    """A running, isolated moorage engine and helpers to drive and inspect it."""

    token: str
    env: dict[str, str]
    redis: Any
    keys: Keys
    client: Client
    data_root: str
    workdir: str
    bridge: str
    subnet: str
    image_id: str = ""
    reducer: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    tracked: dict[str, Tracked] = field(default_factory=dict)

    # --- programs ---

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.workdir, f"{name}.log"), "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(argv, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def start_reducer(self) -> None:
        self.reducer = self._spawn("reducer", [sys.executable, "-m", "moor.cli", "reducer"])

    def start_worker(self) -> None:
        """Start `moor worker` (reconcile runs first) and wait until rq lists it."""
        assert self.worker is None or self.worker.poll() is not None, "a worker still runs"
        self.worker = self._spawn("worker", [sys.executable, "-m", "moor.cli", "worker"])
        pid = self.worker.pid

        def registered() -> bool:
            if self.worker is not None and self.worker.poll() is not None:
                raise AssertionError(f"moor worker exited with {self.worker.returncode}\n"
                                     f"{self.log_tail('worker')}")
            for key in self.redis.smembers(f"rq:workers:{self.keys.queue}"):
                if self.redis.hget(key, "pid") == str(pid).encode():
                    return True
            return False

        wait_for(registered, 30, "the worker to register with rq", lambda: self.log_tail("worker"))

    def kill_worker(self) -> None:
        """SIGKILL the worker (a crash: no clean-up of its own) and reap it."""
        assert self.worker is not None
        self.worker.kill()
        self.worker.wait(timeout=10)

    def stop_worker(self) -> None:
        if self.worker is not None:
            stop_process(self.worker)

    def ensure_worker(self) -> None:
        if self.worker is None or self.worker.poll() is not None:
            self.start_worker()

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = Path(self.workdir, f"{name}.log").read_text(errors="replace")
        except OSError:
            return f"({name}.log unreadable)"
        return f"--- {name}.log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    # --- driving ---

    def moor(self, *args: str, check: bool = True, timeout: float = 90,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the `moor` CLI against this engine; with check, fail on a non-zero exit."""
        done = subprocess.run([sys.executable, "-m", "moor.cli", *args], cwd=REPO,
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              input=input if input is not None else "")
        if check and done.returncode != 0:
            raise AssertionError(f"moor {' '.join(args)} exited {done.returncode}\n"
                                 f"stdout: {done.stdout}\nstderr: {done.stderr}\n"
                                 f"{self.log_tail('worker')}")
        return done

    def create(self, *cmd: str, image: str = "busybox", name: str = "",
               publish: dict[str, str] | None = None, memory: int = 0) -> str:
        """Create a container through the client and track it for the leak checks."""
        bindings: dict[str, tuple[PortBinding, ...]] = {
            port: (PortBinding(host_port=host),) for port, host in (publish or {}).items()}
        cid = self.client.create(ContainerConfig(image=image, cmd=cmd or None),
                                 HostConfig(port_bindings=bindings, memory=memory), name=name)
        self.track(cid)
        return cid

    def run(self, *cmd: str, **kw: Any) -> str:
        """Create and start a container; return its id once it runs."""
        cid = self.create(*cmd, **kw)
        self.client.start(cid)
        self.note_pids(cid)
        return cid

    def track(self, cid: str) -> Tracked:
        return self.tracked.setdefault(cid, Tracked(cid))

    def note_pids(self, cid: str) -> None:
        """Remember the container's process and its supervisor (for the leak checks)."""
        tracked = self.track(cid)
        ctr = self.container(cid)
        if ctr is not None and ctr.pid and (ticks := start_ticks(ctr.pid)) is not None:
            tracked.pids.add((ctr.pid, ticks))
        sup = self.supervisor_pid(cid)
        if sup and (ticks := start_ticks(sup)) is not None:
            tracked.pids.add((sup, ticks))

    def supervisor_pid(self, cid: str) -> int | None:
        try:
            text = Path(self.state_dir(cid), "supervisor.pid").read_text()
        except OSError:
            return None
        return int(text.split()[0])

    # --- reading ---

    def container(self, ref: str) -> Container | None:
        world, _ = load_world(self.redis, self.keys)
        if ref in world.containers:
            return world.containers[ref]
        try:
            return find_container(world, ref)
        except MoorError:
            return None

    def inspect(self, ref: str) -> dict[str, Any]:
        world, _ = load_live(self.redis, self.keys)
        return inspect_container(world, find_container(world, ref), time.time_ns())

    def events(self, cid: str | None = None, after: str = "") -> list[tuple[str, e.EventRecord]]:
        """Return the journal's records (of one container; after a stream id), in order."""
        out = []
        for entry_id, fields in self.redis.xrange(self.keys.events,
                                                  min=f"({after}" if after else "-"):
            record = CODEC.record(fields[b"d"])
            if cid is None or record.meta.container_id == cid:
                out.append((entry_id.decode(), record))
        return out

    def last_event_id(self) -> str:
        tail = self.redis.xrevrange(self.keys.events, count=1)
        return tail[0][0].decode() if tail else "0-0"

    def wait_event(self, cid: str, after: str, kind: type[T] | tuple[type[T], ...],
                   timeout: float = 30) -> T:
        """Block until the container records an event of kind after the cursor; return it."""
        try:
            _, record = self.client.wait_event(cid, after, lambda ev: isinstance(ev, kind),
                                               timeout)
        except MoorError as err:
            raise AssertionError(f"{err.message}\n{self.log_tail('worker')}") from None
        event: T = record.event  # type: ignore[assignment]  # the match checked its type
        return event

    def netns_path(self, cid: str) -> str:
        """Return where the engine's worker bind-mounts the container's netns."""
        from workers.net import netconf

        return netconf.netns_path(cid, host_engine_id(self))

    def cgroup_part(self, cid: str) -> str:
        """Return the container's cgroup path below the hierarchy root."""
        parent = self.env.get("MOOR_CGROUP_PARENT") or default_cgroup_parent(
            host_engine_id(self))
        return f"{parent.strip('/')}/{cid}"

    def container_dir(self, cid: str) -> str:
        return os.path.join(self.data_root, "containers", cid)

    def state_dir(self, cid: str) -> str:
        return os.path.join(self.container_dir(cid), "state")

    def nsenter(self, cid: str, *argv: str, check: bool = True) -> str:
        """Run a command inside every namespace of the container's process."""
        ctr = self.container(cid)
        assert ctr is not None and ctr.running and ctr.pid, f"{cid[:12]} is not running"
        done = subprocess.run(["nsenter", "-t", str(ctr.pid), "-a", *argv], capture_output=True,
                              text=True, timeout=30)
        if check and done.returncode != 0:
            raise AssertionError(f"nsenter {' '.join(argv)} exited {done.returncode}: "
                                 f"{done.stderr}")
        return done.stdout

    # --- leaks ---

    def leaks(self, cid: str) -> list[str]:
        """Return every host resource the container still holds (empty: none)."""
        found = []
        short = cid[:12]
        with open("/proc/self/mountinfo") as f:
            found += [f"mount {line.split()[4]}" for line in f if cid in line]
        # Any name carrying the id: this engine's (moor-<engine>-<cid>) or an older one's.
        found += [f"netns /run/netns/{name}" for name in _netns_names() if cid in name]
        if os.path.lexists(f"/sys/class/net/mv{short}"):
            found.append(f"veth mv{short}")
        rules = [line for line in _sh("iptables-save").splitlines() if cid in line]
        found += [f"iptables {line}" for line in rules]
        groups = set(glob.glob(f"/sys/fs/cgroup/*/moorage/{cid}"))
        groups |= set(glob.glob(f"/sys/fs/cgroup/moorage/{cid}"))
        groups |= set(glob.glob(f"/sys/fs/cgroup/*/moorage/*/{cid}"))  # moorage/<engine>
        groups |= set(glob.glob(f"/sys/fs/cgroup/moorage/*/{cid}"))
        found += [f"cgroup {g}" for g in sorted(groups)]
        found += [f"process {pid}" for pid, ticks in sorted(self.track(cid).pids)
                  if start_ticks(pid) == ticks]
        if os.path.lexists(self.container_dir(cid)):
            found.append(f"directory {self.container_dir(cid)}")
        return found

    def our_processes(self) -> list[int]:
        """Return live processes started with this engine's key prefix (reducer, worker,
        supervisors, which the worker forks), other than the test process itself."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                if proc_env(int(entry)).get("MOOR_PREFIX") == self.env["MOOR_PREFIX"] \
                        and start_ticks(int(entry)) is not None:
                    pids.append(int(entry))
        return pids

    def remove_all(self) -> list[str]:
        """Force-remove every container the engine knows; return the errors."""
        errors = []
        world, _ = load_world(self.redis, self.keys)
        for cid in list(world.containers):
            try:
                self.client.remove(cid, force=True)
            except MoorError as err:
                errors.append(f"rm -f {cid[:12]}: {err.message}")
        return errors


def _netns_names() -> list[str]:
    try:
        return os.listdir("/run/netns")
    except FileNotFoundError:
        return []


def host_engine_id(engine: Engine) -> str:
    """Return the id the engine's programs give their host resources (engine.config's rule)."""
    return engine.env.get("MOOR_ENGINE_ID") or derive_engine_id(engine.data_root,
                                                                engine.keys.prefix)


def engine_host_leftovers(engine: Engine) -> list[str]:
    """Return the engine-wide host resources named for it: chains, hooks, cgroup parent."""
    eid = host_engine_id(engine)
    found = [f"iptables {line}" for line in _sh("iptables-save").splitlines()
             if f"MOOR-DNAT-{eid}" in line or f"MOOR-POSTROUTING-{eid}" in line
             or f"MOOR-FORWARD-{eid}" in line]
    if not engine.env.get("MOOR_CGROUP_PARENT"):
        parent = default_cgroup_parent(eid)
        found += [f"cgroup parent {d}" for d in glob.glob(f"/sys/fs/cgroup/*/{parent}")
                  + glob.glob(f"/sys/fs/cgroup/{parent}")]
    return found


def moor_run(engine: Engine, *args: str) -> str:
    """`moor run -d ARGS`; return the new container's id (tracked for the leak checks)."""
    cid = engine.moor("run", "-d", *args).stdout.strip().splitlines()[-1]
    assert len(cid) == 64, cid
    engine.track(cid)
    engine.note_pids(cid)
    return cid


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop one of our programs by PID: SIGTERM, then SIGKILL after a grace period."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _delete_keys(redis: Any, keys: Keys) -> None:
    """Delete the engine's keys and its rq queue's keys (workers included)."""
    for pattern in (f"{keys.prefix}:*", f"rq:*{keys.queue}*"):
        batch = list(redis.scan_iter(match=pattern, count=1000))
        if batch:
            redis.delete(*batch)
    for key in list(redis.scan_iter(match="rq:worker:*", count=1000)):
        if redis.type(key) == b"hash" and keys.queue.encode() in (redis.hget(key, "queues")
                                                                 or b""):
            redis.delete(key, key + b":executions")
    redis.srem("rq:queues", f"rq:queue:{keys.queue}")


def _session_leaks(engine: Engine) -> list[str]:
    """Return what the whole session left on the host after teardown."""
    found = []
    root = os.path.realpath(engine.data_root)
    with open("/proc/mounts") as f:
        found += [f"mount {line.split()[1]}" for line in f if root in line]
    if os.path.exists(f"/sys/class/net/{engine.bridge}"):
        found.append(f"bridge {engine.bridge}")
    found += [f"iptables {line}" for line in _sh("iptables-save").splitlines()
              if f"moor-bridge:{engine.bridge}" in line]
    found += engine_host_leftovers(engine)
    found += [f"live process {pid} with MOOR_PREFIX={engine.env['MOOR_PREFIX']}"
              for pid in engine.our_processes()]
    for cid in engine.tracked:
        found += [f"{cid[:12]}: {leak}" for leak in engine.leaks(cid)]
    if os.path.exists(engine.data_root):
        found.append(f"data root {engine.data_root}")
    left = list(engine.redis.scan_iter(match=f"{engine.keys.prefix}:*", count=1000))
    if left:
        found.append(f"redis keys {left[:5]}")
    return found


def program_env(redis_url: str, data_root: str, prefix: str, subnet: str, bridge: str,
                **extra: str) -> dict[str, str]:
    """Return the environment of a test engine's programs: none of ours (MOOR_*) inherited,
    so each derives its own identity from what is given here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOOR_")}
    env.update(MOOR_REDIS_URL=redis_url, MOOR_DATA_ROOT=data_root, MOOR_PREFIX=prefix,
               MOOR_SUBNET=subnet, MOOR_BRIDGE=bridge, PYTHONUNBUFFERED="1", **extra)
    return env


def require_busybox() -> str:
    """Return the busybox binary the test image is built from; fail loudly without it."""
    busybox = find_busybox()
    if busybox is None:
        missing_capability("/bin/busybox (apt-get install busybox-static)")
        raise AssertionError("unreachable")
    return busybox


def new_engine(redis_url: str, token: str, workdir_prefix: str, prefix: str, bridge: str,
               actor: str) -> Engine:
    """An engine's handle (nothing started): its own work dir and data root, key prefix,
    bridge and subnet, on the given Redis server."""
    workdir = tempfile.mkdtemp(prefix=workdir_prefix)
    data_root = os.path.join(workdir, "data")
    os.makedirs(data_root)
    subnet = pick_subnet(token)
    env = program_env(redis_url, data_root, prefix, subnet, bridge)
    redis = redislib.Redis.from_url(redis_url)
    keys = keys_for(prefix=prefix)
    return Engine(token=token, env=env, redis=redis, keys=keys,
                  client=Client(redis, keys, actor=actor, timeout=30), data_root=data_root,
                  workdir=workdir, bridge=bridge, subnet=subnet)


@pytest.fixture(scope="session")
def moor_engine(redis_server: RedisServer) -> Iterator[Engine]:
    """Start one isolated engine for the session; tear it down and prove nothing is left."""
    check_capabilities()
    busybox = require_busybox()
    from workers.net.netconf import BridgeConfig

    token = secrets.token_hex(3)
    engine = new_engine(redis_server.url, token, f"moor-e2e-{token}-", f"moore2e{token}",
                        f"moortb{token}", "e2e")
    workdir = engine.workdir
    cfg = BridgeConfig(name=engine.bridge, subnet=engine.subnet)
    try:
        engine.start_reducer()
        # The reducer defines the default network from MOOR_SUBNET/MOOR_BRIDGE once it leads.
        wait_for(lambda: _networks(engine), 30,
                 "the reducer to define the default network", lambda: engine.log_tail("reducer"))
        engine.start_worker()
        tar = busybox_rootfs_tar(os.path.join(workdir, "busybox.tar"), busybox)
        engine.image_id = engine.moor("image", "import", tar, "busybox:latest").stdout.strip()
        assert engine.image_id.startswith("sha256:"), engine.image_id
        yield engine
    finally:
        problems = _teardown(engine, cfg)
        if problems:
            pytest.fail("engine teardown: " + "; ".join(problems) + "\n"
                        + engine.log_tail("worker") + "\n" + engine.log_tail("reducer"))


class Steps:
    """Teardown steps that each run regardless of the others: `step(what, fn)` runs fn and
    records in `problems` what it raised (of `catch`) or the list it returned."""

    def __init__(self, catch: type[BaseException] = Exception) -> None:
        self.problems: list[str] = []
        self.catch = catch

    def __call__(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            result = fn()
        except self.catch as exc:  # keep going: one failure must not leak the rest
            self.problems.append(f"{what}: {type(exc).__name__}: {exc}")
            return
        if isinstance(result, list):
            self.problems.extend(f"{what}: {item}" for item in result)


def _teardown(engine: Engine, cfg: Any) -> list[str]:
    """Remove every container, stop both programs, release the bridge, drop the data root
    and the keys; return what went wrong and what is left (every step runs regardless)."""
    from workers.net import network, portmap
    from workers.proc import cgroups

    step = Steps()
    problems = step.problems

    if engine.reducer is not None and engine.reducer.poll() is None:
        step("start worker", engine.ensure_worker)
        step("rm -f", engine.remove_all)
    for proc in (engine.worker, engine.reducer):
        if proc is not None:
            step(f"stop pid {proc.pid}", functools.partial(stop_process, proc))
    step("release bridge", lambda: network.release_bridge(cfg))
    eid = host_engine_id(engine)
    step("release chains", lambda: portmap.release_chains(cfg, eid))
    if not engine.env.get("MOOR_CGROUP_PARENT"):
        step("release cgroup parent",
             lambda: cgroups.release_parent(default_cgroup_parent(eid)))
    step("delete keys", lambda: _delete_keys(engine.redis, engine.keys))
    root = os.path.realpath(engine.data_root)
    if any(root in line for line in Path("/proc/mounts").read_text().splitlines()):
        problems.append(f"{root} still has mounts: not deleted")
    else:
        step("delete workdir", lambda: shutil.rmtree(engine.workdir))
    step("leak check", lambda: _session_leaks(engine))
    engine.redis.close()
    return problems


def _networks(engine: Engine) -> bool:
    world, _ = load_world(engine.redis, engine.keys)
    return bool(world.networks)


@pytest.fixture
def engine(moor_engine: Engine) -> Iterator[Engine]:
    """The session's engine; afterwards, rm -f what the test left and prove it leaked nothing."""
    before = set(moor_engine.tracked)
    cursor = moor_engine.last_event_id()
    yield moor_engine
    # Every container the journal saw created, whoever created it (CLI or client).
    for _, record in moor_engine.events(after=cursor):
        if isinstance(record.event, e.ContainerCreated):
            moor_engine.track(record.meta.container_id)
    moor_engine.ensure_worker()
    errors = moor_engine.remove_all()
    leaks = []
    for cid in set(moor_engine.tracked) - before:
        found = wait_for_clean(moor_engine, cid)
        leaks += [f"{cid[:12]}: {leak}" for leak in found]
    # With every container gone, only the reducer and the worker may carry our prefix:
    # anything else is a supervisor (forked by the worker) that outlived its container.
    programs = {p.pid for p in (moor_engine.reducer, moor_engine.worker) if p is not None}
    deadline = time.monotonic() + 5
    while (strays := set(moor_engine.our_processes()) - programs) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    leaks += [f"live supervisor process {pid}" for pid in sorted(strays)]
    assert not errors and not leaks, "; ".join(errors + leaks)


def wait_for_clean(engine: Engine, cid: str, timeout: float = 10) -> list[str]:
    """Return the container's leaks once they stop changing (processes take a moment)."""
    deadline = time.monotonic() + timeout
    while (found := engine.leaks(cid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def http_get(host: str, port: int, path: str = "/", timeout: float = 5) -> tuple[int, str]:
    """Send one HTTP/1.0 GET and return (status, body); bounded in time."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, body.decode(errors="replace")


def free_port() -> int:
    """Return a TCP port nothing listens on (for a published host port)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def ps_status(engine: Engine, cid: str) -> str:
    """Return the container's STATUS as `moor ps -a` prints it."""
    out = engine.moor("ps", "-a", "--no-trunc", "--format", "json").stdout
    for line in out.splitlines():
        item = json.loads(line)
        if item["Id"] == cid:
            return str(item["Status"])
    raise AssertionError(f"{cid[:12]} is not listed by moor ps -a: {out}")
