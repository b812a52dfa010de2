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
failed or refused archive leaves nothing behind. This module reads the stream (digests,
decompression) and stages layers; the parts: :mod:`~workers.storage.tarpolicy` (limits,
path rules, errors), :mod:`~workers.storage.dirtree` (no-follow directory fds) and
:mod:`~workers.storage.tarentries` (each entry applied).

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
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from workers.storage.tarentries import Extractor
from workers.storage.tarpolicy import ArchiveError, Limits, UnsafeArchive

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

_CHUNK = 1 << 20


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


def _extract(src: BinaryIO, dest: str, limits: Limits, keep_setid: bool) -> Extracted:
    """Extract the tar stream src into the existing empty directory dest."""
    raw = _HashReader(src)
    # The uncompressed stream may hold headers and padding besides content; allow for them.
    plain = _HashReader(
        _decompressor(io.BufferedReader(raw, _CHUNK)),
        bound=limits.max_bytes + 4096 * limits.max_entries + (1 << 20),
    )
    ex = Extractor(dest, limits, keep_setid)
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
