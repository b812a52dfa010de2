"""The devices cgroup on cgroup v2: the allow-list as an eBPF program attached to the group.

v2 has no ``devices.allow``: on every mknod and open of a device node the kernel runs the
BPF_PROG_TYPE_CGROUP_DEVICE programs attached to the task's group and its ancestors, and any
that returns 0 makes the call fail with EPERM. `program` turns the rules
`workers.proc.devices.apply_rules` writes on v1 (`events.hostopts.device_rules`) into such a
program with the same meaning: deny unless one rule allows the whole access asked; an "a"
rule allows everything, as the v1 kernel reads any "a" line written to devices.allow.
`apply_filter` loads it with bpf(2) and attaches it in place of the ones attached before.
Design and the differences from runc: docs/decisions/0007-device-filter.md.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import struct
import sys
from typing import NamedTuple

__all__ = ["Insn", "apply_filter", "assemble", "attached", "decode", "disasm", "program"]

# struct bpf_cgroup_dev_ctx (linux/bpf.h): u32 access_type = (access << 16) | type; u32 major;
# u32 minor.
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
ALL_ACCESS = ACC_MKNOD | ACC_READ | ACC_WRITE
_TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
_RULE = re.compile(r"([abc]) ([0-9]+|\*):([0-9]+|\*) ([rwm]{1,3})")
# Numbers are compared as 32-bit immediates, sign-extended against a zero-extended u32:
# above this they would never match. A dev_t major has 12 bits and a minor 20.
_MAX_NUMBER = 0x7FFF_FFFF

# The few opcodes the program needs (linux/bpf_common.h): class | operation | source.
LDXW = 0x61  # BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
AND32 = 0x54  # BPF_ALU | BPF_AND | BPF_K
RSH32 = 0x74  # BPF_ALU | BPF_RSH | BPF_K
MOV32 = 0xB4  # BPF_ALU | BPF_MOV | BPF_K
MOV32X = 0xBC  # BPF_ALU | BPF_MOV | BPF_X
JNE = 0x55  # BPF_JMP | BPF_JNE | BPF_K
JNEX = 0x5D  # BPF_JMP | BPF_JNE | BPF_X
EXIT = 0x95  # BPF_JMP | BPF_EXIT
_FORMAT = {
    LDXW: "r{dst} = *(u32 *)(r{src} + {off})", AND32: "w{dst} &= {imm:#x}",
    RSH32: "w{dst} >>= {imm}", MOV32: "w{dst} = {imm}", MOV32X: "w{dst} = w{src}",
    JNE: "if r{dst} != {imm} goto +{off}", JNEX: "if r{dst} != r{src} goto +{off}",
    EXIT: "exit",
}
# Registers: r1 holds the context on entry (then scratch), r0 the verdict (1 allows).
R0, R1, R2, R3, R4, R5 = range(6)
_NEXT = 0x7FFF  # a jump "to the next rule", resolved when the rule's block is complete


class Insn(NamedTuple):
    """One eBPF instruction (struct bpf_insn)."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0


_ALLOW = [Insn(MOV32, R0, imm=1), Insn(EXIT)]
_DENY = [Insn(MOV32, R0, imm=0), Insn(EXIT)]
_PROLOGUE = [
    Insn(LDXW, R2, R1, 0), Insn(AND32, R2, imm=0xFFFF),  # r2 = device type
    Insn(LDXW, R3, R1, 0), Insn(RSH32, R3, imm=16),  # r3 = access asked
    Insn(LDXW, R4, R1, 4),  # r4 = major
    Insn(LDXW, R5, R1, 8),  # r5 = minor
]


def _parse(rule: str) -> tuple[str, int | None, int | None, int]:
    """Return (type, major or None for *, minor or None, access bits) of one rule."""
    m = _RULE.fullmatch(rule)
    if m is None:
        raise ValueError(f"invalid device cgroup rule {rule!r}")
    kind, major, minor, perms = m.groups()
    numbers = [None if n == "*" else int(n) for n in (major, minor)]
    if any(n is not None and n > _MAX_NUMBER for n in numbers):
        raise ValueError(f"device number out of range in {rule!r}")
    access = 0
    for p in perms:
        access |= _ACCESS[p]
    return kind, numbers[0], numbers[1], access


def _rule_block(kind: str, major: int | None, minor: int | None, access: int) -> list[Insn]:
    """Allow (return 1) when the device and the whole access asked match; else fall through."""
    block = [Insn(JNE, R2, off=_NEXT, imm=_TYPES[kind])]
    if access != ALL_ACCESS:  # the access asked must lie within the rule's: r3 & access == r3
        block += [Insn(MOV32X, R1, R3), Insn(AND32, R1, imm=access),
                  Insn(JNEX, R1, R3, off=_NEXT)]
    if major is not None:
        block.append(Insn(JNE, R4, off=_NEXT, imm=major))
    if minor is not None:
        block.append(Insn(JNE, R5, off=_NEXT, imm=minor))
    block += _ALLOW
    return [i._replace(off=len(block) - n - 1) if i.off == _NEXT else i
            for n, i in enumerate(block)]


def program(rules: tuple[str, ...]) -> list[Insn]:
    """Return the filter for `rules`: deny every device except what one rule allows.

    Rules only add to the allow-list, so their order does not change the verdict. Any "a"
    rule gives the two-instruction allow-all: code after it would be unreachable, which the
    verifier refuses.
    """
    parsed = [_parse(rule) for rule in rules]
    if any(kind == "a" for kind, *_ in parsed):
        return list(_ALLOW)
    insns = list(_PROLOGUE)
    for rule in parsed:
        insns += _rule_block(*rule)
    return insns + _DENY


