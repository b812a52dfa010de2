"""Tear a chaos engine down: stop its programs by pid, scrub what containers left, release
the bridge, chains and cgroups, delete its keys, Redis and work dir, and check the host.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time

from tests.chaos import hostprobe
from tests.chaos.rig import ChaosEngine
from tests.e2e.conftest import Steps, _delete_keys, stop_process

__all__ = ["teardown"]


def teardown(engine: ChaosEngine, cids: list[str]) -> list[str]:
    """Stop everything the run started (by pid), scrub what containers left (a stuck one
    keeps its process, mounts and namespace), release the bridge, chains and cgroups,
    delete the keys, Redis and the work dir; return what went wrong or had to be scrubbed.

    `cids` are every container the journal saw created. Scrubbed resources are reported
    here, not counted as leaks: the per-round leak check has already judged them.
    """
    from workers.net import portmap

    step = Steps(catch=BaseException)  # keep going even past an interrupt
    problems = step.problems

    step("stop monitor", engine.stop_monitor)
    with engine.lock:
        step("stop programs", engine.stop_all)
    # Supervisors and helpers the worker forked (our descendants) that outlived it, and the
    # processes of containers the engine never removed.
    strays = engine.our_processes()
    strays += [p for ps in hostprobe.container_pids(engine.cgroup_parent).values() for p in ps]
    for pid in strays:
        step(f"scrub process {pid}", functools.partial(_kill, pid))
    if strays:
        time.sleep(0.3)
    step("scrub mounts", lambda: _unmount_under(engine.data_root))
    for cid in cids:
        step(f"scrub {cid[:12]}", functools.partial(_scrub_network, cid))
    cfg = engine.bridge_config()
    step("release chains", lambda: portmap.release_chains(cfg))
    step("delete bridge", lambda: _delete_link(engine.bridge))
    step("release cgroups", lambda: _rmdir_cgroups(engine.cgroup_parent))
    if engine.server is not None and engine.server.proc.poll() is None:
        os.kill(engine.server.pid, signal.SIGCONT)  # a fault may have left it stopped
        step("delete keys", lambda: _delete_keys(engine.redis, engine.keys))
        step("stop redis", lambda: stop_process(engine.server.proc))  # type: ignore[union-attr]
    engine.redis.close()
    left = hostprobe.mounts_under(engine.data_root)
    if left:
        problems.append(f"mounts left under {engine.data_root}: {left}; work dir kept")
    else:
        step("delete work dir", lambda: shutil.rmtree(engine.workdir))
    step("final host check", lambda: _final_leaks(engine, cids))
    return problems


def _kill(pid: int) -> list[str]:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return []
    return [f"killed pid {pid}"]


def _delete_link(name: str) -> None:
    """Delete a link by its name, unique to the run (absent is fine)."""
    if os.path.exists(f"/sys/class/net/{name}"):
        subprocess.run(["ip", "link", "delete", name], check=True, capture_output=True,
                       timeout=30)


def _unmount_under(root: str) -> list[str]:
    done = []
    for mount in sorted(hostprobe.mounts_under(root), reverse=True):
        if subprocess.run(["umount", mount], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mount], capture_output=True)
        done.append(f"unmounted {mount}")
    return done


def _scrub_network(cid: str) -> list[str]:
    """Delete the container's namespaces, links and port rules, if any are left."""
    from workers.net import portmap

    done = []
    for name in hostprobe.netns_entries(cid):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        done.append(f"deleted netns {name}")
    for link in hostprobe.links_matching(cid):
        subprocess.run(["ip", "link", "delete", link], capture_output=True)
        done.append(f"deleted link {link}")
    if hostprobe.iptables_lines(cid):
        portmap.release_ports(cid)
        done.append("deleted its iptables rules")
    return done


def _final_leaks(engine: ChaosEngine, cids: list[str]) -> list[str]:
    """What the run left on the host after teardown (empty: nothing)."""
    found = [f"mount {m}" for m in hostprobe.mounts_under(engine.data_root)]
    if os.path.exists(f"/sys/class/net/{engine.bridge}"):
        found.append(f"bridge {engine.bridge}")
    found += [f"iptables {line}" for line in hostprobe.iptables_lines(
        f"moor-bridge:{engine.bridge}", *cids)]
    found += [f"cgroup {d}" for d in hostprobe.cgroup_parent_dirs(engine.cgroup_parent)]
    found += [f"process {pid}" for pid in engine.our_processes()]
    for cid in cids:
        found += [f"netns {n}" for n in hostprobe.netns_entries(cid)]
        found += [f"link {n}" for n in hostprobe.links_matching(cid)]
    if os.path.exists(engine.workdir):
        found.append(f"work dir {engine.workdir}")
    return found


def _rmdir_cgroups(parent: str) -> list[str]:
    """Remove the run's cgroup parent everywhere; report children still there (leaks)."""
    left = []
    for base in hostprobe.cgroup_parent_dirs(parent):
        for entry in os.scandir(base):
            if entry.is_dir():
                left.append(f"cgroup {entry.path}")
                try:
                    os.rmdir(entry.path)
                except OSError:
                    pass
        try:
            os.rmdir(base)
        except OSError as exc:
            left.append(f"cgroup {base}: {exc}")
    return left
