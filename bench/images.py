"""Pull throughput from a loopback registry: medians of moorage's pull (on demand).

    python -m bench.images                  # 3 runs, 3 layers of 32 MiB (incompressible)
    python -m bench.images --runs 5 --layer-mib 64 --layers 4

Starts Debian's docker-registry on a free loopback port (temp storage, its own config,
stopped by PID), seeds one image with skopeo from a docker-save archive, then pulls it
`--runs` times into a fresh temp image store each time (downloads, digest checks,
extraction, the store's writes; no engine, so no Redis round trip) and prints MB/s of
compressed blob bytes per run and the median. With `--peer`, a private dockerd (bench.peer,
Debian's docker.io) pulls the same image from the same registry as many times, each a
`docker pull` (CLI and daemon included) after a `docker rmi`, interleaved with moorage's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import io
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time

from moor.distribution.auth import AuthConfig
from moor.distribution.manifest import parse_platform
from moor.distribution.pull import pull
from moor.distribution.reference import parse_reference
from moor.distribution.settings import Settings


def _archive(path: str, layers: int, mib: int) -> None:
    """Write a docker-save archive of `layers` layers of random (incompressible) files."""
    import hashlib
    import json

    diff_ids, names = [], []
    with tarfile.open(path, "w") as out:
        for n in range(layers):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as layer:
                data = os.urandom(mib << 20)
                info = tarfile.TarInfo(f"data{n}.bin")
                info.size = len(data)
                layer.addfile(info, io.BytesIO(data))
            raw = buf.getvalue()
            diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
            gz = gzip.compress(raw, compresslevel=1, mtime=0)
            name = f"layer{n}.tar.gz"
            info = tarfile.TarInfo(name)
            info.size = len(gz)
            out.addfile(info, io.BytesIO(gz))
            names.append(name)
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        info = tarfile.TarInfo("config.json")
        info.size = len(config)
        out.addfile(info, io.BytesIO(config))
        manifest = json.dumps([{"Config": "config.json", "RepoTags": ["bench/img:v1"],
                                "Layers": names}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        out.addfile(info, io.BytesIO(manifest))


def _docker_pull(host: str, ref: str) -> float:
    """Seconds of one `docker pull` on a peer daemon (the image removed first)."""
    env = dict(os.environ, DOCKER_HOST=host)
    subprocess.run(["docker", "rmi", "-f", ref], env=env, capture_output=True)
    subprocess.run(["docker", "image", "prune", "-f"], env=env, capture_output=True)
    t0 = time.perf_counter()
    subprocess.run(["docker", "pull", "-q", ref], env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    from tests.e2e.registry import start_registry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--layer-mib", type=int, default=32)
    parser.add_argument("--peer", action="store_true",
                        help="also pull with a private dockerd (Debian docker.io)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="moor-bench-images-")
    registry = start_registry(work)
    peer_ctx = contextlib.ExitStack()
    try:
        reg = next(registry)
        archive = os.path.join(work, "img.tar")
        _archive(archive, args.layers, args.layer_mib)
        reg.skopeo_copy(archive, "bench/img:v1")
        ref = parse_reference(f"{reg.host}/bench/img:v1")
        rates, peer_rates = [], []
        peer = None
        if args.peer:
            from bench.peer import private_dockerd

            peer = peer_ctx.enter_context(private_dockerd())
        for run in range(args.runs):
            root = tempfile.mkdtemp(prefix="store-", dir=work)
            t0 = time.perf_counter()
            result = asyncio.run(pull(root, ref, AuthConfig(), parse_platform(""),
                                      Settings.from_env({}), lambda m: None))
            elapsed = time.perf_counter() - t0
            size = sum(os.path.getsize(os.path.join(dp, f))
                       for dp, _, fs in os.walk(os.path.join(root, "layers"))
                       for f in fs if f.endswith(".blob"))
            rates.append(size / elapsed / 1e6)
            print(f"run {run + 1}: {size / 1e6:.1f} MB in {elapsed:.2f} s = "
                  f"{rates[-1]:.1f} MB/s ({result.info.id[:19]})")
            shutil.rmtree(root)
            if peer is not None:
                peer_rates.append(size / _docker_pull(peer, f"{reg.host}/bench/img:v1") / 1e6)
                print(f"       dockerd: {peer_rates[-1]:.1f} MB/s")
        print(f"median pull throughput: {statistics.median(rates):.1f} MB/s "
              f"({args.runs} runs, {args.layers} x {args.layer_mib} MiB layers, loopback "
              "docker-registry 2.8)")
        if peer_rates:
            print(f"dockerd (docker pull, same registry and image): median "
                  f"{statistics.median(peer_rates):.1f} MB/s")
        else:
            print("dockerd: not measured (add --peer: a private dockerd from Debian's docker.io)")
    finally:
        peer_ctx.close()
        next(registry, None)  # runs the generator's clean-up: stops the registry by PID
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
