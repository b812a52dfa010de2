"""The v2 device filter as instructions: golden listings, and its verdicts by interpretation.

`run` interprets the few opcodes `workers.proc.devfilter` emits, so each program is also
checked against `reference`, the v1 devices cgroup's reading of the same rules, for every
device type, access and a spread of numbers. The kernel's verdicts are the e2e test's.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

from events.hostopts import DEFAULT_DEVICE_RULES
from workers.proc import cgroups
from workers.proc import devfilter as df

PROLOGUE = [
    "r2 = *(u32 *)(r1 + 0)",
    "w2 &= 0xffff",
    "r3 = *(u32 *)(r1 + 0)",
    "w3 >>= 16",
    "r4 = *(u32 *)(r1 + 4)",
    "r5 = *(u32 *)(r1 + 8)",
]
DENY = ["w0 = 0", "exit"]
ALLOW = ["w0 = 1", "exit"]
TYPES = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR (linux/bpf.h)
ACCESSES = list(range(1, 8))  # every non-empty subset of m, r, w
NUMBERS = [0, 1, 3, 5, 7, 11, 136, 200, 4095]


def listing(rules: tuple[str, ...]) -> list[str]:
    return df.disasm(df.program(rules))


def run(insns: list[df.Insn], kind: int, access: int, major: int, minor: int) -> int:
    """Interpret a program on one struct bpf_cgroup_dev_ctx; return r0 at exit."""
    ctx = {0: access << 16 | kind, 4: major, 8: minor}
    regs = [0] * 11
    pc = 0
    while True:
        i = insns[pc]
        pc += 1
        if i.code == df.LDXW:
            assert i.src == df.R1, "loads only from the context"
            regs[i.dst] = ctx[i.off]
        elif i.code == df.AND32:
            regs[i.dst] = regs[i.dst] & i.imm & 0xFFFFFFFF
        elif i.code == df.RSH32:
            regs[i.dst] = (regs[i.dst] & 0xFFFFFFFF) >> i.imm
        elif i.code == df.MOV32:
            regs[i.dst] = i.imm & 0xFFFFFFFF
        elif i.code == df.MOV32X:
            regs[i.dst] = regs[i.src] & 0xFFFFFFFF
        elif i.code == df.JNE:
            assert i.off > 0, "forward jumps only"
            pc += i.off if regs[i.dst] != i.imm else 0
        elif i.code == df.JNEX:
            assert i.off > 0, "forward jumps only"
            pc += i.off if regs[i.dst] != regs[i.src] else 0
        elif i.code == df.EXIT:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {i.code:#x}")


def reference(rules: tuple[str, ...], kind: int, access: int, major: int, minor: int) -> int:
    """The v1 devices cgroup after `deny a` and each rule written to devices.allow."""
    for rule in rules:
        rkind, numbers, perms = rule.split()
        if rkind == "a":
            return 1  # the kernel reads any "a" line as allow-all
        rmajor, rminor = numbers.split(":")
        rule_access = sum({"m": 1, "r": 2, "w": 4}[p] for p in perms)
        if (TYPES[rkind] == kind and rmajor in ("*", str(major)) and rminor in ("*", str(minor))
                and access & ~rule_access == 0):
            return 1
    return 0


def check_against_reference(rules: tuple[str, ...]) -> None:
    insns = df.program(rules)
    for kind, access, major, minor in itertools.product(TYPES.values(), ACCESSES, NUMBERS,
                                                        NUMBERS):
        assert run(insns, kind, access, major, minor) == \
            reference(rules, kind, access, major, minor), (rules, kind, access, major, minor)


# --- golden listings --------------------------------------------------------------------

def test_one_exact_rule_with_every_access() -> None:
    assert listing(("c 1:3 rwm",)) == PROLOGUE + [
        "if r2 != 2 goto +4",  # char
        "if r4 != 1 goto +3",
        "if r5 != 3 goto +2",
        *ALLOW,
    ] + DENY


def test_a_partial_access_is_checked_as_a_subset() -> None:
    assert listing(("b 8:0 rw",)) == PROLOGUE + [
        "if r2 != 1 goto +7",  # block
        "w1 = w3",
        "w1 &= 0x6",  # read | write
        "if r1 != r3 goto +4",  # asked & allowed != asked: something asked is not allowed
        "if r4 != 8 goto +3",
        "if r5 != 0 goto +2",
        *ALLOW,
    ] + DENY


def test_wildcards_drop_their_compare() -> None:
    assert listing(("c 136:* rwm", "b *:* m")) == PROLOGUE + [
        "if r2 != 2 goto +3",
        "if r4 != 136 goto +2",
        *ALLOW,
        "if r2 != 1 goto +5",
        "w1 = w3",
        "w1 &= 0x1",  # mknod
        "if r1 != r3 goto +2",
        *ALLOW,
    ] + DENY


def test_a_rule_allows_everything_in_two_instructions() -> None:
    assert listing(("a *:* rwm",)) == ALLOW
    # Wherever it comes and whatever it says: the v1 kernel reads "a..." as allow-all.
    assert listing(("c 1:3 rwm", "a 1:3 r")) == ALLOW


def test_no_rules_deny_everything() -> None:
    assert listing(()) == PROLOGUE + DENY


def test_dockers_default_list() -> None:
    lines = listing(DEFAULT_DEVICE_RULES)
    assert lines[:6] == PROLOGUE and lines[-2:] == DENY
    # Two mknod-only blocks (6 instructions each), ten exact rwm ones (5), pts (4).
    assert len(lines) == 6 + 2 * 6 + 9 * 5 + 4 + 2
    assert lines.count("w0 = 1") == len(DEFAULT_DEVICE_RULES)


# --- encoding ---------------------------------------------------------------------------

def test_assemble_and_decode_round_trip() -> None:
    insns = df.program(DEFAULT_DEVICE_RULES)
    code = df.assemble(insns)
    assert len(code) == 8 * len(insns)
    assert df.decode(code) == insns


def test_encoding_of_one_instruction() -> None:
    # if r4 != 136 goto +2: code, regs (dst in the low nibble on little-endian), off, imm.
    code = df.assemble([df.Insn(df.JNE, df.R4, off=2, imm=136)])
    if sys.byteorder == "little":
        assert code == bytes([0x55, 0x04, 0x02, 0x00, 0x88, 0x00, 0x00, 0x00])
    assert df.decode(code) == [df.Insn(0x55, 4, 0, 2, 136)]


# --- verdicts ---------------------------------------------------------------------------

@pytest.mark.parametrize("rules", [
    DEFAULT_DEVICE_RULES,
    (*DEFAULT_DEVICE_RULES, "b 7:* r"),
    ("c 1:3 rwm",),
    ("b 8:0 rw", "c 5:* w", "c *:11 mr"),
    ("c 1:3 r", "c 1:3 w"),  # split accesses: read or write alone, never both at once
    ("a *:* rwm",),
    ("c 1:3 m", "a 1:3 r"),
    (),
], ids=lambda rules: ",".join(rules) or "none")
def test_verdicts_match_the_v1_reading(rules: tuple[str, ...]) -> None:
    check_against_reference(rules)


def test_dockers_defaults_on_the_devices_the_e2e_test_opens() -> None:
    insns = df.program(DEFAULT_DEVICE_RULES)
    assert run(insns, df.DEV_CHAR, df.ACC_WRITE, 1, 3) == 1  # /dev/null
    assert run(insns, df.DEV_CHAR, df.ACC_READ | df.ACC_WRITE, 136, 4) == 1  # a pty
    assert run(insns, df.DEV_BLOCK, df.ACC_MKNOD, 7, 0) == 1
    assert run(insns, df.DEV_BLOCK, df.ACC_READ, 7, 0) == 0
    assert run(insns, df.DEV_CHAR, df.ACC_READ, 1, 11) == 0  # /dev/kmsg
    assert run(insns, df.DEV_CHAR, df.ACC_MKNOD | df.ACC_READ, 1, 11) == 0


@pytest.mark.parametrize("rule", ["x 1:3 rwm", "c 1:3", "c 1:3 rwx", "c -1:3 r", "c 1 r",
                                  "c 1:3 rwm extra", "c 2147483648:0 r", ""])
def test_bad_rules_raise(rule: str) -> None:
    with pytest.raises(ValueError):
        df.program(("c 1:3 rwm", rule))


# --- the hook in cgroups ------------------------------------------------------------------

def test_a_v2_group_gets_the_filter_when_there_are_rules(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ensure_cgroup on a (fake) unified root attaches the rules, and nothing without any."""
    monkeypatch.setenv("MOOR_CGROUP_ROOT", str(tmp_path))
    level = tmp_path
    (level / "cgroup.controllers").write_text("")
    for part in cgroups.cgroup_parent().split("/"):
        level = level / part
        level.mkdir()
        (level / "cgroup.controllers").write_text("")
    calls: list[tuple[str, tuple[str, ...]]] = []
    monkeypatch.setattr(cgroups, "apply_filter", lambda path, rules: calls.append((path, rules)))
    dirs = cgroups.ensure_cgroup("cdev", device_rules=DEFAULT_DEVICE_RULES)
    assert calls == [(dirs["unified"], DEFAULT_DEVICE_RULES)]
    cgroups.ensure_cgroup("cdev2")
    assert len(calls) == 1
