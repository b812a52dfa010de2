"""Exec, pause and unpause on real containers through `moor` (issue 10).

The docker CLI and docker-py versions live in test_docker_cli.py and test_docker_py.py.
"""

from __future__ import annotations

import os
import time

import pytest

from events import model as e
from tests.e2e.conftest import Engine, moor_run, wait_for

pytestmark = pytest.mark.privileged


def _freezer_state(engine: Engine, cid: str) -> str:
    with open(f"/sys/fs/cgroup/freezer/{engine.cgroup_part(cid)}/freezer.state",
              encoding="ascii") as f:
        return f.read().strip()


def _ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])


def test_pause_freezes_and_unpause_thaws(engine: Engine) -> None:
    cid = moor_run(engine, "busybox", "sh", "-c", "while :; do :; done")
    ctr = engine.container(cid)
    assert ctr is not None
    engine.moor("pause", cid)
    assert _freezer_state(engine, cid) == "FROZEN"
    before = _ticks(ctr.pid)
    time.sleep(0.3)
    assert _ticks(ctr.pid) == before  # a frozen busy loop burns no CPU
    doc = engine.inspect(cid)["State"]
    assert (doc["Status"], doc["Paused"], doc["Running"]) == ("paused", True, True)
    assert "(Paused)" in engine.moor("ps").stdout
    done = engine.moor("pause", cid, check=False)
    assert done.stderr.strip() == f"Error response from daemon: Container {cid} is already paused"
    engine.moor("unpause", cid)
    assert _freezer_state(engine, cid) == "THAWED"
    assert engine.inspect(cid)["State"]["Status"] == "running"
    done = engine.moor("unpause", cid, check=False)
    assert done.stderr.strip() == f"Error response from daemon: Container {cid} is not paused"
    kinds = [type(r.event).__name__ for _, r in engine.events(cid)]
    assert kinds[-6:] == ["FreezeRequested", "ContainerPaused", "CommandRejected",
                          "FreezeRequested", "ContainerUnpaused", "CommandRejected"]


def test_stop_and_exec_of_a_paused_container(engine: Engine) -> None:
    cid = moor_run(engine, "busybox", "sh", "-c", "trap 'exit 3' TERM; while :; do sleep 0.1; done")
    engine.moor("pause", cid)
    done = engine.moor("exec", cid, "true", check=False)
    assert done.stderr.strip() == (f"Error response from daemon: Container {cid} is paused, "
                                   "unpause the container before exec")
    started = time.monotonic()
    engine.moor("stop", "-t", "5", cid)  # thawed, so the shell's trap runs at once
    assert time.monotonic() - started < 4, engine.log_tail("worker")
    doc = engine.inspect(cid)["State"]
    assert (doc["Status"], doc["Paused"], doc["ExitCode"]) == ("exited", False, 3)


def test_exec_runs_inside_and_returns_the_exit_code(engine: Engine) -> None:
    cid = moor_run(engine, "--hostname", "box", "-e", "FROM=container", "busybox", "sleep", "60")
    done = engine.moor("exec", "-e", "EXTRA=1", cid, "sh", "-c",
                       "hostname; echo $FROM $EXTRA; echo oops >&2; exit 7", check=False)
    assert done.returncode == 7
    assert done.stdout == "box\ncontainer 1\n"
    assert done.stderr == "oops\n"
    done = engine.moor("exec", "-i", cid, "sh", "-c", "tr a-z A-Z", input="hello\n")
    assert done.stdout == "HELLO\n"
    done = engine.moor("exec", "-u", "65534", "-w", "/tmp", cid, "sh", "-c", "id -u; pwd")
    assert done.stdout == "65534\n/tmp\n"
    kinds = [(type(r.event).__name__, getattr(r.event, "exit_code", None))
             for _, r in engine.events(cid) if type(r.event).__name__.startswith("Exec")]
    assert kinds[:3] == [("ExecCreated", None), ("ExecStarted", None), ("ExecDied", 7)]


def test_exec_errors_get_dockers_texts(engine: Engine) -> None:
    cid = moor_run(engine, "busybox", "sleep", "60")
    done = engine.moor("exec", cid, "nosuchcmd", check=False)
    assert done.returncode == 127
    assert 'exec: "nosuchcmd": executable file not found in $PATH' in done.stdout + done.stderr
    stopped = moor_run(engine, "busybox", "true")
    wait_for(lambda: not (c := engine.container(stopped)) or not c.running, 10, "the exit")
    done = engine.moor("exec", stopped, "true", check=False)
    assert done.stderr.strip() == f"Error response from daemon: container {stopped} is not running"


def test_detached_exec_keeps_running(engine: Engine) -> None:
    cid = moor_run(engine, "busybox", "sleep", "60")
    engine.moor("exec", "-d", cid, "sh", "-c", "sleep 0.2; echo done > /tmp/flag")
    wait_for(lambda: engine.nsenter(cid, "cat", "/tmp/flag", check=False).strip() == "done",
             10, "the detached exec's file")
    record = wait_for(lambda: next((r for _, r in engine.events(cid)
                                    if isinstance(r.event, e.ExecDied)), None), 10, "exec_die")
    assert record.event.exit_code == 0


def test_exec_shares_the_containers_process_namespace(engine: Engine) -> None:
    cid = moor_run(engine, "busybox", "sleep", "60")
    ctr = engine.container(cid)
    assert ctr is not None
    out = engine.moor("exec", cid, "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; "
                      "readlink /proc/self/ns/pid").stdout.split("\n")
    assert out[0].strip() == "sleep 60"
    assert out[1] == os.readlink(f"/proc/{ctr.pid}/ns/pid")
