"""Image store and overlay rootfs on the real kernel: import, load, mount, whiteouts, release."""

from __future__ import annotations

import ctypes
import gzip
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.core.names import normalize_image_ref
from engine.errors import Conflict, Internal, InvalidParameter, NotFound
from events.specs import ImageConfig
from tests.conftest import missing_capability
from tests.imagebuild import (
    Entry,
    SavedImage,
    busybox_rootfs_entries,
    busybox_rootfs_tar,
    diff_id,
    docker_save_tar,
    find_busybox,
    layer_tar,
    oci_layout,
)
from workers.storage import archives, images, rootfs
from workers.storage.tarsafe import ArchiveError, UnsafeArchive

CID = "c0ffee" * 10 + "abcd"  # 64 hex, like a real container id

# The lower layer carries /etc/motd and /opt/keep/a; the upper one deletes motd with a
# whiteout, makes /opt/keep opaque and adds files.
LOWER_EXTRA = (Entry("opt/keep/", "dir"), Entry("opt/keep/a", data=b"a"))
UPPER = [Entry("etc/", "dir"), Entry("etc/.wh.motd"), Entry("opt/keep/", "dir"),
         Entry("opt/keep/.wh..wh..opq"), Entry("opt/keep/b", data=b"b"),
         Entry("hello.txt", data=b"hello from the upper layer\n")]


def _unmount_all_under(path: str) -> None:
    """Detach every mount at or below path, deepest first (cleanup after failures too)."""
    libc = ctypes.CDLL(None, use_errno=True)
    path = os.path.realpath(path)
    for m in sorted(rootfs.mounts(), key=lambda m: len(m.mount_point), reverse=True):
        if m.mount_point == path or m.mount_point.startswith(path + "/"):
            libc.umount2(os.fsencode(m.mount_point), 2)  # MNT_DETACH


@pytest.fixture
def store(tmp_path: Path, privileged: None) -> Iterator[str]:
    """A data root under tmp_path whose mounts are all gone after the test."""
    root = tmp_path / "data"
    root.mkdir()
    try:
        yield str(root)
    finally:
        _unmount_all_under(str(tmp_path))


@pytest.fixture(scope="module")
def busybox() -> str:
    path = find_busybox()
    if path is None:
        missing_capability("/bin/busybox (apt-get install busybox-static)")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def lower_layer(busybox: str) -> bytes:
    return layer_tar(busybox_rootfs_entries(busybox, LOWER_EXTRA))


@pytest.fixture(scope="module")
def upper_layer() -> bytes:
    return layer_tar(UPPER)


def proc_mounts() -> str:
    with open("/proc/mounts") as f:
        return f.read()


def test_valid_tag_checks_docker_grammar_and_agrees_with_the_engine() -> None:
    for ref in ("busybox", "busybox:1.36", "docker.io/library/busybox", "docker.io/foo/bar:x",
                "localhost:5000/app", "ghcr.io/org/app:v1.2", "a__b/c-d.e:T_1"):
        assert images.valid_tag(ref) == normalize_image_ref(ref)
    assert images.valid_tag("busybox") == "busybox:latest"
    assert images.valid_tag("localhost:5000/app") == "localhost:5000/app:latest"
    for bad in ("Busybox", "busybox:", "a@sha256:" + "0" * 64, "bad tag:x y", "", "a/../b",
                "-a", "a:-x"):
        with pytest.raises(images.InvalidReference, match="invalid reference format"):
            images.valid_tag(bad)


def _created(when: str) -> int:
    config = ImageConfig()
    info = images.ImageInfo(id="", repo_tags=(), layers=(), created=when, size=0, config=config)
    return images.created_ns(info)


def test_created_ns_reads_rfc3339_to_the_nanosecond() -> None:
    assert _created("2024-01-01T00:00:00Z") == 1_704_067_200 * 10**9
    assert _created("2024-01-01T00:00:00.123456789Z") == 1_704_067_200_123_456_789
    assert _created("2024-01-01t01:00:00.5+01:00") == 1_704_067_200_500_000_000
    assert _created("2024-01-01 00:00:00.1234567891z") == 1_704_067_200_123_456_789
    assert _created("1970-01-01T00:00:00Z") == 0
    for unknown in ("", "yesterday", "2024-13-01T00:00:00Z", "2024-01-01T00:00:00",
                    "0001-01-01T00:00:00Z"):
        assert _created(unknown) == 0, unknown


