"""Read a running container's resource usage, in Docker's stats shape.

One `sample` reads the container's cgroups (v1: memory, pids, cpu, cpuacct, blkio; v2:
the one group), the host's /proc/stat and the container's network namespace through
/proc/<pid>/net/dev, and returns the fields of moby's `StatsResponse` that a reading
fills (daemon/stats_unix.go: statsV1/statsV2, getSystemCPUUsage, getNetworkStats).
`document` adds the name, id and the previous reading (`precpu_stats`, `preread`) the
docker CLI computes CPU % from; with no reading it is Docker's zeroed document of a
stopped container. The API's collector and `moor stats` both read through here.

Where a v1 accounting hierarchy holds no group for the container (cpuacct or blkio not
mounted, or a container started before the worker joined them), what is available is
reported: CPU time summed over the group's processes from /proc, no block I/O.
"""

from __future__ import annotations

import os
import time
from typing import Any

from workers.proc import cgroups
from workers.proc.logs import format_time

__all__ = ["BLKIO_FIELDS", "ZERO_TIME", "document", "parse_blkio_v1", "parse_io_stat",
           "parse_net_dev", "parse_system_cpu", "sample"]

NS = 1_000_000_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time, as Docker encodes it
BLKIO_FIELDS = ("io_service_bytes_recursive", "io_serviced_recursive", "io_queue_recursive",
                "io_service_time_recursive", "io_wait_time_recursive", "io_merged_recursive",
                "io_time_recursive", "sectors_recursive")
# The v1 (CFQ) files whose names differ from Docker's fields.
_CFQ_FILES = {"io_queue_recursive": "io_queued_recursive", "io_time_recursive": "time_recursive"}
# The memory.stat counters Docker reports, per cgroup version (moby daemon/stats_unix.go).
_V1_MEMORY = (
    "cache", "rss", "rss_huge", "mapped_file", "dirty", "writeback", "pgpgin", "pgpgout",
    "pgfault", "pgmajfault", "inactive_anon", "active_anon", "inactive_file", "active_file",
    "unevictable", "hierarchical_memory_limit", "hierarchical_memsw_limit")
_V1_MEMORY_KEYS = (*_V1_MEMORY, *(f"total_{k}" for k in _V1_MEMORY[:15]))
_V2_MEMORY_KEYS = (
    "anon", "file", "kernel_stack", "slab", "sock", "shmem", "file_mapped", "file_dirty",
    "file_writeback", "anon_thp", "inactive_anon", "active_anon", "inactive_file",
    "active_file", "unevictable", "slab_reclaimable", "slab_unreclaimable", "pgfault",
    "pgmajfault", "workingset_refault", "workingset_activate", "workingset_nodereclaim",
    "pgrefill", "pgscan", "pgsteal", "pgactivate", "pgdeactivate", "pglazyfree",
    "pglazyfreed", "thp_fault_alloc", "thp_collapse_alloc")


# --- the document --------------------------------------------------------------------------

