"""The peer, on demand: Debian's dockerd (docker.io 20.10) on private roots and a private
socket, so a bench can time the same operation against it in the same run.

    with private_dockerd() as host:   # DOCKER_HOST=unix:///tmp/moor-dockerd-.../docker.sock
        ...

No iptables, no bridge, no IP forwarding: it touches nothing of the host's networking
(its containers get `--network none`), and it is stopped by its PID with everything it
mounted under its roots. Raises SystemExit naming the package when dockerd is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

__all__ = ["load_busybox", "private_dockerd"]


@contextlib.contextmanager
def private_dockerd() -> Iterator[str]:
    if shutil.which("dockerd") is None:
        raise SystemExit("dockerd is not installed (Debian: apt-get install docker.io)")
    work = tempfile.mkdtemp(prefix="moor-dockerd-")
    sock = os.path.join(work, "docker.sock")
    log = open(os.path.join(work, "dockerd.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["dockerd", "--data-root", os.path.join(work, "data"), "--exec-root",
         os.path.join(work, "exec"), "--pidfile", os.path.join(work, "dockerd.pid"),
         "-H", f"unix://{sock}", "--iptables=false", "--ip-forward=false", "--bridge=none",
         "--containerd-namespace", f"moorbench{os.getpid()}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        host = f"unix://{sock}"
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "version"], env=dict(os.environ, DOCKER_HOST=host),
                             capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                with open(log.name, errors="replace") as f:
                    raise SystemExit("dockerd did not start:\n" + f.read()[-2000:])
            time.sleep(0.2)
        yield host
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["umount", "-R", "-l", work], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def load_busybox(host: str, tag: str = "busybox:bench") -> str:
    """`docker load` the test suite's busybox image into the peer; return its tag."""
    from tests.imagebuild import SavedImage, busybox_rootfs_entries, docker_save_tar, layer_tar

    with tempfile.TemporaryDirectory(prefix="moor-bench-busybox-") as tmp:
        tar = docker_save_tar(os.path.join(tmp, "busybox.tar"), [SavedImage(
            layers=[layer_tar(busybox_rootfs_entries())], tags=[tag])])
        subprocess.run(["docker", "load", "-i", tar], env=dict(os.environ, DOCKER_HOST=host),
                       check=True, capture_output=True)
    return tag