def test_errors_carry_dockers_classes() -> None:
    for cls, root, status in [
        (images.InvalidReference, InvalidParameter, 400), (images.BadImage, InvalidParameter, 400),
        (images.ImageNotFound, NotFound, 404), (images.ImageInUse, Conflict, 409),
        (rootfs.MountConflict, Conflict, 409), (rootfs.StillMounted, Conflict, 409),
        (rootfs.RootfsError, Internal, 500),
    ]:
        assert issubclass(cls, root) and cls("x").status == status, cls


def test_import_busybox_rootfs(store: str, busybox: str, tmp_path: Path) -> None:
    tar = busybox_rootfs_tar(str(tmp_path / "rootfs.tar"), busybox)
    cfg = ImageConfig(cmd=("/bin/sh",), exposed_ports=("80/tcp",), labels={"a": "b"})
    info = images.import_rootfs(store, tar, "busybox", config=cfg, created="2024-01-01T00:00:00Z")
    assert info.repo_tags == ("busybox:latest",)
    assert info.id.startswith("sha256:") and len(info.layers) == 1
    assert info.config == cfg and info.size > 1_000_000
    [layer] = images.layer_dirs(store, info.id)
    assert os.access(os.path.join(layer, "bin/busybox"), os.X_OK)
    assert os.readlink(os.path.join(layer, "bin/sh")) == "/bin/busybox"
    assert images.get_image(store, "busybox") == info
    assert images.get_image(store, info.id[7:19]) == info
    # Same tar, same config: same layer and same image, no second copy.
    again = images.import_rootfs(store, tar, "busybox:again", config=cfg,
                                 created="2024-01-01T00:00:00Z")
    assert again.id == info.id and again.repo_tags == ("busybox:again", "busybox:latest")
    # The layer dir, its record and its kept blob (the bytes push and save send back).
    assert len([d for d in os.listdir(os.path.dirname(layer))
                if not d.endswith((".json", ".blob"))]) == 1
    with pytest.raises(images.ImageNotFound, match="No such image: nothere:latest"):
        images.get_image(store, "nothere:latest")


def _docker_save(tmp_path: Path, lower: bytes, upper: bytes) -> str:
    """Save two images sharing the lower layer (stored once, linked from the second)."""
    two = [SavedImage([lower, upper], tags=["multi:docker"]),
           SavedImage([lower], tags=["base:docker"], labels={"only": "lower"})]
    return docker_save_tar(str(tmp_path / "save.tar"), two)


def _archives(tmp_path: Path, lower: bytes, upper: bytes) -> dict[str, str]:
    return {
        "docker": _docker_save(tmp_path, lower, upper),
        "oci-dir": oci_layout(str(tmp_path / "oci"), [
            SavedImage([lower, upper], tags=["docker.io/library/multi:oci"],
                       labels={"from": "oci"})]),
        "oci-tar": oci_layout(str(tmp_path / "oci.tar"), [
            SavedImage([lower, upper], tags=["multi:ocitar"], labels={"from": "ocitar"})],
            as_tar=True, nested=True, ref_annotation="org.opencontainers.image.ref.name"),
    }


