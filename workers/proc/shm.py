"""A shareable container's /dev/shm: a tmpfs on the host, so another container can bind it.

A bind mount's source must be in the binder's mount namespace, so the donor's /dev/shm
cannot live only in the donor's own: as Docker does for `--ipc shareable`, the worker mounts
it under the container's directory on the host, and both containers bind it. It goes with
the container's runtime (`workers.saga.release_runtime`).
"""

from __future__ import annotations

import errno
import os

from events.specs import DEFAULT_SHM_SIZE
from workers import nsutil

__all__ = ["ensure_shm", "release_shm", "shm_options", "shm_path"]


def shm_options(size: int = 0) -> str:
    """Return the tmpfs options of a /dev/shm of `size` bytes (0: Docker's default)."""
    return f"mode=1777,size={size or DEFAULT_SHM_SIZE}"


def shm_path(container_dir: str) -> str:
    return os.path.join(container_dir, "shm")


def ensure_shm(container_dir: str, size: int = 0) -> str:
    """Mount the container's shareable /dev/shm (`--shm-size` bytes) on the host; idempotent."""
    path = shm_path(container_dir)
    os.makedirs(path, 0o700, exist_ok=True)
    if not os.path.ismount(path):
        nsutil.mount("shm", path, "tmpfs", nsutil.MS_NOSUID | nsutil.MS_NODEV | nsutil.MS_NOEXEC,
                     shm_options(size))
    return path


def release_shm(container_dir: str) -> None:
    """Unmount it (gone = success)."""
    path = shm_path(container_dir)
    try:
        while os.path.ismount(path):
            nsutil.umount2(path, nsutil.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
