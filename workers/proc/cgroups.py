"""Per-container cgroups: create with limits, join, read OOM kills, release.

Each container gets ``<parent>/<cid>`` (parent ``moorage/<engine id>`` by
default, so two engines on one host keep their containers apart) in the v1
``memory``, ``pids``, ``cpu``, ``devices`` and ``freezer`` hierarchies (and ``cpuacct``,
``blkio`` and ``cpuset`` where mounted), or one group when ``/sys/fs/cgroup`` is the
unified (v2) hierarchy. Limits follow Docker's
defaults: swap defaults to twice the memory limit, CPU quota is
``nano_cpus * period / 1e9`` with a 100 ms period, ``pids <= 0`` is unlimited.

Environment: ``MOOR_CGROUP_ROOT`` (default ``/sys/fs/cgroup``) and
``MOOR_CGROUP_PARENT`` (engine.config.cgroup_parent). Groups an earlier
version made under the shared ``moorage`` parent are still released.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time

from engine.config import cgroup_parent
from workers.proc.devfilter import apply_filter
from workers.proc.devices import apply_rules
from workers.proc.spec import Limits

__all__ = [
    "cgroup_dirs", "ensure_cgroup", "is_unified", "join_cgroup", "oom_killed", "release_cgroup",
    "release_parent",
]

V1_CONTROLLERS = ("memory", "pids", "cpu", "devices", "freezer")  # freezer: pause
# Used where mounted: cpuacct for stats (workers.proc.stats), blkio's weight, cpuset.
V1_OPTIONAL = ("cpuacct", "blkio", "cpuset")
V2_CONTROLLERS = ("memory", "pids", "cpu", "cpuset", "io")
CPU_PERIOD_US = 100_000
_VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
LEGACY_PARENT = "moorage"  # every engine's parent before engines had ids


def _root() -> str:
    return os.environ.get("MOOR_CGROUP_ROOT", "/sys/fs/cgroup")


def _parent() -> str:
    return cgroup_parent()


def is_unified() -> bool:
    """Tell whether the cgroup root is a pure v2 (unified) hierarchy."""
    return os.path.exists(os.path.join(_root(), "cgroup.controllers"))


def _parent_dirs(parent: str) -> dict[str, str]:
    root = _root()
    if is_unified():
        return {"unified": os.path.join(root, parent)}
    mounted = [c for c in V1_OPTIONAL if os.path.exists(os.path.join(root, c, "cgroup.procs"))]
    return {c: os.path.join(root, c, parent) for c in (*V1_CONTROLLERS, *mounted)}


def cgroup_dirs(cid: str, parent: str | None = None) -> dict[str, str]:
    """Return the container's group directory per controller ("unified" on v2).

    Under `parent` (this engine's, engine.config.cgroup_parent, when None).
    """
    if not _VALID_ID.fullmatch(cid):
        raise ValueError(f"invalid container id for a cgroup name: {cid!r}")
    base = _parent_dirs((parent if parent is not None else _parent()).strip("/"))
    return {c: os.path.join(path, cid) for c, path in base.items()}


def _write(path: str, value: str | int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _memory_limits(memory: int | None, memory_swap: int | None) -> tuple[int, int]:
    """Return (memory, memory+swap) in bytes, -1 meaning unlimited, as Docker derives them."""
    mem = memory if memory and memory > 0 else -1
    if memory_swap is None or memory_swap == 0:
        # Docker: an unset swap limit lets the container use as much swap as memory.
        swap = 2 * mem if mem > 0 else -1
    else:
        swap = memory_swap if memory_swap > 0 else -1
    if mem > 0 and 0 < swap < mem:
        raise ValueError("Minimum memoryswap limit should be larger than memory limit")
    return mem, swap


def _set_v1_memory(path: str, mem: int, swap: int) -> None:
    memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
    pairs = [("memory.limit_in_bytes", mem)]
    if os.path.exists(memsw):
        pairs.append(("memory.memsw.limit_in_bytes", swap))
    try:
        for name, value in pairs:
            _write(os.path.join(path, name), value)
    except OSError as e:
        if e.errno == errno.EBUSY:  # below what the group uses now: runc's text
            usage = _read(os.path.join(path, "memory.usage_in_bytes")).strip()
            peak = _read(os.path.join(path, "memory.max_usage_in_bytes")).strip()
            raise OSError(errno.EBUSY, f"unable to set memory limit to {mem} (current usage: "
                                       f"{usage}, peak usage: {peak})") from None
        # The kernel insists memory <= memsw at every step; when the old memsw is
        # below the new memory limit, memsw has to move first.
        if e.errno != errno.EINVAL or len(pairs) < 2:
            raise
        for name, value in reversed(pairs):
            _write(os.path.join(path, name), value)


def _cpu_quota(lim: Limits) -> tuple[int, int]:
    """Return the CFS (quota, period) in microseconds, quota -1 unlimited (Docker's rule)."""
    if lim.nano_cpus and lim.nano_cpus > 0:
        return max(1000, lim.nano_cpus * CPU_PERIOD_US // 1_000_000_000), CPU_PERIOD_US
    return (lim.cpu_quota if lim.cpu_quota > 0 else -1), lim.cpu_period or CPU_PERIOD_US


def _set_v1_cpu(path: str, lim: Limits) -> None:
    quota, period = _cpu_quota(lim)
    if not os.path.exists(os.path.join(path, "cpu.cfs_quota_us")):
        if quota > 0:
            raise OSError(errno.ENOTSUP, "NanoCPUs can not be set, as your kernel does "
                          "not support CPU CFS scheduler or the cgroup is not mounted")
        return
    # Quota first back to unlimited: a new period below the old quota is refused.
    _write(os.path.join(path, "cpu.cfs_quota_us"), -1)
    _write(os.path.join(path, "cpu.cfs_period_us"), period)
    _write(os.path.join(path, "cpu.cfs_quota_us"), quota)
    if lim.cpu_shares:
        _write(os.path.join(path, "cpu.shares"), lim.cpu_shares)


def _set_v1_cpuset(path: str, lim: Limits) -> None:
    """Fill every new level from its parent (an empty cpuset takes no task), then the limits."""
    root = os.path.join(_root(), "cpuset")
    level = root
    for part in os.path.relpath(path, root).split(os.sep)[:-1]:  # the group itself: below
        parent, level = level, os.path.join(level, part)
        os.makedirs(level, exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not _read(os.path.join(level, name)).strip():
                _write(os.path.join(level, name), _read(os.path.join(parent, name)).strip())
    os.makedirs(path, exist_ok=True)
    parent = os.path.dirname(path)
    for name, value in (("cpuset.cpus", lim.cpuset_cpus), ("cpuset.mems", lim.cpuset_mems)):
        _write(os.path.join(path, name), value or _read(os.path.join(parent, name)).strip())


def _set_v1_extras(controller: str, path: str, lim: Limits) -> None:
    """Write the limits that are left alone unless set (reservation, swappiness, OOM, blkio)."""
    writes: list[tuple[str, str | int]] = []
    if controller == "memory":
        if lim.memory_reservation:
            writes.append(("memory.soft_limit_in_bytes", lim.memory_reservation))
        if lim.memory_swappiness != -1:
            writes.append(("memory.swappiness", lim.memory_swappiness))
        if lim.oom_kill_disable:
            writes.append(("memory.oom_control", 1))
    elif controller == "blkio" and lim.blkio_weight:
        # Docker discards the weight (with a warning) on a kernel without the file.
        for name in ("blkio.weight", "blkio.bfq.weight"):
            if os.path.exists(os.path.join(path, name)):
                writes.append((name, lim.blkio_weight))
                break
    for name, value in writes:
        _write(os.path.join(path, name), value)


def ensure_cgroup(cid: str, memory: int | None = None, pids: int | None = None,
                  nano_cpus: int | None = None, memory_swap: int | None = None,
                  device_rules: tuple[str, ...] = (), limits: Limits | None = None
                  ) -> dict[str, str]:
    """Create the container's groups (idempotent) and set every limit; return the dirs.

    `limits` (all of Docker's resources) replaces the four single limits when given; a
    running container's groups take a `docker update` the same way. `device_rules`
    (`events.hostopts.device_rules`) confine the devices the container may
    use: written to the v1 `devices` group, or on v2 attached to the group as an eBPF
    program (`workers.proc.devfilter`); none leaves them untouched.
    """
    lim = limits or Limits(memory=memory, pids=pids, nano_cpus=nano_cpus,
                           memory_swap=memory_swap)
    mem, swap = _memory_limits(lim.memory, lim.memory_swap)
    pids_max = str(lim.pids) if lim.pids and lim.pids > 0 else "max"
    dirs = cgroup_dirs(cid)
    if "unified" in dirs:
        _ensure_v2(dirs["unified"], mem, swap, pids_max, lim, device_rules)
        return dirs
    for controller, path in dirs.items():
        if controller == "cpuset":
            _set_v1_cpuset(path, lim)
            continue
        os.makedirs(path, exist_ok=True)
        if controller == "memory":
            _set_v1_memory(path, mem, swap)
        elif controller == "pids":
            _write(os.path.join(path, "pids.max"), pids_max)
        elif controller == "devices" and device_rules:
            apply_rules(path, device_rules)
        elif controller == "cpu":
            _set_v1_cpu(path, lim)
        _set_v1_extras(controller, path, lim)
    return dirs


def _ensure_v2(path: str, mem: int, swap: int, pids_max: str, lim: Limits,
               device_rules: tuple[str, ...] = ()) -> None:
    """Create the v2 group, enabling the controllers on the way down (runc's v2 mapping)."""
    root = _root()
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    # Every level between the root and the group: the default parent is two deep.
    levels = [root]
    for part in os.path.relpath(parent, root).split(os.sep):
        if part != os.curdir:
            levels.append(os.path.join(levels[-1], part))
    for level in levels:
        available = _read(os.path.join(level, "cgroup.controllers")).split()
        wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS if c in available)
        if wanted:
            _write(os.path.join(level, "cgroup.subtree_control"), wanted)
    os.makedirs(path, exist_ok=True)
    _write(os.path.join(path, "memory.max"), mem if mem > 0 else "max")
    swap_file = os.path.join(path, "memory.swap.max")
    if os.path.exists(swap_file):
        # v2 limits swap alone, v1 (and Docker's API) memory+swap together.
        _write(swap_file, swap - mem if mem > 0 and swap > 0 else "max")
    _write(os.path.join(path, "pids.max"), pids_max)
    quota, period = _cpu_quota(lim)
    _write(os.path.join(path, "cpu.max"), f"{quota if quota > 0 else 'max'} {period}")
    optional: list[tuple[str, str | int]] = []
    if lim.memory_reservation:
        optional.append(("memory.low", lim.memory_reservation))
    if lim.cpu_shares:  # runc's shares -> weight conversion
        optional.append(("cpu.weight", 1 + ((lim.cpu_shares - 2) * 9999) // 262142))
    if lim.blkio_weight:
        optional.append(("io.weight", 1 + ((lim.blkio_weight - 10) * 9999) // 990))
    optional += [(n, v) for n, v in (("cpuset.cpus", lim.cpuset_cpus),
                                     ("cpuset.mems", lim.cpuset_mems)) if v]
    for name, value in optional:
        _write(os.path.join(path, name), value)
    if device_rules:
        apply_filter(path, device_rules)


def join_cgroup(cid: str, pid: int) -> None:
    """Move process pid (0 = the calling process, which must be single-threaded) into the groups.

    On v1 the calling process joins through ``tasks``: moving just the current
    thread skips the global threadgroup lock, whose RCU grace period costs
    10-20 ms per hierarchy here, while a single-threaded process moves whole.
    """
    dirs = cgroup_dirs(cid)
    name = "tasks" if pid == 0 and "unified" not in dirs else "cgroup.procs"
    for controller, path in dirs.items():
        if controller == "cpuset" and not os.path.isdir(path):
            continue  # a run an older worker started has none: its execs still join
        _write(os.path.join(path, name), pid)


def oom_killed(cid: str) -> bool:
    """Tell whether the kernel OOM killer killed anything in the container's group."""
    dirs = cgroup_dirs(cid)
    if "unified" in dirs:
        name, path = "memory.events", dirs["unified"]
    else:
        name, path = "memory.oom_control", dirs["memory"]
    try:
        text = _read(os.path.join(path, name))
    except FileNotFoundError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value) > 0
    return False


def _procs(path: str) -> list[int]:
    try:
        return [int(p) for p in _read(os.path.join(path, "cgroup.procs")).split()]
    except FileNotFoundError:
        return []


def release_cgroup(cid: str, timeout: float = 5.0) -> None:
    """Kill anything left in the container's groups and remove them; gone already is fine.

    Also the groups an earlier version made under the shared ``moorage`` parent: the
    container's id names them, so they are this container's (a stat each when absent).
    """
    deadline = time.monotonic() + timeout
    paths = list(cgroup_dirs(cid).values())
    paths += [p for p in cgroup_dirs(cid, LEGACY_PARENT).values() if p not in paths]
    for path in paths:
        if not os.path.isdir(path):
            continue
        kill_file = os.path.join(path, "cgroup.kill")
        while True:
            pids = _procs(path)
            if pids and os.path.exists(kill_file):
                _write(kill_file, 1)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                # EBUSY while killed tasks are still exiting: retry until the deadline.
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)


def release_parent(parent: str | None = None) -> None:
    """Remove the engine's parent groups if empty (tools tearing an engine down call it).

    Only the engine's own level: the shared top (``moorage``) may hold other engines'.
    A parent that still holds a container's group stays (rmdir refuses it: EBUSY).
    """
    for path in _parent_dirs((parent if parent is not None else _parent()).strip("/")).values():
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise
