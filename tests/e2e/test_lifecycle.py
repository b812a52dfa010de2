"""A container's life on the real host, driven through `moor`: run, inspect, serve, stop,
restart and remove, with each host resource checked from outside the engine."""

from __future__ import annotations

import glob
import json
import os
import time
from pathlib import Path

import pytest

from events import model as e
from tests.e2e.conftest import (
    Engine,
    free_port,
    host_address,
    http_get,
    moor_run,
    ps_status,
    start_ticks,
    wait_for,
)

pytestmark = pytest.mark.privileged




def ns_ids(pid: int | str) -> dict[str, str]:
    return {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("pid", "net", "mnt", "uts", "ipc")}


def test_running_container_is_isolated_networked_and_serves_its_port(engine: Engine) -> None:
    port = free_port()
    name = f"web-{engine.token}"
    cid = moor_run(engine, "--name", name, "-p", f"{port}:80", "busybox", "httpd", "-f", "-p",
                   "80")
    doc = engine.inspect(name)
    assert doc["Id"] == cid and doc["State"]["Running"] is True
    pid = doc["State"]["Pid"]
    ip = doc["NetworkSettings"]["IPAddress"]
    gateway = doc["NetworkSettings"]["Gateway"]
    assert ip and gateway

    # Its own namespaces, and its own cgroup.
    mine, its = ns_ids("self"), ns_ids(pid)
    assert all(mine[ns] != its[ns] for ns in mine), (mine, its)
    assert engine.cgroup_part(cid) in Path(f"/proc/{pid}/cgroup").read_text()

    # PID 1 is the command; the hostname is the short id; /proc is its own.
    assert engine.nsenter(cid, "cat", "/proc/1/cmdline") == "httpd\0-f\0-p\0" + "80\0"
    assert engine.nsenter(cid, "hostname").strip() == cid[:12]
    pids = [p for p in engine.nsenter(cid, "ls", "/proc").split() if p.isdigit()]
    assert "1" in pids and len(pids) <= 3, pids

    # lo and eth0 only, eth0 with the address inspect reports; the gateway answers.
    links = {line.split(":")[1].strip().split("@")[0]
             for line in engine.nsenter(cid, "ip", "-o", "link").splitlines()}
    assert links == {"lo", "eth0"}, links
    addrs = {(w[1], w[3]) for w in (line.split()
                                    for line in engine.nsenter(cid, "ip", "-4", "-o", "addr")
                                    .splitlines())}
    prefix_len = doc["NetworkSettings"]["IPPrefixLen"]
    assert addrs == {("lo", "127.0.0.1/8"), ("eth0", f"{ip}/{prefix_len}")}
    assert "1 packets received" in engine.nsenter(cid, "ping", "-c", "1", "-W", "3", gateway)

    # The published port serves busybox httpd from the loopback and the host's address.
    Path(engine.container_dir(cid), "merged", "index.html").write_text(f"hello {cid}\n")
    for host in ("127.0.0.1", host_address()):
        assert http_get(host, port) == (200, f"hello {cid}\n"), host
        assert http_get(host, port, "/missing")[0] == 404, host
    assert doc["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0",
                                                           "HostPort": str(port)}]}


def test_logs_come_from_the_json_file(engine: Engine) -> None:
    after = engine.last_event_id()
    cid = engine.create("sh", "-c", "echo out-line; echo err-line >&2; echo second-out")
    engine.client.start(cid)
    died = engine.wait_event(cid, after, e.ContainerDied)
    assert died.exit_code == 0
    done = engine.moor("logs", cid)
    assert done.stdout == "out-line\nsecond-out\n"
    assert done.stderr == "err-line\n"
    log_path = Path(engine.container_dir(cid), f"{cid}-json.log")
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(x["stream"], x["log"]) for x in entries if x["stream"] == "stdout"] == [
        ("stdout", "out-line\n"), ("stdout", "second-out\n")]
    assert all(x["time"].endswith("Z") for x in entries)
    # --tail counts entries of both streams, in the file's order.
    last = entries[-1]
    tail = engine.moor("logs", "--tail", "1", cid)
    assert (tail.stdout, tail.stderr) == ((last["log"], "") if last["stream"] == "stdout"
                                          else ("", last["log"]))