def test_load_docker_save_and_oci_layouts(store: str, tmp_path: Path, lower_layer: bytes,
                                          upper_layer: bytes) -> None:
    paths = _archives(tmp_path, lower_layer, upper_layer)
    loaded = {kind: archives.load_archive(store, p) for kind, p in paths.items()}
    assert [i.repo_tags for i in loaded["docker"]] == [("multi:docker",), ("base:docker",)]
    # Tags are stored in the engine's normal form, whatever that does with docker.io/library.
    assert loaded["oci-dir"][0].repo_tags == (normalize_image_ref("docker.io/library/multi:oci"),)
    assert loaded["oci-tar"][0].repo_tags == ("multi:ocitar",)
    multi = loaded["docker"][0]
    assert multi.layers == (diff_id(lower_layer), diff_id(upper_layer))
    assert multi.config.cmd == ("/bin/sh",)
    # Four images, two distinct layers on disk.
    assert len(images.list_images(store)) == 4
    layer_root = os.path.join(store, "layers", "sha256")
    assert len([d for d in os.listdir(layer_root) if not d.endswith((".json", ".blob"))]) == 2
    dirs = images.layer_dirs(store, multi.id)
    assert images.dirs_of_layers(store, multi.layers) == dirs
    assert [os.path.basename(d) for d in dirs] == [diff_id(upper_layer)[7:],
                                                   diff_id(lower_layer)[7:]]


def test_load_refuses_a_malicious_layer(store: str, tmp_path: Path) -> None:
    good = layer_tar([Entry("fine", data=b"ok")])
    evil = layer_tar([Entry("../../escape", data=b"x")])
    path = docker_save_tar(str(tmp_path / "evil.tar"), [SavedImage([good, evil], ["evil"])])
    with pytest.raises(UnsafeArchive, match="'..' path component"):
        archives.load_archive(store, path)
    assert list(tmp_path.rglob("escape")) == []
    assert images.list_images(store) == []
    # The good layer extracted before the refusal is collected again.
    assert os.listdir(os.path.join(store, "layers", "sha256")) == []


def test_prune_removes_orphans_and_crash_leftovers(store: str, tmp_path: Path) -> None:
    info = images.import_rootfs(store, _write(tmp_path / "a.tar", [Entry("a")]), "a")
    layer_root = Path(store, "layers", "sha256")
    (layer_root / ".tmp-crashed").mkdir()
    (layer_root / ("0" * 64)).mkdir()  # an unreferenced layer
    assert images.prune_layers(store) == ["sha256:" + "0" * 64]
    assert sorted(os.listdir(layer_root)) == sorted([info.layers[0][7:],
                                                     info.layers[0][7:] + ".json",
                                                     info.layers[0][7:] + ".blob"])


def _write(path: Path, entries: list[Entry]) -> str:
    path.write_bytes(layer_tar(entries))
    return str(path)


