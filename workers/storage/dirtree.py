"""Open directories under one root fd without ever following a symlink.

Every parent of an extracted entry is opened with ``O_NOFOLLOW`` from the layer root down,
so an archive cannot write through a symlink it planted earlier.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

from workers.storage.tarpolicy import UnsafeArchive

__all__ = ["DIR_FLAGS", "DirTree"]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class DirTree:
    """Open directories under one root fd, never following symlinks, caching recent fds."""

    def __init__(self, root: str) -> None:
        self.root_fd = os.open(root, DIR_FLAGS)
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
            return os.open(comp, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise UnsafeArchive(
                    f"refusing {name!r}: {'/'.join(parts)!r} does not exist in the layer"
                ) from None
            os.mkdir(comp, 0o755, dir_fd=parent)  # Docker's mode for implied parents
            return os.open(comp, DIR_FLAGS, dir_fd=parent)
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
