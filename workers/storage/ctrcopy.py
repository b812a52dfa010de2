"""Copy files out of and into a container's rootfs (`docker cp`), running or stopped.

The work runs in a short-lived helper process (``python -m workers.storage.ctrcopy
SPEC_JSON``) so that nothing it mounts is ever seen by the host:

1. ``unshare(CLONE_NEWNS)`` and make every mount private;
2. the rootfs: a running container's overlay is already mounted on ``merged`` and is used
   as is (same superblock, so writes are the container's). A stopped one's is mounted
   there in the private namespace only: read-only for reads, with the RW layer as the top
   *lower* layer (no upper/work dir, so overlay's in-use lock is not taken and a start
   racing the copy still mounts); read-write over upper/work for an extraction;
3. the host files Docker binds (/etc/hosts, /etc/hostname, /etc/resolv.conf) are bound
   over their targets, so they are read and written as the container sees them;
4. ``chroot`` into the rootfs. Paths are then resolved with
   :func:`workers.nsutil.resolve_in_root` (securejoin's rules: the last component is not
   followed) *and* by a kernel that cannot see above the root: a symlink such as
   ``/tmp/esc -> /../../etc`` lands on the container's /etc either way.

Protocol: the spec is ``{"op": "stat"|"get"|"put", "path", "cdir", "lowers", "name",
"no_overwrite"}``. stat and get write one JSON line (the stat) on stdout, get then the tar
stream; put reads a tar on stdin. A failure is one JSON line ``{"status", "message"}`` on
stderr and exit 1 (:func:`helper_error` rebuilds the typed error).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
import tarfile
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from engine.errors import InvalidParameter, MoorError, NotFound, error_for_status
from projections.views.points import rfc3339_nano
from workers.nsutil import (
    CLONE_NEWNS,
    MS_BIND,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    mount,
    resolve_in_root,
    unshare,
)
from workers.storage.images import dirs_of_layers
from workers.storage.rootfs import container_dir
from workers.storage.tarentries import Extractor
from workers.storage.tarpolicy import Limits

if TYPE_CHECKING:
    from engine.core.state import Container, Image

__all__ = ["BINDS", "container_helper", "extract_tar", "go_mode", "helper_argv", "helper_error",
           "path_stat", "resolve_path", "stat_header", "write_tar"]

BINDS = (("hosts", "/etc/hosts"), ("hostname", "/etc/hostname"),
         ("resolv.conf", "/etc/resolv.conf"))
# Go's os.FileMode type bits (Docker's stat header carries them).
_GO_DIR, _GO_SYMLINK, _GO_DEVICE, _GO_PIPE, _GO_SOCKET = 1 << 31, 1 << 27, 1 << 26, 1 << 25, 1 << 24
_GO_SETUID, _GO_SETGID, _GO_CHAR, _GO_STICKY = 1 << 23, 1 << 22, 1 << 21, 1 << 20


def go_mode(st_mode: int) -> int:
    """Translate a stat mode into Go's os.FileMode number (what the docker CLI reads)."""
    mode = st_mode & 0o777
    kind = stat.S_IFMT(st_mode)
    mode |= {stat.S_IFDIR: _GO_DIR, stat.S_IFLNK: _GO_SYMLINK, stat.S_IFIFO: _GO_PIPE,
             stat.S_IFSOCK: _GO_SOCKET, stat.S_IFBLK: _GO_DEVICE,
             stat.S_IFCHR: _GO_DEVICE | _GO_CHAR}.get(kind, 0)
    for bit, go in ((stat.S_ISUID, _GO_SETUID), (stat.S_ISGID, _GO_SETGID),
                    (stat.S_ISVTX, _GO_STICKY)):
        if st_mode & bit:
            mode |= go
    return mode


def resolve_path(root: str, path: str) -> tuple[str, str]:
    """Return (host path, absolute container path) of path, the last component unfollowed.

    As moby's ResolvePath: the directory part is resolved inside root, the base appended.
    """
    if not path:
        raise InvalidParameter("bad parameter: pathcannot be empty")  # sic, as dockerd
    abs_path = os.path.normpath("/" + path.lstrip("/"))
    if path.endswith(("/.", "/")) and abs_path != "/":
        abs_path += "/." if path.endswith("/.") else "/"
    head, base = os.path.split(abs_path)
    resolved = resolve_in_root(root, head)
    return (os.path.join(resolved, base) if base not in ("", ".") else resolved), abs_path


def path_stat(root: str, path: str, name: str = "") -> dict[str, Any]:
    """Return Docker's container path stat of path (404 with Docker's text if missing)."""
    host, abs_path = resolve_path(root, path)
    try:
        st = os.lstat(host)
    except OSError:
        raise NotFound(f"Could not find the file {path} in container {name}") from None
    link = ""
    if stat.S_ISLNK(st.st_mode):
        target = resolve_in_root(root, abs_path)  # followed, but never above root
        link = "/" + os.path.relpath(target, root).removeprefix(".")
        link = os.path.normpath(link)
    return {"name": os.path.basename(abs_path.rstrip("/.")) or "/", "size": st.st_size,
            "mode": go_mode(st.st_mode), "mtime": rfc3339_nano(st.st_mtime_ns),
            "linkTarget": link}


def stat_header(info: dict[str, Any]) -> str:
    """Encode a path stat as the X-Docker-Container-Path-Stat header value."""
    return base64.b64encode(json.dumps(info, separators=(",", ":")).encode()).decode()


def write_tar(root: str, path: str, out: IO[bytes]) -> None:
    """Archive path under its base name ("." for a trailing "/."), without following links."""
    host, abs_path = resolve_path(root, path)
    arcname = "." if abs_path.endswith("/.") else os.path.basename(abs_path.rstrip("/")) or "."
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(host, arcname=arcname, recursive=True)


