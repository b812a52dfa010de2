"""Seccomp profiles (events.seccomp): Docker's format and texts, resolution by caps, selection.

Resolved rules are checked through `verdict`, a small model of what the compiled filter
answers for one call (the action of the matching rules, else the default), so each
assertion reads as "what would this syscall get", not as a copy of the table.
"""

from __future__ import annotations

import msgspec
import pytest

from events import seccomp as sc
from events.caps import CAPABILITIES, DEFAULT_MASK

ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050001, 0x00050026
KERNEL = (6, 1)
ALL_CAPS = (1 << len(CAPABILITIES)) - 1


def bit(name: str) -> int:
    return 1 << CAPABILITIES[name]


def resolved(caps: int = DEFAULT_MASK, profile: sc.Profile = sc.DEFAULT,
             kernel: tuple[int, int] = KERNEL, arch: str = "x86_64") -> sc.Resolved:
    out = sc.resolve(profile, caps, kernel=kernel, arch=arch)
    assert out is not None
    return out


def _holds(cond: sc.Condition, args: tuple[int, ...]) -> bool:
    value = args[cond.index] if cond.index < len(args) else 0
    return {1: value != cond.value, 2: value < cond.value, 3: value <= cond.value,
            4: value == cond.value, 5: value >= cond.value, 6: value > cond.value,
            7: value & cond.value == cond.value_two}[cond.op]


def verdict(res: sc.Resolved, name: str, *args: int) -> int:
    """Return the action a call gets from these rules (rules that disagree are a bug)."""
    actions = {rule.action for rule in res.rules
               if name in rule.names and all(_holds(c, args) for c in rule.args)}
    assert len(actions) <= 1, f"{name}{args}: conflicting actions {actions}"
    return actions.pop() if actions else res.default_action


def profile(text: str) -> sc.Profile:
    return sc.decode_profile(text)


# --- decoding and Docker's texts -------------------------------------------------------------

@pytest.mark.parametrize("text", ["{", "[]", '{"defaultAction": 1}', '{"syscalls": {}}',
                                  '{"defaultErrnoRet": -1}'])
def test_malformed_profiles_get_dockers_prefix(text: str) -> None:
    with pytest.raises(ValueError, match=r"^Decoding seccomp profile failed: \S"):
        sc.decode_profile(text)


def test_both_architectures_and_arch_map() -> None:
    with pytest.raises(ValueError) as info:
        profile('{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"],'
                ' "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}')
    assert str(info.value) == ("both 'architectures' and 'archMap' are specified in the seccomp "
                               "profile, use either 'architectures' or 'archMap'")


def test_both_name_and_names() -> None:
    with pytest.raises(ValueError) as info:
        profile('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "mkdir",'
                ' "names": ["rmdir"], "action": "SCMP_ACT_ERRNO"}]}')
    assert str(info.value) == ("both 'name' and 'names' are specified in the seccomp profile, "
                               "use either 'name' or 'names'")


@pytest.mark.parametrize("version,tail", [
    ("4.8.1", ""), ("4", ""),
    ("a.1", ': strconv.ParseUint: parsing "a": invalid syntax'),
    ("4.256", ': strconv.ParseUint: parsing "256": value out of range'),
    ("0.0", ": version cannot be 0.0"),
])
def test_bad_min_kernel(version: str, tail: str) -> None:
    with pytest.raises(ValueError) as info:
        profile('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["ptrace"],'
                f' "action": "SCMP_ACT_ERRNO", "includes": {{"minKernel": "{version}"}}}}]}}')
    assert str(info.value) == (f'Decoding seccomp profile failed: invalid kernel version: '
                               f'"{version}", expected "<kernel>.<major>"{tail}')


def test_an_empty_profile_means_no_filter_before_any_check() -> None:
    # moby returns early (no filter) before it looks at the architectures.
    empty = profile('{"architectures": ["SCMP_ARCH_X86"], "archMap": [{"architecture": "x"}]}')
    assert sc.resolve(empty, DEFAULT_MASK, kernel=KERNEL) is None


def test_the_default_profile_survives_its_own_json() -> None:
    again = sc.decode_profile(msgspec.json.encode(sc.DEFAULT))
    assert again == sc.DEFAULT and sc.DEFAULT.default_errno_ret == 1


def test_old_single_name_format() -> None:
    res = resolved(profile=profile('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": '
                                   '[{"name": "mkdir", "action": "SCMP_ACT_ERRNO"}]}'))
    assert verdict(res, "mkdir") == EPERM and verdict(res, "rmdir") == ALLOW


