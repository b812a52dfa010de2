"""Judge each container's state against the host, over a window: a lasting mismatch is stuck.

Running (not restarting): its pid is alive, is the init of a pid namespace in the
container's own cgroup, sits in the container's network namespace, over its mounted
rootfs. Anything else (created, exited, restarting, dead, removing): no process in its
cgroup. A process in the cgroup of a container the engine does not have is reported too.
Read from /proc, the cgroup tree, /run/netns and the mounts; never from the engine.
"""

from __future__ import annotations

import os
import time
from typing import Any

from engine.core.state import Container, status_of
from engine.snapshot import load_world
from tests.chaos import hostprobe
from tests.chaos.journal import Journal, Violation, read_journal

__all__ = ["check_host", "host_mismatch"]


def host_mismatch(ctr: Container, parent: str, data_root: str,
                  procs: dict[str, list[int]]) -> str | None:
    """Return how the container's state disagrees with Docker's rules or the host (None: it
    agrees). `procs` maps container ids to the pids in their cgroups."""
    status = status_of(ctr)
    if ctr.restarting and (not ctr.running or ctr.pid):
        return f"illegal state: restarting with running={ctr.running} pid={ctr.pid}"
    if ctr.dead and ctr.running:
        return "illegal state: dead and running"
    if ctr.saga:
        return None  # a start in flight: a process may exist before its report
    pids = procs.get(ctr.id, [])
    if ctr.running and not ctr.restarting:
        info = hostprobe.proc_info(ctr.pid, parent)
        if not ctr.pid or info is None:
            return f"{status} with pid {ctr.pid}, but no such process (cgroup has {pids})"
        if info.cid != ctr.id or not info.ns_init:
            return (f"{status} with pid {ctr.pid}, which is not this container's init "
                    f"(cgroup of {str(info.cid)[:12]}, pid-namespace init: {info.ns_init})")
        if ctr.host_config.network_mode != "host":
            inodes = {hostprobe.netns_inode(os.path.join(hostprobe.NETNS_DIR, n))
                      for n in hostprobe.netns_entries(ctr.id)} - {None}
            if info.net_inode not in inodes:
                return (f"{status}, but its process is not in its network namespace "
                        f"(namespaces of the container: {len(inodes)})")
        rootfs = os.path.join(os.path.realpath(data_root), "containers", ctr.id)
        if not hostprobe.mounts_under(rootfs):
            return f"{status}, but its rootfs is not mounted"
        return None
    if pids:
        return f"{status}, but processes {pids} run in its cgroup"
    return None


def check_host(engine: Any, window: float, stuck_after: float
               ) -> tuple[list[Violation], set[str]]:
    """Sample state and host for `window` seconds; report mismatches that lasted.

    A mismatch is keyed by the container's version: any event changes it, so a mismatch
    that outlives `stuck_after` with no event at all is a container the engine will not
    correct by itself (a lost exit, a ghost pid, a half-removed container).
    """
    first: dict[tuple[str, int, str], float] = {}
    last: dict[tuple[str, int, str], float] = {}
    deadline = time.monotonic() + window
    current: set[tuple[str, int, str]] = set()
    while True:
        now = time.monotonic()
        world, _ = load_world(engine.redis, engine.keys)
        procs = hostprobe.container_pids(engine.cgroup_parent)
        current = set()
        for ctr in world.containers.values():
            why = host_mismatch(ctr, engine.cgroup_parent, engine.data_root, procs)
            if why is not None:
                current.add((ctr.id, ctr.version, why))
        for cid, pids in procs.items():
            if cid not in world.containers and pids:
                current.add((cid, -1, f"processes {pids} run for a container the engine "
                                      "does not have"))
        for key in current:
            first.setdefault(key, now)
            last[key] = now
        if now > deadline:
            break
        time.sleep(0.3)
    journal = Journal([])  # filled lazily: only when something is reported
    found, stuck = [], set()
    for key in sorted(current):
        if last[key] - first[key] >= stuck_after:
            if not journal.entries:
                journal = Journal(read_journal(engine.redis, engine.keys))
            cid, version, why = key
            stuck.add(cid)
            found.append(Violation("host-state", cid, f"{why} — unchanged for "
                                   f"{last[key] - first[key]:.1f}s at version {version}",
                                   journal.excerpt(cid, 12)))
    return found, stuck


