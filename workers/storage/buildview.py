"""Read an image's merged file tree from its layer dirs, without mounting anything.

The builder reads files from a build context (one directory, some paths excluded by
`.dockerignore`) and from images (`COPY --from`, and the destination of a copy, whose
existing directories keep their owner and mode). Both are a :class:`TreeView`: layer dirs,
top-most first, read as overlay merges them — a ``0:0`` character device hides the name
below it, a ``trusted.overlay.opaque=y`` directory hides everything below it in lower
layers. Symlinks in the middle of a path resolve inside the tree, never on the host.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["Found", "TreeView", "clean_rel"]

_MAX_LINKS = 40  # as the kernel's bound on symlinks followed in one lookup


def clean_rel(path: str) -> str:
    """Return path relative to the tree root, cleaned ("" is the root); never above it."""
    return posixpath.normpath("/" + path).lstrip("/")


@dataclass(frozen=True)
class Found:
    """An entry of the merged tree: its tree path, where it lives on the host, its lstat."""

    rel: str
    host: str
    st: os.stat_result

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


class TreeView:
    """A merged read-only view of layer dirs (top-most first).

    `skip(rel)` hides excluded paths (a build context's `.dockerignore`); with
    `descend_skipped`, a walk still looks inside an excluded directory, where a `!`
    exception may keep something.
    """

    def __init__(self, layers: Sequence[str], skip: Callable[[str], bool] | None = None,
                 descend_skipped: bool = False) -> None:
        self.layers = list(layers)
        self.skip = skip
        self.descend_skipped = descend_skipped

    def _hidden(self, rel: str) -> bool:
        return bool(rel) and self.skip is not None and self.skip(rel)

    def _find(self, rel: str) -> Found | None:
        parts = rel.split("/") if rel else []
        if not parts:
            st = _lstat(self.layers[0]) if self.layers else None
            return Found("", self.layers[0], st) if st is not None else None
        for layer in self.layers:
            cur = layer
            for depth, part in enumerate(parts):
                nxt = os.path.join(cur, part)
                st = _lstat(nxt)
                if st is None:
                    if depth > 0 and _opaque(cur):
                        return None  # this layer's opaque dir hides the lower ones
                    break
                if _whiteout(st):
                    return None
                if depth < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
                    return None  # a file (or unfollowed link) where a dir should be
                cur = nxt
            else:
                return Found(rel, cur, os.lstat(cur))
        return None

    def lookup(self, rel: str) -> Found | None:
        """Return the entry at a tree path (not following a final symlink), or None."""
        rel = clean_rel(rel)
        return None if self._hidden(rel) else self._find(rel)

    def resolve(self, rel: str, follow_last: bool = True) -> str:
        """Return rel with every symlink along it (the last one too if `follow_last`)
        resolved inside the tree."""
        todo = [p for p in clean_rel(rel).split("/") if p]
        done: list[str] = []
        links = 0
        while todo:
            part = todo.pop(0)
            found = self._find("/".join([*done, part]))
            if (found is not None and stat.S_ISLNK(found.st.st_mode)
                    and (todo or follow_last)):
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(f"too many levels of symbolic links: /{rel}")
                target = os.readlink(found.host)
                base = "" if target.startswith("/") else "/".join(done)
                todo = [p for p in clean_rel(posixpath.join("/", base, target)).split("/")
                        if p] + todo
                done = []
                continue
            done.append(part)
        return "/".join(done)

    def names(self, rel: str) -> list[str]:
        """Return the names in a directory of the merged tree (excluded ones too), sorted."""
        rel = clean_rel(rel)
        seen: set[str] = set()
        hidden: set[str] = set()
        for layer in self.layers:
            host = os.path.join(layer, rel) if rel else layer
            st = _lstat(host)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # a file or whiteout here hides the lower layers' dir
            for name in os.listdir(host):
                if name in seen or name in hidden:
                    continue
                child = _lstat(os.path.join(host, name))
                (hidden if child is not None and _whiteout(child) else seen).add(name)
            if _opaque(host):
                break
        return sorted(seen)

    def walk(self, rel: str) -> Iterator[Found]:
        """Yield every entry below a directory, depth first, parents before children."""
        rel = clean_rel(rel)
        for name in self.names(rel):
            child = f"{rel}/{name}" if rel else name
            found = self._find(child)
            if found is None:
                continue
            hidden = self._hidden(child)
            if not hidden:
                yield found
            if found.is_dir and (not hidden or self.descend_skipped):
                yield from self.walk(child)