def test_profile_option_compacts_like_dockers_cli() -> None:
    data = b'{\n  "defaultAction": "SCMP_ACT_ALLOW",\n  "syscalls": [ ]\n}\n'
    assert sc.profile_option("p.json", data) == 'seccomp={"defaultAction":"SCMP_ACT_ALLOW",' \
                                                '"syscalls":[]}'
    with pytest.raises(ValueError, match=r"^compacting json for seccomp profile \(p.json\) "
                                         r"failed: "):
        sc.profile_option("p.json", b"{")


# --- the default profile, resolved ------------------------------------------------------------

def test_default_denies_with_eperm_and_allows_the_common_calls() -> None:
    res = resolved()
    assert res.default_action == EPERM
    for name in ("read", "write", "openat", "mkdir", "execve", "capset", "setuid", "chroot"):
        assert verdict(res, name) == ALLOW, name
    for name in ("mount", "umount2", "unshare", "setns", "reboot", "init_module", "bpf",
                 "kexec_load", "sethostname", "kcmp"):
        assert verdict(res, name) == EPERM, name


def test_sys_admin_unlocks_mount_unshare_and_namespaced_clone() -> None:
    without, with_admin = resolved(), resolved(DEFAULT_MASK | bit("CAP_SYS_ADMIN"))
    newuser, plain = 0x10000000, 0x11  # CLONE_NEWUSER; SIGCHLD
    for name in ("mount", "umount2", "unshare", "setns", "sethostname", "setdomainname",
                 "clone3", "bpf", "fsopen", "syslog"):
        assert verdict(with_admin, name) == ALLOW, name
    assert verdict(without, "clone", plain) == ALLOW
    assert verdict(without, "clone", plain | newuser) == EPERM
    assert verdict(with_admin, "clone", plain | newuser) == ALLOW
    assert verdict(without, "clone3") == ENOSYS  # libc falls back to clone


@pytest.mark.parametrize("cap,name", [
    ("CAP_SYS_PTRACE", "kcmp"), ("CAP_SYS_PTRACE", "pidfd_getfd"),
    ("CAP_SYS_TIME", "settimeofday"), ("CAP_SYS_TIME", "clock_settime"),
    ("CAP_SYS_MODULE", "init_module"), ("CAP_SYS_MODULE", "finit_module"),
    ("CAP_SYS_BOOT", "reboot"), ("CAP_BPF", "bpf"), ("CAP_PERFMON", "perf_event_open"),
    ("CAP_SYS_PACCT", "acct"), ("CAP_SYS_NICE", "mbind"), ("CAP_SYS_RAWIO", "iopl"),
    ("CAP_SYSLOG", "syslog"), ("CAP_SYS_TTY_CONFIG", "vhangup"),
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"), ("CAP_SYS_CHROOT", "chroot"),
])
def test_a_capability_unlocks_its_syscalls(cap: str, name: str) -> None:
    assert verdict(resolved(DEFAULT_MASK & ~bit(cap)), name) == EPERM
    assert verdict(resolved(DEFAULT_MASK | bit(cap)), name) == ALLOW


def test_socket_refuses_vsock_and_alg_only() -> None:
    res = resolved()
    for family in (1, 2, 10, 16, 17, 37, 39, 41, 44):  # unix, inet, inet6, netlink, packet...
        assert verdict(res, "socket", family, 1) == ALLOW, family
    assert verdict(res, "socket", 40, 1) == EPERM  # AF_VSOCK
    assert verdict(res, "socket", 38, 5) == EPERM  # AF_ALG


def test_personality_only_for_dockers_values() -> None:
    res = resolved()
    for value in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert verdict(res, "personality", value) == ALLOW, hex(value)
    for value in (0x0040000, 0x0400000, 0x1):  # ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...
        assert verdict(res, "personality", value) == EPERM, hex(value)


def test_architecture_specific_rules() -> None:
    amd64, arm64 = resolved(), resolved(arch="aarch64")
    assert verdict(amd64, "arch_prctl") == ALLOW and verdict(amd64, "modify_ldt") == ALLOW
    assert verdict(arm64, "arch_prctl") == EPERM and verdict(arm64, "set_tls") == ALLOW
    assert amd64.architectures == (0xC000003E, 0x40000003, 0x4000003E)  # x86_64, x86, x32
    assert arm64.architectures == (0xC00000B7, 0x40000028)  # aarch64, arm
    s390x = resolved(arch="s390x")  # s390 passes clone's flags second
    assert verdict(s390x, "clone", 0x10000000, 0x11) == ALLOW
    assert verdict(s390x, "clone", 0x11, 0x10000000) == EPERM
    with pytest.raises(ValueError, match="does not support seccomp on sparc64"):
        resolved(arch="sparc64")


