"""Start latency on a user-defined network with embedded DNS vs the default bridge (issue #11).

    sudo python -m bench.netstart [--samples 30]

Interleaves the two kinds of create->running through the Python client so drift hits both
alike, and prints their medians and the ratio (the target: within 20%). `bench.lifecycle`
prints the same lines. The resolver is warm (its first start is the warm-up), as it is on
a host that runs containers on user networks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from events.specs import ContainerConfig, HostConfig

__all__ = ["compare", "report"]

NETWORK = "benchnet"
SUBNET = "10.213.244.0/24"


def compare(client: Any, samples: int) -> tuple[list[float], list[float]]:
    """Return create->running milliseconds (default bridge, user network with DNS)."""
    from commands import schema as c
    from events.netspecs import EndpointSettings, Networking

    client.submit(c.CreateNetwork(name=NETWORK, network_id="be" * 32, subnet=SUBNET))
    config = ContainerConfig(image="busybox", cmd=("sleep", "300"))
    user = HostConfig(network_mode=NETWORK)
    networking = Networking(endpoints={NETWORK: EndpointSettings()})

    def on_bridge() -> str:
        return str(client.create(config, HostConfig()))

    def on_user() -> str:
        return client.create(config, user, networking=networking)

    def once(make: Any) -> float:
        t0 = time.perf_counter()
        cid = make()
        client.start(cid)
        took = (time.perf_counter() - t0) * 1000
        client.remove(cid, force=True)
        return took

    try:
        once(on_bridge), once(on_user)  # warm up: bridges, chains, the resolver
        bridge, dns = [], []
        for _ in range(samples):
            bridge.append(once(on_bridge))
            dns.append(once(on_user))
    finally:
        client.submit(c.RemoveNetwork(network=NETWORK))
        # The worker releases the bridge and its rules: wait, the engine stops next.
        bridge_dev = "/sys/class/net/mb" + "be" * 6
        deadline = time.monotonic() + 15
        while os.path.exists(bridge_dev) and time.monotonic() < deadline:
            time.sleep(0.05)
    return bridge, dns


def report(bridge: list[float], dns: list[float]) -> None:
    b, d = statistics.median(bridge), statistics.median(dns)
    print(f"create->running default bridge     p50 {b:7.1f} ms   (n={len(bridge)})")
    print(f"create->running user network + DNS p50 {d:7.1f} ms   (n={len(dns)})   "
          f"{(d / b - 1) * 100:+.0f}% (target within +20%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    import redis

    from bench.host import private_engine
    from commands.client import Client
    from engine.keys import keys_for
    from tests.imagebuild import busybox_rootfs_tar

    with private_engine("10.213.240.0/22") as engine:
        tar = busybox_rootfs_tar(f"{engine.work}/busybox.tar")
        subprocess.run([sys.executable, "-m", "moor.cli", "image", "import", tar, "busybox"],
                       env=engine.env, check=True, stdout=subprocess.DEVNULL)
        client = Client(redis.Redis.from_url(engine.redis_url),
                        keys_for(prefix=engine.env["MOOR_PREFIX"]), timeout=60)
        report(*compare(client, args.samples))


if __name__ == "__main__":
    main()
