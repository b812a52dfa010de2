"""Safe layer extraction: malicious archives are refused and nothing lands outside."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from engine.errors import InvalidParameter
from tests.imagebuild import Entry, diff_id, layer_tar
from workers.storage import tarsafe
from workers.storage.tarsafe import ArchiveError, Limits, UnsafeArchive, extract_layer


def extract(tmp_path: Path, entries: list[Entry], **kw: object) -> Path:
    """Extract entries into tmp_path/layer and return the layer path."""
    dest = tmp_path / "layer"
    extract_layer(io.BytesIO(layer_tar(entries)), str(dest), **kw)  # type: ignore[arg-type]
    return dest


def refused(tmp_path: Path, entries: list[Entry], match: str, **kw: object) -> None:
    """Assert extraction is refused and leaves neither the layer nor a temp dir behind."""
    before = set(os.listdir(tmp_path))
    with pytest.raises(UnsafeArchive, match=match):
        extract(tmp_path, entries, **kw)
    assert set(os.listdir(tmp_path)) == before, "refused extraction left files behind"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the layer that extraction must never touch."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


def test_dotdot_entry_is_refused(tmp_path: Path, outside: Path) -> None:
    refused(tmp_path, [Entry("ok"), Entry("../outside/evil", data=b"x")], "'..' path component")
    assert list(outside.iterdir()) == []


def test_harmless_looking_dotdot_is_refused_too(tmp_path: Path) -> None:
    refused(tmp_path, [Entry("a/../b", data=b"x")], "'..'")


def test_absolute_entry_is_refused(tmp_path: Path, outside: Path) -> None:
    refused(tmp_path, [Entry(f"{outside}/abs", data=b"x")], "absolute path")
    assert not (outside / "abs").exists()


def test_write_through_symlink_pointing_out_is_refused(tmp_path: Path, outside: Path) -> None:
    entries = [Entry("link", "symlink", target=str(outside)), Entry("link/file", data=b"x")]
    refused(tmp_path, entries, "parent 'link' is a symlink")
    assert list(outside.iterdir()) == []


def test_write_through_relative_symlink_is_refused(tmp_path: Path, outside: Path) -> None:
    entries = [Entry("d/", "dir"), Entry("d/up", "symlink", target="../.."),
               Entry("d/up/outside/file", data=b"x")]
    refused(tmp_path, entries, "leaves the layer directory")
    assert list(outside.iterdir()) == []


def test_symlink_replacing_a_directory_is_not_followed(tmp_path: Path, outside: Path) -> None:
    entries = [Entry("d/", "dir"), Entry("d/a", data=b"1"),
               Entry("d", "symlink", target=str(outside)), Entry("d/b", data=b"2")]
    refused(tmp_path, entries, "parent 'd' is a symlink")
    assert list(outside.iterdir()) == []


def test_absolute_symlink_is_stored_verbatim(tmp_path: Path) -> None:
    layer = extract(tmp_path, [Entry("etc/localtime", "symlink", target="/usr/share/zoneinfo/UTC")])
    assert os.readlink(layer / "etc/localtime") == "/usr/share/zoneinfo/UTC"


def test_relative_symlink_inside_is_kept(tmp_path: Path) -> None:
    layer = extract(tmp_path, [Entry("usr/bin/x", data=b"x"),
                               Entry("bin/x", "symlink", target="../usr/bin/x")])
    assert (layer / "bin/x").read_bytes() == b"x"


def test_hard_link_out_is_refused(tmp_path: Path, outside: Path) -> None:
    (outside / "x").write_bytes(b"secret")
    refused(tmp_path, [Entry("h", "hardlink", target="../outside/x")], "'..'")
    refused(tmp_path, [Entry("h", "hardlink", target=str(outside / "x"))], "absolute")
    assert (outside / "x").stat().st_nlink == 1


def test_hard_link_through_symlink_is_refused(tmp_path: Path, outside: Path) -> None:
    (outside / "x").write_bytes(b"secret")
    entries = [Entry("s", "symlink", target=str(outside)), Entry("h", "hardlink", target="s/x")]
    refused(tmp_path, entries, "is a symlink")
    assert (outside / "x").stat().st_nlink == 1


def test_hard_link_to_symlink_links_the_symlink(tmp_path: Path, outside: Path) -> None:
    (outside / "x").write_bytes(b"secret")
    layer = extract(tmp_path, [Entry("s", "symlink", target=str(outside / "x")),
                               Entry("h", "hardlink", target="s")])
    assert os.path.islink(layer / "h")
    assert (outside / "x").stat().st_nlink == 1


def test_hard_link_to_missing_target_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, [Entry("h", "hardlink", target="nothere")], "not in the layer")


def test_hard_link_to_directory_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, [Entry("d/", "dir"), Entry("h", "hardlink", target="d")],
            "refusing hard link 'h' -> 'd'")


def test_hard_link_inside_shares_the_inode(tmp_path: Path) -> None:
    layer = extract(tmp_path, [Entry("a", data=b"x"), Entry("b", "hardlink", target="a")])
    assert (layer / "a").stat().st_ino == (layer / "b").stat().st_ino


@pytest.mark.parametrize("kind", ["chr", "blk"])
def test_device_nodes_are_refused(tmp_path: Path, kind: str) -> None:
    refused(tmp_path, [Entry("dev/", "dir"), Entry("dev/mem", kind)], "device nodes")


def test_fifo_is_allowed(tmp_path: Path) -> None:
    layer = extract(tmp_path, [Entry("run/pipe", "fifo", mode=0o600)])
    st = os.lstat(layer / "run/pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_setuid_and_setgid_are_stripped_by_default(tmp_path: Path) -> None:
    layer = extract(tmp_path, [Entry("su", data=b"x", mode=0o4755), Entry("wall", mode=0o2755),
                               Entry("shared/", "dir", mode=0o2775)])
    assert stat.S_IMODE(os.stat(layer / "su").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(layer / "wall").st_mode) == 0o755
    # Directory setgid only means group inheritance: kept.
    assert stat.S_IMODE(os.stat(layer / "shared").st_mode) == 0o2775


def test_setuid_kept_when_policy_allows(tmp_path: Path) -> None:
    layer = extract(tmp_path, [Entry("su", data=b"x", mode=0o4755)], keep_setid=True)
    assert stat.S_IMODE(os.stat(layer / "su").st_mode) == 0o4755


def test_entry_count_is_bounded(tmp_path: Path) -> None:
    entries = [Entry(f"f{i}") for i in range(5)]
    refused(tmp_path, entries, "more than 4 entries", limits=Limits(max_entries=4))


def test_content_size_is_bounded(tmp_path: Path) -> None:
    entries = [Entry("a", data=b"x" * 600), Entry("b", data=b"x" * 600)]
    refused(tmp_path, entries, "exceeds 1000 bytes", limits=Limits(max_bytes=1000))


def test_gzip_bomb_padding_is_bounded(tmp_path: Path) -> None:
    # Zeros after the end of the archive are hashed (diff id) but must not be unbounded.
    bomb = gzip.compress(layer_tar([Entry("a")]) + b"\0" * (4 << 20))
    with pytest.raises(UnsafeArchive, match="exceeds"):
        extract_layer(io.BytesIO(bomb), str(tmp_path / "layer"),
                      limits=Limits(max_bytes=0, max_entries=1))
    assert os.listdir(tmp_path) == []


def test_trusted_xattrs_are_not_taken_from_the_archive(tmp_path: Path) -> None:
    pax = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.note": "hi"}
    layer = extract(tmp_path, [Entry("f", data=b"x", pax=pax)])
    names = os.listxattr(layer / "f")
    assert "user.note" in names and "trusted.overlay.redirect" not in names


def test_digests_cover_the_whole_stream(tmp_path: Path) -> None:
    raw = layer_tar([Entry("a", data=b"hello"), Entry("d/", "dir")])
    info = extract_layer(io.BytesIO(gzip.compress(raw)), str(tmp_path / "layer"))
    assert info.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest() == diff_id(raw)
    assert info.blob_digest != info.diff_id
    assert (info.size, info.entries) == (5, 2)


def test_later_entries_replace_earlier_ones(tmp_path: Path) -> None:
    layer = extract(tmp_path, [
        Entry("x/", "dir"), Entry("x/inner", data=b"1"), Entry("x", data=b"file now"),
        Entry("y", data=b"file"), Entry("y/", "dir"), Entry("y/z", data=b"2"),
    ])
    assert (layer / "x").read_bytes() == b"file now"
    assert (layer / "y/z").read_bytes() == b"2"


def test_entry_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, [Entry("f", data=b"x"), Entry("f/g", data=b"y")], "is not a directory")


def test_modes_owners_and_times_are_restored(tmp_path: Path) -> None:
    layer = extract(tmp_path, [Entry("ro/", "dir", mode=0o555, uid=7, gid=8),
                               Entry("ro/f", data=b"x", mode=0o640, uid=7, gid=8)])
    st = os.stat(layer / "ro")
    assert stat.S_IMODE(st.st_mode) == 0o555 and st.st_mtime == 1_700_000_000
    fst = os.stat(layer / "ro/f")
    assert stat.S_IMODE(fst.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid, fst.st_uid, fst.st_gid) == (7, 8, 7, 8)
    assert stat.S_IMODE(os.stat(layer).st_mode) == 0o755


def test_corrupt_archive_is_an_archive_error(tmp_path: Path) -> None:
    truncated = layer_tar([Entry("a", data=b"x" * 5000)])[:2048]
    with pytest.raises(ArchiveError, match="cannot read layer archive"):
        extract_layer(io.BytesIO(truncated), str(tmp_path / "layer"))
    assert os.listdir(tmp_path) == []


def test_archive_errors_are_the_clients_400() -> None:
    assert issubclass(UnsafeArchive, ArchiveError)
    assert issubclass(ArchiveError, InvalidParameter)
    err = UnsafeArchive("refusing 'x': absolute path")
    assert (err.status, err.exit_code, err.message) == (400, 1, "refusing 'x': absolute path")


def test_expected_diff_id_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="expected sha256:"):
        extract_layer(io.BytesIO(layer_tar([Entry("a")])), str(tmp_path / "layer"),
                      expect_diff_id="sha256:" + "0" * 64)
    assert os.listdir(tmp_path) == []


def test_existing_destination_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "layer").mkdir()
    (tmp_path / "layer" / "keep").write_bytes(b"k")
    with pytest.raises(FileExistsError):
        extract(tmp_path, [Entry("a")])
    staged = tarsafe.stage_layer(io.BytesIO(layer_tar([Entry("a")])), str(tmp_path))
    assert tarsafe.commit(staged, str(tmp_path / "layer")) is False
    assert os.listdir(tmp_path / "layer") == ["keep"]
    assert not os.path.exists(staged.path)


def test_whiteouts_become_overlay_whiteouts(tmp_path: Path, privileged: None) -> None:
    layer = extract(tmp_path, [Entry("etc/", "dir"), Entry("etc/.wh.motd"),
                               Entry("opt/", "dir"), Entry("opt/.wh..wh..opq"),
                               Entry("opt/new", data=b"n"), Entry("etc/.wh..wh.plnk")])
    st = os.lstat(layer / "etc/motd")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(layer / "opt", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(layer / "etc")) == ["motd"]
    assert os.listdir(layer / "opt") == ["new"]


def test_whiteout_cannot_escape(tmp_path: Path, outside: Path, privileged: None) -> None:
    (outside / "victim").write_bytes(b"v")
    refused(tmp_path, [Entry("../outside/.wh.victim")], "'..'")
    entries = [Entry("l", "symlink", target=str(outside)), Entry("l/.wh.victim")]
    refused(tmp_path, entries, "is a symlink")
    assert (outside / "victim").read_bytes() == b"v"


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "d/.wh..", "d/.wh..."])
def test_whiteout_of_dot_or_dotdot_is_refused(tmp_path: Path, outside: Path, name: str,
                                              privileged: None) -> None:
    (outside / "victim").write_bytes(b"v")
    refused(tmp_path, [Entry("d/", "dir"), Entry("d/f"), Entry(name)], "names no entry")
    assert (outside / "victim").read_bytes() == b"v"
