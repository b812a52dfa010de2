"""Thin ctypes wrappers over the Linux namespace, mount and prctl calls; the container's mounts.

Python 3.11 has no ``os.unshare``/``os.setns`` and never had ``mount`` or
``pivot_root``, so these call libc directly. Every failure raises an
``OSError`` carrying the C ``errno`` (so callers can map ``ENOENT`` to 127 and
``EACCES`` to 126 the way Docker does) plus the path involved.

Everything here is bound at import time: the container's init calls these
after ``pivot_root``, when lazily importing anything would fail.
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat

from events.specs import DEFAULT_SHM_SIZE
from workers.proc.devices import DeviceNode

__all__ = [
    "CLONE_NEWCGROUP", "CLONE_NEWIPC", "CLONE_NEWNET", "CLONE_NEWNS", "CLONE_NEWPID",
    "CLONE_NEWUTS", "MNT_DETACH", "MS_BIND", "MS_NODEV", "MS_NOEXEC", "MS_NOSUID",
    "MS_PRIVATE", "MS_RDONLY", "MS_REC", "MS_REMOUNT", "MS_SHARED", "MS_SLAVE", "MS_STRICTATIME",
    "cap_last_cap", "close_fds_except", "drop_capabilities", "held_capabilities",
    "is_child_subreaper", "mask_paths", "mount", "pivot_into", "pivot_root", "readonly_paths",
    "remount_readonly", "resolve_in_root", "set_child_subreaper", "set_pdeathsig", "sethostname",
    "setns",
    "set_capabilities", "set_keepcaps", "set_no_new_privs", "setup_rootfs", "umount2", "unshare",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_STRICTATIME = 0x1000000
# A bind's propagation mode (Docker's names) as mount(2) flags.
_PROPAGATION = {"private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC,
                "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
                "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC}

MNT_DETACH = 0x2

_PR_SET_PDEATHSIG = 1
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37

# pivot_root has no glibc wrapper; its number differs per architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long
_libc.capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]
_pivot_nr = _SYS_PIVOT_ROOT.get(platform.machine())


def _check(result: int, what: str, path: str | None = None) -> None:
    """Raise the errno-carrying OSError for a failed libc call."""
    if result == -1:
        err = ctypes.get_errno()
        # OSError(errno, ...) picks the matching subclass (FileNotFoundError, ...).
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces given by CLONE_* flags."""
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace behind an open nsfs file descriptor."""
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None = None,
          flags: int = 0, data: str | None = None) -> None:
    """Mount source on target (see mount(2))."""
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           f"mount {fstype or source or ''} on {target}", target)


def umount2(target: str, flags: int = 0) -> None:
    """Unmount target (MNT_DETACH for a lazy unmount)."""
    _check(_libc.umount2(_b(target), flags), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """Make new_root the root mount and move the old root to put_old."""
    if _pivot_nr is None:
        raise OSError(38, f"pivot_root: unsupported architecture {platform.machine()}")
    result = _libc.syscall(_pivot_nr, _b(new_root), _b(put_old))
    _check(int(result), "pivot_root", new_root)


def sethostname(name: str) -> None:
    """Set the hostname of the current UTS namespace."""
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def set_child_subreaper(enabled: bool = True) -> None:
    """Adopt orphaned descendants so this process can reap them promptly."""
    _check(_libc.prctl(_PR_SET_CHILD_SUBREAPER, int(enabled), 0, 0, 0), "prctl")


def is_child_subreaper() -> bool:
    """Tell whether this process adopts its orphaned descendants."""
    flag = ctypes.c_int(0)
    _check(_libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag), 0, 0, 0), "prctl")
    return bool(flag.value)


def set_pdeathsig(sig: int) -> None:
    """Ask the kernel to send sig to this process when its parent dies."""
    _check(_libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl")


def set_no_new_privs() -> None:
    """Make execve never grant privileges (setuid bits, file capabilities) from now on."""
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def set_keepcaps(keep: bool) -> None:
    """Keep the permitted capabilities across a setuid away from root (or stop keeping them)."""
    _check(_libc.prctl(_PR_SET_KEEPCAPS, int(keep), 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")


def cap_last_cap() -> int:
    """Return the highest capability number the running kernel knows."""
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
        return int(f.read())


def held_capabilities() -> int:
    """Return this process's permitted capability mask (no container gets more)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapPrm:"):
                return int(line.split()[1], 16)
    return 0


