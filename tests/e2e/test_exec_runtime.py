"""The exec runtime on its own (workers.proc.execproc): a process entering a real container.

It must share the container's namespaces and cgroup, hold the container's confinement
(capabilities, seccomp, user), and relay stdio over the exec supervisor's socket.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest

from events.caps import DEFAULT_MASK
from tests.e2e.conftest import Engine, moor_run, wait_for
from workers.proc import seccomp
from workers.proc.execproc import ExecPlan, spawn_exec

pytestmark = pytest.mark.privileged


@pytest.fixture(autouse=True)
def _engines_cgroup_parent(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exec joins the container's cgroup under the engine's parent, as its worker would."""
    monkeypatch.setenv("MOOR_CGROUP_PARENT", engine.cgroup_part("x").rsplit("/", 1)[0])


def _plan(engine: Engine, cid: str, *argv: str, **kw: object) -> ExecPlan:
    ctr = engine.container(cid)
    assert ctr is not None and ctr.pid
    fields: dict[str, object] = {
        "exec_id": "x" + engine.token, "container_id": cid, "pid": ctr.pid, "argv": argv,
        "env": ("PATH=/bin:/usr/bin",), "user": "", "working_dir": "/",
        "capabilities": DEFAULT_MASK, "no_new_privs": False,
        "seccomp": seccomp.program_for((), False, DEFAULT_MASK,
                                       os.path.join(engine.data_root, "seccomp")),
        "tty": False, "stdin": False, "detach": False}
    fields.update(kw)
    return ExecPlan(**fields)  # type: ignore[arg-type]


def _run(plan: ExecPlan, tmp: Path, stdin: bytes = b"",
         resize: tuple[int, int] | None = None) -> tuple[bytes, int]:
    """Spawn, attach, send stdin, read everything; return (output, exit code)."""
    code_file = tmp / f"{plan.exec_id}.code"

    def on_exit(code: int) -> None:
        code_file.write_text(str(code))

    sock = str(tmp / f"{plan.exec_id}.sock")
    spawn_exec(plan, sock, on_exit)
    with socket.socket(socket.AF_UNIX) as client, socket.socket(socket.AF_UNIX) as ctl:
        client.connect(sock)
        if resize:
            ctl.connect(sock + ".ctl")
            ctl.sendall(f"resize {resize[0]} {resize[1]}\n".encode())
            time.sleep(0.2)
        if stdin:
            client.sendall(stdin)
        client.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := client.recv(65536):
            out += chunk
    code = wait_for(lambda: code_file.exists() and int(code_file.read_text()) + 1000, 10,
                    "the exit code") - 1000
    return out, code


def _demux(data: bytes) -> dict[int, bytes]:
    streams = {1: b"", 2: b""}
    while data:
        kind, size = struct.unpack(">BxxxI", data[:8])
        streams[kind] += data[8:8 + size]
        data = data[8 + size:]
    return streams


def test_exec_enters_the_container_with_its_confinement(engine: Engine, tmp_path: Path) -> None:
    cid = moor_run(engine, "--hostname", "inside", "busybox", "sleep", "60")
    ctr = engine.container(cid)
    assert ctr is not None
    plan = _plan(engine, cid, "sh", "-c", "echo out; echo err >&2; hostname; "
                 "grep -E '^(CapEff|Seccomp):' /proc/self/status; readlink /proc/self/ns/net; "
                 "cat; exit 3", stdin=True)
    out, code = _run(plan, tmp_path, b"from-stdin\n")
    streams = _demux(out)
    lines = streams[1].decode().split("\n")
    assert code == 3
    assert streams[2] == b"err\n"
    assert lines[:2] == ["out", "inside"]
    assert lines[2].split() == ["CapEff:", "00000000a80425fb"]
    assert lines[3].split() == ["Seccomp:", "2"]
    assert lines[4] == os.readlink(f"/proc/{ctr.pid}/ns/net")
    assert lines[5] == "from-stdin"


def test_exec_with_a_tty_and_resize(engine: Engine, tmp_path: Path) -> None:
    cid = moor_run(engine, "busybox", "sleep", "60")
    plan = _plan(engine, cid, "sh", "-c", "sleep 0.3; stty size; tty", tty=True)
    out, code = _run(plan, tmp_path, resize=(33, 101))
    assert code == 0
    assert b"33 101" in out and b"/dev/pts/" in out, out


def test_exec_of_a_missing_command_says_so(engine: Engine, tmp_path: Path) -> None:
    cid = moor_run(engine, "busybox", "sleep", "60")
    out, code = _run(_plan(engine, cid, "nosuchcmd"), tmp_path)
    assert code == 127
    assert b'exec: "nosuchcmd": executable file not found in $PATH' in _demux(out)[2]


def test_exec_as_another_user_in_the_containers_cgroup(engine: Engine, tmp_path: Path) -> None:
    cid = moor_run(engine, "busybox", "sleep", "60")
    out, code = _run(_plan(engine, cid, "sh", "-c", "id -u; cat /proc/self/cgroup",
                           user="65534"), tmp_path)
    text = _demux(out)[1].decode()
    assert code == 0 and text.startswith("65534\n")
    assert cid in text  # the container's cgroup, not the worker's
