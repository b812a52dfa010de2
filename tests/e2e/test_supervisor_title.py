"""The worker's supervisors, as `ps` shows them: one `moor-supervisor <short id>` each.

An operator who kills "the worker" must not kill containers by mistake: the real worker
forks the supervisors, and each must show its own title, not the worker's command line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Engine

pytestmark = pytest.mark.privileged


def ps_cmds() -> dict[int, str]:
    """Return `ps -eo pid,cmd` as {pid: cmd}."""
    out = subprocess.run(["ps", "-eo", "pid=,cmd="], check=True, capture_output=True,
                         text=True).stdout
    return {int(pid): cmd for pid, _, cmd in (line.strip().partition(" ")
                                              for line in out.splitlines())}


def test_each_running_container_has_a_named_supervisor(engine: Engine) -> None:
    first, second = engine.run("sleep", "1000"), engine.run("sleep", "1000")
    listed = ps_cmds()
    for cid in (first, second):
        sup = engine.supervisor_pid(cid)
        assert sup is not None
        assert listed[sup].strip() == f"moor-supervisor {cid[:12]}"
        assert Path(f"/proc/{sup}/cmdline").read_bytes().rstrip(b"\0") == \
            f"moor-supervisor {cid[:12]}".encode()
        ctr = engine.container(cid)
        assert ctr is not None and listed[ctr.pid].strip() == "sleep 1000"
    assert engine.worker is not None
    assert "moor-supervisor" not in listed[engine.worker.pid]
    # Operators and the leak checks find an engine's processes by MOOR_PREFIX in their
    # environment: the title must leave it readable.
    assert set(engine.our_processes()) >= {engine.supervisor_pid(first),
                                           engine.supervisor_pid(second)}
