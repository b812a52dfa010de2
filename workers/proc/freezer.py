"""Pause and unpause: freeze and thaw every process of a container's cgroup.

v1 writes FROZEN/THAWED to the `freezer` group's freezer.state and waits out FREEZING;
v2 writes cgroup.freeze and waits for cgroup.events to say so (as runc does).
"""

from __future__ import annotations

import os
import time

from workers.proc.cgroups import _read, _write, cgroup_dirs

__all__ = ["freeze", "is_frozen", "thaw"]

_WAIT = 10.0  # a freeze that does not settle by then (a task in D state) is an error


def _group(cid: str) -> tuple[str, bool]:
    dirs = cgroup_dirs(cid)
    if "unified" in dirs:
        return dirs["unified"], True
    return dirs["freezer"], False


def _frozen(path: str, unified: bool) -> bool:
    try:
        if unified:
            return "frozen 1" in _read(os.path.join(path, "cgroup.events"))
        return _read(os.path.join(path, "freezer.state")).strip() == "FROZEN"
    except FileNotFoundError:
        return False


def is_frozen(cid: str) -> bool:
    """Tell whether the container's group is frozen (a missing group is not)."""
    return _frozen(*_group(cid))


def _settle(cid: str, path: str, unified: bool, want: bool, what: str) -> None:
    deadline = time.monotonic() + _WAIT
    delay = 0.0005
    while _frozen(path, unified) != want:
        if time.monotonic() > deadline:
            raise OSError(f"{what} {cid[:12]}: the cgroup did not settle in {_WAIT:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def freeze(cid: str) -> None:
    """Freeze every process of the container; returns once frozen (idempotent)."""
    path, unified = _group(cid)
    if unified:
        _write(os.path.join(path, "cgroup.freeze"), "1")
    else:
        _write(os.path.join(path, "freezer.state"), "FROZEN")
    _settle(cid, path, unified, True, "freeze")


def thaw(cid: str) -> None:
    """Thaw the container (idempotent; a group already gone is thawed)."""
    path, unified = _group(cid)
    try:
        if unified:
            _write(os.path.join(path, "cgroup.freeze"), "0")
        else:
            _write(os.path.join(path, "freezer.state"), "THAWED")
    except FileNotFoundError:
        return
    _settle(cid, path, unified, False, "thaw")
