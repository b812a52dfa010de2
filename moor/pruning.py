"""Run `container prune`: remove each selected container through the client, sum its RW layer.

Shared by the API (`POST /containers/prune`) and `moor container prune`; every removal
is an ordinary `RemoveContainer` command, so each one is a recorded fact with its
`destroy` event. A container that another client removed or started meanwhile is skipped,
as dockerd skips a failed removal.
"""

from __future__ import annotations

import os
import threading

from commands.client import Client
from engine.core.state import World
from engine.errors import Conflict, MoorError
from projections.views.filters import Filters
from projections.views.prune import prune_candidates
from workers.storage.rootfs import container_dir

__all__ = ["prune_containers", "tree_size"]

_RUNNING = threading.Lock()  # dockerd: one prune at a time per daemon


def tree_size(path: str) -> int:
    """Return the bytes of the files under path, without following links (du's apparent)."""
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
    return total


def prune_containers(client: Client, world: World, filters: Filters, data_root: str,
                     now_ns: int) -> tuple[list[str], int]:
    """Remove the stopped containers filters select; return their ids and the bytes freed."""
    chosen = prune_candidates(world, filters, now_ns)
    if not _RUNNING.acquire(blocking=False):
        raise Conflict("a prune operation is already running")
    try:
        deleted, reclaimed = [], 0
        for ctr in chosen:
            size = tree_size(os.path.join(container_dir(data_root, ctr.id), "upper"))
            try:
                client.remove(ctr.id)
            except MoorError:
                continue
            deleted.append(ctr.id)
            reclaimed += size
        return deleted, reclaimed
    finally:
        _RUNNING.release()
