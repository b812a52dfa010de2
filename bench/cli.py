"""CLI latency benchmark (on demand): wall time of `moor ps` and `moor start`, and where
the import time goes.

    sudo python -m bench.cli [--runs 21]

Starts a private engine (redis-server on a free port, reducer, worker: bench.host), imports
a busybox rootfs, creates containers, then times whole `moor` processes, as a user runs
them:

- `moor ps` with one running and three created containers;
- `moor start X` of a running container: Docker's 304 path, a full round trip through the
  reducer but no host work (the CLI's own cost);
- `moor start X` of a stopped container: a real start, the worker's mount, netns, veth and
  fork included (each run stops it first, untimed).

The floors are printed beside them: the interpreter alone (`python -c pass`, site included)
and `python -c "import redis"`. Project modules are timed with bytecode caches (a private
PYTHONPYCACHEPREFIX, PYTHONDONTWRITEBYTECODE dropped), as an installed moorage has them.
The `moor` console script next to the interpreter is used when there is one (a pyenv shim
on PATH would add a bash start-up to every call).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis

from bench.host import percentile, private_engine
from commands.client import Client
from engine.keys import keys_for
from events.specs import ContainerConfig, HostConfig

RUNTIME = ("rq", "pyroute2", "aiohttp", "workers", "moor.api")
STARTUP = "(interpreter start-up: site, .pth files)"


def moor_argv() -> list[str]:
    """Return how to run `moor`: the console script beside the interpreter, else -m."""
    script = os.path.join(os.path.dirname(sys.executable), "moor")
    try:
        with open(script, "rb") as f:
            if f.read(2) == b"#!":
                return [script]
    except OSError:
        pass
    return [sys.executable, "-m", "moor.cli"]


def wall_ms(argv: Sequence[str], env: dict[str, str], runs: int,
            before: object = None) -> list[float]:
    """Run argv `runs` times; return each run's wall time in ms (calls `before` untimed)."""
    times = []
    for _ in range(runs):
        if callable(before):
            before()
        t0 = time.perf_counter()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        times.append((time.perf_counter() - t0) * 1000)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr!r}")
    return times


def import_breakdown(words: Sequence[str], env: dict[str, str]
                     ) -> tuple[Counter[str], int, set[str]]:
    """Return the import time (us) of `moor WORDS` per owner, the total, and the names of
    every module it imported.

    A standard-library module counts for the package that imported it (asyncio, ssl and
    email under redis: redis-py pulls them in), and everything under `site` or imported
    before the program counts as the interpreter's start-up.
    """
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "moor.cli", *words],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=True)
    pending: dict[int, list[tuple[str, int, list[Any]]]] = {}
    names: set[str] = set()
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|( +)(\S+)", line)
        if match:  # a module's line follows its children's (deeper) lines
            depth = (len(match.group(2)) - 1) // 2
            node = (match.group(3), int(match.group(1)), pending.pop(depth + 1, []))
            pending.setdefault(depth, []).append(node)
            names.add(match.group(3))
    per: Counter[str] = Counter()

    def walk(node: tuple[str, int, list[Any]], owner: str) -> None:
        name, us, children = node
        top = name.split(".")[0]
        if owner != STARTUP and top not in sys.stdlib_module_names:
            owner = top
        per[owner] += us
        for child in children:
            walk(child, owner)

    for root in pending.get(0, []):
        stdlib = root[0].split(".")[0] in sys.stdlib_module_names
        walk(root, STARTUP if stdlib and root[0] != "runpy" else "")
    return per, sum(per.values()), names


def report(label: str, times: list[float]) -> None:
    print(f"{label:<44} median {statistics.median(times):6.1f} ms   "
          f"p90 {percentile(times, 0.9):6.1f}   min {min(times):6.1f}   (n={len(times)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.cli starts a worker: run it as root (sudo)")
    from tests.imagebuild import busybox_rootfs_tar

    with private_engine("10.213.236.0/24") as engine:
        env = {k: v for k, v in engine.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = os.path.join(engine.work, "pycache")
        moor = moor_argv()
        tar = busybox_rootfs_tar(f"{engine.work}/busybox.tar")
        subprocess.run([*moor, "image", "import", tar, "busybox"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        client = Client(redis.Redis.from_url(engine.redis_url),
                        keys_for(prefix=engine.env["MOOR_PREFIX"]), timeout=60)
        config = ContainerConfig(image="busybox", cmd=("sleep", "600"))
        made: list[str] = []
        try:
            measure(args.runs, moor, env, engine.env["MOOR_PREFIX"], engine.redis_url,
                    client, config, made)
        finally:  # a failed measure must not leave running containers behind
            for cid in made:
                client.remove(cid, force=True)


def measure(runs: int, moor: list[str], env: dict[str, str], prefix: str, url: str,
            client: Client, config: ContainerConfig, made: list[str]) -> None:
    """Create the containers (into `made`), time the commands, print the imports."""
    running = client.create(config, HostConfig(), name="bench-running")
    made.append(running)
    client.start(running)
    cycled = client.create(config, HostConfig(), name="bench-cycled")
    made.append(cycled)
    for i in range(2):
        made.append(client.create(config, HostConfig(), name=f"bench-created-{i}"))
    print(f"moor = {' '.join(moor)}; {runs} runs each; private engine {prefix} on {url}")
    wall_ms([*moor, "ps"], env, 2)  # write the bytecode caches
    report("python -c pass (interpreter + site)", wall_ms([sys.executable, "-c", "pass"],
                                                          env, runs))
    report('python -c "import redis"', wall_ms([sys.executable, "-c", "import redis"],
                                               env, runs))
    report("moor ps", wall_ms([*moor, "ps"], env, runs))
    report("moor start (already running: 304)", wall_ms([*moor, "start", running], env, runs))
    report("moor start (stopped -> running, worker)", wall_ms(
        [*moor, "start", cycled], env, runs, before=lambda: client.stop(cycled, 0)))
    _, _, started = import_breakdown(["start", running], env)
    per, total, modules = import_breakdown(["ps"], env)
    print(f"\nimports of `moor ps` (-X importtime, inflated by the measurement): "
          f"{total / 1000:.1f} ms; the standard library counts for whoever imports it")
    for name, us in per.most_common(12):
        print(f"  {name or '(other)':<44} {us / 1000:6.1f} ms  {100 * us / total:4.1f}%")
    for words, names in (("moor ps", modules), ("moor start", started)):
        loaded = sorted(m for m in names if any(m == r or m.startswith(r + ".")
                                                 for r in RUNTIME))
        print(f"runtime modules ({', '.join(RUNTIME)}) imported by `{words}`: "
              f"{', '.join(loaded) or 'none'}")

if __name__ == "__main__":
    main()
