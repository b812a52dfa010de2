"""Docker's default seccomp profile, as data: the same rules as moby's `default.json`.

The facts (syscall names, argument conditions, capability, architecture and kernel gates)
are moby's `profiles/seccomp/default_linux.go` as of 2026-05, which also refuses AF_ALG
sockets. `PROFILE` is written in Docker's JSON shape so `events.seccomp` decodes it through
the same model (and checks) as a user's profile. Pure: plain Python values only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ALLOWED", "BY_ARCH", "BY_CAP", "PROFILE"]

EPERM, ENOSYS = 1, 38
AF_ALG, AF_VSOCK = 38, 40  # socket families containers never need (kernel crypto, VM sockets)
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: clone() may not
# create namespaces without CAP_SYS_ADMIN.
CLONE_NAMESPACES = 0x7E020000
# personality(2) values a container may set: PER_LINUX, UNAME26, PER_LINUX32,
# PER_LINUX32|UNAME26, and 0xffffffff (query only).
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# Allowed unconditionally (sorted; names a libseccomp or kernel does not know are skipped).
ALLOWED: tuple[str, ...] = tuple("""
    _llseek _newselect accept accept4 access adjtimex alarm bind brk cachestat capget capset
    chdir chmod chown chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64
    clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range
    connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl
    epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve
    execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate
    fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64
    fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64
    fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait
    futex_waitv futex_wake futimesat get_robust_list get_thread_area getcpu getcwd getdents
    getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
    getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid
    getresgid32 getresuid getresuid32 getrlimit getrusage getsid getsockname getsockopt gettid
    gettimeofday getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init
    inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents
    io_pgetevents_time64 io_setup io_submit ioctl ioprio_get ioprio_set ipc kill
    landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr
    link linkat listen listmount listxattr listxattrat llistxattr lremovexattr lseek lsetxattr
    lstat lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir
    mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify
    mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink
    mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at
    nanosleep newfstatat open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2
    pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2
    prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
    readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
    remap_file_pages removexattr removexattrat rename renameat renameat2 restart_syscall
    riscv_hwprobe rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
    rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo
    sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr
    sched_getparam sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
    sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp
    select semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg
    sendmsg sendto set_robust_list set_thread_area set_tid_address setfsgid setfsgid32
    setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
    setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
    setrlimit setsid setsockopt setuid setuid32 setxattr setxattrat shmat shmctl shmdt shmget
    shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice
    stat stat64 statfs statfs64 statmount statx symlink symlinkat sync sync_file_range syncfs
    sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime
    timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
    timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64
    ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat utimensat_time64 utimes
    vfork vmsplice wait4 waitid waitpid write writev
""".split())

# Allowed on these architectures only (Go's names, as moby matches them).
BY_ARCH: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("ppc64le",), ("sync_file_range2", "swapcontext")),
    (("arm", "arm64"), ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
                        "breakpoint", "cacheflush", "set_tls")),
    (("amd64", "x32"), ("arch_prctl",)),
    (("amd64", "x32", "x86"), ("modify_ldt",)),
    (("s390", "s390x"), ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr")),
    (("riscv64",), ("riscv_flush_icache",)),
)

# Allowed only when the capability is in the container's bounding set.
BY_CAP: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("CAP_DAC_READ_SEARCH", ("open_by_handle_at",)),
    ("CAP_SYS_ADMIN", (
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr", "mount",
        "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
        "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare")),
    ("CAP_SYS_BOOT", ("reboot",)),
    ("CAP_SYS_CHROOT", ("chroot",)),
    ("CAP_SYS_MODULE", ("delete_module", "init_module", "finit_module")),
    ("CAP_SYS_PACCT", ("acct",)),
    ("CAP_SYS_PTRACE", ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
                        "process_vm_writev", "ptrace")),
    ("CAP_SYS_RAWIO", ("iopl", "ioperm")),
    ("CAP_SYS_TIME", ("settimeofday", "stime", "clock_settime", "clock_settime64")),
    ("CAP_SYS_TTY_CONFIG", ("vhangup",)),
    ("CAP_SYS_NICE", ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node")),
    ("CAP_SYSLOG", ("syslog",)),
    ("CAP_BPF", ("bpf",)),
    ("CAP_PERFMON", ("perf_event_open",)),
)

# Native architecture -> the sub-architectures its filter also covers.
ARCH_MAP: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("X86_64", ("X86", "X32")), ("AARCH64", ("ARM",)), ("MIPS64", ("MIPS", "MIPS64N32")),
    ("MIPS64N32", ("MIPS", "MIPS64")), ("MIPSEL64", ("MIPSEL", "MIPSEL64N32")),
    ("MIPSEL64N32", ("MIPSEL", "MIPSEL64")), ("S390X", ("S390",)), ("RISCV64", ()),
    ("LOONGARCH64", ()),
)


def _rule(*names: str, args: tuple[tuple[int, str, int], ...] = (), action: str = "ALLOW",
          errno: int | None = None, includes: dict[str, Any] | None = None,
          excludes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return one rule in Docker's JSON shape (args as (index, op, value) triples)."""
    rule: dict[str, Any] = {"names": list(names), "action": f"SCMP_ACT_{action}"}
    if errno is not None:
        rule["errnoRet"] = errno
    if args:
        rule["args"] = [{"index": i, "value": v, "op": f"SCMP_CMP_{op}"} for i, op, v in args]
    for key, value in (("includes", includes), ("excludes", excludes)):
        if value:
            rule[key] = value
    return rule


_S390 = ("s390", "s390x")
PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": EPERM,
    "archMap": [{"architecture": f"SCMP_ARCH_{arch}",
                 "subArchitectures": [f"SCMP_ARCH_{sub}" for sub in subs]}
                for arch, subs in ARCH_MAP],
    "syscalls": [
        _rule(*ALLOWED),
        _rule("process_vm_readv", "process_vm_writev", "ptrace", includes={"minKernel": "4.8"}),
        # socket(2) for every family but AF_ALG and AF_VSOCK (one range per rule: the
        # conditions of one rule are ANDed).
        _rule("socket", args=((0, "LT", AF_ALG),)),
        _rule("socket", args=((0, "EQ", AF_ALG + 1),)),
        _rule("socket", args=((0, "GT", AF_VSOCK),)),
        *(_rule("personality", args=((0, "EQ", p),)) for p in PERSONALITIES),
        *(_rule(*names, includes={"arches": list(arches)}) for arches, names in BY_ARCH),
        *(_rule(*names, includes={"caps": [cap]}) for cap, names in BY_CAP[:2]),
        # Without CAP_SYS_ADMIN: clone without namespace flags (s390 passes flags second),
        # and clone3, whose flags sit behind a pointer, fails with ENOSYS so libc falls back.
        _rule("clone", args=((0, "MASKED_EQ", CLONE_NAMESPACES),),
              excludes={"caps": ["CAP_SYS_ADMIN"], "arches": list(_S390)}),
        _rule("clone", args=((1, "MASKED_EQ", CLONE_NAMESPACES),),
              includes={"arches": list(_S390)}, excludes={"caps": ["CAP_SYS_ADMIN"]}),
        _rule("clone3", action="ERRNO", errno=ENOSYS, excludes={"caps": ["CAP_SYS_ADMIN"]}),
        *(_rule(*names, includes={"caps": [cap]}) for cap, names in BY_CAP[2:]),
    ],
}
