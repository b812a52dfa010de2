"""Resource options and `docker update` on a real host (cgroup v1 here; v2 files in unit).

Each option given at create is read back from the container's cgroup files (or, for
`--ulimit` and `--shm-size`, from its process) and from inspect; `docker update` changes
the live cgroup and inspect, and a restart keeps it. Driven through the real docker CLI
and through `moor`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from events import model as e
from tests.e2e.conftest import Engine, moor_run, wait_for
from tests.e2e.dockerapi import (
    DockerApi,
    api_fixtures,
    cid_of,
    daemon_error,
)
from workers.proc import cgroups

pytestmark = pytest.mark.privileged

MB = 1024 * 1024


docker_api, dk, tag = api_fixtures("resources-api", "res")


def cgroup_file(engine: Engine, cid: str, controller: str, name: str) -> str:
    """Read one of the container's cgroup files (v1: per controller; v2: the one group)."""
    if cgroups.is_unified():
        path = os.path.join("/sys/fs/cgroup", engine.cgroup_part(cid), name)
    else:
        path = os.path.join("/sys/fs/cgroup", controller, engine.cgroup_part(cid), name)
    with open(path) as f:
        return f.read().strip()


def inspect_host(dk: DockerApi, ref: str) -> dict[str, Any]:
    return json.loads(dk.docker("inspect", ref).stdout)[0]["HostConfig"]


def proc_limits(pid: int) -> dict[str, tuple[str, str]]:
    """Return /proc/PID/limits as {name: (soft, hard)}."""
    with open(f"/proc/{pid}/limits") as f:
        rows = f.read().splitlines()[1:]
    return {row[:26].strip(): tuple(row[26:].split()[:2]) for row in rows}  # type: ignore[misc]


def shm_options(pid: int) -> str:
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == "/dev/shm":
                return fields[-1]
    raise AssertionError("no /dev/shm in the container")


def pid_of(engine: Engine, cid: str) -> int:
    ctr = engine.container(cid)
    assert ctr is not None and ctr.running
    return ctr.pid


V1 = not cgroups.is_unified()


def test_each_option_at_create_is_in_the_cgroup_and_inspect(dk: DockerApi, tag: str,
                                                            engine: Engine) -> None:
    cid = cid_of(dk.docker(
        "run", "-d", "--memory", "64m", "--memory-swap", "128m", "--memory-swappiness", "10",
        "--memory-reservation", "32m", "--oom-kill-disable", "--cpu-shares", "512",
        "--cpu-period", "50000", "--cpu-quota", "25000", "--cpuset-cpus", "0",
        "--cpuset-mems", "0", "--blkio-weight", "300", "--pids-limit", "40",
        "--ulimit", "nofile=512:1024", "--shm-size", "8m", tag, "sleep", "300"))
    host = inspect_host(dk, cid)
    assert {k: host[k] for k in (
        "Memory", "MemorySwap", "MemorySwappiness", "MemoryReservation", "OomKillDisable",
        "CpuShares", "CpuPeriod", "CpuQuota", "CpusetCpus", "CpusetMems", "BlkioWeight",
        "PidsLimit", "Ulimits", "ShmSize")} == {
        "Memory": 64 * MB, "MemorySwap": 128 * MB, "MemorySwappiness": 10,
        "MemoryReservation": 32 * MB, "OomKillDisable": True, "CpuShares": 512,
        "CpuPeriod": 50_000, "CpuQuota": 25_000, "CpusetCpus": "0", "CpusetMems": "0",
        "BlkioWeight": 300, "PidsLimit": 40,
        "Ulimits": [{"Name": "nofile", "Soft": 512, "Hard": 1024}], "ShmSize": 8 * MB}
    if V1:
        files = {("memory", "memory.limit_in_bytes"): str(64 * MB),
                 ("memory", "memory.memsw.limit_in_bytes"): str(128 * MB),
                 ("memory", "memory.swappiness"): "10",
                 ("memory", "memory.soft_limit_in_bytes"): str(32 * MB),
                 ("cpu", "cpu.shares"): "512",
                 ("cpu", "cpu.cfs_period_us"): "50000",
                 ("cpu", "cpu.cfs_quota_us"): "25000",
                 ("cpuset", "cpuset.cpus"): "0",
                 ("cpuset", "cpuset.mems"): "0",
                 ("pids", "pids.max"): "40"}
        assert {k: cgroup_file(engine, cid, *k) for k in files} == files
        oom = cgroup_file(engine, cid, "memory", "memory.oom_control").splitlines()
        assert "oom_kill_disable 1" in oom
        weight = f"/sys/fs/cgroup/blkio/{engine.cgroup_part(cid)}/blkio.weight"
        if os.path.exists(weight):  # Docker discards the weight on kernels without it
            assert cgroup_file(engine, cid, "blkio", "blkio.weight") == "300"
    pid = pid_of(engine, cid)
    assert proc_limits(pid)["Max open files"] == ("512", "1024")
    assert "size=8192k" in shm_options(pid)
    # And the process really is confined to CPU 0.
    with open(f"/proc/{pid}/status") as f:
        assert "Cpus_allowed_list:\t0\n" in f.read()
    dk.docker("rm", "-f", cid)


