"""COPY planning over merged layer dirs: Docker's destination rules, `.dockerignore`, the
checksum the cache compares, and the layer tar it writes."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from engine.errors import InvalidParameter
from moor.building.dockerignore import IgnoreMatcher
from workers.storage.buildcopy import plan_copy, write_copy_layer
from workers.storage.buildview import TreeView


def _files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def image(tmp_path: Path) -> TreeView:
    """Two layers: the top one hides /etc/motd (whiteout) and makes /opt opaque."""
    lower = _files(tmp_path / "lower", {"etc/motd": "m", "opt/old": "o", "tmp/.keep": ""})
    os.chmod(lower / "tmp", 0o1777)
    os.symlink("/usr/lib", lower / "lib")
    (lower / "usr/lib").mkdir(parents=True)
    upper = _files(tmp_path / "upper", {"opt/new": "n"})
    (upper / "etc").mkdir()
    if os.geteuid() != 0:
        pytest.skip("whiteouts need mknod (root)")
    os.mknod(upper / "etc/motd", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.setxattr(upper / "opt", "trusted.overlay.opaque", b"y")
    return TreeView([str(upper), str(lower)])


def test_tree_view_merges_layers(image: TreeView) -> None:
    assert image.lookup("etc/motd") is None  # whited out
    assert image.lookup("opt/old") is None  # below an opaque dir
    assert image.lookup("opt/new") is not None and image.names("opt") == ["new"]
    assert image.names("etc") == []
    assert image.resolve("lib/x") == "usr/lib/x"  # symlinks resolve inside the tree


def _ctx(tmp_path: Path) -> TreeView:
    root = _files(tmp_path / "ctx", {"a.txt": "a", "dir/b.txt": "b", "dir/sub/c.txt": "c",
                                     "skip.log": "s"})
    ignore = IgnoreMatcher.from_text("*.log")
    return TreeView([str(root)], skip=ignore.excluded)


def _dests(plan: object) -> dict[str, tuple[str, int, int, int]]:
    return {e.dest: (e.kind, e.mode, e.uid, e.gid) for e in plan.entries}  # type: ignore


def test_copy_destinations(tmp_path: Path, image: TreeView) -> None:
    ctx = _ctx(tmp_path)
    # A file to a path, a file into a dir, a directory's contents, into a symlinked dir.
    assert "srv/a" in _dests(plan_copy(ctx, image, ["a.txt"], "/srv/a", workdir="/"))
    assert "tmp/a.txt" in _dests(plan_copy(ctx, image, ["a.txt"], "/tmp", workdir="/"))
    got = _dests(plan_copy(ctx, image, ["dir"], "app/", workdir="/w", owner=(7, 8)))
    assert set(got) == {"w", "w/app", "w/app/b.txt", "w/app/sub", "w/app/sub/c.txt"}
    assert got["w/app/b.txt"][2:] == (7, 8) and got["w"] == ("dir", 0o755, 7, 8)
    assert "usr/lib/a.txt" in _dests(plan_copy(ctx, image, ["a.txt"], "/lib/", workdir="/"))
    # An existing parent keeps its mode (/tmp is 1777), root owns copied files.
    got = _dests(plan_copy(ctx, image, ["a.txt"], "/tmp/x", workdir="/"))
    assert got["tmp"][:2] == ("dir", 0o1777) and got["tmp/x"][2:] == (0, 0)
    # Wildcards, and several sources need a directory destination.
    assert set(_dests(plan_copy(ctx, image, ["*.txt"], "/w/", workdir="/"))) == {"w",
                                                                                 "w/a.txt"}
    with pytest.raises(InvalidParameter, match="must be a directory and end with a /"):
        plan_copy(ctx, image, ["a.txt", "dir"], "/w", workdir="/")


def test_copy_refuses_missing_and_ignored_sources(tmp_path: Path, image: TreeView) -> None:
    ctx = _ctx(tmp_path)
    for src in ("nope", "skip.log", "../a.txt/x"):
        with pytest.raises(InvalidParameter, match="file not found in build context or "
                                                   "excluded by .dockerignore"):
            plan_copy(ctx, image, [src], "/x", workdir="/")
    assert "w/skip.log" not in _dests(plan_copy(ctx, image, ["."], "/w/", workdir="/"))
    with pytest.raises(InvalidParameter, match="no source files were specified"):
        plan_copy(ctx, image, ["*.none"], "/w/", workdir="/")


def test_checksum_covers_content_and_mode_not_times(tmp_path: Path, image: TreeView) -> None:
    ctx = _ctx(tmp_path)
    first = plan_copy(ctx, image, ["dir"], "/w/", workdir="/").checksum
    assert first.startswith("dir:")
    os.utime(tmp_path / "ctx/dir/b.txt", (1, 1))
    assert plan_copy(ctx, image, ["dir"], "/w/", workdir="/").checksum == first
    (tmp_path / "ctx/dir/b.txt").write_text("B")
    assert plan_copy(ctx, image, ["dir"], "/w/", workdir="/").checksum != first
    single = plan_copy(ctx, image, ["a.txt"], "/w/", workdir="/").checksum
    os.chmod(tmp_path / "ctx/a.txt", 0o600)
    assert single.startswith("file:")
    assert plan_copy(ctx, image, ["a.txt"], "/w/", workdir="/").checksum != single
    assert plan_copy(ctx, image, ["a.txt", "dir"], "/w/", workdir="/").checksum.startswith(
        "multi:")


def test_layer_tar_holds_the_plan(tmp_path: Path, image: TreeView) -> None:
    plan = plan_copy(_ctx(tmp_path), image, ["dir"], "/w/", workdir="/", owner=(5, 6),
                     chmod=0o640)
    out = io.BytesIO()
    write_copy_layer(plan, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == ["w", "w/b.txt", "w/sub", "w/sub/c.txt"]
        data = tar.extractfile(members["w/sub/c.txt"])
        assert data is not None and data.read() == b"c"
    assert (members["w/b.txt"].uid, members["w/b.txt"].mode) == (5, 0o640)