def test_load_refuses_a_layer_that_does_not_match_its_diff_id(store: str,
                                                              tmp_path: Path) -> None:
    path = oci_layout(str(tmp_path / "oci"), [SavedImage([layer_tar([Entry("a")])], ["x"])])
    blobs = Path(path, "blobs", "sha256")
    index = json.loads(Path(path, "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    with open(blobs / manifest["layers"][0]["digest"][7:], "wb") as f:
        f.write(gzip.compress(layer_tar([Entry("tampered")])))
    with pytest.raises(ArchiveError, match="expected sha256:"):
        archives.load_archive(store, path)


def test_overlay_rootfs_lifecycle(store: str, tmp_path: Path, lower_layer: bytes,
                                  upper_layer: bytes) -> None:
    [image, _] = archives.load_archive(store, _docker_save(tmp_path, lower_layer, upper_layer))
    lowers = images.layer_dirs(store, image.id)
    cdir = rootfs.ensure_rw_layer(store, CID)
    assert rootfs.ensure_rw_layer(store, CID) == cdir
    merged = rootfs.ensure_mounted(store, CID, lowers)
    assert merged in proc_mounts()
    assert rootfs.ensure_mounted(store, CID, lowers) == merged  # ours: accepted as is
    with pytest.raises(rootfs.MountConflict):
        rootfs.ensure_mounted(store, CID, lowers[1:])

    m = Path(merged)
    assert not (m / "etc/motd").exists(), "the whiteout must hide the lower file"
    assert (m / "etc/passwd").exists()
    assert sorted(os.listdir(m / "opt/keep")) == ["b"], "opaque dir hides lower entries"
    assert (m / "hello.txt").read_bytes() == b"hello from the upper layer\n"
    # Run the image's busybox inside the rootfs: the view from the container agrees.
    out = subprocess.run(["chroot", merged, "/bin/sh", "-c",
                          "cat /hello.txt; ls /opt/keep; test -e /etc/motd || echo gone"],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    assert out.split() == ["hello", "from", "the", "upper", "layer", "b", "gone"]

    (m / "written.txt").write_bytes(b"w")
    (m / "etc/passwd").write_bytes(b"changed\n")
    upper = Path(cdir) / "upper"
    assert (upper / "written.txt").read_bytes() == b"w"
    assert (upper / "etc/passwd").read_bytes() == b"changed\n"
    for layer in lowers:
        assert not os.path.exists(os.path.join(layer, "written.txt"))
    assert b"root:x:0:0" in Path(lowers[1], "etc/passwd").read_bytes()

    with pytest.raises(rootfs.StillMounted):
        rootfs.release_rw_layer(store, CID)
    with pytest.raises(images.ImageInUse):
        images.remove_image(store, image.id)
    assert set(rootfs.lowerdirs_in_use()) >= set(lowers)

    rootfs.release_mount(store, CID)
    assert merged not in proc_mounts()
    rootfs.release_mount(store, CID)  # not mounted = success
    assert (upper / "written.txt").exists(), "unmount keeps the container's writes"
    rootfs.release_rw_layer(store, CID)
    assert not os.path.exists(cdir)
    assert os.listdir(os.path.dirname(cdir)) == []
    rootfs.release_rw_layer(store, CID)  # already gone = success


def test_mount_needs_the_rw_layer(store: str) -> None:
    with pytest.raises(rootfs.RootfsError, match="no RW layer"):
        rootfs.ensure_mounted(store, CID, [])
    with pytest.raises(ValueError):
        rootfs.container_dir(store, "../escape")


def test_image_without_layers_mounts_an_empty_lower(store: str) -> None:
    rootfs.ensure_rw_layer(store, CID)
    merged = rootfs.ensure_mounted(store, CID, [])
    assert os.listdir(merged) == []
    rootfs.release_mount(store, CID)
    rootfs.release_rw_layer(store, CID)


def test_many_layers_exceed_one_page_and_still_mount(store: str, tmp_path: Path) -> None:
    layers = [layer_tar([Entry("which", data=b"%d" % i), Entry(f"layer-{i}", data=b"")])
              for i in range(60)]
    [image] = archives.load_archive(
        store, docker_save_tar(str(tmp_path / "many.tar"), [SavedImage(layers, ["many"])]))
    lowers = images.layer_dirs(store, image.id)
    assert len(":".join(lowers)) > os.sysconf("SC_PAGESIZE")
    rootfs.ensure_rw_layer(store, CID)
    merged = rootfs.ensure_mounted(store, CID, lowers)
    mount = rootfs.mount_at(merged)
    assert mount is not None and mount.option("lowerdir") is None, "expected lowerdir+ form"
    assert mount.lowerdirs == tuple(lowers)
    assert (Path(merged) / "which").read_bytes() == b"59"  # the top layer wins
    assert len([n for n in os.listdir(merged) if n.startswith("layer-")]) == 60
    assert rootfs.ensure_mounted(store, CID, lowers) == merged  # lowerdir+ form is ours too
    rootfs.release_mount(store, CID)
    rootfs.release_rw_layer(store, CID)


def test_remove_image_collects_unshared_layers(store: str, tmp_path: Path, lower_layer: bytes,
                                               upper_layer: bytes) -> None:
    multi, base = archives.load_archive(store, _docker_save(tmp_path, lower_layer, upper_layer))
    layer_root = os.path.join(store, "layers", "sha256")
    assert images.remove_image(store, multi.id) is True
    assert sorted(os.listdir(layer_root)) == sorted(
        [diff_id(lower_layer)[7:], diff_id(lower_layer)[7:] + ".json",
         diff_id(lower_layer)[7:] + ".blob"])
    with pytest.raises(images.ImageNotFound):
        images.get_image(store, "multi:docker")
    assert images.get_image(store, "base:docker") == base
    assert images.remove_image(store, base.id) is True
    assert os.listdir(layer_root) == []
    assert images.remove_image(store, base.id) is False
