"""Compile a container's seccomp profile with libseccomp, cache the program, load it into C.

The worker calls ``program_for`` when it builds a start: it selects and resolves the
profile (`events.seccomp`), then returns the classic BPF program from memory, from
``<cache_dir>/<key>.bpf``, or compiled once with libseccomp (through pyseccomp, a ctypes
binding with upstream's API) and stored for the next start. As runc does, the program
starts with a stub that answers ENOSYS, not the default EPERM, for syscalls newer than any
the profile names, so libc falls back on kernels newer than the profile.

The container's init loads it: ``prepare`` (before ``pivot_root``) builds the ctypes
objects, ``install`` only calls prctl/seccomp. Everything is bound at import time: after
``pivot_root`` the host's Python files are out of reach.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from events import seccomp as sc

if TYPE_CHECKING:
    import pyseccomp

__all__ = [
    "LIBSECCOMP_VERSION", "Prepared", "Program", "compile_program", "install",
    "kernel_supports_seccomp", "prepare", "program_for",
]

_PR_GET_SECCOMP, _PR_SET_SECCOMP = 21, 22
_SECCOMP_MODE_FILTER = 2  # prctl's mode; seccomp(2)'s operation is SECCOMP_SET_MODE_FILTER
_SECCOMP_SET_MODE_FILTER = 1
_BPF_MAXINSNS = 4096
_INSN = struct.Struct("=HBBI")  # struct sock_filter, in the host's byte order
_FORMAT = 1  # bump when the same rules compile differently (it changes every cache key)
_MEMORY_LIMIT = 64  # distinct programs kept in a worker's memory

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long
_libc.syscall.argtypes = [ctypes.c_long, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_void_p]
# seccomp(2)'s number where it is known; elsewhere libseccomp's answer, asked in prepare.
# pyseccomp is loaded only to compile: it imports ctypes.util, and so subprocess and
# threading, whose at-fork hook would cost each supervisor forked by the zygote ~0.4 MB.
_SYS_SECCOMP_BY_MACHINE = {"x86_64": 317, "aarch64": 277, "riscv64": 277, "ppc64le": 358,
                           "s390x": 348}
_SYS_SECCOMP: int | None = _SYS_SECCOMP_BY_MACHINE.get(os.uname().machine)


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


_libseccomp = ctypes.CDLL("libseccomp.so.2")
_libseccomp.seccomp_version.restype = ctypes.POINTER(_Version)
_v = _libseccomp.seccomp_version().contents
LIBSECCOMP_VERSION = f"{_v.major}.{_v.minor}.{_v.micro}"


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Program(msgspec.Struct, frozen=True):
    """A compiled filter: BPF instructions and the SECCOMP_FILTER_FLAG_* bits to load it with."""

    bpf: bytes
    flags: int = 0


class Prepared(NamedTuple):
    """A program ready for ``install``: its buffer and the sock_fprog pointing at it."""

    fprog: _SockFprog
    buffer: ctypes.Array[ctypes.c_char]
    flags: int


# --- compiling --------------------------------------------------------------------------

_NR_SCMP_ERROR = -1  # libseccomp: a name it does not know
_X32_BIT = 0x40000000
_X86_64, _X32 = 0xC000003E, 0x4000003E
_S390 = (0x16, 0x80000016)
_LD_ABS, _JEQ, _JGT, _JSET, _JA, _RET = 0x20, 0x15, 0x25, 0x45, 0x05, 0x06
_RET_ENOSYS = 0x00050000 | 38
_PERMISSIVE = (0x7FFF0000, 0x7FFC0000, 0x7FF00000)  # ALLOW, LOG, TRACE (with any errno)
_Insn = tuple[int, int | str, int | str, int | str]  # (code, jt, jf, k); str: a label


def _largest_syscalls(resolved: sc.Resolved) -> dict[int, dict[int, int]]:
    """Return, per kernel arch, the largest syscall number the rules name per libseccomp arch.

    As runc: only the profile's architectures count, and x32 shares x86_64's kernel arch.
    """
    import pyseccomp

    names = {name for rule in resolved.rules for name in rule.names}
    found: dict[int, dict[int, int]] = {}
    for arch in resolved.architectures:
        top = max((nr for name in names if (nr := pyseccomp.resolve_syscall(arch, name)) > 0),
                  default=0)
        if top:
            found.setdefault(_X86_64 if arch == _X32 else arch, {})[arch] = top
    return found


def _enosys_stub(resolved: sc.Resolved) -> bytes:
    """Return runc's prefix: ENOSYS for a syscall above the largest the profile names.

    Without it a syscall the profile predates gets the default EPERM, and libc (which
    falls back on ENOSYS only, e.g. for fchmodat2) fails instead of using the old call.
    """
    if (resolved.default_action & 0xFFFF0000) in _PERMISSIVE:
        return b""
    largest = _largest_syscalls(resolved)
    if not largest:
        return b""
    code: list[_Insn | str] = [(_LD_ABS, 0, 0, 4)]
    code += [(_JEQ, f"arch{arch}", 0, arch) for arch in largest]
    code.append((_JA, 0, 0, "filter"))
    for arch, tops in largest.items():
        code += [f"arch{arch}", (_LD_ABS, 0, 0, 0)]
        if arch in _S390:  # unknown syscalls arrive as setup(2), number 0
            code.append((_JEQ, "enosys", 0, 0))
        if arch == _X86_64:  # x32 calls carry bit 30 and have their own numbers
            code.append((_JSET, "x32" if _X32 in tops else "filter",
                         0 if _X86_64 in tops else "filter", _X32_BIT))
            if _X86_64 in tops:
                code.append((_JGT, "enosys", "filter", tops[_X86_64]))
            if _X32 in tops:
                code += ["x32", (_JGT, "enosys", "filter", tops[_X32])]
        else:
            code.append((_JGT, "enosys", "filter", tops[arch]))
    code += ["enosys", (_RET, 0, 0, _RET_ENOSYS), "filter"]
    return _assemble(code)


def _assemble(code: list[_Insn | str]) -> bytes:
    """Encode instructions; a label name in jt, jf (or ja's k) becomes its forward offset."""
    labels, pc = {}, 0
    for item in code:
        if isinstance(item, str):
            labels[item] = pc
        else:
            pc += 1
    out = bytearray()
    for pc, insn in enumerate(i for i in code if not isinstance(i, str)):
        op, jt, jf, k = (labels[x] - pc - 1 if isinstance(x, str) else x for x in insn)
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise AssertionError("seccomp stub jump out of range")
        out += _INSN.pack(op, jt, jf, k)
    return bytes(out)


def compile_program(resolved: sc.Resolved) -> bytes:
    """Compile resolved rules to classic BPF with libseccomp, as runc builds its filter.

    Names libseccomp does not know for this architecture are skipped (runc does the same);
    a rule libseccomp refuses raises ValueError with runc's text.
    """
    import pyseccomp

    flt = pyseccomp.SyscallFilter(resolved.default_action)
    for arch in resolved.architectures:
        if not flt.exist_arch(arch):
            flt.add_arch(arch)
    if len(resolved.rules) > 32:  # runc: libseccomp's binary tree for long rule sets
        with contextlib.suppress(OSError):  # libseccomp < 2.5 lacks it: a linear filter
            flt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    for rule in resolved.rules:
        args = [pyseccomp.Arg(c.index, c.op, c.value, c.value_two) for c in rule.args]
        for name in rule.names:
            nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
            if nr == _NR_SCMP_ERROR:
                continue
            try:
                flt.add_rule(rule.action, nr, *args)
            except OSError as e:
                raise ValueError(f"error adding seccomp filter rule for syscall {name}: "
                                 f"{e.strerror}") from None
    with open(os.memfd_create("moor-seccomp", os.MFD_CLOEXEC), "w+b") as f:
        flt.export_bpf(f)
        f.seek(0)
        program = _enosys_stub(resolved) + f.read()
    if len(program) // _INSN.size > _BPF_MAXINSNS:
        raise ValueError("seccomp filter is too long: the kernel takes 4096 instructions")
    return program


# --- the cache ----------------------------------------------------------------------------

_memory: dict[str, bytes] = {}


def _valid(bpf: bytes) -> bool:
    return 0 < len(bpf) <= _BPF_MAXINSNS * _INSN.size and len(bpf) % _INSN.size == 0


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return data if _valid(data) else None


def _write(cache_dir: str, path: str, bpf: bytes) -> None:
    """Store atomically: a reader sees the whole program or none (tmp + fsync + rename)."""
    import tempfile  # not at import: it loads random, whose at-fork hook runs in every fork

    os.makedirs(cache_dir, 0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".bpf", dir=cache_dir)
    try:
        with open(fd, "wb") as f:
            f.write(bpf)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _compiled(resolved: sc.Resolved, cache_dir: str) -> bytes:
    """Return the program from memory, then disk, else compile it once and keep it."""
    salt = f"{sc.cache_key(resolved)} libseccomp {LIBSECCOMP_VERSION} format {_FORMAT}"
    key = hashlib.sha256(salt.encode()).hexdigest()
    bpf = _memory.get(key)
    if bpf is None:
        path = os.path.join(cache_dir, f"{key}.bpf")
        bpf = _read(path)
        if bpf is None:
            bpf = compile_program(resolved)
            _write(cache_dir, path, bpf)
        if len(_memory) >= _MEMORY_LIMIT:
            _memory.pop(next(iter(_memory)))
        _memory[key] = bpf
    return bpf


@functools.cache
def kernel_supports_seccomp() -> bool:
    """Probe as dockerd does: CONFIG_SECCOMP, then CONFIG_SECCOMP_FILTER (EFAULT, not EINVAL)."""
    if _libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) < 0 and ctypes.get_errno() == 22:
        return False
    _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, 0, 0, 0)
    return ctypes.get_errno() != 22


@functools.cache
def _host() -> tuple[str, tuple[int, int]]:
    uname = os.uname()
    return uname.machine, sc.kernel_release(uname.release)


def program_for(security_opt: Iterable[str], privileged: bool, caps: int,
                cache_dir: str) -> Program | None:
    """Return the filter for a container start, or None for no filter.

    `security_opt` is HostConfig.SecurityOpt (its `seccomp=` value: unconfined, builtin or
    the profile's JSON text), `caps` the bounding set (`events.caps` mask), `cache_dir`
    where compiled programs are kept (e.g. <data root>/seccomp). A bad profile raises
    ValueError with Docker's text (a start error: the container stays created).
    """
    opts = tuple(security_opt)
    profile = sc.select_profile(opts, privileged)
    if profile is None:
        return None
    if not kernel_supports_seccomp():
        if sc.seccomp_option(opts) not in ("", sc.BUILTIN):
            raise ValueError("seccomp is not enabled in your kernel, cannot run a custom "
                             "seccomp profile")
        return None
    machine, kernel = _host()
    resolved = sc.resolve(profile, caps, kernel=kernel, arch=machine)
    if resolved is None:
        return None
    return Program(_compiled(resolved, cache_dir), resolved.flags)


# --- loading ------------------------------------------------------------------------------

def prepare(program: Program) -> Prepared:
    """Build the ctypes objects ``install`` needs; do it before pivot_root (and before fork)."""
    global _SYS_SECCOMP
    if not _valid(program.bpf):
        raise ValueError(f"not a seccomp BPF program ({len(program.bpf)} bytes)")
    if _SYS_SECCOMP is None and program.flags:  # install needs it, and may not import
        import pyseccomp

        _SYS_SECCOMP = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "seccomp")
    buffer = ctypes.create_string_buffer(program.bpf, len(program.bpf))
    fprog = _SockFprog(len(program.bpf) // _INSN.size, ctypes.addressof(buffer))
    return Prepared(fprog, buffer, program.flags)


def install(prepared: Prepared) -> None:
    """Load the filter into the calling thread; it holds for its life and every child.

    Without no_new_privs the kernel requires CAP_SYS_ADMIN, so, as runc: with
    no_new_privs false, call this before dropping capabilities and changing user (the
    later setgroups/setuid/capset/execve must be allowed by the profile, as in Docker);
    with no_new_privs true, call it last, after PR_SET_NO_NEW_PRIVS, the user change and
    the executable lookup, just before execve. Raises OSError (EACCES: neither held).
    """
    if prepared.flags:
        assert _SYS_SECCOMP is not None  # prepare resolved it
        result = _libc.syscall(_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, prepared.flags,
                               ctypes.addressof(prepared.fprog))
    else:
        result = _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER,
                             ctypes.addressof(prepared.fprog), 0, 0)
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"load seccomp filter: {os.strerror(err)}")
