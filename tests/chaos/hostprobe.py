"""The host's own account of a container: read from /proc, /sys and the tools, never the engine.

Everything here locates resources by the container id and the engine's private names
(cgroup parent, bridge, data root) and reads what the kernel says about them, so the
invariants can compare the engine's state with a source it does not write.
"""

from __future__ import annotations

import glob
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from workers.proc.process import start_ticks

__all__ = [
    "ProcInfo",
    "cgroup_parent_dirs",
    "container_pids",
    "iptables_lines",
    "leaks_of",
    "links_matching",
    "mounts_containing",
    "mounts_under",
    "netns_entries",
    "netns_inode",
    "proc_cid",
    "proc_info",
    "proc_state",
    "start_ticks",
]

CGROUP_ROOT = "/sys/fs/cgroup"
NETNS_DIR = "/run/netns"



def proc_state(pid: int) -> str:
    """Return the one-letter state of a process ("" when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return ""
    return stat[stat.rfind(b")") + 2:].split()[0].decode()


def proc_cid(pid: int, parent: str) -> str | None:
    """Return the container id whose cgroup (under `parent`) holds pid, None if none."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    marker = f"/{parent}/"
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        at = path.find(marker)
        if at >= 0:
            rest = path[at + len(marker):].split("/", 1)[0]
            if rest:
                return rest
    return None


@dataclass(frozen=True)
class ProcInfo:
    """What the kernel says about one process."""

    pid: int
    ticks: int
    cid: str | None  # from its cgroup
    ns_init: bool  # PID 1 of a pid namespace below the host's
    net_inode: int | None


def proc_info(pid: int, parent: str) -> ProcInfo | None:
    """Describe a live process, None when it is gone (or a zombie)."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    ns_init = False
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                ns_init = len(ids) > 1 and ids[-1] == "1"
    except OSError:
        return None
    try:
        net_inode: int | None = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        net_inode = None
    info = ProcInfo(pid, ticks, proc_cid(pid, parent), ns_init, net_inode)
    # Read twice around the details: a pid reused meanwhile must not pass as the same one.
    return info if start_ticks(pid) == ticks else None


def cgroup_parent_dirs(parent: str) -> list[str]:
    """Return the parent's directory in every hierarchy that has one (v1 and v2)."""
    found = glob.glob(os.path.join(CGROUP_ROOT, "*", parent))
    if os.path.isdir(os.path.join(CGROUP_ROOT, parent)):
        found.append(os.path.join(CGROUP_ROOT, parent))
    return sorted(d for d in found if os.path.isdir(d))


def container_pids(parent: str) -> dict[str, list[int]]:
    """Return, per container cgroup under `parent`, the pids the kernel lists in it."""
    out: dict[str, list[int]] = {}
    for base in cgroup_parent_dirs(parent):
        for entry in os.scandir(base):
            if not entry.is_dir():
                continue
            try:
                text = Path(entry.path, "cgroup.procs").read_text()
            except OSError:
                continue
            pids = out.setdefault(entry.name, [])
            pids.extend(int(p) for p in text.split() if int(p) not in pids)
    return out


def netns_inode(path: str) -> int | None:
    """Return the inode of the namespace bind-mounted at path (None: not mounted there)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    # An unmounted placeholder is a plain empty file on the tmpfs, not an nsfs inode.
    return st.st_ino if st.st_dev != os.stat(os.path.dirname(path)).st_dev else None


def netns_entries(cid: str) -> list[str]:
    """Return the names under /run/netns that carry the container's id."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if cid in n or cid[:12] in n)


def links_matching(cid: str) -> list[str]:
    """Return host links named after the container or tagged with its id (ifalias)."""
    found = []
    for name in os.listdir("/sys/class/net"):
        try:
            alias = Path("/sys/class/net", name, "ifalias").read_text().strip()
        except OSError:
            alias = ""
        if cid[:12] in name or cid in alias:
            found.append(name)
    return sorted(found)


def _mountinfo() -> list[list[str]]:
    with open("/proc/self/mountinfo") as f:
        return [line.split() for line in f]


def mounts_containing(text: str) -> list[str]:
    """Return the mount points whose mountinfo line mentions text (source, root or point)."""
    return [fields[4] for fields in _mountinfo() if any(text in f for f in fields)]


def mounts_under(root: str) -> list[str]:
    """Return the mount points at or below a directory."""
    real = os.path.realpath(root)
    return [fields[4] for fields in _mountinfo()
            if fields[4] == real or fields[4].startswith(real + "/")]


def iptables_lines(*needles: str) -> list[str]:
    """Return the iptables-save lines (every table) that mention any needle."""
    text = subprocess.run(["iptables-save"], check=True, capture_output=True, text=True,
                          timeout=30).stdout
    return [line for line in text.splitlines() if any(n in line for n in needles)]


def leaks_of(cid: str, *, parent: str, data_root: str,
             pids: list[tuple[int, int]]) -> list[str]:
    """Return every host resource the container still holds (empty: none).

    `pids` are (pid, start ticks) of processes known to have been this container's.
    """
    found = [f"mount {m}" for m in mounts_containing(cid)]
    found += [f"netns {NETNS_DIR}/{n}" for n in netns_entries(cid)]
    found += [f"link {name}" for name in links_matching(cid)]
    found += [f"iptables {line}" for line in iptables_lines(cid)]
    for base in cgroup_parent_dirs(parent):
        if os.path.isdir(os.path.join(base, cid)):
            found.append(f"cgroup {os.path.join(base, cid)}")
    found += [f"process {pid}" for pid, ticks in pids if start_ticks(pid) == ticks]
    cdir = os.path.join(data_root, "containers", cid)
    if os.path.lexists(cdir):
        found.append(f"directory {cdir}")
    return found
