"""Resource options and `docker update`: Docker's texts, the decided facts, the worker's job.

Given/when/then through the pure decider (tests/unit/test_decide.py's DSL); the cgroup
writes against a fake cgroup root; the CLI and API translations of the flags and bodies.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec
import pytest

from commands import schema as c
from engine.core.react import react
from engine.errors import InvalidParameter
from events import model as e
from events.specs import HostConfig, RestartPolicy, Ulimit
from moor.api.create import container_spec
from moor.api.update import update_command
from moor.lifecyclecli import add_container_flags
from moor.lifecyclecli import container_spec as cli_spec
from projections.views.feed import feed
from projections.views.inspect import inspect_container
from tests.unit.test_decide import A, create, exited, given, policy, running
from workers.proc import cgroups
from workers.proc.spec import limits_for

MB = 1024 * 1024


def update(ref: str = "web", pids: int | None = None, restart: RestartPolicy | None = None,
           **resources: Any) -> c.UpdateContainer:
    return c.UpdateContainer(ref=ref, resources=HostConfig(**resources), pids_limit=pids,
                             restart_policy=restart)


# --- create-time validation (moby's verifyPlatformContainerResources) ---------------------

@pytest.mark.parametrize(("host", "message"), [
    (HostConfig(memory=64 * MB, memory_swap=32 * MB),
     "Minimum memoryswap limit should be larger than memory limit, see usage"),
    (HostConfig(memory_swap=32 * MB),
     "You should always set the Memory limit when using Memoryswap limit, see usage"),
    (HostConfig(memory_swappiness=101),
     "Invalid value: 101, valid memory swappiness range is 0-100"),
    (HostConfig(memory_reservation=MB), "Minimum memory reservation allowed is 6MB"),
    (HostConfig(memory=16 * MB, memory_reservation=32 * MB),
     "Minimum memory limit can not be less than memory reservation limit, see usage"),
    (HostConfig(nano_cpus=500_000_000, cpu_period=50_000),
     "Conflicting options: Nano CPUs and CPU Period cannot both be set"),
    (HostConfig(nano_cpus=500_000_000, cpu_quota=50_000),
     "Conflicting options: Nano CPUs and CPU Quota cannot both be set"),
    (HostConfig(cpu_period=999), "CPU cfs period can not be less than 1ms (i.e. 1000) or "
                                 "larger than 1s (i.e. 1000000)"),
    (HostConfig(cpu_quota=999), "CPU cfs quota can not be less than 1ms (i.e. 1000)"),
    (HostConfig(cpuset_cpus="0-x"), "Invalid value 0-x for cpuset cpus: invalid format: 0-x"),
    (HostConfig(cpuset_cpus="3-1"), "Invalid value 3-1 for cpuset cpus: invalid format: 3-1"),
    (HostConfig(cpuset_mems="0,,1"),
     "Invalid value 0,,1 for cpuset mems: invalid format: 0,,1"),
    (HostConfig(blkio_weight=5), "Range of blkio weight is from 10 to 1000"),
    (HostConfig(shm_size=-1), "SHM size can not be less than 0"),
    (HostConfig(ulimits=(Ulimit(name="nofiles", soft=1, hard=1),)),
     "invalid ulimit type: nofiles"),
    (HostConfig(ulimits=(Ulimit(name="nofile", soft=2, hard=1),)),
     "ulimit soft limit must be less than or equal to hard limit: 2 > 1"),
])
def test_create_refuses_resources_with_dockers_texts(host: HostConfig, message: str) -> None:
    given().when(create(host=host)).then((400, message))


def test_create_keeps_every_resource_option_and_inspect_shows_it() -> None:
    host = HostConfig(memory=64 * MB, memory_swap=128 * MB, memory_swappiness=20,
                      memory_reservation=32 * MB, oom_kill_disable=True, cpu_shares=512,
                      cpu_period=50_000, cpu_quota=25_000, cpuset_cpus="0", cpuset_mems="0",
                      blkio_weight=300, pids_limit=40, shm_size=8 * MB,
                      ulimits=(Ulimit(name="nofile", soft=512, hard=1024),))
    t = given().when(create(host=host)).then(e.ContainerCreated)
    doc = inspect_container(t.world, t.container())["HostConfig"]
    assert {k: doc[k] for k in (
        "Memory", "MemorySwap", "MemorySwappiness", "MemoryReservation", "OomKillDisable",
        "CpuShares", "CpuPeriod", "CpuQuota", "CpusetCpus", "CpusetMems", "BlkioWeight",
        "PidsLimit", "ShmSize", "Ulimits")} == {
        "Memory": 64 * MB, "MemorySwap": 128 * MB, "MemorySwappiness": 20,
        "MemoryReservation": 32 * MB, "OomKillDisable": True, "CpuShares": 512,
        "CpuPeriod": 50_000, "CpuQuota": 25_000, "CpusetCpus": "0", "CpusetMems": "0",
        "BlkioWeight": 300, "PidsLimit": 40, "ShmSize": 8 * MB,
        "Ulimits": [{"Name": "nofile", "Soft": 512, "Hard": 1024}]}


def test_inspect_shows_dockers_defaults() -> None:
    t = given().when(create(host=HostConfig(memory=32 * MB))).then(e.ContainerCreated)
    doc = inspect_container(t.world, t.container())["HostConfig"]
    assert (doc["MemorySwap"], doc["MemorySwappiness"], doc["ShmSize"]) == (
        64 * MB, None, 64 * MB)


# --- docker update --------------------------------------------------------------------------

def test_update_of_a_running_container_is_a_fact_and_a_job_for_its_run() -> None:
    t = given(*running(host=HostConfig(memory=32 * MB, pids_limit=10))).when(
        update(memory=64 * MB, nano_cpus=500_000_000, pids=50))
    host = HostConfig(memory=64 * MB, memory_swap=64 * MB, nano_cpus=500_000_000,
                      pids_limit=50)
    t.then(e.ContainerUpdated(host_config=host, generation=1))
    assert t.container().host_config == host
    jobs = react(t.world, t.outcome.records[0])
    assert [(j.func, j.kwargs) for j in jobs] == [
        ("workers.jobs.update_container", {"container_id": A, "generation": 1,
                                           "version": t.outcome.records[0].meta.version})]


def test_update_is_dockers_update_event() -> None:
    t = given(*running()).when(update(cpu_shares=512))
    records = [(f"{i}-0", r) for i, r in enumerate(t.scenario.records, 1)]
    actions = [ev["Action"] for _, ev in feed(records) if ev["Type"] == "container"]
    assert actions[-1] == "update"
    assert actions.count("update") == 1


def test_update_of_a_stopped_container_is_kept_for_its_next_start() -> None:
    t = given(*running(), exited()).when(update(cpu_shares=512, cpuset_cpus="0"))
    t.then(e.ContainerUpdated(host_config=HostConfig(cpu_shares=512, cpuset_cpus="0")))
    assert react(t.world, t.outcome.records[0]) == []
    restarted = t.scenario.when(c.StartContainer(ref="web"))
    restarted.then(e.StartInitiated)
    assert restarted.container().host_config.cpu_shares == 512


def test_update_zero_fields_keep_their_values_and_pids_minus_one_is_unlimited() -> None:
    host = HostConfig(memory=32 * MB, cpu_shares=256, pids_limit=10, blkio_weight=100)
    t = given(create(host=host)).when(update(pids=-1, blkio_weight=200))
    t.then(e.ContainerUpdated(host_config=msgspec.structs.replace(
        host, pids_limit=0, blkio_weight=200)))


def test_update_restart_policy() -> None:
    t = given(create()).when(update(restart=RestartPolicy(name="always")))
    t.then(e.ContainerUpdated)
    assert t.container().host_config.restart_policy.name == "always"


@pytest.mark.parametrize(("host", "cmd", "status", "message"), [
    (policy("no", auto_remove=True), update(restart=RestartPolicy(name="always")), 409,
     f"Cannot update container {A}: Restart policy cannot be updated because AutoRemove is "
     "enabled for the container"),
    (HostConfig(), update(restart=RestartPolicy(name="sometimes")), 400,
     "invalid restart policy: unknown policy 'sometimes'; use one of 'no', 'always', "
     "'on-failure', or 'unless-stopped'"),
    (HostConfig(cpu_period=50_000), update(nano_cpus=10**9), 409,
     f"Cannot update container {A}: Conflicting options: Nano CPUs cannot be updated as "
     "CPU Period has already been set"),
    (HostConfig(cpu_quota=50_000), update(nano_cpus=10**9), 409,
     f"Cannot update container {A}: Conflicting options: Nano CPUs cannot be updated as "
     "CPU Quota has already been set"),
    (HostConfig(nano_cpus=10**9), update(cpu_period=50_000), 409,
     f"Cannot update container {A}: Conflicting options: CPU Period cannot be updated as "
     "NanoCPUs has already been set"),
    (HostConfig(nano_cpus=10**9), update(cpu_quota=50_000), 409,
     f"Cannot update container {A}: Conflicting options: CPU Quota cannot be updated as "
     "NanoCPUs has already been set"),
    (HostConfig(memory=32 * MB), update(memory=128 * MB), 409,
     f"Cannot update container {A}: Memory limit should be smaller than already set "
     "memoryswap limit, update the memoryswap at the same time"),
    (HostConfig(), update(memory=MB), 400, "Minimum memory limit allowed is 6MB"),
    (HostConfig(memory=64 * MB), update(memory=64 * MB, memory_swap=32 * MB), 400,
     "Minimum memoryswap limit should be larger than memory limit, see usage"),
])
def test_update_refusals(host: HostConfig, cmd: c.UpdateContainer, status: int,
                         message: str) -> None:
    given(create(host=host)).when(cmd).then((status, message))


def test_update_swap_without_memory_is_allowed() -> None:
    given(create(host=HostConfig(memory=32 * MB))).when(update(memory_swap=128 * MB)).then(
        e.ContainerUpdated(host_config=HostConfig(memory=32 * MB, memory_swap=128 * MB)))


def test_update_of_a_container_being_removed_is_a_500() -> None:
    given(*running(), c.RemoveContainer(ref="web", force=True)).when(update(cpu_shares=512)) \
        .then((500, f'Cannot update container {A}: container is marked for removal and '
                    'cannot be "update"'))


def test_update_of_an_unknown_container() -> None:
    given().when(update("nope", cpu_shares=512)).then((404, "No such container: nope"))


# --- the edges: the docker CLI's and the API's shapes -------------------------------------

def test_api_update_body() -> None:
    cmd = update_command("web", {"Memory": 64 * MB, "MemorySwap": 0, "NanoCpus": 500_000_000,
                                 "PidsLimit": 50, "CpusetCpus": "0", "KernelMemory": 0,
                                 "RestartPolicy": {"Name": "", "MaximumRetryCount": 0}})
    assert cmd == update("web", pids=50, memory=64 * MB, nano_cpus=500_000_000,
                         cpuset_cpus="0")
    cmd = update_command("web", {"RestartPolicy": {"Name": "on-failure",
                                                   "MaximumRetryCount": 3}})
    assert cmd.restart_policy == RestartPolicy(name="on-failure", maximum_retry_count=3)
    assert cmd.pids_limit is None
    with pytest.raises(InvalidParameter):
        update_command("web", {"PidsLimit": "50"})


def test_api_create_reads_the_resource_fields() -> None:
    _, host = container_spec({"Image": "busybox", "HostConfig": {
        "Memory": 64 * MB, "MemorySwap": -1, "MemorySwappiness": None,
        "MemoryReservation": 16 * MB, "OomKillDisable": True, "CpuShares": 512,
        "CpuPeriod": 50_000, "CpuQuota": 10_000, "CpusetCpus": "0", "CpusetMems": "0",
        "BlkioWeight": 300, "ShmSize": 8 * MB,
        "Ulimits": [{"Name": "nofile", "Soft": 10, "Hard": 20}]}})
    assert host == HostConfig(
        memory=64 * MB, memory_swap=-1, memory_reservation=16 * MB, oom_kill_disable=True,
        cpu_shares=512, cpu_period=50_000, cpu_quota=10_000, cpuset_cpus="0",
        cpuset_mems="0", blkio_weight=300, shm_size=8 * MB,
        ulimits=(Ulimit(name="nofile", soft=10, hard=20),))


def test_cli_flags() -> None:
    p = argparse.ArgumentParser()
    add_container_flags(p)
    args = p.parse_args(["--memory", "64m", "--memory-swap", "-1", "--memory-swappiness", "0",
                         "--memory-reservation", "16m", "--oom-kill-disable",
                         "--cpu-shares", "512", "--cpu-period", "50000", "--cpu-quota",
                         "10000", "--cpuset-cpus", "0", "--cpuset-mems", "0",
                         "--blkio-weight", "300", "--pids-limit", "-1",
                         "--ulimit", "nofile=10:20", "--ulimit", "nproc=5",
                         "--shm-size", "8m", "busybox"])
    _, host = cli_spec(args)
    assert host == HostConfig(
        memory=64 * MB, memory_swap=-1, memory_swappiness=0, memory_reservation=16 * MB,
        oom_kill_disable=True, cpu_shares=512, cpu_period=50_000, cpu_quota=10_000,
        cpuset_cpus="0", cpuset_mems="0", blkio_weight=300, shm_size=8 * MB,
        ulimits=(Ulimit(name="nofile", soft=10, hard=20), Ulimit(name="nproc", soft=5,
                                                                 hard=5)))


# --- the cgroup files (a fake v1 and v2 root) ------------------------------------------------

def _v1_root(tmp_path: Path) -> Path:
    root = tmp_path / "cg"
    for ctrl in ("memory", "pids", "cpu", "devices", "freezer", "cpuset", "blkio"):
        (root / ctrl).mkdir(parents=True)
        (root / ctrl / "cgroup.procs").write_text("")
    (root / "cpuset/cpuset.cpus").write_text("0-3\n")
    (root / "cpuset/cpuset.mems").write_text("0\n")
    return root


def test_v1_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _v1_root(tmp_path)
    monkeypatch.setenv("MOOR_CGROUP_ROOT", str(root))
    monkeypatch.setenv("MOOR_CGROUP_PARENT", "moorage/e1")
    # The kernel makes these files with the group; a fake root has to.
    for level in ("moorage", "moorage/e1", "moorage/e1/c1"):
        (root / "cpuset" / level).mkdir(parents=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            (root / "cpuset" / level / name).write_text("\n")
    (root / "cpu/moorage/e1/c1").mkdir(parents=True)
    (root / "cpu/moorage/e1/c1/cpu.cfs_quota_us").write_text("")
    (root / "blkio/moorage/e1/c1").mkdir(parents=True)
    (root / "blkio/moorage/e1/c1/blkio.weight").write_text("")
    host = HostConfig(memory=64 * MB, memory_swappiness=10, memory_reservation=32 * MB,
                      oom_kill_disable=True, cpu_shares=512, cpu_period=50_000,
                      cpu_quota=25_000, cpuset_cpus="1-2", blkio_weight=300)
    cgroups.ensure_cgroup("c1", limits=limits_for(host))
    files = {
        "memory/moorage/e1/c1/memory.limit_in_bytes": str(64 * MB),
        "memory/moorage/e1/c1/memory.soft_limit_in_bytes": str(32 * MB),
        "memory/moorage/e1/c1/memory.swappiness": "10",
        "memory/moorage/e1/c1/memory.oom_control": "1",
        "cpu/moorage/e1/c1/cpu.shares": "512",
        "cpu/moorage/e1/c1/cpu.cfs_period_us": "50000",
        "cpu/moorage/e1/c1/cpu.cfs_quota_us": "25000",
        "cpuset/moorage/cpuset.cpus": "0-3",  # filled from the parent on the way down
        "cpuset/moorage/e1/cpuset.mems": "0",
        "cpuset/moorage/e1/c1/cpuset.cpus": "1-2",
        "cpuset/moorage/e1/c1/cpuset.mems": "0",
        "blkio/moorage/e1/c1/blkio.weight": "300",
    }
    assert {k: (root / k).read_text() for k in files} == files


def test_v2_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cg"
    (root / "moorage/c2").mkdir(parents=True)
    for level in (root, root / "moorage"):
        (level / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    monkeypatch.setenv("MOOR_CGROUP_ROOT", str(root))
    monkeypatch.setenv("MOOR_CGROUP_PARENT", "moorage")
    host = HostConfig(memory_reservation=32 * MB, cpu_shares=1024, cpu_period=50_000,
                      cpu_quota=25_000, cpuset_cpus="0", cpuset_mems="0", blkio_weight=500)
    cgroups.ensure_cgroup("c2", limits=limits_for(host))
    group = root / "moorage/c2"
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu +cpuset +io"
    assert {n: (group / n).read_text() for n in (
        "memory.low", "cpu.max", "cpu.weight", "io.weight", "cpuset.cpus", "cpuset.mems")} == {
        "memory.low": str(32 * MB), "cpu.max": "25000 50000", "cpu.weight": "39",
        "io.weight": "4950", "cpuset.cpus": "0", "cpuset.mems": "0"}