def drop_capabilities(keep: int, last_cap: int) -> None:
    """Shrink the bounding set to keep (bits above last_cap are ignored); empty ambient.

    Needs CAP_SETPCAP; call before changing user, then `set_capabilities` after it.
    """
    for cap in range(last_cap + 1):
        if not keep & (1 << cap):
            _check(_libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(PR_CAPBSET_DROP, {cap})")
    try:
        _check(_libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl")
    except OSError:
        pass  # kernels before 4.3 have no ambient set: nothing to clear


def set_capabilities(mask: int) -> None:
    """Set permitted and effective to mask and inheritable to nothing (capset(2))."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def close_fds_except(keep: set[int]) -> None:
    """Close every descriptor not in keep (a forked child dropping what it inherited)."""
    low = 0
    for fd in sorted(k for k in keep if k >= 0):
        if low < fd:  # closerange(n, n) becomes close_range(n, UINT_MAX) on 3.11: all of them
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


# --- the container's filesystem view (run inside its new mount namespace) ---

_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))


def resolve_in_root(root: str, path: str) -> str:
    """Resolve path as if root were "/", following symlinks without ever leaving root."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        try:
            target = os.readlink(os.path.join(root, *done, part))
        except OSError:  # not a symlink, or missing: either way a plain component
            done.append(part)
            continue
        hops += 1
        if hops > 40:
            raise OSError(40, f"too many levels of symbolic links: {path}", path)
        if target.startswith("/"):
            done = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return os.path.join(root, *done)


def _mountpoint(root: str, path: str, is_dir: bool = True) -> str:
    """Return the host path of a mount target in root, creating it when missing."""
    host = resolve_in_root(root, path)
    if not os.path.lexists(host):
        if is_dir:
            os.makedirs(host, 0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(host), 0o755, exist_ok=True)
            os.close(os.open(host, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    return host


def _make_node(root: str, dev: str, node: DeviceNode) -> None:
    """Make one device node in the container (a bind of the host's node if mknod fails)."""
    path = dev + node.path[4:] if node.path.startswith("/dev/") else \
        resolve_in_root(root, node.path)
    if os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
    kind = stat.S_IFCHR if node.kind == "c" else stat.S_IFBLK
    try:
        os.mknod(path, kind | node.mode, os.makedev(node.major, node.minor))
    except PermissionError:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
        host = f"/dev/{'char' if node.kind == 'c' else 'block'}/{node.major}:{node.minor}"
        mount(host, path, None, MS_BIND)
        return
    os.chmod(path, node.mode)
    os.chown(path, node.uid, node.gid)


def setup_rootfs(root: str, binds: tuple[tuple[str, str, bool, str], ...] = (),
                 tmpfs: tuple[tuple[str, int, str], ...] = (), shm: str = "",
                 sysfs_rw: bool = False, nodes: tuple[DeviceNode, ...] = (),
                 shm_size: int = 0) -> None:
    """Mount /proc, a minimal /dev, /sys, tmpfs mounts and binds under root.

    `binds` are (source, target, read-only, propagation); a propagation ("rprivate",
    "rshared", ...) is set on the bind inside the container's mount namespace.

    Call in a fresh mount namespace (and pid namespace, for /proc) before pivoting.
    `tmpfs` is (target, mount flags, data) per `--tmpfs`; `shm` is "" for a private
    /dev/shm, "none" for none, or the path of a donor's /dev/shm to bind; `nodes` are extra
    device nodes (`--device`, `--privileged`); `sysfs_rw` (privileged) leaves /sys writable;
    `shm_size` sizes a private /dev/shm in bytes (`--shm-size`; 0 is Docker's 64 MiB).
    """
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below leaks to the host
    mount(root, root, None, MS_BIND | MS_REC)  # pivot_root needs a mount point
    mount("proc", _mountpoint(root, "/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = _mountpoint(root, "/dev")
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k")
    for name in _DEVICES:
        node = os.path.join(dev, name)
        os.close(os.open(node, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
        # Bind the host's nodes: creating device nodes is refused in some setups.
        mount("/dev/" + name, node, None, MS_BIND)
    for name, target in _DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))
    os.mkdir(os.path.join(dev, "pts"), 0o755)
    try:
        mount("devpts", os.path.join(dev, "pts"), "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620")
    except OSError:
        pass  # optional: only terminals need it
    if shm != "none":
        os.mkdir(os.path.join(dev, "shm"), 0o1777)
        if shm:
            mount(shm, os.path.join(dev, "shm"), None, MS_BIND)
        else:
            mount("shm", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  f"mode=1777,size={shm_size or DEFAULT_SHM_SIZE}")
    for extra in nodes:
        _make_node(root, dev, extra)
    sys_dir = _mountpoint(root, "/sys")
    ro = 0 if sysfs_rw else MS_RDONLY
    try:
        mount("sysfs", sys_dir, "sysfs", ro | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except PermissionError:
        # sysfs refuses a netns we do not own; the host's will do. Not recursive: the
        # host's mounts under /sys (cgroups, securityfs…) must not come along writable.
        mount("/sys", sys_dir, None, MS_BIND)
        if ro:
            mount(None, sys_dir, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    for target, flags, data in tmpfs:
        mount("tmpfs", _mountpoint(root, target), "tmpfs", flags, data or None)
    for source, target, readonly, propagation in binds:
        host = _mountpoint(root, target, is_dir=os.path.isdir(source))
        mount(source, host, None, MS_BIND | MS_REC)
        if readonly:
            mount(None, host, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        if propagation:
            mount(None, host, None, _PROPAGATION[propagation])


def pivot_into(root: str) -> None:
    """Make root the filesystem root and detach the old one entirely."""
    os.chdir(root)
    # pivot_root(".", ".") stacks the old root on top of the new one; the lazy
    # unmount then drops it without needing a put_old directory in the image.
    pivot_root(".", ".")
    umount2(".", MNT_DETACH)
    os.chdir("/")


# --- after pivoting: hide or freeze parts of /proc and /sys (runc's maskPath, readonlyPath) ---

_ST_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC  # statvfs's ST_* bits equal these MS_* ones


def mask_paths(paths: tuple[str, ...]) -> None:
    """Hide each path: /dev/null over a file, an empty read-only tmpfs over a directory.

    A path that does not exist is skipped, as runc does.
    """
    for path in paths:
        try:
            is_dir = os.path.isdir(path) and not os.path.islink(path)
            if not is_dir and not os.path.lexists(path):
                continue
            if is_dir:
                mount("tmpfs", path, "tmpfs", MS_RDONLY)
            else:
                mount("/dev/null", path, None, MS_BIND)
        except FileNotFoundError:
            continue


def readonly_paths(paths: tuple[str, ...]) -> None:
    """Bind each path onto itself and remount it read-only; a missing path is skipped."""
    for path in paths:
        try:
            mount(path, path, None, MS_BIND | MS_REC)
        except FileNotFoundError:
            continue
        remount_readonly(path)


def remount_readonly(path: str) -> None:
    """Make the bind mount at path read-only, keeping its nosuid, nodev and noexec."""
    keep = os.statvfs(path).f_flag & _ST_FLAGS  # a bind remount must not lose these
    mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | keep)
