"""Build test images: layer tars, a busybox rootfs, ``docker save`` archives, OCI layouts.

Everything is built in memory or under a directory the caller owns, with fixed times so
digests are reproducible within one run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "BUSYBOX",
    "Entry",
    "SavedImage",
    "busybox_rootfs_entries",
    "busybox_rootfs_tar",
    "diff_id",
    "docker_save_tar",
    "find_busybox",
    "image_config",
    "layer_tar",
    "oci_layout",
]

BUSYBOX = "/bin/busybox"  # from Debian's busybox-static: no shared libraries needed
MTIME = 1_700_000_000


@dataclass(frozen=True)
class Entry:
    """One tar entry: kind is file, dir, symlink, hardlink, fifo, chr or blk."""

    name: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""  # symlink / hard link target
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    pax: dict[str, str] = field(default_factory=dict)


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE,
          "blk": tarfile.BLKTYPE}


def layer_tar(entries: Iterable[Entry], *, compress: bool = False) -> bytes:
    """Return a tar (optionally gzip) holding entries, in order, exactly as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            info.mtime = MTIME
            info.uid, info.gid = e.uid, e.gid
            info.mode = e.mode if e.mode is not None else (0o755 if e.kind == "dir" else 0o644)
            info.linkname = e.target
            info.pax_headers = dict(e.pax)
            if e.kind in ("chr", "blk"):
                info.devmajor, info.devminor = 1, 3
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def diff_id(tar_bytes: bytes) -> str:
    """Return the diff id (sha256 of the uncompressed tar) of a layer."""
    if tar_bytes[:2] == b"\x1f\x8b":
        tar_bytes = gzip.decompress(tar_bytes)
    return "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def find_busybox() -> str | None:
    """Return the static busybox binary, installing busybox-static if apt can."""
    if os.path.exists(BUSYBOX):
        return BUSYBOX
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "busybox-static"],
                       check=False, capture_output=True, timeout=300)
    return BUSYBOX if os.path.exists(BUSYBOX) else None