def _regs(dst: int, src: int) -> int:
    """The register byte: bitfields dst_reg:4, src_reg:4 in the machine's bit order."""
    return src << 4 | dst if sys.byteorder == "little" else dst << 4 | src


def assemble(insns: list[Insn]) -> bytes:
    """Encode instructions as the kernel reads them (8 bytes each, native byte order)."""
    return b"".join(struct.pack("=BBhi", i.code, _regs(i.dst, i.src), i.off, i.imm)
                    for i in insns)


def decode(code: bytes) -> list[Insn]:
    """The inverse of `assemble` (tests and diagnostics read programs back with it)."""
    out = []
    for op, regs, off, imm in struct.iter_unpack("=BBhi", code):
        hi, lo = regs >> 4, regs & 0xF
        dst, src = (lo, hi) if sys.byteorder == "little" else (hi, lo)
        out.append(Insn(op, dst, src, off, imm))
    return out


def disasm(insns: list[Insn]) -> list[str]:
    """One line per instruction, in the kernel's verifier-log syntax."""
    return [_FORMAT[i.code].format(**i._asdict()) for i in insns]


# --- bpf(2) --------------------------------------------------------------------------------

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "s390x": 351, "ppc64le": 361}
BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH = 5, 8, 9
BPF_PROG_GET_FD_BY_ID, BPF_PROG_QUERY = 13, 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # attach type
BPF_F_ALLOW_MULTI = 2
MAX_PROGS = 64  # BPF_CGROUP_MAX_PROGS: per group and attach type
# Bigger than the kernel's union bpf_attr: the kernel writes query results into fields past
# the ones we fill (6.x adds query.revision), and checks that bytes past its own size are 0.
_ATTR_SIZE = 256
_LICENSE = b"Apache-2.0"  # the project's; the program calls no GPL-only helper
_NAME = b"moor_devices"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _attr(fmt: str, *values: int | bytes) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2): unknown syscall number on {platform.machine()}")
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_long(cmd), attr, ctypes.c_ulong(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def _load(code: bytes) -> int:
    """Load the program; return its fd. A refusal carries the verifier's log."""
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(_LICENSE)
    log = ctypes.create_string_buffer(1 << 16)

    def attr(level: int) -> ctypes.Array[ctypes.c_char]:
        # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
        # prog_flags, prog_name, prog_ifindex, expected_attach_type
        return _attr("=IIQQIIQII16sII", BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
                     ctypes.addressof(insns), ctypes.addressof(lic), level,
                     len(log) if level else 0, ctypes.addressof(log) if level else 0,
                     0, 0, _NAME, 0, BPF_CGROUP_DEVICE)

    try:
        return _bpf(BPF_PROG_LOAD, attr(0))
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EACCES):
            raise
    try:  # again, only to get the verifier's reason (libbpf does the same)
        return _bpf(BPF_PROG_LOAD, attr(1))
    except OSError as e:
        reason = log.value.decode(errors="replace").strip()
        raise OSError(e.errno, f"BPF_PROG_LOAD refused the device filter: {e.strerror}: "
                               f"{reason}") from None


def _attached(dir_fd: int) -> list[int]:
    ids = (ctypes.c_uint32 * MAX_PROGS)()
    # target_fd, attach_type, query_flags (0: this group's own, not the effective set),
    # attach_flags (out), prog_ids, prog_cnt (in/out)
    attr = _attr("=IIIIQI", dir_fd, BPF_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), MAX_PROGS)
    _bpf(BPF_PROG_QUERY, attr)
    (count,) = struct.unpack_from("=I", attr, 24)
    return list(ids[:count])


def _open_group(group_dir: str) -> int:
    return os.open(group_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def attached(group_dir: str) -> list[int]:
    """Return the ids of the device programs attached to the group itself (not ancestors)."""
    fd = _open_group(group_dir)
    try:
        return _attached(fd)
    finally:
        os.close(fd)


def _detach(dir_fd: int, prog_id: int) -> None:
    """Detach one program by id; one gone meanwhile is fine."""
    try:
        prog_fd = _bpf(BPF_PROG_GET_FD_BY_ID, _attr("=I", prog_id))
    except FileNotFoundError:
        return
    try:
        _bpf(BPF_PROG_DETACH, _attr("=III", dir_fd, prog_fd, BPF_CGROUP_DEVICE))
    except FileNotFoundError:
        pass
    finally:
        os.close(prog_fd)


def apply_filter(group_dir: str, rules: tuple[str, ...]) -> None:
    """Confine a v2 group's devices to `rules`, replacing the filters attached before.

    Attached with BPF_F_ALLOW_MULTI, as runc does, so a runtime nested in the container may
    still attach its own below. The new program goes on before the old ones come off (a
    restarted container's group keeps them): while both are attached their verdicts are
    ANDed, so the group is never without a filter. Our fd is closed after attaching: the
    attachment holds the program, and removing the group frees it.
    """
    code = assemble(program(rules))  # a bad rule raises before anything changes
    dir_fd = _open_group(group_dir)
    try:
        old = _attached(dir_fd)
        prog_fd = _load(code)
        try:
            # target_fd, attach_bpf_fd, attach_type, attach_flags
            _bpf(BPF_PROG_ATTACH, _attr("=IIII", dir_fd, prog_fd, BPF_CGROUP_DEVICE,
                                        BPF_F_ALLOW_MULTI))
        finally:
            os.close(prog_fd)
        for prog_id in old:
            _detach(dir_fd, prog_id)
    finally:
        os.close(dir_fd)
