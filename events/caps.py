"""Linux capabilities and `--security-opt`: the one table, Docker's rules, the computed sets.

Pure (standard library only): validation at create (`engine.core.validate`) and the worker
building a process (`workers.saga`) share it. Facts are Docker's: the default set
(moby `oci/caps/defaults.go`), the order CapAdd/CapDrop combine in (`oci/caps/utils.go`)
and the texts of `daemon/container.go` and `daemon/daemon_unix.go` (see
docs/docker-semantics-2.md §10.1, §10.2).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ALL", "CAPABILITIES", "DEFAULT_CAPS", "DEFAULT_MASK", "capability_mask", "check_capabilities",
    "effective_caps", "go_quote", "no_new_privileges", "normalize_caps",
]

ALL = "ALL"

# Capability name -> bit number (linux/capability.h). Docker knows these names.
CAPABILITIES: dict[str, int] = {f"CAP_{name}": bit for bit, name in enumerate((
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
))}

# Docker's default set, in Docker's order: mask 0x00000000a80425fb.
DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")  # Go's strconv.ParseBool
_NOT_YET = ("label", "apparmor", "writable-cgroups")


def go_quote(text: str) -> str:
    """Quote a string as Go's %q does for printable text."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t") + '"'


def normalize_caps(names: Iterable[str]) -> tuple[str, ...]:
    """Upper-case, prefix `CAP_` (but `ALL`), keep the order and drop duplicates."""
    out: dict[str, None] = {}
    for name in names:
        upper = name.strip().upper()
        out[upper if upper == ALL or upper.startswith("CAP_") else f"CAP_{upper}"] = None
    return tuple(out)


def check_capabilities(field: str, names: Iterable[str]) -> None:
    """Raise ValueError with Docker's text for the first unknown capability in a list."""
    for name in normalize_caps(names):
        if name != ALL and name not in CAPABILITIES:
            raise ValueError(f"invalid {field}: unknown capability: {go_quote(name)}")


def effective_caps(cap_add: Iterable[str], cap_drop: Iterable[str],
                   privileged: bool = False) -> tuple[str, ...]:
    """Return the capabilities a container gets, combined in Docker's order.

    Privileged: every capability (the init keeps those the engine holds), CapAdd and
    CapDrop ignored; `ALL` in CapAdd: every capability but the dropped ones; else `ALL` in
    CapDrop: exactly CapAdd; else the defaults minus CapDrop, then CapAdd. Unknown names are
    skipped (create refused them).
    """
    if privileged:
        return tuple(CAPABILITIES)
    adds, drops = normalize_caps(cap_add), normalize_caps(cap_drop)
    if not adds and not drops:
        return DEFAULT_CAPS
    if ALL in adds:
        caps: Iterable[str] = (n for n in CAPABILITIES if n not in drops)
    elif ALL in drops:
        caps = adds
    else:
        caps = (*(n for n in DEFAULT_CAPS if n not in drops), *adds)
    return tuple(dict.fromkeys(n for n in caps if n in CAPABILITIES))


def capability_mask(names: Iterable[str]) -> int:
    """Return the kernel bit mask of capability names (as /proc/<pid>/status shows it)."""
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES[name]
    return mask


DEFAULT_MASK = capability_mask(DEFAULT_CAPS)


def no_new_privileges(security_opt: Iterable[str]) -> bool:
    """Return whether the options ask for no_new_privs; raise ValueError with Docker's text.

    Docker's daemon parses `key=value` (`key:value` deprecated); moorage refuses the keys
    Docker knows but moorage does not apply yet rather than dropping them.
    """
    nnp = False
    for opt in security_opt:
        if opt == "no-new-privileges":
            nnp = True
            continue
        sep = "=" if "=" in opt else ":" if ":" in opt else ""
        if not sep:
            raise ValueError(f"invalid --security-opt 1: {go_quote(opt)}")
        key, _, value = opt.partition(sep)
        if key == "no-new-privileges" and value in (*_TRUE, *_FALSE):
            nnp = value in _TRUE
        elif key == "seccomp" and value:
            continue  # events.seccomp selects and decodes the profile
        elif key in _NOT_YET:
            raise ValueError(f"moorage does not support --security-opt {key} yet: "
                             f"{go_quote(opt)}")
        else:
            raise ValueError(f"invalid --security-opt 2: {go_quote(opt)}")
    return nnp