def busybox_rootfs_entries(busybox: str = BUSYBOX, extra: Sequence[Entry] = ()) -> list[Entry]:
    """Return a minimal busybox rootfs: dirs, /bin/busybox, applet symlinks, /etc files."""
    applets = subprocess.run([busybox, "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    dirs = ["bin", "dev", "etc", "proc", "root", "sbin", "sys", "tmp", "usr", "usr/bin",
            "usr/sbin", "var"]
    entries = [Entry("./", "dir")]
    entries += [Entry(d + "/", "dir", mode={"tmp": 0o1777, "root": 0o700}.get(d, 0o755))
                for d in dirs]
    with open(busybox, "rb") as f:
        entries.append(Entry("bin/busybox", data=f.read(), mode=0o755))
    # Absolute targets, as Debian's own packaging does: resolved inside the container root.
    entries += [Entry(a, "symlink", target="/bin/busybox") for a in sorted(applets)
                if a != "bin/busybox"]
    entries += [
        Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
        Entry("etc/group", data=b"root:x:0:\n"),
        Entry("etc/motd", data=b"welcome to the lower layer\n"),
    ]
    return entries + list(extra)


def busybox_rootfs_tar(path: str, busybox: str = BUSYBOX, *, compress: bool = False,
                       extra: Sequence[Entry] = ()) -> str:
    """Write a busybox rootfs tarball to path and return path."""
    with open(path, "wb") as f:
        f.write(layer_tar(busybox_rootfs_entries(busybox, extra), compress=compress))
    return path


def image_config(diff_ids: Sequence[str], *, cmd: Sequence[str] | None = ("/bin/sh",),
                 env: Sequence[str] = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin",),
                 labels: dict[str, str] | None = None, exposed: Sequence[str] = (),
                 arch: str = "amd64") -> bytes:
    """Return an image config JSON (Docker/OCI shape) over the given diff ids."""
    config: dict[str, object] = {"Env": list(env), "Cmd": list(cmd) if cmd else None}
    if labels:
        config["Labels"] = labels
    if exposed:
        config["ExposedPorts"] = {p: {} for p in exposed}
    doc = {"architecture": arch, "os": "linux", "created": "2024-01-02T03:04:05Z",
           "config": config, "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}}
    return json.dumps(doc, sort_keys=True).encode()


@dataclass(frozen=True)
class SavedImage:
    """An image to put in an archive: its layers (tar bytes, bottom first) and names."""

    layers: Sequence[bytes]
    tags: Sequence[str] = ()
    labels: dict[str, str] | None = None

    def config(self) -> bytes:
        return image_config([diff_id(layer) for layer in self.layers], labels=self.labels)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MTIME, 0o644
    tar.addfile(info, io.BytesIO(data))


def docker_save_tar(path: str, images: Sequence[SavedImage]) -> str:
    """Write a legacy ``docker save`` archive; a layer shared by images becomes a symlink."""
    manifest = []
    written: dict[str, str] = {}
    with tarfile.open(path, "w") as tar:
        for image in images:
            config = image.config()
            config_name = _digest(config)[7:] + ".json"
            _add(tar, config_name, config)
            names = []
            for layer in image.layers:
                v1 = hashlib.sha256(diff_id(layer).encode()).hexdigest()
                name = f"{v1}/layer.tar"
                if diff_id(layer) in written:
                    # docker save stores a repeated layer once and links to it.
                    link = tarfile.TarInfo(f"{v1}-dup/layer.tar")
                    link.type, link.linkname = tarfile.SYMTYPE, f"../{v1}/layer.tar"
                    tar.addfile(link)
                    name = link.name
                else:
                    _add(tar, name, layer)
                    written[diff_id(layer)] = name
                names.append(name)
            manifest.append({"Config": config_name, "RepoTags": list(image.tags),
                             "Layers": names})
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return path


_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def oci_layout(dest: str, images: Sequence[SavedImage], *, as_tar: bool = False,
               nested: bool = False, ref_annotation: str = "io.containerd.image.name") -> str:
    """Write an OCI image layout at dest (a dir, or a tar when as_tar) and return dest.

    With nested, index.json points to an image index that lists the image for linux/amd64
    beside a linux/arm64 manifest whose blob is absent (so following it would fail).
    """
    root = dest + ".d" if as_tar else dest
    os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = _digest(data)
        with open(os.path.join(root, "blobs", "sha256", digest[7:]), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    descriptors = []
    for image in images:
        config = blob(image.config(), "application/vnd.oci.image.config.v1+json")
        layers = [blob(gzip.compress(layer, mtime=0),
                       "application/vnd.oci.image.layer.v1.tar+gzip") for layer in image.layers]
        manifest = json.dumps({"schemaVersion": 2, "mediaType": _OCI_MANIFEST,
                               "config": config, "layers": layers}).encode()
        desc = blob(manifest, _OCI_MANIFEST)
        if nested:
            desc["platform"] = {"architecture": "amd64", "os": "linux"}
            absent = {"mediaType": _OCI_MANIFEST, "digest": "sha256:" + "0" * 64, "size": 2,
                      "platform": {"architecture": "arm64", "os": "linux"}}
            index = json.dumps({"schemaVersion": 2, "mediaType": _OCI_INDEX,
                                "manifests": [absent, desc]}).encode()
            desc = blob(index, _OCI_INDEX)
        if image.tags:
            desc["annotations"] = {ref_annotation: image.tags[0]}
        descriptors.append(desc)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": _OCI_INDEX, "manifests": descriptors}, f)
    if as_tar:
        with tarfile.open(dest, "w") as tar:
            for name in sorted(os.listdir(root)):
                tar.add(os.path.join(root, name), arcname=name)
        shutil.rmtree(root)
    return dest
