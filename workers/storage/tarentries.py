"""Apply a layer's tar entries one by one under the extraction policy of tarsafe.

Regular files, symlinks, hard links, FIFOs and directories are created through a
:class:`~workers.storage.dirtree.DirTree`; ``.wh.`` entries become overlay whiteouts.
Directory modes, owners and times are applied last (:meth:`Extractor.finish_dirs`).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile

from workers.storage.dirtree import DirTree
from workers.storage.tarpolicy import (
    KEPT_XATTR_PREFIXES,
    KEPT_XATTRS,
    OPAQUE,
    WH,
    Limits,
    UnsafeArchive,
    check_symlink_target,
    components,
)

__all__ = ["Extractor"]

_COPY_CHUNK = 1 << 20  # buffer of a file's content copy


class Extractor:
    """Apply the policy entry by entry to one tar stream."""

    def __init__(self, root: str, limits: Limits, keep_setid: bool) -> None:
        self.tree = DirTree(root)
        self.limits = limits
        self.keep_setid = keep_setid
        self.chown = os.geteuid() == 0
        self.size = 0
        self.entries = 0
        self.dirs: list[tuple[tuple[str, ...], int, int, int, float]] = []

    def entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise UnsafeArchive(f"archive has more than {self.limits.max_entries} entries")
        if m.isreg():
            self.size += m.size
            if self.size > self.limits.max_bytes:
                raise UnsafeArchive(f"archive content exceeds {self.limits.max_bytes} bytes")
        parts = components(m.name)
        if m.isdir():
            self._dir(parts, m)
            return
        if not parts:
            raise UnsafeArchive(f"refusing {m.name!r}: a non-directory cannot be the root")
        base = parts[-1]
        if base.startswith(WH):
            self._whiteout(parts, m)
            return
        if m.ischr() or m.isblk():
            kind = "character" if m.ischr() else "block"
            raise UnsafeArchive(f"refusing {m.name!r}: {kind} device nodes are not allowed")
        if not (m.isreg() or m.issym() or m.islnk() or m.isfifo()):
            raise UnsafeArchive(f"refusing {m.name!r}: unsupported tar entry type {m.type!r}")
        if m.issym():
            check_symlink_target(parts, m.linkname)
        parent = self.tree.dir_fd(parts[:-1], m.name)
        # Create first and clear the slot only on EEXIST: saves a stat per entry in the
        # usual case (a fresh layer), and every create below refuses an existing name.
        try:
            self._create(tar, parent, base, m)
        except FileExistsError:
            self.tree.clear_slot(parent, base, keep_dir=False)
            self._create(tar, parent, base, m)

    def _create(self, tar: tarfile.TarFile, parent: int, base: str, m: tarfile.TarInfo) -> None:
        if m.isreg():
            self._file(tar, parent, base, m)
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=parent)
            self._owner_times(parent, base, m)
        elif m.islnk():
            self._hardlink(parent, base, m)
        else:
            os.mkfifo(base, self._mode(m), dir_fd=parent)
            self._owner_times(parent, base, m)
            os.chmod(base, self._mode(m), dir_fd=parent)

    def _mode(self, m: tarfile.TarInfo) -> int:
        mode = m.mode & 0o7777
        if not self.keep_setid and not m.isdir():
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        return mode

    def _dir(self, parts: tuple[str, ...], m: tarfile.TarInfo) -> None:
        if parts:
            parent = self.tree.dir_fd(parts[:-1], m.name)
            if parts[-1].startswith(WH):
                raise UnsafeArchive(f"refusing {m.name!r}: a whiteout cannot be a directory")
            try:
                os.mkdir(parts[-1], 0o700, dir_fd=parent)
            except FileExistsError:
                if not self.tree.clear_slot(parent, parts[-1], keep_dir=True):
                    os.mkdir(parts[-1], 0o700, dir_fd=parent)
        # Mode, owner and times are applied last: children would bump the mtime, and a
        # read-only mode must not stop us (when not root) from filling the directory.
        self.dirs.append((parts, self._mode(m), m.uid, m.gid, m.mtime))

    def _file(self, tar: tarfile.TarFile, parent: int, base: str, m: tarfile.TarInfo) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=parent)
        with open(fd, "wb", closefd=True) as out:
            src = tar.extractfile(m)
            if src is not None:
                shutil.copyfileobj(src, out, _COPY_CHUNK)
            out.flush()
            self._xattrs(fd, m)
            if self.chown:
                os.fchown(fd, m.uid, m.gid)  # before chmod: chown clears setuid bits
            os.fchmod(fd, self._mode(m))
            os.utime(fd, (m.mtime, m.mtime))

    def _hardlink(self, parent: int, base: str, m: tarfile.TarInfo) -> None:
        target = components(m.linkname, "hard link target")
        if not target or target[-1].startswith(WH):
            raise UnsafeArchive(f"refusing hard link {m.name!r} -> {m.linkname!r}")
        src_parent = self.tree.dir_fd(target[:-1], m.name, create=False)
        try:
            os.link(target[-1], base, src_dir_fd=src_parent, dst_dir_fd=parent,
                    follow_symlinks=False)
        except FileNotFoundError:
            raise UnsafeArchive(
                f"refusing hard link {m.name!r} -> {m.linkname!r}: target is not in the layer"
            ) from None
        except PermissionError as e:  # EPERM: the target is a directory
            raise UnsafeArchive(
                f"refusing hard link {m.name!r} -> {m.linkname!r}: {e.strerror}"
            ) from None

    def _whiteout(self, parts: tuple[str, ...], m: tarfile.TarInfo) -> None:
        base = parts[-1]
        parent = self.tree.dir_fd(parts[:-1], m.name)
        if base == OPAQUE:
            # An opaque dir hides every lower entry of the same path (overlayfs xattr).
            os.setxattr(parent, "trusted.overlay.opaque", b"y")
            return
        if base.startswith(WH + WH):
            return  # other AUFS metadata (e.g. .wh..wh.plnk) has no overlay meaning
        hidden = base[len(WH):]
        if hidden in ("", ".", ".."):
            # ".wh.." would otherwise name the parent directory itself (and delete it).
            raise UnsafeArchive(f"refusing whiteout {m.name!r}: it names no entry")
        self.tree.clear_slot(parent, hidden, keep_dir=False)
        os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        if self.chown:
            os.chown(hidden, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)

    def _owner_times(self, parent: int, base: str, m: tarfile.TarInfo) -> None:
        if self.chown:
            os.chown(base, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        os.utime(base, (m.mtime, m.mtime), dir_fd=parent, follow_symlinks=False)

    def _xattrs(self, fd: int, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr."):]
            if name in KEPT_XATTRS or name.startswith(KEPT_XATTR_PREFIXES):
                raw = value.encode("utf-8", "surrogateescape")
                os.setxattr(fd, name, raw)

    def finish_dirs(self) -> None:
        """Apply directory modes, owners and times, deepest first."""
        self.tree.forget()
        for parts, mode, uid, gid, mtime in sorted(
            self.dirs, key=lambda d: len(d[0]), reverse=True
        ):
            try:
                fd = self.tree.dir_fd(parts, "/".join(parts), create=False)
            except UnsafeArchive:
                continue  # a later entry replaced this directory
            if self.chown:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            os.utime(fd, (mtime, mtime))
