"""What each Redis persistence mode costs the engine: `python -m bench.durability`.

For every mode (AOF with fsync always, AOF everysec — the embedded default — and no
AOF), on a private redis-server: the reducer's end-to-end throughput on the control mix
(commands preloaded, then folded through Redis), and the round trip of one command
through a running reducer (client submit → result; p50 / p99 over sequential creates).
The README's durability table states what each mode keeps after which crash.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import redis

from bench.engine import bench_e2e
from commands.client import Client
from engine.keys import keys_for
from events.specs import ContainerConfig
from tests.conftest import start_redis
from tests.harness import ReducerThread, seed

MODES = {  # name: (appendonly, appendfsync)
    "AOF always": ("yes", "always"),
    "AOF everysec": ("yes", "everysec"),
    "no AOF": ("no", "everysec"),
}


def _round_trips(r: redis.Redis, n: int) -> tuple[float, float]:
    keys = keys_for(prefix=f"bench-dur-{os.getpid()}-{time.monotonic_ns()}")
    client = Client(r, keys, timeout=10)
    samples = []
    with ReducerThread(r, keys, block_ms=50):
        seed(client)
        for i in range(n):
            t0 = time.perf_counter()
            client.create(ContainerConfig(image="busybox", cmd=("true",)), name=f"d{i}")
            samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3, help="medians over this many runs")
    args = parser.parse_args()
    print(f"{'mode':14s} {'commands/s':>12s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, (appendonly, fsync) in MODES.items():
        rates, p50s, p99s = [], [], []
        for run in range(args.runs):
            workdir = tempfile.mkdtemp(prefix="moor-bench-dur-")
            server = start_redis(workdir)
            try:
                r = redis.Redis.from_url(server.url)
                r.config_set("appendonly", appendonly)
                r.config_set("appendfsync", fsync)
                keys = keys_for(prefix=f"bench-dur-e2e-{run}")
                rates.append(bench_e2e(r, keys, args.commands, "control")
                             ["e2e control commands/s"])
                p50, p99 = _round_trips(r, args.round_trips)
                p50s.append(p50)
                p99s.append(p99)
            finally:
                server.proc.terminate()
                server.proc.wait(10)
                shutil.rmtree(workdir, ignore_errors=True)
        print(f"{name:14s} {statistics.median(rates):12,.0f} {statistics.median(p50s):8.2f} "
              f"{statistics.median(p99s):8.2f}")


if __name__ == "__main__":
    main()
