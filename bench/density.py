"""Density (on demand, root): memory per running container, the engine's fixed memory,
and the supervisor's fork.

    sudo python3 -m bench.density [--containers 100] [--samples 5] [--peer]
                                  [--fork-from-worker] [--fork-rounds 20]

Starts a private redis-server on a free port and `moor up` on it (MOOR_REDIS_URL) (reducer,
worker with its supervisor zygote, Docker API), imports a busybox rootfs and runs N
`sleep` containers (`--network none`, as the peer's), then samples the proportional set
size (Pss in /proc/PID/smaps_rollup: shared pages split between their users) of every
process of the engine:

- per container: every process carrying the engine's MOOR_PREFIX that is not one of its
  programs (the supervisors; the zygote, which hides it, counts as fixed), over N;
- fixed: `moor up` (the wrapper), reducer, worker, API and zygote; Redis apart.

With --peer, a private dockerd (bench.peer) runs the same N containers: per container,
the containerd-shim processes of its namespace over N; fixed, dockerd + containerd.

Fork: in this process, grown to a worker's size by importing what the worker imports,
the time to get a supervisor forked, from a zygote (send the request, get its pid back)
and here (os.fork of this process), over --fork-rounds spawns of `sleep` each.
Medians everywhere; everything is stopped by PID and cleaned up at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MIB = 1024.0
DISABLE_ZYGOTE = "MOOR_SUPERVISOR_FORK"  # workers.proc.zygote.DISABLE


def pss_kib(pid: int) -> int:
    """Return a process's Pss in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(i.split("=", 1) for i in raw.decode(errors="replace").split("\0") if "=" in i)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _median_samples(sample: Callable[[], dict[str, float]], n: int) -> dict[str, float]:
    """Take n samples a second apart; return each figure's median."""
    taken: list[dict[str, float]] = []
    for i in range(n):
        if i:
            time.sleep(1.0)
        taken.append(sample())
    return {key: statistics.median(s[key] for s in taken) for key in taken[0]}


# --- moorage ----------------------------------------------------------------------------


