"""Docker CLI benchmark (on demand, root): `docker run -d` and `docker rm -f` wall times.

    sudo python -m bench.dockercli [--runs 30]                 # a private engine + API
    sudo python -m bench.dockercli --host unix:///var/lib/moorage/docker.sock --image busybox

Each sample is one `docker` process against moorage's Engine API socket, so it includes
the CLI's own start-up and its `_ping`, as a user sees it. Without `--host` it starts a
private redis-server, reducer, worker and `moor api` on a private bridge and subnet,
`docker load`s a busybox archive built by tests/imagebuild.py, and tears it all down.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.host import percentile, private_engine


def _docker(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["docker", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def private_api() -> Iterator[tuple[str, str]]:
    """Start a private engine with the API; `docker load` busybox; yield (host, image)."""
    from tests.imagebuild import SavedImage, busybox_rootfs_entries, docker_save_tar, layer_tar

    with private_engine("10.213.236.0/22", api=True) as engine:
        deadline = time.monotonic() + 30
        while not os.path.exists(engine.socket):
            if time.monotonic() > deadline:
                raise SystemExit("moor api did not create its socket within 30 s")
            time.sleep(0.05)
        host = f"unix://{engine.socket}"
        image = "busybox:bench"
        tar = docker_save_tar(f"{engine.work}/busybox.tar", [SavedImage(
            layers=[layer_tar(busybox_rootfs_entries())], tags=[image])])
        _docker(_cli_env(host), "load", "-i", tar)
        yield host, image


def _cli_env(host: str) -> dict[str, str]:
    return dict(os.environ, DOCKER_HOST=host)


def measure(host: str, image: str, runs: int) -> tuple[list[float], list[float]]:
    """Return the wall times (ms) of `runs` x `docker run -d`, then of as many `rm -f`."""
    env = _cli_env(host)
    warm = _docker(env, "run", "-d", image, "sleep", "300").strip()
    _docker(env, "rm", "-f", warm)
    run_ms: list[float] = []
    rm_ms: list[float] = []
    ids: list[str] = []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            ids.append(_docker(env, "run", "-d", image, "sleep", "300").strip())
            run_ms.append((time.perf_counter() - t0) * 1000)
        while ids:
            t0 = time.perf_counter()
            _docker(env, "rm", "-f", ids[-1])
            rm_ms.append((time.perf_counter() - t0) * 1000)
            ids.pop()
    finally:
        if ids:
            _docker(env, "rm", "-f", *ids)
    return run_ms, rm_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--host", help="an existing moorage API (unix://PATH); default: "
                                       "start a private engine")
    parser.add_argument("--image", default="busybox", help="image to run with --host")
    args = parser.parse_args()
    if shutil.which("docker") is None:
        raise SystemExit("the docker CLI is not on PATH")
    if args.host:
        run_ms, rm_ms = measure(args.host, args.image, args.runs)
    else:
        with private_api() as (host, image):
            run_ms, rm_ms = measure(host, image, args.runs)
    version = subprocess.run(["docker", "version", "--format", "{{.Client.Version}}"],
                             capture_output=True, text=True).stdout.strip()
    print(f"docker CLI {version}, {args.runs} samples each")
    for label, values in (("docker run -d", run_ms), ("docker rm -f", rm_ms)):
        print(f"{label:<14} median {statistics.median(values):7.1f} ms   "
              f"p90 {percentile(values, 0.9):7.1f} ms   min {min(values):7.1f} ms   "
              f"max {max(values):7.1f} ms")


if __name__ == "__main__":
    main()
