"""Become the container: what its PID 1 does between fork and execve, and the error pipe.

The supervisor forks this process (C) into a fresh pid namespace; ``run``
joins the cgroup and network namespace, unshares mount/uts/ipc, mounts the
rootfs and pivots into it, sets the hostname, drops to the user and execs.
Everything that can fail is resolved before forking where it can be
(``resolve_user``, ``environment``); the rest reports through a close-on-exec
pipe: EOF without data means execve happened, otherwise the pipe carries
Docker's exit code and text, which ``await_exec`` turns into a ``SpawnError``.

After ``pivot_root`` no module may be imported lazily (the host's Python is
out of reach), so everything used there is imported at the top.
"""

from __future__ import annotations

import errno
import gc
import os
import resource
import signal
import socket
import stat
from typing import NamedTuple, NoReturn

from engine.errors import MoorError
from events.caps import DEFAULT_MASK
from events.hostopts import MASKED_PATHS, READONLY_PATHS
from events.specs import Ulimit
from workers import nsutil
from workers.proc import cgroups, seccomp
from workers.proc.console import open_console
from workers.proc.devices import DeviceNode

__all__ = [
    "DEFAULT_PATH", "Confinement", "InitPlan", "SpawnError", "User", "allowed_capabilities",
    "confine_and_exec",
    "await_exec", "environment", "errno_text", "exit_code_for_errno", "resolve_user", "run",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_FAILURE_LIMIT = 4000  # bytes of error text on the pipe; a pipe write this small is atomic

# SIG_IGN survives execve: the program gets default dispositions and no mask.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                  signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN,
                  signal.SIGTTOU, signal.SIGTSTP)


class SpawnError(MoorError):
    """The process could not be started.

    ``container_exit_code`` is Docker's (126 not executable, 127 not found,
    128 anything else); 126/127 are the caller's fault (HTTP 400), the rest
    internal (500). ``exit_code`` stays the CLI's, as for every MoorError.
    """

    def __init__(self, container_exit_code: int, message: str) -> None:
        """Carry Docker's exit code and error text."""
        super().__init__(message)
        self.container_exit_code = container_exit_code
        self.status = 400 if container_exit_code in (126, 127) else 500

    def __reduce__(self) -> tuple[type[SpawnError], tuple[int, str]]:
        """Pickle with both arguments (the default passes only the message)."""
        return type(self), (self.container_exit_code, self.message)


class User(NamedTuple):
    """A resolved user: ids, supplementary groups and home directory."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


class InitPlan(NamedTuple):
    """Everything C needs, resolved in the caller before any fork."""

    container_id: str
    rootfs: str
    argv: tuple[str, ...]
    env: dict[str, str]
    user: User
    working_dir: str
    hostname: str
    # (host source, container target, read-only, propagation: "" or rprivate, rshared, ...)
    binds: tuple[tuple[str, str, bool, str], ...]
    capabilities: int = DEFAULT_MASK  # bounding, permitted and effective (events.caps)
    no_new_privs: bool = False
    masked_paths: tuple[str, ...] = MASKED_PATHS
    readonly_paths: tuple[str, ...] = READONLY_PATHS
    readonly_rootfs: bool = False
    tmpfs: tuple[tuple[str, int, str], ...] = ()  # (target, mount flags, data)
    shm: str = ""  # /dev/shm: "" private, "none", or a path to bind (shared IPC)
    sysfs_rw: bool = False  # privileged
    nodes: tuple[DeviceNode, ...] = ()  # extra device nodes (--device, --privileged)
    sysctls: tuple[tuple[str, str], ...] = ()
    ipc_ns: str = ""  # "" new, "host", or a donor's /proc/<pid>/ns/ipc
    uts_host: bool = False
    cgroupns_private: bool = False
    seccomp: seccomp.Program | None = None
    rlimits: tuple[tuple[int, int, int], ...] = ()  # (RLIMIT_*, soft, hard) per --ulimit
    shm_size: int = 0  # a private /dev/shm's bytes (0: Docker's 64 MiB)
    tty: bool = False  # Config.Tty: stdio is a pty of the container's devpts


def rlimits(ulimits: tuple[Ulimit, ...]) -> tuple[tuple[int, int, int], ...]:
    """Resolve `--ulimit` names to RLIMIT_* numbers, before any fork."""
    return tuple((getattr(resource, "RLIMIT_" + u.name.upper()), u.soft, u.hard)
                 for u in ulimits)


def exit_code_for_errno(err: int) -> int:
    """Map a start failure's errno to Docker's exit code."""
    if err in (errno.ENOENT, errno.ENOTDIR):
        return 127
    if err in (errno.EACCES, errno.EISDIR):
        return 126
    return 128


def errno_text(err: int) -> str:
    """Return the errno's text as Go (and so Docker) spells it: lower case."""
    text = os.strerror(err)
    return text[:1].lower() + text[1:]


