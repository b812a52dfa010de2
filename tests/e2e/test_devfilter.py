"""The v2 device filter in the kernel: a real group, a real program, a real process in it.

Each test makes its own group in the host's cgroup2 hierarchy (/sys/fs/cgroup on a v2 host,
/sys/fs/cgroup/unified on a hybrid one: device programs need no controller), attaches a
filter with `apply_filter` and forks a child that joins the group and reports the errno of
each device operation. The child is root in the host's v1 devices group, so only the
program can refuse; `test_without_a_filter_the_kernel_answers` shows that.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from events.hostopts import DEFAULT_DEVICE_RULES
from tests.conftest import TEST_ENGINE_ID, missing_capability, require_root
from tests.e2e.childprobe import run_in_child
from workers.proc import devfilter

EPERM = errno.EPERM


def cgroup2_root() -> str | None:
    """Return where the cgroup2 hierarchy is mounted, if anywhere."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] == "cgroup2":
                return fields[1]
    return None


def attempt(fn: Callable[..., object], *args: object) -> int:
    """Call fn(*args); return 0, or the errno it failed with (closing an fd it opened)."""
    try:
        result = fn(*args)
    except OSError as e:
        return e.errno or -1
    if isinstance(result, int):  # an fd os.open opened
        os.close(result)
    return 0


def probes(workdir: str) -> dict[str, int]:
    """What a container's process would try, in a directory that allows device nodes."""
    block, char = os.path.join(workdir, "loop"), os.path.join(workdir, "kmsg")
    return {
        "null_write": attempt(os.open, "/dev/null", os.O_WRONLY),
        "mknod_block": attempt(os.mknod, block, stat.S_IFBLK | 0o600, os.makedev(7, 0)),
        "read_block": attempt(os.open, block, os.O_RDONLY | os.O_NONBLOCK),
        "mknod_char": attempt(os.mknod, char, stat.S_IFCHR | 0o600, os.makedev(1, 11)),
        "read_char": attempt(os.open, char, os.O_RDONLY | os.O_NONBLOCK),
    }


def in_group(group: str, workdir: Path) -> dict[str, int]:
    """Fork a child that moves itself into the group and runs the probes; return them."""
    nodes = tempfile.mkdtemp(dir=workdir)

    def child() -> dict[str, Any]:
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        return dict(probes(nodes))

    result: dict[str, int] = run_in_child(child)
    assert "error" not in result, result
    return result


@pytest.fixture
def group(run_id: str) -> Iterator[str]:
    """A new, empty cgroup2 group of this test's own; removed afterwards."""
    require_root()
    root = cgroup2_root()
    if root is None:
        missing_capability("a cgroup2 hierarchy (mounted nowhere)")
        raise AssertionError("unreachable")
    path = os.path.join(root, f"moor-devfilter-{TEST_ENGINE_ID}-{run_id}")
    os.mkdir(path)
    yield path
    deadline = time.monotonic() + 5
    while True:
        try:
            os.rmdir(path)
            return
        except OSError as e:  # EBUSY until the exited child has left it
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@pytest.mark.privileged
def test_without_a_filter_the_kernel_answers(group: str, tmp_path: Path) -> None:
    seen = in_group(group, tmp_path)
    assert EPERM not in seen.values(), seen
    assert seen["read_char"] == 0  # /dev/kmsg opens for root


@pytest.mark.privileged
def test_dockers_defaults(group: str, tmp_path: Path) -> None:
    devfilter.apply_filter(group, DEFAULT_DEVICE_RULES)
    assert len(devfilter.attached(group)) == 1
    assert in_group(group, tmp_path) == {
        "null_write": 0,  # c 1:3 rwm
        "mknod_block": 0,  # b *:* m
        "read_block": EPERM,
        "mknod_char": 0,  # c *:* m
        "read_char": EPERM,
    }


@pytest.mark.privileged
def test_applying_again_replaces_the_filter(group: str, tmp_path: Path) -> None:
    """A restarted container's group: the new rules hold, the old program is detached
    (while attached, its verdict would still deny the read)."""
    devfilter.apply_filter(group, DEFAULT_DEVICE_RULES)
    before = devfilter.attached(group)
    devfilter.apply_filter(group, (*DEFAULT_DEVICE_RULES, "b 7:* r"))
    after = devfilter.attached(group)
    assert len(after) == 1 and after != before
    seen = in_group(group, tmp_path)
    assert seen["read_block"] != EPERM, seen  # 0, or ENXIO without a loop device 0
    assert seen["read_char"] == EPERM and seen["null_write"] == 0, seen


@pytest.mark.privileged
def test_allow_all_lets_everything_through(group: str, tmp_path: Path) -> None:
    devfilter.apply_filter(group, DEFAULT_DEVICE_RULES)
    devfilter.apply_filter(group, ("a *:* rwm",))
    seen = in_group(group, tmp_path)
    assert EPERM not in seen.values(), seen


@pytest.mark.privileged
def test_a_bad_rule_changes_nothing(group: str) -> None:
    devfilter.apply_filter(group, DEFAULT_DEVICE_RULES)
    before = devfilter.attached(group)
    with pytest.raises(ValueError):
        devfilter.apply_filter(group, ("c 1:3 rwx",))
    assert devfilter.attached(group) == before