@contextlib.contextmanager
def private_moor_up(work: str, fork_from_worker: bool = False) -> Iterator[dict[str, Any]]:
    """Run `moor up` on a private redis-server; yield its env, data root and Redis pid."""
    from tests.conftest import start_redis  # sets this process's MOOR_ENGINE_ID: a private id

    server = start_redis(work)
    tag = uuid.uuid4().hex[:6]
    root = os.path.join(work, "root")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOOR_")}
    env.update(MOOR_REDIS_URL=server.url, MOOR_DATA_ROOT=root, MOOR_PREFIX=f"moordens{tag}",
               MOOR_SUBNET="10.213.236.0/22", MOOR_BRIDGE=f"moordn{tag}",
               MOOR_ENGINE_ID=os.environ["MOOR_ENGINE_ID"], MOOR_METRICS_ADDR="off",
               PYTHONUNBUFFERED="1")
    if fork_from_worker:  # the worker forks its supervisors itself (before issue 13)
        env[DISABLE_ZYGOTE] = "worker"
    log = open(os.path.join(work, "up.log"), "wb")  # noqa: SIM115
    up = subprocess.Popen([sys.executable, "-m", "moor.cli", "up"],
                          env=env, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _up_children(root):
            if up.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("moor up did not start:\n"
                                 + Path(log.name).read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        yield {"env": env, "root": root, "up": up.pid, "redis": server.pid,
               "redis_url": server.url}
    finally:
        up.send_signal(signal.SIGTERM)  # our own child, by PID: it stops its children
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        log.close()
        from bench.host import release_engine

        release_engine(env, server)


def _up_children(root: str) -> list[int]:
    """The pids `moor up` recorded for its programs (reducer, worker, API), once it has."""
    try:
        record = json.loads(Path(root, "up.json").read_text())
    except (OSError, ValueError):
        return []
    return [entry[0] for entry in record.get("children", [])]


def run_moorage(work: str, n: int, samples: int, fork_from_worker: bool = False
                ) -> dict[str, float]:
    from commands.client import Client
    from engine.keys import keys_for
    from events.specs import ContainerConfig, HostConfig
    from tests.imagebuild import busybox_rootfs_tar

    with private_moor_up(work, fork_from_worker) as up:
        env, root = up["env"], up["root"]
        tar = busybox_rootfs_tar(os.path.join(work, "busybox.tar"))
        subprocess.run([sys.executable, "-m", "moor.cli", "image", "import", tar, "busybox"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        import redis

        client = Client(redis.Redis.from_url(up["redis_url"]),
                        keys_for(prefix=env["MOOR_PREFIX"]), timeout=120)
        config = ContainerConfig(image="busybox", cmd=("sleep", "3600"))
        host = HostConfig(network_mode="none")
        started = time.perf_counter()
        cids = []
        try:
            for _ in range(n):
                cid = client.create(config, host)
                client.start(cid)
                cids.append(cid)
            took = time.perf_counter() - started
            programs = {"moor up": up["up"]}
            for pid in _up_children(root):
                programs[cmdline(pid).split(":")[0] or str(pid)] = pid
            prefix = env["MOOR_PREFIX"]

            def sample() -> dict[str, float]:
                ours, zygotes = [], []
                for pid in pids():
                    penv = environ(pid)
                    if penv.get("MOOR_ZYGOTE") == prefix:
                        zygotes.append(pid)
                    elif penv.get("MOOR_PREFIX") == prefix and pid not in programs.values():
                        ours.append(pid)
                sups = [pss_kib(p) for p in ours]
                figures = {name: pss_kib(pid) / MIB for name, pid in programs.items()}
                figures["zygote"] = sum(pss_kib(p) for p in zygotes) / MIB
                figures["fixed"] = sum(v for k, v in figures.items())
                figures["per container"] = sum(sups) / MIB / n
                figures["supervisor median"] = statistics.median(sups) / MIB if sups else 0
                figures["supervisor count"] = len(sups)
                figures["redis-server"] = pss_kib(up["redis"]) / MIB
                return figures

            figures = _median_samples(sample, samples)
            figures["start of N containers, s"] = took
            return figures
        finally:
            for cid in cids:
                with contextlib.suppress(Exception):
                    client.remove(cid, force=True)


# --- the peer ---------------------------------------------------------------------------


def run_docker(n: int, samples: int) -> dict[str, float]:
    from bench.peer import load_busybox, private_dockerd

    with private_dockerd() as host:
        denv = dict(os.environ, DOCKER_HOST=host)
        work = os.path.dirname(host.removeprefix("unix://"))
        dockerd = int(Path(work, "dockerd.pid").read_text())
        namespace = f"moorbench{os.getpid()}"
        tag = load_busybox(host)
        started = time.perf_counter()
        try:
            for _ in range(n):
                subprocess.run(["docker", "run", "-d", "--network", "none", tag, "sleep", "3600"],
                               env=denv, check=True, stdout=subprocess.DEVNULL)
            took = time.perf_counter() - started

            def sample() -> dict[str, float]:
                shims, containerd = [], []
                for pid in pids():
                    cmd = cmdline(pid)
                    if "containerd-shim" in cmd and f"-namespace {namespace}" in cmd:
                        shims.append(pid)
                    elif cmd.startswith("containerd ") and work in cmd:
                        containerd.append(pid)
                per = [pss_kib(p) for p in shims]
                fixed = {"dockerd": pss_kib(dockerd) / MIB,
                         "containerd": sum(pss_kib(p) for p in containerd) / MIB}
                fixed["fixed"] = fixed["dockerd"] + fixed["containerd"]
                fixed["per container"] = sum(per) / MIB / n
                fixed["shim median"] = statistics.median(per) / MIB if per else 0
                fixed["shim count"] = len(per)
                return fixed

            figures = _median_samples(sample, samples)
            figures["start of N containers, s"] = took
            return figures
        finally:
            ids = subprocess.run(["docker", "ps", "-aq"], env=denv, capture_output=True,
                                 text=True).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], env=denv, capture_output=True)


# --- fork time ----------------------------------------------------------------------------


def fork_times(rounds: int) -> dict[str, float]:
    """Median ms to get a supervisor forked: from this worker-sized process, from a zygote."""
    from bench.spawn import _rootfs

    parent = f"moorage/bench-{uuid.uuid4().hex[:8]}"
    os.environ["MOOR_CGROUP_PARENT"] = parent
    import workers.jobs  # noqa: F401 - grow this process to a worker's size
    import workers.service  # noqa: F401
    from workers import nsutil
    from workers.proc import cgroups, process, spawn, zygote
    from workers.proc.spec import ProcessSpec

    nsutil.set_child_subreaper(True)  # as the worker: B is forked at once, not double
    root, work = _rootfs(), tempfile.mkdtemp(prefix="moor-bench-density-")
    times: dict[str, list[float]] = {"worker": [], "zygote": [], "spawn worker": [],
                                     "spawn zygote": []}  # fork (as below), whole spawn
    made: list[str] = []

    mode = "worker"

    def fork_here(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return here(*args, **kwargs)
        finally:
            times["worker"].append((time.perf_counter() - t0) * 1000)

    def fork_there(*args: Any, **kwargs: Any) -> Any:
        if mode == "worker":
            return None  # as without a zygote: spawn forks here
        t0 = time.perf_counter()
        try:
            return there(*args, **kwargs)
        finally:
            times["zygote"].append((time.perf_counter() - t0) * 1000)

    here, there = spawn._fork_here, zygote.fork_supervisor
    spawn._fork_here = fork_here  # type: ignore[assignment]
    zygote.fork_supervisor = fork_there  # type: ignore[assignment]
    rss = 0
    try:
        zygote.start()
        for _ in range(rounds):
            for mode in ("worker", "zygote"):  # interleaved: load drifts hit both alike
                cid = f"benchd{len(made):05d}{uuid.uuid4().hex[:6]}"
                made.append(cid)
                state = os.path.join(work, cid)
                spec = ProcessSpec(container_id=cid, rootfs=root, argv=("sleep", "30"),
                                   env=("PATH=/bin",), state_dir=state,
                                   log_path=os.path.join(state, "log"), hostname="bench")
                t0 = time.perf_counter()
                run = spawn.spawn(spec)
                times[f"spawn {mode}"].append((time.perf_counter() - t0) * 1000)
                os.kill(run.pid, signal.SIGKILL)
        with open("/proc/self/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    finally:
        spawn._fork_here, zygote.fork_supervisor = here, there  # type: ignore[assignment]
        zygote.stop()
        time.sleep(0.5)
        process.reap_children()
        for cid in made:
            cgroups.release_cgroup(cid)
        cgroups.release_parent(parent)
        shutil.rmtree(root)
        shutil.rmtree(work, ignore_errors=True)
    out = {f"{k} ms": statistics.median(v) for k, v in times.items() if v}
    out["caller RSS MiB"] = rss / MIB
    return out


def _show(title: str, figures: dict[str, float]) -> None:
    print(title)
    for key, value in figures.items():
        unit = "" if "count" in key or key.endswith((" s", "ms", "MiB")) else " MiB"
        print(f"  {key:28s} {value:9.2f}{unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--samples", type=int, default=5, help="PSS samples, 1 s apart")
    parser.add_argument("--fork-rounds", type=int, default=20)
    parser.add_argument("--peer", action="store_true",
                        help="also run the containers on a private dockerd (Debian docker.io)")
    parser.add_argument("--fork-from-worker", action="store_true",
                        help="no zygote: the worker forks the supervisors (the cost before)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.density needs root (containers, cgroups)")
    work = tempfile.mkdtemp(prefix="moor-bench-density-")
    try:
        ours = run_moorage(work, args.containers, args.samples, args.fork_from_worker)
        how = "supervisors forked by the worker" if args.fork_from_worker else "zygote"
        _show(f"moorage ({how}), {args.containers} running containers (PSS, median of "
              f"{args.samples} samples):", ours)
        if args.peer:
            peer = run_docker(args.containers, args.samples)
            _show(f"dockerd 20.10 + containerd, {args.containers} running containers:", peer)
            print(f"per container: moorage {ours['per container']:.2f} MiB, dockerd "
                  f"{peer['per container']:.2f} MiB; fixed: moorage {ours['fixed']:.1f} MiB, "
                  f"dockerd {peer['fixed']:.1f} MiB")
        else:
            print("dockerd: not measured (add --peer: a private dockerd from Debian's docker.io)")
        _show(f"supervisor fork, median of {args.fork_rounds}:", fork_times(args.fork_rounds))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
