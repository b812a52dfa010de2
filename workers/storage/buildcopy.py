"""Plan a COPY or ADD: which files go where, their checksum, and the layer tar they make.

Docker's rules (builder/dockerfile/copy.go): sources are relative to the context (or to
the `--from` image's root) and may hold wildcards; a directory source copies its
contents; a file goes to `dest/<name>` when dest ends with `/` or is an existing
directory, else to dest itself; several sources need a dest ending with `/`; copied
entries belong to root unless `--chown`; directories the copy creates are 0755; ADD
extracts a local tar archive (plain, gzip, bzip2, xz) into dest. The checksum covers the
sources' names, modes and contents (not times or owners), as the cache compares them.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from engine.errors import InvalidParameter
from workers.storage import tarsafe
from workers.storage.buildview import Found, TreeView, clean_rel

__all__ = ["CopyEntry", "CopyPlan", "extract_archive", "plan_copy", "write_copy_layer"]

_WILDCARD = re.compile(r"[*?\[]")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


@dataclass(frozen=True)
class CopyEntry:
    """One entry of the layer a copy makes."""

    dest: str  # tree path, no leading "/"
    kind: str  # "dir", "file" or "symlink"
    mode: int  # permission bits
    uid: int
    gid: int
    mtime: float
    host: str = ""  # the file's content on the host ("" for a directory or link)
    size: int = 0
    linkname: str = ""


@dataclass(frozen=True)
class CopyPlan:
    """The entries of the copy's layer and the checksum of its sources."""

    entries: tuple[CopyEntry, ...]
    checksum: str  # "file:<hex>", "dir:<hex>" or "multi:<hex>"


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry_sum(rel: str, found: Found) -> str:
    """Hash one source entry: its name, type, mode, size, link target and content."""
    st = found.st
    link = os.readlink(found.host) if stat.S_ISLNK(st.st_mode) else ""
    body = _file_digest(found.host) if stat.S_ISREG(st.st_mode) else ""
    size = st.st_size if stat.S_ISREG(st.st_mode) else 0
    head = f"{rel}\0{stat.S_IFMT(st.st_mode):o}\0{stat.S_IMODE(st.st_mode):o}\0{size}\0{link}"
    return hashlib.sha256(f"{head}\0{body}".encode()).hexdigest()


def _entry(dest: str, found: Found, owner: tuple[int, int] | None, chmod: int | None
           ) -> CopyEntry | None:
    st = found.st
    uid, gid = owner if owner is not None else (0, 0)
    mode = chmod if chmod is not None else stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return CopyEntry(dest, "dir", mode, uid, gid, st.st_mtime)
    if stat.S_ISREG(st.st_mode):
        return CopyEntry(dest, "file", mode, uid, gid, st.st_mtime, host=found.host,
                         size=st.st_size)
    if stat.S_ISLNK(st.st_mode):
        return CopyEntry(dest, "symlink", 0o777, uid, gid, st.st_mtime,
                         linkname=os.readlink(found.host))
    return None  # devices, sockets and fifos are not copied


def _sources(view: TreeView, texts: list[str], what: str) -> list[Found]:
    """Resolve the source arguments (wildcards too) to entries of the source tree."""
    out: list[Found] = []
    for text in texts:
        if _URL.match(text):
            raise InvalidParameter(f"{what} failed: source can't be a URL for {what}"
                                   if what == "COPY" else
                                   f"{what} failed: remote URLs are not supported by "
                                   f"moorage's builder: {text}")
        rel = clean_rel(text)
        if _WILDCARD.search(rel):
            pattern = re.compile(_go_match(rel))
            hits = [f for f in view.walk("") if pattern.match(f.rel)]
            if not hits:
                raise InvalidParameter(f"{what} failed: no source files were specified")
            out += hits
            continue
        found = view.lookup(view.resolve(rel)) if rel else view.lookup("")
        if found is None:
            raise InvalidParameter(f"{what} failed: file not found in build context or "
                                   f"excluded by .dockerignore: stat {rel or '.'}: file "
                                   "does not exist")
        out.append(found)
    return out