def test_cpus_at_create_and_the_refusals(dk: DockerApi, tag: str, engine: Engine) -> None:
    cid = cid_of(dk.docker("run", "-d", "--cpus", "1.5", tag, "sleep", "300"))
    assert inspect_host(dk, cid)["NanoCpus"] == 1_500_000_000
    quota = cgroup_file(engine, cid, "cpu", "cpu.cfs_quota_us" if V1 else "cpu.max")
    assert quota.split()[0] == "150000"
    dk.docker("rm", "-f", cid)
    refused = {
        ("--memory", "64m", "--memory-swap", "32m"):
            "Minimum memoryswap limit should be larger than memory limit, see usage",
        ("--cpus", "1", "--cpu-period", "50000"):
            "Conflicting options: Nano CPUs and CPU Period cannot both be set",
        ("--cpuset-cpus", "0-x"): "Invalid value 0-x for cpuset cpus: invalid format: 0-x",
        ("--blkio-weight", "5"): "Range of blkio weight is from 10 to 1000",
    }
    for flags, text in refused.items():
        done = dk.docker("create", *flags, tag, check=False)
        assert done.returncode != 0, flags
        assert daemon_error(done).endswith(text), done.stderr


def test_docker_update_changes_the_live_cgroup_and_survives_a_restart(
        dk: DockerApi, tag: str, engine: Engine) -> None:
    cid = cid_of(dk.docker("run", "-d", "--memory", "32m", tag, "sleep", "300"))
    cursor = engine.last_event_id()
    out = dk.docker("update", "--memory", "64m", "--cpus", "0.5", "--pids-limit", "50", cid)
    assert out.stdout.strip() == cid

    def live() -> tuple[str, str, str]:
        if V1:
            return (cgroup_file(engine, cid, "memory", "memory.limit_in_bytes"),
                    cgroup_file(engine, cid, "cpu", "cpu.cfs_quota_us"),
                    cgroup_file(engine, cid, "pids", "pids.max"))
        return (cgroup_file(engine, cid, "memory", "memory.max"),
                cgroup_file(engine, cid, "cpu", "cpu.max").split()[0],
                cgroup_file(engine, cid, "pids", "pids.max"))

    want = (str(64 * MB), "50000", "50")
    wait_for(lambda: live() == want, 10, f"the live cgroup to take the update ({live()})")
    host = inspect_host(dk, cid)
    assert (host["Memory"], host["MemorySwap"], host["NanoCpus"], host["PidsLimit"]) == (
        64 * MB, 64 * MB, 500_000_000, 50)
    assert any(isinstance(r.event, e.ContainerUpdated)
               for _, r in engine.events(after=cursor))
    time.sleep(1.1)  # the CLI sends --until in whole seconds: let the update pass
    feed = dk.docker("events", "--since", "1h", "--until", "0s", "--filter", f"container={cid}",
                     "--filter", "event=update", "--format", "{{.Action}}").stdout
    assert feed.split() == ["update"]
    # Memory above the swap limit already set needs the swap too (409, wrapped).
    done = dk.docker("update", "--memory", "128m", cid, check=False)
    assert daemon_error(done).endswith(
        f"Cannot update container {cid}: Memory limit should be smaller than already set "
        "memoryswap limit, update the memoryswap at the same time")

    dk.docker("restart", "-t", "1", cid)
    wait_for(lambda: live() == want, 10, "the new run to start with the updated limits")
    assert inspect_host(dk, cid)["PidsLimit"] == 50
    dk.docker("rm", "-f", cid)


