"""Run `container prune` and `volume prune`: remove each selected one through the client,
sum what it held.

Shared by the API (`POST /containers/prune`, `/volumes/prune`) and `moor container|volume
prune`; every removal is an ordinary `RemoveContainer` or `RemoveVolume` command, so each
one is a recorded fact with its `destroy` event. One another client removed or started
meanwhile is skipped, as dockerd skips a failed removal.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from commands.client import Client
from engine.core.state import World
from engine.errors import Conflict, MoorError
from projections.views.filters import Filters
from projections.views.prune import prune_candidates
from projections.views.volumes import prune_volume_candidates, volume_path
from workers.storage.rootfs import container_dir

__all__ = ["prune_containers", "prune_volumes", "tree_size"]

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


def _prune(names: list[str], path_of: Callable[[str], str],
           remove: Callable[[str], object]) -> tuple[list[str], int]:
    """Remove each one (a recorded command; one the engine refuses by now is skipped, as
    dockerd skips a failed removal); return those removed and the bytes they held."""
    if not _RUNNING.acquire(blocking=False):
        raise Conflict("a prune operation is already running")
    try:
        deleted, reclaimed = [], 0
        for name in names:
            size = tree_size(path_of(name))
            try:
                remove(name)
            except MoorError:
                continue
            deleted.append(name)
            reclaimed += size
        return deleted, reclaimed
    finally:
        _RUNNING.release()


def prune_containers(client: Client, world: World, filters: Filters, data_root: str,
                     now_ns: int) -> tuple[list[str], int]:
    """Remove the stopped containers filters select; return their ids and the bytes freed."""
    chosen = [ctr.id for ctr in prune_candidates(world, filters, now_ns)]
    return _prune(chosen, lambda cid: os.path.join(container_dir(data_root, cid), "upper"),
                  client.remove)


def prune_volumes(client: Client, world: World, filters: Filters,
                  data_root: str) -> tuple[list[str], int]:
    """Remove the unused volumes filters select (one in use by the time it is decided is
    refused and skipped); return their names and the bytes freed."""
    chosen = [vol.name for vol in prune_volume_candidates(world, filters)]
    return _prune(chosen, lambda name: volume_path(data_root, name), client.remove_volume)