def _go_match(pattern: str) -> str:
    """Translate a filepath.Match pattern (no `**`) to an anchored regex."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise InvalidParameter(f"syntax error in pattern: {pattern}")
            out.append("[" + pattern[i + 1:end] + "]")
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return "^" + "".join(out) + "$"


def _is_archive(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(512)
    if any(head.startswith(m) for m in _ARCHIVE_MAGIC):
        return True
    return len(head) == 512 and head[257:262] == b"ustar"


def plan_copy(src: TreeView, dest_view: TreeView, sources: list[str], dest: str, *,
              workdir: str, what: str = "COPY", owner: tuple[int, int] | None = None,
              chmod: int | None = None, extract: Callable[[str], str] | None = None
              ) -> CopyPlan:
    """Plan a copy of `sources` (in `src`) to `dest` over the image `dest_view`.

    `extract(host_path)` (ADD) unpacks a local archive and returns the directory it made.
    """
    found = _sources(src, sources, what)
    into_dir = dest.endswith("/") or dest in (".", "..") or dest.endswith("/.")
    if len(found) > 1 and not into_dir:
        raise InvalidParameter(f"When using {what} with more than one source file, the "
                               "destination must be a directory and end with a /")
    target = dest_view.resolve(clean_rel(posixpath.join("/", workdir or "/", dest)))
    existing = dest_view.lookup(target)
    into_dir = into_dir or (existing is not None and existing.is_dir)
    entries: dict[str, CopyEntry] = {}
    sums: list[str] = []
    for item in found:
        if not item.is_dir and extract is not None and stat.S_ISREG(item.st.st_mode) \
                and _is_archive(item.host):
            sums.append(_entry_sum(posixpath.basename(item.rel), item))
            unpacked = TreeView([extract(item.host)])
            for child in unpacked.walk(""):
                made = _entry(posixpath.join(target, child.rel), child, None, None)
                if made is not None:  # an archive keeps its own owners
                    entries[made.dest] = made
            continue
        if item.is_dir:
            h = hashlib.sha256()
            for child in src.walk(item.rel):
                rel = posixpath.relpath(child.rel, item.rel) if item.rel else child.rel
                h.update(_entry_sum(rel, child).encode())
                made = _entry(posixpath.join(target, rel), child, owner, chmod)
                if made is not None:
                    entries[made.dest] = made
            sums.append("dir:" + h.hexdigest())
            continue
        dest_path = posixpath.join(target, posixpath.basename(item.rel)) if into_dir \
            else target
        made = _entry(dest_path, item, owner, chmod)
        if made is not None:
            entries[made.dest] = made
        sums.append("file:" + _entry_sum(posixpath.basename(item.rel), item))
    if into_dir or any(s.startswith("dir:") for s in sums):
        entries.setdefault(target, _made_dir(dest_view, target, owner))
    for path in list(entries):
        parent = posixpath.dirname(path)
        while parent and parent not in entries:
            entries[parent] = _made_dir(dest_view, parent, owner)
            parent = posixpath.dirname(parent)
    entries.pop("", None)
    checksum = sums[0] if len(sums) == 1 else \
        "multi:" + hashlib.sha256("\n".join(sums).encode()).hexdigest()
    if len(sums) == 1 and ":" not in checksum:
        checksum = "file:" + checksum
    ordered = sorted(entries.values(), key=lambda e: e.dest.split("/"))
    return CopyPlan(tuple(ordered), checksum)


def _made_dir(view: TreeView, rel: str, owner: tuple[int, int] | None) -> CopyEntry:
    """A parent directory in the layer: as the image has it, or new (0755)."""
    found = view.lookup(rel)
    if found is not None and found.is_dir:
        st = found.st
        return CopyEntry(rel, "dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                         st.st_mtime)
    uid, gid = owner if owner is not None else (0, 0)
    return CopyEntry(rel, "dir", 0o755, uid, gid, 0.0)


def write_copy_layer(plan: CopyPlan, out: IO[bytes]) -> None:
    """Write the plan's entries as a layer tar."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in plan.entries:
            info = tarfile.TarInfo(entry.dest)
            info.mode, info.uid, info.gid = entry.mode, entry.uid, entry.gid
            info.mtime = int(entry.mtime)
            info.uname = info.gname = ""
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.linkname
                tar.addfile(info)
            else:
                info.size = entry.size
                with open(entry.host, "rb") as f:
                    tar.addfile(info, f)


def extract_archive(path: str, parent: str) -> str:
    """Unpack a local archive (ADD) under parent with the layer policy; return its dir."""
    staged = tarsafe.stage_layer(path, parent)
    return staged.path