@pytest.mark.skipif(not V1, reason="cgroup v2 reclaims or OOM-kills instead (runc, moby)")
def test_update_below_usage_is_refused_by_the_kernel_and_recorded(
        dk: DockerApi, tag: str, engine: Engine) -> None:
    cid = cid_of(dk.docker("run", "-d", "--memory", "64m", "--memory-swap", "64m", tag, "sh",
                           "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=40; sleep 300"))
    wait_for(lambda: int(cgroup_file(engine, cid, "memory", "memory.usage_in_bytes")) > 40 * MB,
             10, "the container to fill 40 MiB of /dev/shm")
    cursor = engine.last_event_id()
    dk.docker("update", "--memory", "16m", "--memory-swap", "16m", cid)

    def drift() -> str:
        return next((r.event.detail for _, r in engine.events(after=cursor)
                     if isinstance(r.event, e.DriftObserved)), "")

    wait_for(drift, 10, "the worker to report the refused update")
    assert drift().startswith(f"Cannot update container {cid}: unable to set memory limit to "
                              f"{16 * MB} (current usage: "), drift()
    dk.docker("rm", "-f", cid)


def test_update_restart_policy_and_auto_remove(dk: DockerApi, tag: str) -> None:
    cid = cid_of(dk.docker("create", "--rm", tag, "true"))
    done = dk.docker("update", "--restart", "always", cid, check=False)
    assert daemon_error(done).endswith(
        f"Cannot update container {cid}: Restart policy cannot be updated because AutoRemove "
        "is enabled for the container")
    dk.docker("rm", "-f", cid)
    cid = cid_of(dk.docker("create", tag, "true"))
    dk.docker("update", "--restart", "on-failure:3", cid)
    policy = inspect_host(dk, cid)["RestartPolicy"]
    assert policy == {"Name": "on-failure", "MaximumRetryCount": 3}
    dk.docker("rm", "-f", cid)


def test_moor_run_and_update(engine: Engine) -> None:
    cid = moor_run(engine, "--memory", "32m", "--cpu-shares", "256", "--cpuset-cpus", "0",
                   "--ulimit", "nproc=64", "busybox", "sleep", "300")
    pid = pid_of(engine, cid)
    assert proc_limits(pid)["Max processes"] == ("64", "64")
    if V1:
        assert cgroup_file(engine, cid, "cpu", "cpu.shares") == "256"
        assert cgroup_file(engine, cid, "cpuset", "cpuset.cpus") == "0"
    engine.moor("update", "--memory", "64m", "--cpus", "0.5", "--pids-limit", "50", cid)
    memory = ("memory", "memory.limit_in_bytes" if V1 else "memory.max")
    wait_for(lambda: cgroup_file(engine, cid, *memory) == str(64 * MB), 10,
             "moor update to reach the live cgroup")
    assert cgroup_file(engine, cid, "pids", "pids.max") == "50"
    ctr = engine.container(cid)
    assert ctr is not None
    assert (ctr.host_config.memory, ctr.host_config.nano_cpus) == (64 * MB, 500_000_000)
    done = engine.moor("update", cid, check=False)
    assert done.returncode == 1
    assert "you must provide one or more flags" in done.stderr
    engine.moor("rm", "-f", cid)
    engine.moor("replay", "--verify")
