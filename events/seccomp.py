"""Seccomp profiles in Docker's JSON format: decode, select, and resolve for one container.

Pure (standard library and msgspec): `workers.proc.seccomp` compiles what `resolve`
returns with libseccomp. The facts are Docker's (docs/docker-semantics-2.md §10.2, §10.3):
the format of moby `profiles/seccomp/seccomp.go`, the include/exclude rules of
`seccomp_linux.go` `setupSeccomp`, the choice of `daemon/seccomp_linux.go` `WithSeccomp`,
and what runc does to the rules before libseccomp sees them (`libcontainer/seccomp`):
numeric actions, EPERM when a rule names no errno, rules equal to the default action
dropped, and several conditions on one argument split into one rule each.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Annotated

import msgspec

from events import seccomp_default
from events.caps import CAPABILITIES, go_quote

__all__ = [
    "BUILTIN", "DEFAULT", "UNCONFINED", "Architecture", "Arg", "Condition", "Filter", "Profile",
    "Resolved", "Rule", "Syscall", "cache_key", "decode_profile", "kernel_release",
    "parse_min_kernel", "profile_option", "resolve", "seccomp_option", "select_profile",
]

UNCONFINED, BUILTIN = "unconfined", "builtin"
_U64 = Annotated[int, msgspec.Meta(ge=0)]  # Go's uint / uint64 (the top is checked by hand)
_MAX_U64 = 2**64 - 1


class Arg(msgspec.Struct, frozen=True, rename="camel"):
    """One condition on a syscall argument (for MASKED_EQ, `value` is the mask)."""

    index: _U64 = 0
    value: _U64 = 0
    value_two: _U64 = 0
    op: str = ""


class Filter(msgspec.Struct, frozen=True, rename="camel"):
    """When a rule applies: capabilities (all of them), architectures, kernel "<major>.<minor>"."""

    caps: tuple[str, ...] | None = None
    arches: tuple[str, ...] | None = None
    min_kernel: str | None = None


class Syscall(msgspec.Struct, frozen=True, rename="camel"):
    """A rule: the action for these syscalls, under optional argument conditions."""

    names: tuple[str, ...] | None = None
    name: str = ""  # the old format's single name
    action: str = ""
    errno_ret: _U64 | None = None
    args: tuple[Arg, ...] | None = None
    comment: str = ""
    includes: Filter | None = None
    excludes: Filter | None = None


class Architecture(msgspec.Struct, frozen=True, rename="camel"):
    """A native architecture and the sub-architectures its filter covers too."""

    architecture: str = ""
    sub_architectures: tuple[str, ...] | None = None


class Profile(msgspec.Struct, frozen=True, rename="camel"):
    """A seccomp profile as `docker run --security-opt seccomp=<file>` takes it."""

    default_action: str = ""
    default_errno_ret: _U64 | None = None
    architectures: tuple[str, ...] | None = None
    arch_map: tuple[Architecture, ...] | None = None
    flags: tuple[str, ...] | None = None
    listener_path: str = ""
    listener_metadata: str = ""
    syscalls: tuple[Syscall, ...] | None = None


class Condition(msgspec.Struct, frozen=True, array_like=True):
    """A libseccomp argument comparison (`op` is libseccomp's `scmp_compare`)."""

    index: int
    op: int
    value: int
    value_two: int = 0


class Rule(msgspec.Struct, frozen=True, array_like=True):
    """One libseccomp rule per name: `action` (a kernel SECCOMP_RET_* value) when all hold."""

    names: tuple[str, ...]
    action: int
    args: tuple[Condition, ...] = ()


class Resolved(msgspec.Struct, frozen=True, array_like=True):
    """The concrete filter for one container: what the compiler gets, and the cache key's input.

    `arch` is the native one (libseccomp's syscall numbers are per architecture);
    `architectures` the extra SCMP_ARCH tokens; `flags` SECCOMP_FILTER_FLAG_* bits.
    """

    arch: str
    default_action: int
    architectures: tuple[int, ...]
    flags: int
    rules: tuple[Rule, ...]


# --- the numbers: kernel SECCOMP_RET_*, libseccomp scmp_compare and SCMP_ARCH_* ------------

_EPERM = 1
_ACTIONS = {  # name -> (SECCOMP_RET_* value, whether it carries an errno)
    "SCMP_ACT_KILL": (0x00000000, False), "SCMP_ACT_KILL_THREAD": (0x00000000, False),
    "SCMP_ACT_KILL_PROCESS": (0x80000000, False), "SCMP_ACT_TRAP": (0x00030000, False),
    "SCMP_ACT_ERRNO": (0x00050000, True), "SCMP_ACT_TRACE": (0x7FF00000, True),
    "SCMP_ACT_LOG": (0x7FFC0000, False), "SCMP_ACT_ALLOW": (0x7FFF0000, False),
}
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
        "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": 0,  # runc: always synced, nothing to set
          "SECCOMP_FILTER_FLAG_LOG": 2, "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4}
_ARCHES = {
    "SCMP_ARCH_X86": 0x40000003, "SCMP_ARCH_X86_64": 0xC000003E, "SCMP_ARCH_X32": 0x4000003E,
    "SCMP_ARCH_ARM": 0x40000028, "SCMP_ARCH_AARCH64": 0xC00000B7, "SCMP_ARCH_MIPS": 0x8,
    "SCMP_ARCH_MIPS64": 0x80000008, "SCMP_ARCH_MIPS64N32": 0xA0000008,
    "SCMP_ARCH_MIPSEL": 0x40000008, "SCMP_ARCH_MIPSEL64": 0xC0000008,
    "SCMP_ARCH_MIPSEL64N32": 0xE0000008, "SCMP_ARCH_PPC": 0x14, "SCMP_ARCH_PPC64": 0x80000015,
    "SCMP_ARCH_PPC64LE": 0xC0000015, "SCMP_ARCH_S390": 0x16, "SCMP_ARCH_S390X": 0x80000016,
    "SCMP_ARCH_PARISC": 0xF, "SCMP_ARCH_PARISC64": 0x8000000F,
    "SCMP_ARCH_RISCV64": 0xC00000F3, "SCMP_ARCH_LOONGARCH64": 0xC0000102,
}
# uname machine -> (moby's name for it in includes/excludes "arches", its SCMP_ARCH).
_MACHINES = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"), "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "i686": ("x86", "SCMP_ARCH_X86"), "i386": ("x86", "SCMP_ARCH_X86"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"), "armv8l": ("arm", "SCMP_ARCH_ARM"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"), "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
}


