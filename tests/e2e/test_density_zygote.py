"""Supervisors are forked from the worker's zygote (workers.proc.zygote), not the worker.

What is checked here is ancestry and lifetime, never a size: a supervisor's parent is a
`moor-zygote <engine id>` whose parent is the worker; a killed zygote is replaced at the
next start while the supervisors it forked keep running (adopted and reaped by the
worker); the zygote ends with its worker. Its memory is bench.density's business.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from tests.e2e.conftest import Engine, proc_env, wait_for
from tests.e2e.test_process import Make, make_spec, rootfs, wait_exit  # noqa: F401 - fixtures
from workers.proc import process
from workers.proc.spawn import SpawnResult

pytestmark = pytest.mark.privileged
REPO = str(Path(__file__).resolve().parents[2])


def _stat(pid: int) -> list[str]:
    """Return /proc/PID/stat's fields from the state on ([] when gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rsplit(")", 1)[1].split()


def parent_of(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode(errors="replace")


def gone(pid: int) -> bool:
    """Gone for good: not even a zombie waiting for its parent."""
    return not _stat(pid)


def zygote_of(engine: Engine, cid: str) -> int:
    """Return the zygote that forked the container's supervisor, checking what it is."""
    sup = engine.supervisor_pid(cid)
    assert sup is not None
    zygote = parent_of(sup)
    assert engine.worker is not None
    assert parent_of(zygote) == engine.worker.pid, (zygote, cmdline(zygote))
    assert cmdline(zygote).startswith("moor-zygote "), cmdline(zygote)
    # Found by MOOR_PREFIX like a supervisor it is not: the zygote shows MOOR_ZYGOTE.
    env = proc_env(zygote)
    assert env.get("MOOR_ZYGOTE") == engine.env["MOOR_PREFIX"] and "MOOR_PREFIX" not in env
    assert proc_env(sup).get("MOOR_PREFIX") == engine.env["MOOR_PREFIX"]
    return zygote


def test_supervisors_are_forked_from_the_workers_zygote(engine: Engine) -> None:
    first, second = engine.run("sleep", "1000"), engine.run("sleep", "1000")
    zygote = zygote_of(engine, first)
    assert zygote_of(engine, second) == zygote
    assert cmdline(zygote) == f"moor-zygote {_engine_id(engine)}"
    sup = engine.supervisor_pid(first)
    assert sup is not None and cmdline(sup) == f"moor-supervisor {first[:12]}"


def _engine_id(engine: Engine) -> str:
    from tests.e2e.conftest import host_engine_id

    return host_engine_id(engine)


def test_a_killed_zygote_is_replaced_and_its_supervisors_live_on(engine: Engine) -> None:
    old = engine.run("sh", "-c", "trap 'exit 3' TERM; while true; do sleep 0.05; done")
    old_sup = engine.supervisor_pid(old)
    assert old_sup is not None
    zygote = zygote_of(engine, old)
    os.kill(zygote, signal.SIGKILL)
    assert engine.worker is not None
    wait_for(lambda: parent_of(old_sup) == engine.worker.pid, 10,  # type: ignore[union-attr]
             "the worker (their subreaper) to adopt the zygote's supervisors")
    new = engine.run("sleep", "1000")  # the job reaps the dead zygote and starts another
    assert gone(zygote)
    replacement = zygote_of(engine, new)
    assert replacement != zygote
    # The old supervisor still runs its container, reports its exit and is reaped.
    ctr = engine.container(old)
    assert ctr is not None and ctr.running and process.supervisor_alive(engine.state_dir(old))
    engine.client.stop(old, timeout=10)
    wait_for(lambda: not process.supervisor_alive(engine.state_dir(old)), 20,
             "the old supervisor to record the exit")
    exited = engine.container(old)
    assert exited is not None and not exited.running and exited.exit_code == 3
    engine.run("true")  # one more job: the worker reaps after each
    wait_for(lambda: gone(old_sup), 10, f"the worker to reap supervisor {old_sup}")


def test_the_zygote_ends_with_its_worker(engine: Engine) -> None:
    cid = engine.run("sleep", "1000")
    zygote = zygote_of(engine, cid)
    engine.kill_worker()  # SIGKILL: the zygote goes by PR_SET_PDEATHSIG
    wait_for(lambda: gone(zygote), 10, f"zygote {zygote} to end with its worker")
    assert process.supervisor_alive(engine.state_dir(cid))  # the container keeps running
    engine.start_worker()
    again = engine.run("sleep", "1000")
    second = zygote_of(engine, again)
    engine.stop_worker()  # SIGTERM: a clean stop closes it
    wait_for(lambda: gone(second), 10, f"zygote {second} to end with its worker")
    engine.start_worker()


# --- a caller of spawn() that started a zygote, without an engine ----------------------

_CALLER = """
import os, signal, sys, msgspec
from workers import nsutil
from workers.proc import process, zygote
from workers.proc.spawn import spawn
from workers.proc.spec import ProcessSpec
nsutil.set_child_subreaper()
assert zygote.start() is not None
for line in sys.stdin:
    word, _, arg = line.strip().partition(" ")
    if word == "spawn":
        result = spawn(msgspec.json.decode(arg.encode(), type=ProcessSpec))
        print(msgspec.json.encode(result).decode(), zygote.current().pid, flush=True)
    elif word == "reap":
        print(process.reap_children(), flush=True)
"""


def test_a_spawn_after_the_zygote_died_gets_a_new_one(make_spec: Make) -> None:  # noqa: F811
    first = make_spec("sleep", "1000")
    second = make_spec("sleep", "1000")
    caller = subprocess.Popen([sys.executable, "-c", _CALLER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": REPO})
    assert caller.stdin is not None and caller.stdout is not None

    def ask(line: str) -> str:
        assert caller.stdin is not None and caller.stdout is not None
        caller.stdin.write(line + "\n")
        caller.stdin.flush()
        return caller.stdout.readline()

    zygote = replacement = "0"
    try:
        text, zygote = ask("spawn " + msgspec.json.encode(first).decode()).rsplit(" ", 1)
        result = msgspec.json.decode(text, type=SpawnResult)
        assert parent_of(result.supervisor_pid) == int(zygote)
        assert parent_of(int(zygote)) == caller.pid
        os.kill(int(zygote), signal.SIGKILL)
        wait_for(lambda: parent_of(result.supervisor_pid) == caller.pid, 10,
                 "the caller to adopt the supervisor")
        text, replacement = ask("spawn " + msgspec.json.encode(second).decode()).rsplit(" ", 1)
        again = msgspec.json.decode(text, type=SpawnResult)
        assert replacement != zygote and parent_of(again.supervisor_pid) == int(replacement)
        os.kill(again.pid, signal.SIGKILL)
        assert wait_exit(second).exit_code == 137
        wait_for(lambda: gone(again.supervisor_pid), 10, "the new zygote to reap its supervisor")
        os.kill(result.pid, signal.SIGKILL)
        assert wait_exit(first).exit_code == 137
        # The adopted supervisor exits and waits for the caller, which reaps it.
        wait_for(lambda: _stat(result.supervisor_pid)[:1] == ["Z"], 10, "a zombie")
        assert ask("reap") == "1\n"
        assert gone(result.supervisor_pid)
    finally:
        caller.kill()
        caller.wait()
        for stream in (caller.stdin, caller.stdout):
            stream.close()
    for pid in {int(zygote), int(replacement)} - {0}:
        wait_for(lambda pid=pid: gone(pid), 10, f"zygote {pid} to end with its caller")