def test_memory_limit_kills_an_over_allocating_process(engine: Engine) -> None:
    after = engine.last_event_id()
    cid = moor_run(engine, "--memory", "32m", "busybox", "dd", "if=/dev/zero", "of=/dev/null",
                   "bs=128M", "count=1")
    died = engine.wait_event(cid, after, e.ContainerDied)
    assert died.exit_code == 137
    state = engine.inspect(cid)["State"]
    assert state["OOMKilled"] is True and state["ExitCode"] == 137, state
    assert engine.inspect(cid)["HostConfig"]["Memory"] == 32 * 1024 * 1024
    assert ps_status(engine, cid).startswith("Exited (137)")


def test_stop_reports_143_for_a_term_handler_and_137_after_the_timeout(engine: Engine) -> None:
    handles = moor_run(engine, "busybox", "sh", "-c",
                       'trap "exit 143" TERM; while :; do sleep 0.1; done')
    ignores = moor_run(engine, "busybox", "sh", "-c",
                       'trap "" TERM; while :; do sleep 0.1; done')

    t0 = time.monotonic()
    assert engine.moor("stop", handles).stdout.strip() == handles
    assert time.monotonic() - t0 < 5  # the handler exits at once, far before 10 s
    assert engine.inspect(handles)["State"]["ExitCode"] == 143
    assert ps_status(engine, handles).startswith("Exited (143)")

    t0 = time.monotonic()
    engine.moor("stop", "-t", "1", ignores)
    took = time.monotonic() - t0
    assert 1.0 <= took < 6, took
    state = engine.inspect(ignores)["State"]
    assert state["ExitCode"] == 137 and state["OOMKilled"] is False, state
    assert ps_status(engine, ignores).startswith("Exited (137)")


def test_restart_gives_a_new_pid_and_keeps_name_and_address(engine: Engine) -> None:
    port = free_port()
    name = f"re-{engine.token}"
    cid = moor_run(engine, "--name", name, "-p", f"127.0.0.1:{port}:80", "busybox", "httpd",
                   "-f", "-p", "80")
    before = engine.inspect(name)
    engine.moor("restart", "-t", "1", name)
    engine.note_pids(cid)
    after = engine.inspect(name)
    assert after["Id"] == cid and after["Name"] == f"/{name}"
    assert after["State"]["Running"] is True
    assert after["State"]["Pid"] != before["State"]["Pid"]
    assert start_ticks(before["State"]["Pid"]) is None  # the old process is gone
    assert after["NetworkSettings"]["IPAddress"] == before["NetworkSettings"]["IPAddress"]
    assert after["RestartCount"] == before["RestartCount"]  # a manual restart is not counted
    assert http_get("127.0.0.1", port, "/missing")[0] == 404


def test_rm_force_of_a_running_container_leaves_nothing(engine: Engine) -> None:
    port = free_port()
    cid = moor_run(engine, "-p", f"{port}:80", "--memory", "64m", "busybox", "httpd", "-f",
                   "-p", "80")
    pid = engine.inspect(cid)["State"]["Pid"]
    supervisor = engine.supervisor_pid(cid)
    assert supervisor is not None
    # Everything the checks below expect gone is there first.
    merged = os.path.join(os.path.realpath(engine.container_dir(cid)), "merged")
    assert any(line.split()[1] == merged for line in Path("/proc/mounts").read_text()
               .splitlines())
    assert os.path.exists(engine.netns_path(cid))
    assert os.path.exists(f"/sys/class/net/mv{cid[:12]}")
    leaks = engine.leaks(cid)
    assert any(leak.startswith("iptables ") and f"--dport {port}" in leak for leak in leaks)
    assert glob.glob(f"/sys/fs/cgroup/*/{engine.cgroup_part(cid)}") or glob.glob(
        f"/sys/fs/cgroup/{engine.cgroup_part(cid)}")
    assert start_ticks(pid) is not None and start_ticks(supervisor) is not None

    assert engine.moor("rm", "-f", cid).stdout.strip() == cid
    # Destroyed means cleaned up: nothing may linger, not even for a moment.
    assert engine.leaks(cid) == []
    wait_for(lambda: start_ticks(pid) is None and start_ticks(supervisor) is None, 5,
             "the container process and its supervisor to be gone")
    assert cid not in engine.moor("ps", "-a", "-q", "--no-trunc").stdout
    gone = engine.moor("inspect", cid, check=False)
    assert gone.returncode != 0 and "No such container" in gone.stderr