# --- decoding ---------------------------------------------------------------------------

_DECODER = msgspec.json.Decoder(Profile)
_ENCODER = msgspec.json.Encoder()
_RELEASE = re.compile(r"(\d+)\.(\d+)")


def _parse_uint8(text: str) -> int:
    """Parse as Go's strconv.ParseUint(text, 10, 8), with its error texts."""
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"strconv.ParseUint: parsing {go_quote(text)}: invalid syntax")
    if int(text) > 255:
        raise ValueError(f"strconv.ParseUint: parsing {go_quote(text)}: value out of range")
    return int(text)


def parse_min_kernel(version: str) -> tuple[int, int]:
    """Parse a minKernel "<kernel>.<major>" as moby does; raise ValueError with its text."""
    raw = _ENCODER.encode(version).decode()
    expected = f'invalid kernel version: {raw}, expected "<kernel>.<major>"'
    parts = version.split(".", 2)
    if len(parts) != 2:
        raise ValueError(expected)
    try:
        kernel, major = _parse_uint8(parts[0]), _parse_uint8(parts[1])
    except ValueError as e:
        raise ValueError(f"{expected}: {e}") from None
    if (kernel, major) == (0, 0):
        raise ValueError(f"{expected}: version cannot be 0.0")
    return kernel, major


def kernel_release(release: str) -> tuple[int, int]:
    """Return (kernel, major) of a uname release ("6.1.0-18-amd64" -> (6, 1)), as moby reads it."""
    match = _RELEASE.match(release)
    if match is None:
        raise ValueError(f"failed to parse kernel version {go_quote(release)}")
    return int(match[1]), int(match[2])


def _disabled(profile: Profile) -> bool:
    """moby: no default action and no syscalls means no filter at all."""
    return not profile.default_action and not profile.syscalls


def decode_profile(text: str | bytes) -> Profile:
    """Decode a profile's JSON text; raise ValueError with Docker's texts."""
    try:
        profile = _DECODER.decode(text)
        for rule in profile.syscalls or ():
            if any(max(a.index, a.value, a.value_two) > _MAX_U64 for a in rule.args or ()):
                raise ValueError("an argument condition does not fit in uint64")
            for when in (rule.includes, rule.excludes):
                if when is not None and when.min_kernel:
                    parse_min_kernel(when.min_kernel)
    except (msgspec.DecodeError, ValueError) as e:
        raise ValueError(f"Decoding seccomp profile failed: {e}") from None
    if _disabled(profile):
        return profile
    if profile.architectures and profile.arch_map:
        raise ValueError("both 'architectures' and 'archMap' are specified in the seccomp "
                         "profile, use either 'architectures' or 'archMap'")
    if any(rule.name and rule.names for rule in profile.syscalls or ()):
        raise ValueError("both 'name' and 'names' are specified in the seccomp profile, "
                         "use either 'name' or 'names'")
    return profile


def profile_option(path: str, data: bytes) -> str:
    """Return the option Docker's CLI sends for `seccomp=<path>`: the file's compacted JSON."""
    try:
        return "seccomp=" + msgspec.json.format(data, indent=-1).decode()
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"compacting json for seccomp profile ({path}) failed: {e}") from None


