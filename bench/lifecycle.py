"""Lifecycle benchmark (on demand, root): create->running latency and run/rm wall times.

    sudo python -m bench.lifecycle [--runs 100] [--parallel 8]

Starts a private redis-server (AOF everysec), a reducer and a worker as subprocesses on a
private bridge and subnet, imports a busybox rootfs, then measures through the Python
client (the `moor` CLI adds its own interpreter start-up, measured separately).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time

import redis

from bench.host import percentile, private_engine
from commands.client import Client
from engine.keys import keys_for
from events.specs import ContainerConfig, HostConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--latency-samples", type=int, default=30)
    args = parser.parse_args()
    from tests.imagebuild import busybox_rootfs_tar

    with private_engine("10.213.240.0/22") as engine:
        tar = busybox_rootfs_tar(f"{engine.work}/busybox.tar")
        subprocess.run([sys.executable, "-m", "moor.cli", "image", "import", tar,
                        "busybox"], env=engine.env, check=True, stdout=subprocess.DEVNULL)
        r = redis.Redis.from_url(engine.redis_url)
        client = Client(r, keys_for(prefix=engine.env["MOOR_PREFIX"]), timeout=60)
        config = ContainerConfig(image="busybox", cmd=("sleep", "300"))
        host = HostConfig()

        def run_rm() -> None:
            cid = client.create(config, host)
            client.start(cid)
            client.remove(cid, force=True)

        run_rm()  # warm up: bridge, chains, caches
        latency = []
        for _ in range(args.latency_samples):
            t0 = time.perf_counter()
            cid = client.create(config, host)
            client.start(cid)
            latency.append((time.perf_counter() - t0) * 1000)
            client.remove(cid, force=True)
        t0 = time.perf_counter()
        for _ in range(args.runs):
            run_rm()
        sequential = time.perf_counter() - t0

        def worker(n: int) -> None:
            for _ in range(n):
                run_rm()
        share = [args.runs // args.parallel + (i < args.runs % args.parallel)
                 for i in range(args.parallel)]
        threads = [threading.Thread(target=worker, args=(n,)) for n in share]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        parallel = time.perf_counter() - t0

        cli = []
        for _ in range(5):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "moor.cli", "run", "-d", "busybox",
                                  "sleep", "300"], env=engine.env, check=True, capture_output=True)
            cli.append((time.perf_counter() - t0) * 1000)
            client.remove(out.stdout.decode().strip(), force=True)
        print(f"create->running (client)  p50 {statistics.median(latency):7.1f} ms   "
              f"p95 {percentile(latency, 0.95):7.1f} ms   (n={len(latency)})")
        print(f"{args.runs} x (run -d, rm -f) sequential   {sequential:6.2f} s")
        print(f"{args.runs} x (run -d, rm -f) {args.parallel} parallel   {parallel:6.2f} s")
        print(f"`moor run -d` CLI process (incl. Python start-up) median "
              f"{statistics.median(cli):7.1f} ms")
        from bench.netstart import compare, report

        report(*compare(client, args.latency_samples))  # issue 11: user network + DNS


if __name__ == "__main__":
    main()
