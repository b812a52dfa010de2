"""Seccomp filters on real processes: compiled with libseccomp, cached, loaded in a child.

Each privileged test forks a child (root, every capability, like the container's init
before it drops them), loads a program there and reports what a list of syscalls returned.
The probes are harmless even unfiltered: mount targets a missing path, reboot gets a bad
magic number, init_module an empty image, clone3 a zero size. A control run without a
filter shows that each EPERM comes from the filter, not the kernel.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyseccomp
import pytest

from events import seccomp as sc
from events.caps import CAPABILITIES, DEFAULT_MASK
from tests.conftest import missing_capability, require_root
from tests.e2e.childprobe import run_in_child
from workers import nsutil
from workers.proc import seccomp as ws

EPERM, ENOENT, EINVAL, ENOSYS, EACCES = 1, 2, 22, 38, 13
CLONE_NEWUSER = 0x10000000
ADDR_NO_RANDOMIZE = 0x0040000
AF_ALG, AF_VSOCK = 38, 40
SYS_ADMIN = 1 << CAPABILITIES["CAP_SYS_ADMIN"]
# "nosuch": names libseccomp does not know are skipped, as runc does.
DENY_MKDIR = ('{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat","nosuch"],'
              '"action":"SCMP_ACT_ERRNO"}]}')

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def call(name: str | int, *args: int | bytes) -> int:
    """Make a raw syscall; return 0 on success, else its errno."""
    nr = name if isinstance(name, int) else pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE,
                                                                      name)
    cargs = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_ulong(a) for a in args]
    return 0 if _libc.syscall(ctypes.c_long(nr), *cargs) >= 0 else ctypes.get_errno()


def socket_errno(family: int, kind: int = socket.SOCK_STREAM) -> int:
    try:
        socket.socket(family, kind).close()
    except OSError as e:
        return e.errno or -1
    return 0


def fork_works() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) - 7


def seccomp_mode() -> str:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(line.split()[1] for line in f if line.startswith("Seccomp:"))


def probes(workdir: str) -> dict[str, Any]:
    """What a container would see; unshare last (it changes the child's namespaces)."""
    made = os.path.join(workdir, "made")
    try:
        os.mkdir(made)
        mkdir = 0
    except OSError as e:
        mkdir = e.errno or -1
    return {
        "seccomp": seccomp_mode(),
        "mkdir": mkdir,
        "mount": call("mount", b"none", b"/nonexistent-moor-seccomp", b"tmpfs", 0, 0),
        "reboot": call("reboot", 0, 0, 0, 0),
        "init_module": call("init_module", 0, 0, b""),
        "clone3": call("clone3", 0, 0),
        "fork": fork_works(),
        "vsock": socket_errno(AF_VSOCK),
        "alg": socket_errno(AF_ALG, socket.SOCK_SEQPACKET),
        "inet": socket_errno(socket.AF_INET),
        "personality_query": call("personality", 0xFFFFFFFF),
        "personality_aslr_off": call("personality", ADDR_NO_RANDOMIZE),
        "future_syscall": call(1000),  # above every syscall the profile names
        "unshare_user": call("unshare", CLONE_NEWUSER),
    }


def in_child(program: ws.Program | None, probe: Callable[[], dict[str, Any]],
             before: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Fork; in the child run `before`, load the program, run the probe; return its result."""
    prepared = ws.prepare(program) if program is not None else None

    def child() -> dict[str, Any]:
        before()
        if prepared is not None:
            ws.install(prepared)
        return probe()

    return run_in_child(child)


@pytest.fixture
def root() -> None:
    require_root()
    if not ws.kernel_supports_seccomp():
        missing_capability("seccomp filters (CONFIG_SECCOMP_FILTER)")


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh on-disk cache and an empty in-memory one."""
    monkeypatch.setattr(ws, "_memory", {})
    yield str(tmp_path / "seccomp")


def default_program(cache_dir: str, caps: int = DEFAULT_MASK) -> ws.Program:
    program = ws.program_for((), False, caps, cache_dir)
    assert program is not None
    return program


# --- the filter in a process ------------------------------------------------------------------

@pytest.mark.privileged
def test_without_a_filter_the_kernel_answers(root: None, tmp_path: Path) -> None:
    if seccomp_mode() != "0":
        missing_capability("a test process without a seccomp filter of its own")
    got = in_child(None, lambda: probes(str(tmp_path)))
    assert got["seccomp"] == "0" and got["mkdir"] == 0
    assert (got["mount"], got["reboot"], got["clone3"]) == (ENOENT, EINVAL, EINVAL)
    assert got["init_module"] != EPERM or Path("/proc/sys/kernel/modules_disabled").read_text() \
        .strip() == "1"
    assert (got["personality_aslr_off"], got["unshare_user"]) == (0, 0)
    assert EPERM not in (got["vsock"], got["alg"]) and got["future_syscall"] == ENOSYS


@pytest.mark.privileged
def test_default_filter_refuses_what_docker_refuses(root: None, cache_dir: str,
                                                    tmp_path: Path) -> None:
    got = in_child(default_program(cache_dir), lambda: probes(str(tmp_path)))
    assert got == {
        "seccomp": "2", "mkdir": 0, "fork": 0, "inet": 0, "personality_query": 0,
        "mount": EPERM, "reboot": EPERM, "init_module": EPERM, "unshare_user": EPERM,
        "vsock": EPERM, "alg": EPERM, "personality_aslr_off": EPERM,
        "clone3": ENOSYS,  # so libc falls back to clone
        "future_syscall": ENOSYS,  # runc's stub: unknown to the profile is "not implemented"
    }


@pytest.mark.privileged
def test_cap_sys_admin_lets_mount_and_unshare_through(root: None, cache_dir: str,
                                                      tmp_path: Path) -> None:
    got = in_child(default_program(cache_dir, DEFAULT_MASK | SYS_ADMIN),
                   lambda: probes(str(tmp_path)))
    assert (got["mount"], got["clone3"], got["unshare_user"]) == (ENOENT, EINVAL, 0)
    assert (got["reboot"], got["init_module"]) == (EPERM, EPERM)  # still no SYS_BOOT/MODULE


@pytest.mark.privileged
@pytest.mark.parametrize("flags", [(), ("SECCOMP_FILTER_FLAG_LOG",)])
def test_a_custom_profile_that_denies_mkdir(root: None, cache_dir: str, tmp_path: Path,
                                            flags: tuple[str, ...]) -> None:
    text = DENY_MKDIR[:-1] + f',"flags":{json.dumps(list(flags))}}}'
    program = ws.program_for((f"seccomp={text}",), False, DEFAULT_MASK, cache_dir)
    assert program is not None and program.flags == (2 if flags else 0)
    got = in_child(program, lambda: probes(str(tmp_path)))
    assert (got["seccomp"], got["mkdir"], got["mount"], got["fork"]) == ("2", EPERM, ENOENT, 0)
    assert not (tmp_path / "made").exists()


def _drop_to_nobody() -> None:
    os.setgid(65534)
    os.setuid(65534)  # every capability gone, CAP_SYS_ADMIN included


@pytest.mark.privileged
def test_loading_needs_cap_sys_admin_or_no_new_privs(root: None, cache_dir: str,
                                                     tmp_path: Path) -> None:
    program = default_program(cache_dir)
    assert in_child(program, seccomp_status_probe, before=_drop_to_nobody)["errno"] == EACCES

    def nnp_then_drop() -> None:
        nsutil.set_no_new_privs()
        _drop_to_nobody()

    assert in_child(program, seccomp_status_probe, before=nnp_then_drop) == {"seccomp": "2"}


def seccomp_status_probe() -> dict[str, Any]:
    return {"seccomp": seccomp_mode()}


@pytest.mark.privileged
def test_install_needs_no_file_after_pivot(root: None, cache_dir: str, tmp_path: Path) -> None:
    """As in the init after pivot_root: no host files, and any import would fail."""
    empty = tmp_path / "empty"
    empty.mkdir()

    def lose_the_host() -> None:
        os.chroot(empty)
        os.chdir("/")
        sys.meta_path.clear()
        sys.path_hooks.clear()
        sys.path_importer_cache.clear()
        sys.path.clear()

    got = in_child(default_program(cache_dir), lambda: {"mode": _libc.prctl(21, 0, 0, 0, 0)},
                   before=lose_the_host)
    assert got == {"mode": 2}  # PR_GET_SECCOMP: SECCOMP_MODE_FILTER


# --- selection and the cache ------------------------------------------------------------------

def test_no_program_when_docker_runs_unconfined(cache_dir: str) -> None:
    assert ws.program_for(("seccomp=unconfined",), False, DEFAULT_MASK, cache_dir) is None
    assert ws.program_for((), True, DEFAULT_MASK, cache_dir) is None
    assert ws.program_for(('seccomp={"syscalls":[]}',), False, DEFAULT_MASK, cache_dir) is None
    assert not os.path.exists(cache_dir)  # nothing compiled
    assert ws.program_for((f"seccomp={DENY_MKDIR}",), True, DEFAULT_MASK, cache_dir) is not None


def test_a_bad_profile_raises_dockers_text(cache_dir: str) -> None:
    with pytest.raises(ValueError, match="^Decoding seccomp profile failed: "):
        ws.program_for(("seccomp={",), False, DEFAULT_MASK, cache_dir)


def test_compiled_once_per_resolved_profile(cache_dir: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[sc.Resolved] = []
    real = ws.compile_program

    def counting(resolved: sc.Resolved) -> bytes:
        compiled.append(resolved)
        return real(resolved)

    monkeypatch.setattr(ws, "compile_program", counting)
    first = default_program(cache_dir)
    files = os.listdir(cache_dir)
    assert len(compiled) == 1 and len(files) == 1 and files[0].endswith(".bpf")
    assert default_program(cache_dir) == first  # from memory
    os.unlink(os.path.join(cache_dir, files[0]))
    assert default_program(cache_dir) == first and not os.listdir(cache_dir)  # memory, not disk
    assert len(compiled) == 1

    monkeypatch.setattr(ws, "_memory", {})
    default_program(cache_dir)  # a new worker process: compiled again, stored again
    monkeypatch.setattr(ws, "_memory", {})
    # The same rules from a different mask (nothing gates NET_ADMIN): the stored program.
    assert default_program(cache_dir, DEFAULT_MASK | 1 << CAPABILITIES["CAP_NET_ADMIN"]) == first
    assert len(compiled) == 2 and len(os.listdir(cache_dir)) == 1

    admin = default_program(cache_dir, DEFAULT_MASK | SYS_ADMIN)
    assert admin != first and len(compiled) == 3 and len(os.listdir(cache_dir)) == 2


def test_a_damaged_cache_file_is_compiled_again(cache_dir: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    first = default_program(cache_dir)
    (path,) = (os.path.join(cache_dir, name) for name in os.listdir(cache_dir))
    with open(path, "r+b") as f:
        f.truncate(13)  # not whole instructions
    monkeypatch.setattr(ws, "_memory", {})
    assert default_program(cache_dir) == first
    with open(path, "rb") as f:
        assert f.read() == first.bpf
    assert [n for n in os.listdir(cache_dir) if n.startswith(".tmp-")] == []


def test_the_program_is_what_libseccomp_compiles(cache_dir: str) -> None:
    resolved = sc.resolve(sc.DEFAULT, DEFAULT_MASK, kernel=sc.kernel_release(os.uname().release),
                          arch=os.uname().machine)
    assert resolved is not None
    program = ws.compile_program(resolved)
    assert default_program(cache_dir).bpf == program and len(program) % 8 == 0
    with pytest.raises(ValueError, match="not a seccomp BPF program"):
        ws.prepare(ws.Program(b"\0" * 7))