class _CopyExtractor(Extractor):
    """The layer extractor, with `docker cp`'s noOverwriteDirNonDir refusal."""

    def __init__(self, root: str, no_overwrite: bool) -> None:
        super().__init__(root, Limits.from_env(), keep_setid=True)
        self.root, self.no_overwrite = root, no_overwrite

    def entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        if self.no_overwrite and m.name.strip("./"):
            try:
                st = os.lstat(os.path.join(self.root, m.name))
            except OSError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode) != m.isdir():
                what = ("non-directory", "directory") if m.isdir() else \
                    ("directory", "non-directory")
                raise MoorError(f'cannot overwrite {what[0]} "{m.name}" with {what[1]} '
                                f'"{m.name}"')
        super().entry(tar, m)


def extract_tar(root: str, path: str, src: IO[bytes], no_overwrite: bool,
                name: str = "") -> None:
    """Extract a tar stream into the directory path (Docker's 404 and 400 when it is not)."""
    host, _ = resolve_path(root, path)
    host = resolve_in_root(root, os.path.relpath(host, root))  # a link to a dir is the dir
    if not os.path.lexists(host):
        raise NotFound(f"Could not find the file {path} in container {name}")
    if not os.path.isdir(host):
        raise InvalidParameter("extraction point is not a directory")
    ex = _CopyExtractor(host, no_overwrite)
    try:
        with tarfile.open(fileobj=src, mode="r|*") as tar:
            for member in tar:
                ex.entry(tar, member)
        ex.finish_dirs()
    except (tarfile.TarError, EOFError) as e:
        raise InvalidParameter(f"cannot read the archive: {e}") from e
    finally:
        ex.tree.close()


# --- the parent's side -----------------------------------------------------------------

def helper_argv(op: str, path: str, cdir: str, lowers: list[str], name: str = "",
                no_overwrite: bool = False) -> list[str]:
    """Return the command line of a helper doing op on path in the container at cdir."""
    spec = {"op": op, "path": path, "cdir": cdir, "lowers": lowers, "name": name,
            "no_overwrite": no_overwrite}
    return [sys.executable, "-m", "workers.storage.ctrcopy", json.dumps(spec)]


def container_helper(data_root: str, ctr: Container, images: Mapping[str, Image], op: str,
                     path: str, no_overwrite: bool = False, ref: str = "") -> list[str]:
    """Return the helper's command line for op on ctr (a PUT on --read-only is refused).

    `ref` is the container as the caller named it: Docker's not-found text repeats it.
    """
    if op == "put" and ctr.host_config.readonly_rootfs:
        raise InvalidParameter("container rootfs is marked read-only")
    image = images.get(ctr.image_id)
    lowers = dirs_of_layers(data_root, image.layers) if image is not None else []
    return helper_argv(op, path, container_dir(data_root, ctr.id), lowers, ref or ctr.name,
                       no_overwrite)


def helper_error(stderr: bytes) -> MoorError:
    """Rebuild the typed error a failed helper reported on its last stderr line."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    try:
        doc = json.loads(lines[-1])
        return error_for_status(int(doc["status"]), str(doc["message"]))
    except (IndexError, ValueError, KeyError, TypeError):
        return error_for_status(500, "copy helper failed: " + " ".join(lines[-3:]))


# --- the helper ------------------------------------------------------------------------

def _enter_rootfs(spec: dict[str, Any]) -> None:
    """Mount the container's rootfs in a private mount namespace and chroot into it."""
    cdir, write = spec["cdir"], spec["op"] == "put"
    merged, upper = os.path.join(cdir, "merged"), os.path.join(cdir, "upper")
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here reaches the host
    for d in ("upper", "work", "merged"):
        os.makedirs(os.path.join(cdir, d), 0o755, exist_ok=True)
    if os.stat(merged).st_dev == os.stat(cdir).st_dev:  # not mounted: the container is stopped
        lowers = spec["lowers"] or [os.path.join(cdir, "empty")]
        os.makedirs(lowers[0], 0o755, exist_ok=True)
        if write:
            data = (f"lowerdir={':'.join(lowers)},upperdir={upper},"
                    f"workdir={os.path.join(cdir, 'work')}")
            mount("overlay", merged, "overlay", 0, data)
        else:
            mount("overlay", merged, "overlay", MS_RDONLY, f"lowerdir={':'.join([upper, *lowers])}")
    for source, target in BINDS:
        src, dst = os.path.join(cdir, source), resolve_in_root(merged, target)
        if os.path.isfile(src) and os.path.isfile(dst) and not os.path.islink(dst):
            mount(src, dst, None, MS_BIND)
    os.chroot(merged)
    os.chdir("/")


def main(argv: list[str]) -> int:
    """Run one copy operation as the helper process (see the module's protocol)."""
    spec = json.loads(argv[0])
    op, path, name = spec["op"], spec["path"], spec.get("name", "")
    try:
        _enter_rootfs(spec)
        if op == "put":
            extract_tar("/", path, sys.stdin.buffer, spec.get("no_overwrite", False), name)
            return 0
        out = sys.stdout.buffer
        out.write(json.dumps(path_stat("/", path, name)).encode() + b"\n")
        out.flush()
        if op == "get":
            write_tar("/", path, out)
        out.flush()
        return 0
    except MoorError as e:
        status, message = e.status, e.message
    except OSError as e:
        status, message = 500, f"{op} {path}: {e.strerror or e}"
    sys.stderr.write(json.dumps({"status": status, "message": message}) + "\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