def test_min_kernel_gates_ptrace() -> None:
    assert verdict(resolved(kernel=(4, 7)), "ptrace") == EPERM
    assert verdict(resolved(kernel=(4, 8)), "ptrace") == ALLOW
    assert verdict(resolved(kernel=(5, 0)), "process_vm_readv") == ALLOW
    assert sc.kernel_release("6.1.0-18-amd64") == (6, 1)
    assert sc.kernel_release("3.12-1-amd64") == (3, 12)


def test_cache_key_is_stable_and_follows_the_rules_not_the_mask() -> None:
    key = sc.cache_key(resolved())
    assert key == sc.cache_key(resolved()) and len(key) == 64
    # The same rules whatever the mask says beyond them (no rule asks for NET_ADMIN)...
    assert sc.cache_key(resolved(DEFAULT_MASK | bit("CAP_NET_ADMIN"))) == key
    # ...and different rules give a different key.
    assert sc.cache_key(resolved(DEFAULT_MASK | bit("CAP_SYS_ADMIN"))) != key
    assert sc.cache_key(resolved(ALL_CAPS)) != key
    assert sc.cache_key(resolved(kernel=(4, 7))) != key
    assert sc.cache_key(resolved(arch="aarch64")) != key


# --- runc's conversion ------------------------------------------------------------------------

def test_runc_conversion_of_rules() -> None:
    res = resolved(profile=profile(
        '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": ['
        '{"names": ["read"], "action": "SCMP_ACT_ERRNO"},'  # the default: dropped
        '{"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},'
        '{"names": ["tkill"], "action": "SCMP_ACT_KILL"},'
        '{"names": ["write"], "action": "SCMP_ACT_ALLOW", "args": ['
        '  {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},'
        '  {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}]}'))
    assert verdict(res, "read") == EPERM and not any("read" in r.names for r in res.rules)
    assert verdict(res, "kill") == 0x00050000 | 13
    assert verdict(res, "tkill") == 0  # SECCOMP_RET_KILL_THREAD
    # Two conditions on one argument become two rules (runc), so either value is allowed.
    assert verdict(res, "write", 1) == ALLOW and verdict(res, "write", 2) == ALLOW
    assert verdict(res, "write", 3) == EPERM


@pytest.mark.parametrize("text,message", [
    ('{"defaultAction": "SCMP_ACT_NOPE"}', "string SCMP_ACT_NOPE is not a valid action"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": '
     '"SCMP_ACT_ERRNO", "args": [{"index": 0, "op": "SCMP_CMP_ABOUT"}]}]}',
     "string SCMP_CMP_ABOUT is not a valid operator"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}',
     "string SCMP_ARCH_Z80 is not a valid arch"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], '
     '"action": "SCMP_ACT_NOTIFY"}]}', "does not support seccomp notify"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}',
     "seccomp flag SECCOMP_FILTER_FLAG_NOPE is not known"),
])
def test_invalid_rules_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolved(profile=profile(text))


def test_flags() -> None:
    res = resolved(profile=profile('{"defaultAction": "SCMP_ACT_ALLOW", "flags": '
                                   '["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG"]}'))
    assert res.flags == 2


# --- selection (WithSeccomp) ------------------------------------------------------------------

CUSTOM = '{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],' \
         '"action":"SCMP_ACT_ERRNO"}]}'


@pytest.mark.parametrize("opts,privileged,expected", [
    ((), False, "default"),
    ((), True, None),
    (("seccomp=unconfined",), False, None),
    (("seccomp=unconfined",), True, None),
    (("seccomp=builtin",), False, "default"),
    (("seccomp=builtin",), True, "default"),
    ((f"seccomp={CUSTOM}",), False, "custom"),
    ((f"seccomp={CUSTOM}",), True, "custom"),
    (("seccomp:unconfined",), False, None),  # the deprecated separator
    (("no-new-privileges", "seccomp=unconfined", "seccomp=builtin"), False, "default"),
    ((f"seccomp={CUSTOM}", "seccomp=unconfined"), False, None),  # the last one wins
    (("seccomp=",), False, "default"),
])
def test_select_profile_in_withseccomps_order(opts: tuple[str, ...], privileged: bool,
                                              expected: str | None) -> None:
    got = sc.select_profile(opts, privileged)
    want = {"default": sc.DEFAULT, "custom": sc.decode_profile(CUSTOM), None: None}[expected]
    assert got == want


def test_select_profile_raises_dockers_text_for_a_bad_profile() -> None:
    with pytest.raises(ValueError, match="^Decoding seccomp profile failed: "):
        sc.select_profile(("seccomp={not json",), privileged=True)
