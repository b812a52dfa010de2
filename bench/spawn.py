"""What confinement costs a start (on demand, root): `spawn` of one container process.

    sudo python -m bench.spawn [--rounds 25]

Spawns `sleep` under a supervisor from a private busybox rootfs, in rounds that
interleave the variants (so load drifts hit them alike), and prints the median time until
the process has exec'd: with no seccomp filter (the start before issue 9), with Docker's
default filter (compiled once, from the cache), and with --privileged (every host device).
Everything runs under its own cgroup parent and is killed and released at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from events.caps import CAPABILITIES, DEFAULT_MASK, capability_mask
from events.hostopts import DEFAULT_SYSCTLS


def _rootfs() -> str:
    busybox = shutil.which("busybox") or "/bin/busybox"
    root = tempfile.mkdtemp(prefix="moor-bench-rootfs-")
    os.chmod(root, 0o755)
    for d in ("bin", "etc", "proc", "dev", "sys", "tmp"):
        os.makedirs(os.path.join(root, d))
    shutil.copy2(busybox, os.path.join(root, "bin", "busybox"))
    os.symlink("busybox", os.path.join(root, "bin", "sleep"))
    Path(root, "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    Path(root, "etc/group").write_text("root:x:0:\n")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    parent = f"moorage/bench-{uuid.uuid4().hex[:8]}"
    os.environ["MOOR_CGROUP_PARENT"] = parent
    from workers.proc import cgroups, process, seccomp
    from workers.proc.spawn import spawn
    from workers.proc.spec import ProcessSpec

    root, work = _rootfs(), tempfile.mkdtemp(prefix="moor-bench-spawn-")
    cache = os.path.join(work, "seccomp")
    every = capability_mask(CAPABILITIES)
    variants: dict[str, dict[str, object]] = {
        "no filter (before issue 9)": {"sysctls": DEFAULT_SYSCTLS},
        "default profile": {"sysctls": DEFAULT_SYSCTLS,
                            "seccomp": seccomp.program_for((), False, DEFAULT_MASK, cache)},
        "--privileged": {"privileged": True, "capabilities": every},
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    made: list[str] = []
    try:
        for _ in range(args.rounds):
            for name, fields in variants.items():
                cid = f"bench{len(made):05d}{uuid.uuid4().hex[:6]}"
                made.append(cid)
                state = os.path.join(work, cid)
                spec = ProcessSpec(container_id=cid, rootfs=root, argv=("sleep", "30"),
                                   env=("PATH=/bin",), state_dir=state,
                                   log_path=os.path.join(state, "log"), hostname="bench",
                                   **fields)  # type: ignore[arg-type]
                began = time.perf_counter()
                run = spawn(spec)
                times[name].append((time.perf_counter() - began) * 1000)
                os.kill(run.pid, signal.SIGKILL)
    finally:
        time.sleep(0.5)
        process.reap_children()
        for cid in made:
            cgroups.release_cgroup(cid)
        cgroups.release_parent(parent)
        shutil.rmtree(root)
        shutil.rmtree(work, ignore_errors=True)
    kernel = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    print(f"spawn until exec'd, median of {args.rounds} (kernel {kernel}):")
    base = statistics.median(times["no filter (before issue 9)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:28s} {median:7.2f} ms  ({(median / base - 1) * 100:+5.1f} %)")


if __name__ == "__main__":
    main()