def _zero_cpu() -> dict[str, Any]:
    return {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


def document(name: str, cid: str, reading: dict[str, Any] | None,
             previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return Docker's stats document: `reading` (None: zeroed) after `previous`.

    Keys in moby's order, zero values omitted where Go's `omitempty` omits them.
    """
    doc: dict[str, Any] = {
        "name": name if name.startswith("/") else f"/{name}", "id": cid, "read": ZERO_TIME,
        "preread": ZERO_TIME, "pids_stats": {}, "blkio_stats": dict.fromkeys(BLKIO_FIELDS),
        "num_procs": 0, "storage_stats": {}, "cpu_stats": _zero_cpu(),
        "precpu_stats": _zero_cpu(), "memory_stats": {}}
    if reading is not None:
        doc.update(reading)
    if previous is not None:
        doc["preread"], doc["precpu_stats"] = previous["read"], previous["cpu_stats"]
    return doc


def _nonzero(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v}


# --- parsers (the kernel's text formats) -------------------------------------------------

def _kv(text: str) -> dict[str, int]:
    """Return "key value" lines (memory.stat, cpu.stat, /proc/meminfo) as a dict."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_system_cpu(text: str) -> tuple[int, int]:
    """Return (host CPU time in ns, online CPUs) from /proc/stat, as dockerd computes them
    (user through softirq of the `cpu` line; one CPU per `cpuN` line)."""
    total, cpus = 0, 0
    for line in text.splitlines():
        if not line.startswith("cpu"):
            break
        if line.startswith("cpu "):
            total = sum(int(v) for v in line.split()[1:8]) * NS // 100  # dockerd's 100 Hz
        else:
            cpus += 1
    return total, cpus


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """Return Docker's per-interface counters from /proc/<pid>/net/dev (lo left out)."""
    out = {}
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        v = [int(x) for x in counters.split()]
        if name.strip() == "lo" or len(v) < 12:
            continue
        out[name.strip()] = {"rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2],
                             "rx_dropped": v[3], "tx_bytes": v[8], "tx_packets": v[9],
                             "tx_errors": v[10], "tx_dropped": v[11]}
    return out


def parse_blkio_v1(text: str) -> list[dict[str, Any]]:
    """Return entries of a v1 blkio file ("8:0 Read 4096"); device-less totals skipped."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and ":" in fields[0]:
            major, minor = fields[0].split(":")
            out.append({"major": int(major), "minor": int(minor), "op": fields[1],
                        "value": int(fields[2])})
    return out


def parse_io_stat(text: str) -> list[dict[str, Any]]:
    """Return v2 io.stat as Docker does: a read and a write entry of bytes per device."""
    out = []
    for line in text.splitlines():
        dev, *pairs = line.split()
        counters = dict(p.split("=", 1) for p in pairs if "=" in p)
        major, minor = (int(n) for n in dev.split(":"))
        for op, key in (("read", "rbytes"), ("write", "wbytes")):
            out.append({"major": major, "minor": minor, "op": op,
                        "value": int(counters.get(key, 0))})
    return out


# --- readers -----------------------------------------------------------------------------

def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _maybe(path: str) -> str:
    try:
        return _read(path)
    except OSError:
        return ""


def _number(path: str, default: int = 0) -> int:
    """Return a cgroup file's integer ("max" and absent files give `default`)."""
    text = _maybe(path).strip()
    return int(text) if text.lstrip("-").isdigit() else default


def _machine_memory(proc: str) -> int:
    return _kv(_maybe(f"{proc}/meminfo")).get("MemTotal:", 0) * 1024


def _procs_cpu(group: str, proc: str) -> dict[str, Any]:
    """Return the CPU time of the group's live processes and their reaped children (/proc):
    what is left to report without a cpuacct group (v1)."""
    user = system = 0
    for pid in _maybe(os.path.join(group, "cgroup.procs")).split():
        stat = _maybe(f"{proc}/{pid}/stat")
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 14:
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    user, system = user * NS // CLOCK_TICKS, system * NS // CLOCK_TICKS
    return {"total_usage": user + system, "usage_in_kernelmode": system,
            "usage_in_usermode": user}


def _v1(dirs: dict[str, str], proc: str) -> dict[str, Any]:
    """Read the v1 hierarchies, as containerd's cgroup1 metrics fill moby's statsV1."""
    mem = dirs["memory"]
    usage = _number(os.path.join(mem, "memory.usage_in_bytes"), -1)
    if usage < 0:
        raise FileNotFoundError(mem)  # the group is gone: the container stopped
    stat = _kv(_maybe(os.path.join(mem, "memory.stat")))
    limit = _number(os.path.join(mem, "memory.limit_in_bytes"))
    machine = _machine_memory(proc)
    acct = dirs.get("cpuacct", "")
    if acct and os.path.isdir(acct):
        times = _kv(_maybe(os.path.join(acct, "cpuacct.stat")))  # in clock ticks
        percpu = _maybe(os.path.join(acct, "cpuacct.usage_percpu")).split()
        cpu: dict[str, Any] = {
            "total_usage": _number(os.path.join(acct, "cpuacct.usage")),
            "percpu_usage": [int(v) for v in percpu],
            "usage_in_kernelmode": times.get("system", 0) * NS // CLOCK_TICKS,
            "usage_in_usermode": times.get("user", 0) * NS // CLOCK_TICKS}
    else:
        cpu = _procs_cpu(dirs["pids"], proc)
    throttle = _kv(_maybe(os.path.join(dirs["cpu"], "cpu.stat")))
    blkio: dict[str, Any] = dict.fromkeys(BLKIO_FIELDS)
    bdir = dirs.get("blkio", "")
    if bdir and os.path.isdir(bdir):  # dockerd: every v1 list present ([]) with blkio
        for field in BLKIO_FIELDS:
            name = _CFQ_FILES.get(field, field)
            blkio[field] = parse_blkio_v1(_maybe(os.path.join(bdir, f"blkio.{name}")))
        for field in ("io_service_bytes_recursive", "io_serviced_recursive"):
            blkio[field] = blkio[field] or parse_blkio_v1(
                _maybe(os.path.join(bdir, f"blkio.throttle.{field}")))
    return {
        "pids_stats": _nonzero(current=_number(os.path.join(dirs["pids"], "pids.current")),
                               limit=_number(os.path.join(dirs["pids"], "pids.max"))),
        "blkio_stats": blkio,
        "cpu_stats": {"cpu_usage": cpu, "throttling_data": {
            "periods": throttle.get("nr_periods", 0),
            "throttled_periods": throttle.get("nr_throttled", 0),
            "throttled_time": throttle.get("throttled_time", 0)}},
        "memory_stats": _nonzero(
            usage=usage, max_usage=_number(os.path.join(mem, "memory.max_usage_in_bytes")),
            stats={k: stat.get(k, 0) for k in _V1_MEMORY_KEYS},
            failcnt=_number(os.path.join(mem, "memory.failcnt")),
            limit=min(limit, machine) if machine else limit),
    }


def _v2(group: str, proc: str) -> dict[str, Any]:
    """Read the unified group, as containerd's cgroup2 metrics fill moby's statsV2."""
    usage = _number(os.path.join(group, "memory.current"), -1)
    if usage < 0:
        raise FileNotFoundError(group)
    cpu = _kv(_maybe(os.path.join(group, "cpu.stat")))
    stat = _kv(_maybe(os.path.join(group, "memory.stat")))
    machine = _machine_memory(proc)
    limit = _number(os.path.join(group, "memory.max"), machine)
    return {
        "pids_stats": _nonzero(current=_number(os.path.join(group, "pids.current")),
                               limit=_number(os.path.join(group, "pids.max"))),
        "blkio_stats": {**dict.fromkeys(BLKIO_FIELDS), "io_service_bytes_recursive":
                        parse_io_stat(_maybe(os.path.join(group, "io.stat"))) or None},
        "cpu_stats": {
            "cpu_usage": {"total_usage": cpu.get("usage_usec", 0) * 1000,
                          "usage_in_kernelmode": cpu.get("system_usec", 0) * 1000,
                          "usage_in_usermode": cpu.get("user_usec", 0) * 1000},
            "throttling_data": {"periods": cpu.get("nr_periods", 0),
                                "throttled_periods": cpu.get("nr_throttled", 0),
                                "throttled_time": cpu.get("throttled_usec", 0) * 1000}},
        "memory_stats": _nonzero(
            usage=usage, stats={k: stat.get(k, 0) for k in _V2_MEMORY_KEYS},
            failcnt=_kv(_maybe(os.path.join(group, "memory.events"))).get("oom", 0),
            limit=min(limit, machine) if machine else limit),
    }


def sample(cid: str, pid: int, *, parent: str, network: bool = True,
           proc: str = "/proc") -> dict[str, Any]:
    """Return one reading of a running container (a `document` without name, id, pre*).

    `parent` is the engine's cgroup parent; `network` False (host network) reports no
    interfaces, as dockerd's sandbox has none of its own. Raises FileNotFoundError when
    the container's group is gone (it stopped).
    """
    read = time.time_ns()
    dirs = cgroups.cgroup_dirs(cid, parent)
    body = _v2(dirs["unified"], proc) if "unified" in dirs else _v1(dirs, proc)
    # Sampled right after the container's counters, as dockerd does, to keep CPU % steady.
    system, cpus = parse_system_cpu(_read(f"{proc}/stat"))
    cpu = body["cpu_stats"]
    body["cpu_stats"] = {"cpu_usage": cpu["cpu_usage"], "system_cpu_usage": system,
                         "online_cpus": cpus, "throttling_data": cpu["throttling_data"]}
    body = {"read": format_time(read), **body}
    if network and pid > 0:
        nets = parse_net_dev(_maybe(f"{proc}/{pid}/net/dev"))
        if nets:
            body["networks"] = nets
    return body