DEFAULT: Profile = msgspec.convert(seccomp_default.PROFILE, Profile)


# --- selection --------------------------------------------------------------------------

def seccomp_option(security_opt: Iterable[str]) -> str:
    """Return the last `seccomp=` value ("" if none), split as the daemon splits options."""
    value = ""
    for opt in security_opt:
        sep = "=" if "=" in opt else ":" if ":" in opt else ""
        key, _, rest = opt.partition(sep) if sep else (opt, "", "")
        if key == "seccomp":
            value = rest
    return value


def select_profile(security_opt: Iterable[str], privileged: bool) -> Profile | None:
    """Choose the container's profile in WithSeccomp's order; None means no filter.

    `unconfined`: none; privileged: none unless a profile was named; `builtin`: the
    default; a JSON text: that profile; nothing: the default. (Docker decodes "builtin"
    as JSON for a privileged container and fails; here it means the default there too.)
    """
    value = seccomp_option(security_opt)
    if value == UNCONFINED:
        return None
    if value == BUILTIN:
        return DEFAULT
    if value:
        return decode_profile(value)
    return None if privileged else DEFAULT


# --- resolution -------------------------------------------------------------------------

def _action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise ValueError("moorage does not support seccomp notify (SCMP_ACT_NOTIFY) yet")
    if name not in _ACTIONS:
        raise ValueError(f"string {name} is not a valid action for seccomp")
    value, takes_errno = _ACTIONS[name]
    if takes_errno:  # runc: EPERM unless the rule names its errno
        value |= (_EPERM if errno_ret is None else errno_ret) & 0xFFFF
    return value


def _condition(arg: Arg) -> Condition:
    if arg.op not in _OPS:
        raise ValueError(f"string {arg.op} is not a valid operator for seccomp")
    if arg.index > 5:
        raise ValueError(f"invalid seccomp argument index {arg.index}: syscalls have 6")
    return Condition(arg.index, _OPS[arg.op], arg.value, arg.value_two)


def _arch(name: str) -> int:
    if name not in _ARCHES:
        raise ValueError(f"string {name} is not a valid arch for seccomp")
    return _ARCHES[name]


def _applies(rule: Syscall, caps: frozenset[str], arch: str, kernel: tuple[int, int]) -> bool:
    """Apply moby's filter: any exclude drops the rule; every include must hold."""
    out, need = rule.excludes, rule.includes
    if out is not None and (arch in (out.arches or ()) or any(c in caps for c in out.caps or ())
                            or (out.min_kernel and kernel >= parse_min_kernel(out.min_kernel))):
        return False
    return need is None or (
        (not need.arches or arch in need.arches)
        and all(c in caps for c in need.caps or ())
        and (not need.min_kernel or kernel >= parse_min_kernel(need.min_kernel)))


def _rules(rule: Syscall, default: int) -> list[Rule]:
    """Convert a rule as runc does: one per condition when conditions share an argument."""
    names = (rule.name,) if rule.name else rule.names or ()
    action = _action(rule.action, rule.errno_ret)
    conds = tuple(_condition(a) for a in rule.args or ())
    if not names or action == default:  # libseccomp refuses a rule equal to the default
        return []
    indexes = [c.index for c in conds]
    if len(set(indexes)) < len(indexes):
        return [Rule(names, action, (c,)) for c in conds]
    return [Rule(names, action, conds)]


def resolve(profile: Profile, caps: int, *, kernel: tuple[int, int],
            arch: str = "x86_64") -> Resolved | None:
    """Return the rules to compile for a container, or None when the profile means no filter.

    `caps` is the container's bounding set (an `events.caps` mask), `kernel` the host's
    (kernel, major) release, `arch` its uname machine. Equal inputs give equal results.
    """
    if _disabled(profile):
        return None
    if arch not in _MACHINES:
        raise ValueError(f"moorage does not support seccomp on {arch} yet")
    go_arch, native = _MACHINES[arch]
    names = frozenset(name for name, bit in CAPABILITIES.items() if caps >> bit & 1)
    default = _action(profile.default_action, profile.default_errno_ret)
    extra = list(profile.architectures or ())
    for entry in profile.arch_map or ():
        if entry.architecture == native:
            extra += [entry.architecture, *(entry.sub_architectures or ())]
            break
    flags = 0
    for flag in profile.flags or ():
        if flag not in _FLAGS:
            raise ValueError(f"seccomp flag {flag} is not known to moorage")
        flags |= _FLAGS[flag]
    rules = [r for rule in profile.syscalls or () if _applies(rule, names, go_arch, kernel)
             for r in _rules(rule, default)]
    return Resolved(arch, default, tuple(dict.fromkeys(_arch(a) for a in extra)), flags,
                    tuple(rules))


def cache_key(resolved: Resolved) -> str:
    """Return a stable key for a resolved filter: sha256 of its canonical encoding."""
    return hashlib.sha256(_ENCODER.encode(resolved)).hexdigest()
