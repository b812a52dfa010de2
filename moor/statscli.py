"""`moor stats` and `moor top`: containers' resource usage and processes, read on this host.

Like `moor logs`, they read this host's files (the containers' cgroups, /proc) through
workers.proc, not through the API socket: they work wherever the engine's Redis and the
host are, with or without `moor api`; the API's collector serves the API's clients.

The table is `docker stats`'s (docker/cli cli/command/container/stats_helpers.go and
formatter_stats.go): CPU % is the container's CPU time delta over the host's, times the
online CPUs; memory leaves out the inactive page cache; sizes are go-units' (binary for
memory, decimal with 3 digits for I/O); columns as Go's tabwriter pads them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from moor.failures import guard

if TYPE_CHECKING:
    from engine.core.state import Container

__all__ = ["block_io", "bytes_size", "cpu_percent", "human_size", "memory_used", "register",
           "stats_row", "tabulate"]

HEADER = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O",
          "BLOCK I/O", "PIDS"]
_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
_DECIMAL = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
INTERVAL = 1.0  # dockerd's collector samples every second


# --- docker CLI's computations (pure) ----------------------------------------------------

def cpu_percent(doc: dict[str, Any]) -> float:
    """Return CPU % as the docker CLI computes it from one stats document."""
    cur, pre = doc["cpu_stats"], doc["precpu_stats"]
    cpu_delta = cur["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
    system_delta = cur.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    cpus = cur.get("online_cpus") or len(cur["cpu_usage"].get("percpu_usage") or ())
    if system_delta > 0 and cpu_delta > 0:
        return cpu_delta / system_delta * cpus * 100.0
    return 0.0


def memory_used(mem: dict[str, Any]) -> int:
    """Return the usage without the inactive file cache (v1 total_, else v2 key)."""
    usage, stats = mem.get("usage", 0), mem.get("stats") or {}
    if "total_inactive_file" in stats and stats["total_inactive_file"] < usage:
        return int(usage - stats["total_inactive_file"])
    if stats.get("inactive_file", 0) < usage:
        return int(usage - stats.get("inactive_file", 0))
    return int(usage)


def block_io(blkio: dict[str, Any]) -> tuple[int, int]:
    """Return (read, written) bytes: the recursive service bytes by op initial."""
    read = write = 0
    for entry in blkio.get("io_service_bytes_recursive") or ():
        op = entry.get("op", "")[:1].lower()
        read += entry["value"] if op == "r" else 0
        write += entry["value"] if op == "w" else 0
    return read, write


def _size(value: float, base: float, units: Sequence[str]) -> tuple[float, str]:
    i = 0
    while value >= base and i < len(units) - 1:
        value, i = value / base, i + 1
    return value, units[i]


def bytes_size(value: float) -> str:
    """go-units BytesSize: binary units, 4 significant digits ("64MiB")."""
    size, unit = _size(value, 1024.0, _BINARY)
    return f"{size:.4g}{unit}"


def human_size(value: float, precision: int = 3) -> str:
    """go-units HumanSizeWithPrecision: decimal units ("1.23kB")."""
    size, unit = _size(value, 1000.0, _DECIMAL)
    return f"{size:.{precision}g}{unit}"


def stats_row(doc: dict[str, Any], trunc: bool = True) -> list[str]:
    """Return a `docker stats` table row for one stats document."""
    mem = doc.get("memory_stats") or {}
    used, limit = memory_used(mem), mem.get("limit", 0)
    nets = (doc.get("networks") or {}).values()
    rx, tx = sum(n["rx_bytes"] for n in nets), sum(n["tx_bytes"] for n in nets)
    read, write = block_io(doc.get("blkio_stats") or {})
    name = doc.get("name", "")
    return [doc["id"][:12] if trunc else doc["id"], name[1:] if len(name) > 1 else "--",
            f"{cpu_percent(doc):.2f}%", f"{bytes_size(used)} / {bytes_size(limit)}",
            f"{used / limit * 100 if limit else 0.0:.2f}%",
            f"{human_size(rx)} / {human_size(tx)}", f"{human_size(read)} / {human_size(write)}",
            str((doc.get("pids_stats") or {}).get("current", 0))]


def tabulate(rows: Sequence[Sequence[str]], minwidth: int, padding: int = 3) -> str:
    """Align cells as Go's tabwriter does: every cell but a line's last is padded."""
    widths: dict[int, int] = {}
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, minwidth), len(cell) + padding)
    return "\n".join("".join(c.ljust(widths[i]) for i, c in enumerate(row[:-1]))
                     + (row[-1] if row else "") for row in rows)


# --- the commands --------------------------------------------------------------------------

def _stats(args: argparse.Namespace) -> int:
    from engine.config import cgroup_parent
    from engine.errors import NotFound
    from moor.connect import redis_and_keys
    from projections.stream import load_live
    from projections.views.inspect import find_container
    from workers.proc.stats import document, sample

    redis, keys = redis_and_keys(args.redis_url)
    parent = cgroup_parent()
    named = list(args.containers)

    def chosen(first: bool) -> list[Container]:
        world, _ = load_live(redis, keys)
        if not named:
            found = [c for c in world.containers.values() if c.running or args.all]
            return sorted(found, key=lambda c: c.created, reverse=True)  # as `docker ps`
        out = []
        for ref in list(named):
            try:
                out.append(find_container(world, ref))
            except NotFound:
                if first:
                    raise
                named.remove(ref)  # removed while shown: its stream ended
        return out

    def read(ctr: Container) -> dict[str, Any] | None:
        if not ctr.running or ctr.restarting:
            return None
        try:
            return sample(ctr.id, ctr.pid, parent=parent,
                          network=ctr.host_config.network_mode != "host")
        except FileNotFoundError:
            return None

    previous: dict[str, dict[str, Any] | None] = {}
    if args.no_stream:
        previous = {c.id: read(c) for c in chosen(True)}
        time.sleep(INTERVAL)
    first, live = True, sys.stdout.isatty() and not args.no_stream
    while True:
        ctrs = chosen(first)
        readings = {c.id: read(c) for c in ctrs}
        rows = [HEADER] + [stats_row(document(c.name, c.id, readings[c.id],
                                              previous.get(c.id)), not args.no_trunc)
                           for c in ctrs]
        table = tabulate(rows, minwidth=10)
        if live:  # redraw in place, as the docker CLI does
            table = "\033[H" + "".join(f"{line}\033[K\n" for line in table.split("\n")) \
                + "\033[J"
            sys.stdout.write(("\033[2J" if first else "") + table)
        else:
            sys.stdout.write(table + "\n")
        sys.stdout.flush()
        if args.no_stream or (args.containers and not named):
            return 0
        previous, first = readings, False
        time.sleep(INTERVAL)


def _top(args: argparse.Namespace) -> int:
    from engine.config import cgroup_parent
    from engine.errors import Conflict
    from moor.connect import redis_and_keys
    from projections.stream import load_live
    from projections.views.inspect import find_container
    from workers.proc.top import top

    redis, keys = redis_and_keys(args.redis_url, lite=True)
    ctr = find_container(load_live(redis, keys)[0], args.container)
    if not ctr.running:
        raise Conflict(f"container {ctr.id} is not running")
    if ctr.restarting:
        raise Conflict(f"Container {ctr.id} is restarting, wait until the container is "
                       "running")
    procs = top(ctr.id, cgroup_parent(), " ".join(args.ps_args))
    print(tabulate([procs["Titles"], *(procs["Processes"] or ())], minwidth=20))
    return 0


def register(sub: Any) -> None:
    """Add `stats` and `top` to `moor`'s parser."""
    p = sub.add_parser("stats", help="show containers' resource usage (docker stats)")
    p.add_argument("-a", "--all", action="store_true", help="all containers, not only running")
    p.add_argument("--no-stream", action="store_true", help="print one table and exit")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate ids")
    p.add_argument("containers", nargs="*", metavar="CONTAINER")
    p.set_defaults(func=guard(_stats, interrupt_code=0), long_running=True)
    p = sub.add_parser("top", help="list a container's processes (docker top)")
    p.add_argument("container")
    p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="PS_OPTIONS",
                   help="ps options (default -ef)")
    p.set_defaults(func=guard(_top))
