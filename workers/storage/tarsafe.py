"""Extract untrusted layer tarballs into a directory without ever writing outside it.

Policy (what a layer may contain and what we do with it):

- Paths: absolute names and names with a ``..`` component are refused, even when harmless
  (``a/../b``), because no well-formed layer needs them.
- Symlinks are stored verbatim, and absolute targets are allowed: they are resolved inside the
  container's root, never on the host. A *relative* target that climbs above the layer root
  is refused. Extraction never follows a symlink: every parent directory is opened with
  ``O_NOFOLLOW`` from the layer root down, so an entry written through a symlink is refused.
- Hard links must name an earlier entry of the same archive; the link is made with
  ``linkat`` without following, so a hard link to a symlink links the symlink itself.
- Character and block devices are refused. FIFOs are allowed. The only device ever created is
  the overlay whiteout (``0:0``), made by us from a ``.wh.<name>`` entry; ``.wh..wh..opq``
  becomes ``trusted.overlay.opaque=y`` on its directory.
- setuid/setgid bits are stripped from non-directories unless ``keep_setid=True`` (images are
  untrusted input; a setuid binary in a layer is a privilege escalation path if the rootfs is
  ever exposed to the host). Directory setgid (group inheritance) is kept.
- Ownership is restored (numeric ids) only when running as root. Only ``user.*`` and
  ``security.capability`` xattrs from PAX headers are applied; ``trusted.*`` (overlay's own
  metadata) is never taken from an archive.
- Size and entry count are bounded (:class:`Limits`, ``MOOR_LAYER_MAX_BYTES`` /
  ``MOOR_LAYER_MAX_ENTRIES``), which also bounds decompression bombs.

Extraction goes into a temp dir next to the destination and is renamed into place, so a
failed or refused archive leaves nothing behind.

Exceptions (rooted in :mod:`engine.errors`; the archive is the client's input, so 400)::

    InvalidParameter
    └── ArchiveError          corrupt or unreadable archive
        └── UnsafeArchive     an entry breaks the policy above
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from engine.errors import InvalidParameter

__all__ = [
    "ArchiveError",
    "Extracted",
    "Limits",
    "Staged",
    "UnsafeArchive",
    "commit",
    "discard",
    "extract_layer",
    "stage_layer",
]

_WH = ".wh."
_OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_KEPT_XATTR_PREFIXES = ("user.",)
_KEPT_XATTRS = ("security.capability",)


class ArchiveError(InvalidParameter):
    """Signal a layer archive that cannot be read (corrupt, truncated, unsupported)."""


class UnsafeArchive(ArchiveError):
    """Signal an archive entry that the extraction policy refuses."""


@dataclass(frozen=True)
class Limits:
    """Bound what one layer may hold: declared content bytes and number of entries."""

    max_bytes: int = 8 << 30
    max_entries: int = 1_000_000

    @classmethod
    def from_env(cls) -> Limits:
        """Read limits from ``MOOR_LAYER_MAX_BYTES`` and ``MOOR_LAYER_MAX_ENTRIES``."""
        default = cls()
        return cls(
            max_bytes=int(os.environ.get("MOOR_LAYER_MAX_BYTES", default.max_bytes)),
            max_entries=int(os.environ.get("MOOR_LAYER_MAX_ENTRIES", default.max_entries)),
        )


@dataclass(frozen=True)
class Extracted:
    """Describe an extracted layer: its digests and how much it holds."""

    diff_id: str  # "sha256:<hex>" of the uncompressed tar stream
    blob_digest: str  # "sha256:<hex>" of the bytes as read (compressed or not)
    size: int  # bytes of regular-file content
    entries: int


@dataclass(frozen=True)
class Staged:
    """A layer extracted into a temp dir, waiting to be committed or discarded."""

    path: str
    info: Extracted


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _HashReader(io.RawIOBase):
    """Hash and count every byte read through it, refusing to read past a bound."""

    def __init__(self, raw: _Readable, bound: int | None = None) -> None:
        super().__init__()
        self._raw = raw
        self._bound = bound
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buf))
        n = len(data)
        self.count += n
        if self._bound is not None and self.count > self._bound:
            raise UnsafeArchive(f"uncompressed archive stream exceeds {self._bound} bytes")
        self.hash.update(data)
        buf[:n] = data
        return n

    def drain(self) -> None:
        """Read to the end so the digest covers the whole stream."""
        while self.read(_CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def _decompressor(raw: io.BufferedReader) -> _Readable:
    """Wrap raw in the decompressor its magic bytes call for (gzip, bzip2, xz or none)."""
    head = raw.peek(6)[:6]
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise ArchiveError("zstd-compressed layers are not supported (no zstd in the stdlib)")
    return raw


def _components(name: str, what: str = "entry") -> tuple[str, ...]:
    """Split an archive name into safe path components or refuse it."""
    if name.startswith("/"):
        raise UnsafeArchive(f"refusing {what} {name!r}: absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(f"refusing {what} {name!r}: '..' path component")
    return parts


def _check_symlink_target(parts: tuple[str, ...], target: str) -> None:
    """Refuse a relative symlink target that climbs above the layer root."""
    if target.startswith("/"):
        return  # resolved inside the container's root, never followed by us
    depth = len(parts) - 1  # the link lives in its parent directory
    for p in target.split("/"):
        if p == "..":
            depth -= 1
            if depth < 0:
                raise UnsafeArchive(
                    f"refusing symlink {'/'.join(parts)!r} -> {target!r}: "
                    "target leaves the layer directory"
                )
        elif p not in ("", "."):
            depth += 1


class _Tree:
    """Open directories under one root fd, never following symlinks, caching recent fds."""

    def __init__(self, root: str) -> None:
        self.root_fd = os.open(root, _DIR_FLAGS)
        self._cache: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        self.forget()
        os.close(self.root_fd)

    def forget(self) -> None:
        """Drop cached fds; called whenever a directory is removed or replaced."""
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()

    def dir_fd(self, parts: tuple[str, ...], name: str, create: bool = True) -> int:
        """Return an fd of directory parts, creating missing ones, refusing symlinks."""
        if not parts:
            return self.root_fd
        cached = self._cache.get(parts)
        if cached is not None:
            return cached
        # Walk down from the deepest cached ancestor (usually the parent). Only the final
        # directory is cached, so a deep path never holds more than two fds open.
        depth = len(parts) - 1
        while depth and parts[:depth] not in self._cache:
            depth -= 1
        fd = self._cache[parts[:depth]] if depth else self.root_fd
        for i in range(depth, len(parts)):
            try:
                child = self._open_child(fd, parts[: i + 1], name, create)
            finally:
                if i > depth:
                    os.close(fd)  # an intermediate we opened ourselves
            fd = child
        if len(self._cache) >= 256:
            self.forget()  # evicting everything keeps this simple; siblings come together
        self._cache[parts] = fd
        return fd

    @staticmethod
    def _open_child(parent: int, parts: tuple[str, ...], name: str, create: bool) -> int:
        comp = parts[-1]
        try:
            return os.open(comp, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise UnsafeArchive(
                    f"refusing {name!r}: {'/'.join(parts)!r} does not exist in the layer"
                ) from None
            os.mkdir(comp, 0o755, dir_fd=parent)  # Docker's mode for implied parents
            return os.open(comp, _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(comp, dir_fd=parent, follow_symlinks=False)
            why = "is a symlink" if stat.S_ISLNK(st.st_mode) else "is not a directory"
            raise UnsafeArchive(
                f"refusing {name!r}: parent {'/'.join(parts)!r} {why}; "
                "extraction never writes through a symlink"
            ) from None

    def clear_slot(self, parent: int, comp: str, keep_dir: bool) -> bool:
        """Remove what occupies comp (unless it is a dir to keep); return True if a dir stays."""
        try:
            st = os.stat(comp, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self.forget()
            shutil.rmtree(comp, dir_fd=parent)
        else:
            os.unlink(comp, dir_fd=parent)
        return False


class _Extractor:
    """Apply the policy entry by entry to one tar stream."""

    def __init__(self, root: str, limits: Limits, keep_setid: bool) -> None:
        self.tree = _Tree(root)
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
        parts = _components(m.name)
        if m.isdir():
            self._dir(parts, m)
            return
        if not parts:
            raise UnsafeArchive(f"refusing {m.name!r}: a non-directory cannot be the root")
        base = parts[-1]
        if base.startswith(_WH):
            self._whiteout(parts, m)
            return
        if m.ischr() or m.isblk():
            kind = "character" if m.ischr() else "block"
            raise UnsafeArchive(f"refusing {m.name!r}: {kind} device nodes are not allowed")
        if not (m.isreg() or m.issym() or m.islnk() or m.isfifo()):
            raise UnsafeArchive(f"refusing {m.name!r}: unsupported tar entry type {m.type!r}")
        if m.issym():
            _check_symlink_target(parts, m.linkname)
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
            if parts[-1].startswith(_WH):
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
                shutil.copyfileobj(src, out, _CHUNK)
            out.flush()
            self._xattrs(fd, m)
            if self.chown:
                os.fchown(fd, m.uid, m.gid)  # before chmod: chown clears setuid bits
            os.fchmod(fd, self._mode(m))
            os.utime(fd, (m.mtime, m.mtime))

    def _hardlink(self, parent: int, base: str, m: tarfile.TarInfo) -> None:
        target = _components(m.linkname, "hard link target")
        if not target or target[-1].startswith(_WH):
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
        if base == _OPAQUE:
            # An opaque dir hides every lower entry of the same path (overlayfs xattr).
            os.setxattr(parent, "trusted.overlay.opaque", b"y")
            return
        if base.startswith(_WH + _WH):
            return  # other AUFS metadata (e.g. .wh..wh.plnk) has no overlay meaning
        hidden = base[len(_WH):]
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
            if name in _KEPT_XATTRS or name.startswith(_KEPT_XATTR_PREFIXES):
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


def _extract(src: BinaryIO, dest: str, limits: Limits, keep_setid: bool) -> Extracted:
    """Extract the tar stream src into the existing empty directory dest."""
    raw = _HashReader(src)
    # The uncompressed stream may hold headers and padding besides content; allow for them.
    plain = _HashReader(
        _decompressor(io.BufferedReader(raw, _CHUNK)),
        bound=limits.max_bytes + 4096 * limits.max_entries + (1 << 20),
    )
    ex = _Extractor(dest, limits, keep_setid)
    try:
        with tarfile.open(fileobj=plain, mode="r|") as tar:
            while (member := tar.next()) is not None:
                ex.entry(tar, member)
                # Stream mode keeps every header it has read; 1M entries would cost GBs.
                tar.members.clear()  # type: ignore[attr-defined]
        ex.finish_dirs()
        plain.drain()  # the diff id covers the whole stream, trailing padding included
        raw.drain()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as e:
        raise ArchiveError(f"cannot read layer archive: {e}") from e
    finally:
        ex.tree.close()
    return Extracted(plain.digest(), raw.digest(), ex.size, ex.entries)


@contextmanager
def _opened(src: BinaryIO | str) -> Iterator[BinaryIO]:
    if isinstance(src, str):
        with open(src, "rb") as f:
            yield f
    else:
        yield src


def stage_layer(
    src: BinaryIO | str,
    parent_dir: str,
    *,
    limits: Limits | None = None,
    keep_setid: bool = False,
    expect_diff_id: str | None = None,
) -> Staged:
    """Extract a layer (path or binary stream) into a new temp dir under parent_dir."""
    os.makedirs(parent_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent_dir)
    try:
        os.chmod(tmp, 0o755)  # the root's mode when the archive has no "./" entry
        with _opened(src) as f:
            info = _extract(f, tmp, limits or Limits.from_env(), keep_setid)
        if expect_diff_id is not None and info.diff_id != expect_diff_id:
            raise ArchiveError(f"layer diff id is {info.diff_id}, expected {expect_diff_id}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Staged(tmp, info)


def commit(staged: Staged, dest: str) -> bool:
    """Rename a staged layer to dest atomically; return False if dest already existed."""
    try:
        os.rename(staged.path, dest)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            discard(staged)
            raise
        discard(staged)  # content-addressed: an existing dest holds the same content
        return False
    return True


def discard(staged: Staged) -> None:
    """Delete a staged layer that will not be committed."""
    shutil.rmtree(staged.path, ignore_errors=True)


def extract_layer(
    src: BinaryIO | str,
    dest: str,
    *,
    limits: Limits | None = None,
    keep_setid: bool = False,
    expect_diff_id: str | None = None,
) -> Extracted:
    """Extract a layer into dest (which must not exist yet) via a temp dir and a rename."""
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, "layer directory already exists", dest)
    staged = stage_layer(src, os.path.dirname(os.path.abspath(dest)), limits=limits,
                         keep_setid=keep_setid, expect_diff_id=expect_diff_id)
    if not commit(staged, dest):
        raise FileExistsError(errno.EEXIST, "layer directory already exists", dest)
    return staged.info
