"""Build benchmark (on demand, root): `docker build` (classic builder) cold and cached.

    sudo python -m bench.build [--runs 5]
    sudo python -m bench.build --host unix:///var/lib/moorage/docker.sock --image busybox

Each sample is one `DOCKER_BUILDKIT=0 docker build` of the e2e test's two-stage Dockerfile
(RUN, COPY, COPY --from, ENV, CMD): cold with `--no-cache` (every RUN runs in a container,
every layer is written), cached without it (every step `Using cache`). Without `--host`
it starts a private engine and API (bench.dockercli.private_api) and tears it all down.
With `--peer`, the same Dockerfile is built on a private dockerd (bench.peer, Debian's
docker.io) in the same run, its RUN containers with `--network none`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from bench.dockercli import private_api

DOCKERFILE = """\
FROM {image} AS build
RUN mkdir -p /out && echo "built by stage one" > /out/msg
COPY greeting.txt /out/
FROM {image}
ENV GREETING=hello
COPY --from=build /out/ /app/
CMD ["sh", "-c", "cat /app/msg /app/greeting.txt; echo $GREETING"]
"""


def _build(host: str, context: str, *args: str) -> float:
    env = dict(os.environ, DOCKER_HOST=host, DOCKER_BUILDKIT="0")
    t0 = time.perf_counter()
    done = subprocess.run(["docker", "build", *args, context], env=env, capture_output=True,
                          text=True, timeout=300)
    elapsed = (time.perf_counter() - t0) * 1000
    if done.returncode != 0:
        raise SystemExit(f"docker build failed: {done.stderr.strip()}")
    return elapsed


def measure(host: str, image: str, runs: int, *extra: str) -> tuple[list[float], list[float]]:
    """Return the wall times (ms) of `runs` cold builds and `runs` cached ones."""
    context = tempfile.mkdtemp(prefix="moor-bench-build-")
    tag = f"bench-build:{os.getpid()}"
    try:
        with open(os.path.join(context, "Dockerfile"), "w") as f:
            f.write(DOCKERFILE.format(image=image))
        with open(os.path.join(context, "greeting.txt"), "w") as f:
            f.write("greetings\n")
        _build(host, context, *extra, "-t", tag)  # warm up: bridge, chains, page cache
        cold = [_build(host, context, *extra, "--no-cache", "-t", tag) for _ in range(runs)]
        cached = [_build(host, context, *extra, "-t", tag) for _ in range(runs)]
        return cold, cached
    finally:
        shutil.rmtree(context, ignore_errors=True)
        subprocess.run(["docker", "rmi", "-f", tag], env=dict(os.environ, DOCKER_HOST=host),
                       capture_output=True, timeout=60)


def _report(name: str, cold: list[float], cached: list[float]) -> None:
    print(f"{name}: cold (--no-cache) median {statistics.median(cold):.0f} ms "
          f"(min {min(cold):.0f}, max {max(cold):.0f}); cached median "
          f"{statistics.median(cached):.0f} ms (min {min(cached):.0f}, max {max(cached):.0f}); "
          f"{len(cold)} runs each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--host", help="an existing API socket (default: a private engine)")
    parser.add_argument("--image", default="busybox", help="the base image with --host")
    parser.add_argument("--peer", action="store_true",
                        help="also build on a private dockerd (Debian docker.io)")
    args = parser.parse_args()
    if shutil.which("docker") is None:
        raise SystemExit("the docker CLI is not on PATH")
    if args.host:
        _report("moorage", *measure(args.host, args.image, args.runs))
    else:
        with private_api() as (host, image):
            _report("moorage", *measure(host, image, args.runs))
    if args.peer:
        from bench.peer import load_busybox, private_dockerd

        with private_dockerd() as peer:
            _report("dockerd", *measure(peer, load_busybox(peer), args.runs,
                                        "--network", "none"))
    else:
        print("dockerd: not measured (add --peer: a private dockerd from Debian's docker.io)")


if __name__ == "__main__":
    main()