def _db(rootfs: str, path: str) -> list[list[str]]:
    """Read a colon-separated database (passwd, group) from inside the rootfs."""
    try:
        with open(nsutil.resolve_in_root(rootfs, path), encoding="utf-8",
                  errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if ":" in line]
    except (FileNotFoundError, NotADirectoryError):
        return []


def resolve_user(rootfs: str, spec: str, group_add: tuple[str, ...] = ()) -> User:
    """Resolve "user[:group]" (names or ids) and `--group-add` against the rootfs as runc
    and dockerd do."""
    name, _, group = (spec or "0").partition(":")
    uid, gid, home, login = 0, 0, "/", ""
    entry = next((e for e in _db(rootfs, "/etc/passwd") if len(e) >= 6 and
                  (e[0] == name or (name.isdigit() and e[2] == name))), None)
    if entry is not None:
        login, uid, gid, home = entry[0], int(entry[2]), int(entry[3]), entry[5] or "/"
    elif name.isdigit():
        uid = int(name)
    else:
        raise SpawnError(128, f"unable to find user {name}: no matching entries in passwd file")
    groups = _db(rootfs, "/etc/group")
    extra: tuple[int, ...] = ()
    if group:
        match = next((g for g in groups if len(g) >= 3 and
                      (g[0] == group or (group.isdigit() and g[2] == group))), None)
        if match is not None:
            gid = int(match[2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise SpawnError(
                128, f"unable to find group {group}: no matching entries in group file")
    elif login:
        extra = tuple(int(g[2]) for g in groups
                      if len(g) >= 4 and login in g[3].split(",") and g[2].isdigit())
    for name in group_add:
        match = next((g for g in groups if len(g) >= 3 and g[0] == name), None)
        if match is not None and match[2].isdigit():
            extra += (int(match[2]),)
        elif name.isdigit():
            extra += (int(name),)
        else:
            raise SpawnError(128, f"Unable to find group {name}: no matching entries in "
                                  "group file")
    return User(uid, gid, tuple(dict.fromkeys((gid, *extra))), home)


def environment(spec_env: tuple[str, ...], hostname: str, user: User) -> dict[str, str]:
    """Build the process environment as dockerd and runc do; the spec's Env wins."""
    env = {"PATH": DEFAULT_PATH}
    if hostname:
        env["HOSTNAME"] = hostname
    for item in spec_env:
        key, sep, value = item.partition("=")
        if sep and key:
            env[key] = value
    env.setdefault("HOME", user.home)  # as runc does
    return env


def _lookup(name: str, path_env: str) -> str:
    """Find the executable as Go's exec.LookPath does (runc's behaviour)."""
    if "/" in name:
        try:
            st = os.stat(name)
        except OSError as e:
            err = e.errno or 0
            raise SpawnError(exit_code_for_errno(err),
                             f'exec: "{name}": stat {name}: {errno_text(err)}') from None
        if stat.S_ISDIR(st.st_mode) or not st.st_mode & 0o111:
            raise SpawnError(126, f'exec: "{name}": permission denied')
        return name
    for directory in path_env.split(":"):
        candidate = (directory or ".") + "/" + name
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) and st.st_mode & 0o111:
            return candidate
    raise SpawnError(127, f'exec: "{name}": executable file not found in $PATH')


def _thermal_throttle() -> tuple[str, ...]:
    """Docker also masks each possible CPU's thermal_throttle directory where it exists."""
    base = "/sys/devices/system/cpu"
    try:
        names = os.listdir(base)
    except OSError:
        return ()
    return tuple(f"{base}/{n}/thermal_throttle" for n in sorted(names)
                 if n.startswith("cpu") and n[3:].isdigit())


def _enter(plan: InitPlan, netns_fd: int, console: socket.socket | None) -> NoReturn:
    """Enter the container's namespaces and rootfs, drop to the user and execve."""
    stage = "read cap_last_cap"
    try:
        # Built now: after pivot_root the host's libraries are out of reach.
        prepared = seccomp.prepare(plan.seccomp) if plan.seccomp is not None else None
        last_cap = nsutil.cap_last_cap()  # before pivoting: the host's /proc
        keep = allowed_capabilities(plan.capabilities, last_cap)
        for kind, soft, hard in plan.rlimits:  # as root, before the capabilities drop
            stage = f"setrlimit {kind}"
            resource.setrlimit(kind, (soft, hard))
        stage = "join cgroup"
        cgroups.join_cgroup(plan.container_id, 0)  # before pivoting: /sys is the host's
        if plan.cgroupns_private:  # after joining: the container's group becomes its root
            stage = "unshare cgroup namespace"
            nsutil.unshare(nsutil.CLONE_NEWCGROUP)
        if netns_fd >= 0:
            stage = "join network namespace"
            nsutil.setns(netns_fd, nsutil.CLONE_NEWNET)
            os.close(netns_fd)
        flags = nsutil.CLONE_NEWNS
        if plan.ipc_ns not in ("", "host"):
            stage = f"join IPC namespace {plan.ipc_ns}"
            fd = os.open(plan.ipc_ns, os.O_RDONLY | os.O_CLOEXEC)
            nsutil.setns(fd, nsutil.CLONE_NEWIPC)
            os.close(fd)
        elif not plan.ipc_ns:
            flags |= nsutil.CLONE_NEWIPC
        if not plan.uts_host:
            flags |= nsutil.CLONE_NEWUTS
        stage = "unshare"
        nsutil.unshare(flags)
        stage = "prepare rootfs"
        nsutil.setup_rootfs(plan.rootfs, plan.binds, tmpfs=plan.tmpfs, shm=plan.shm,
                            sysfs_rw=plan.sysfs_rw, nodes=plan.nodes, shm_size=plan.shm_size)
        stage = "pivot_root"
        nsutil.pivot_into(plan.rootfs)
        for key, value in plan.sysctls:  # before /proc/sys turns read-only
            stage = f"write sysctl {key}"
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
        # runc's order: read-only paths, then masked ones (a mask may sit inside a frozen tree).
        stage = "make paths read-only"
        nsutil.readonly_paths(plan.readonly_paths)
        stage = "mask paths"
        nsutil.mask_paths(plan.masked_paths + _thermal_throttle())
        if plan.hostname and not plan.uts_host:
            stage = "sethostname"
            nsutil.sethostname(plan.hostname)
        workdir = plan.working_dir or "/"
        stage = f'mkdir cwd ("{workdir}")'
        os.makedirs(workdir, 0o755, exist_ok=True)
        if plan.readonly_rootfs:  # last, as runc's finalizeRootfs: the cwd exists by now
            stage = "remount rootfs read-only"
            nsutil.remount_readonly("/")
        if console is not None:  # the container's own devpts: the pty is its /dev/pts/N
            stage = "open the container's console"
            open_console(console, plan.user.uid)
        confine_and_exec(Confinement(keep, last_cap, plan.user, plan.no_new_privs, prepared),
                         workdir, plan.argv, plan.env)
    except OSError as e:
        err = e.errno or 0
        raise SpawnError(exit_code_for_errno(err), f"{stage}: {errno_text(err)}") from None


class Confinement(NamedTuple):
    """What a container's processes are held to (its PID 1 and every exec alike)."""

    keep: int  # bounding, permitted and effective capabilities, already masked
    last_cap: int
    user: User
    no_new_privs: bool
    seccomp: seccomp.Prepared | None


def confine_and_exec(conf: Confinement, workdir: str, argv: tuple[str, ...],
                     env: dict[str, str]) -> NoReturn:
    """Drop to the container's confinement in runc's order and execve; SpawnError if not.

    runc's order: no_new_privs, the bounding set, the user (keeping the permitted set across
    setuid), then permitted and effective; inheritable and ambient empty. Seccomp loads
    before the capabilities go (it needs CAP_SYS_ADMIN) unless no_new_privs is set, when
    it loads last, just before execve.
    """
    stage = "set no_new_privs"
    try:
        if conf.no_new_privs:
            nsutil.set_no_new_privs()
        elif conf.seccomp is not None:
            stage = "load seccomp filter"
            seccomp.install(conf.seccomp)
        stage = "apply bounding capabilities"
        nsutil.drop_capabilities(conf.keep, conf.last_cap)
        stage = "set user"
        nsutil.set_keepcaps(True)
        os.setgroups(list(conf.user.groups))
        os.setgid(conf.user.gid)
        os.setuid(conf.user.uid)
        nsutil.set_keepcaps(False)
        stage = "apply capabilities"
        nsutil.set_capabilities(conf.keep)
        stage = f'chdir to cwd ("{workdir}") set in config.json failed'
        os.chdir(workdir)
        stage = "exec"
        path = _lookup(argv[0], env.get("PATH", DEFAULT_PATH))
        if conf.no_new_privs and conf.seccomp is not None:
            stage = "load seccomp filter"
            seccomp.install(conf.seccomp)
        try:
            os.execve(path, list(argv), env)
        except OSError as e:
            err = e.errno or 0
            raise SpawnError(exit_code_for_errno(err), f"exec {path}: {errno_text(err)}") from None
    except OSError as e:
        err = e.errno or 0
        raise SpawnError(exit_code_for_errno(err), f"{stage}: {errno_text(err)}") from None


def allowed_capabilities(mask: int, last_cap: int) -> int:
    """As Docker: only what the kernel knows and the engine itself holds."""
    return mask & ((1 << (last_cap + 1)) - 1) & nsutil.held_capabilities()


def run(plan: InitPlan, netns_fd: int, stdio: tuple[int, int, int], exec_w: int,
        console: socket.socket | None = None) -> NoReturn:
    """Be C: set up stdio and signals, enter the container and exec; report failure on exec_w.

    ``stdio`` is stdin, stdout, stderr (-1: /dev/null); with a ``console`` the pty made
    in the container replaces them once its devpts is mounted.
    """
    code, message = 128, "container init failed"
    try:
        gc.disable()  # the caller's objects must not be finalized here (fd reuse)
        os.setsid()
        nsutil.set_pdeathsig(signal.SIGKILL)  # a dead supervisor could not record the exit
        signal.set_wakeup_fd(-1)  # the supervisor's wake-up pipe is not ours
        for sig in _RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for target, fd in enumerate(stdio):  # the spare fds go with close_fds_except
            os.dup2(fd if fd >= 0 else os.open("/dev/null", os.O_WRONLY if target
                                               else os.O_RDONLY), target)
        keep = {0, 1, 2, exec_w, netns_fd}
        if console is not None:
            keep.add(console.fileno())
        nsutil.close_fds_except(keep)
        _enter(plan, netns_fd, console)
    except SpawnError as e:
        code, message = e.container_exit_code, e.message
    except BaseException as e:  # noqa: B036 - nothing may unwind into the caller's stack
        message = f"container init failed: {e!r}"
    try:
        os.write(exec_w, f"{code}\0{message}".encode(errors="replace")[:_FAILURE_LIMIT])
    finally:
        os._exit(code)


def await_exec(exec_r: int) -> SpawnError | None:
    """Wait until C has exec'd (None) or failed (its error); closes exec_r."""
    chunks = []
    try:
        while chunk := os.read(exec_r, 65536):
            chunks.append(chunk)
    finally:
        os.close(exec_r)
    if not chunks:
        return None
    code, _, message = b"".join(chunks).decode(errors="replace").partition("\0")
    return SpawnError(int(code), message)
