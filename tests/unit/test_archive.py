"""`docker cp`'s path resolution and stat header, the extraction into a container dir, and
`container prune`'s selection: on a temp dir standing for a rootfs, no mounts needed."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from engine.core.state import Container, World
from engine.errors import InvalidParameter, MoorError, NotFound
from events.specs import ContainerConfig, HostConfig
from projections.views.prune import prune_candidates
from workers.storage.ctrcopy import (
    extract_tar,
    go_mode,
    helper_error,
    path_stat,
    resolve_path,
    stat_header,
    write_tar,
)

S = 1_000_000_000


@pytest.fixture
def root(tmp_path: Path) -> str:
    """A small rootfs with links that try to leave it."""
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (r / "tmp").mkdir()
    os.symlink("/../../../../etc", r / "tmp" / "esc")
    os.symlink("../../../../../../etc", r / "tmp" / "rel")
    os.symlink("/etc/passwd", r / "tmp" / "pw")
    return str(r)


@pytest.mark.parametrize("link", ["/tmp/esc/passwd", "/tmp/rel/passwd", "tmp/../../etc/passwd"])
def test_resolve_path_never_leaves_the_root(root: str, link: str) -> None:
    host, _ = resolve_path(root, link)
    assert host == os.path.join(root, "etc", "passwd")


def test_resolve_path_does_not_follow_the_last_component(root: str) -> None:
    host, abs_path = resolve_path(root, "/tmp/esc")
    assert (host, abs_path) == (os.path.join(root, "tmp", "esc"), "/tmp/esc")
    assert resolve_path(root, "/tmp/esc/")[0] == os.path.join(root, "etc")
    assert resolve_path(root, "/tmp/esc/.") == (os.path.join(root, "etc"), "/tmp/esc/.")


def test_empty_path_is_dockers_400(root: str) -> None:
    with pytest.raises(InvalidParameter, match="pathcannot be empty"):
        resolve_path(root, "")


def test_stat_of_a_symlink_resolves_its_target_inside(root: str) -> None:
    info = path_stat(root, "/tmp/esc")
    assert info["name"] == "esc"
    assert info["linkTarget"] == "/etc"
    assert info["mode"] == (1 << 27) | 0o777
    assert path_stat(root, "/tmp/pw")["linkTarget"] == "/etc/passwd"


def test_stat_header_is_base64_json_with_go_modes(root: str) -> None:
    os.utime(os.path.join(root, "etc", "passwd"), ns=(0, 1_700_000_000_500_000_000))
    info = path_stat(root, "/etc/passwd")
    decoded = json.loads(base64.b64decode(stat_header(info)))
    mode = stat.S_IMODE(os.stat(os.path.join(root, "etc", "passwd")).st_mode)
    assert decoded == {"name": "passwd", "size": 30, "mode": mode,
                       "mtime": "2023-11-14T22:13:20.5Z", "linkTarget": ""}
    assert path_stat(root, "/etc")["mode"] & (1 << 31)


def test_go_mode_bits() -> None:
    assert go_mode(stat.S_IFDIR | 0o755) == (1 << 31) | 0o755
    assert go_mode(stat.S_IFREG | stat.S_ISUID | 0o755) == (1 << 23) | 0o755
    assert go_mode(stat.S_IFCHR | 0o666) == (1 << 26) | (1 << 21) | 0o666
    assert go_mode(stat.S_IFDIR | stat.S_ISVTX | 0o777) == (1 << 31) | (1 << 20) | 0o777


def test_missing_path_is_dockers_404(root: str) -> None:
    with pytest.raises(NotFound, match="Could not find the file /nope in container web"):
        path_stat(root, "/nope", "web")


def _tar(**files: str) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    buf.seek(0)
    return buf


def test_extract_through_an_escaping_symlink_stays_inside(root: str) -> None:
    extract_tar(root, "/tmp/esc", _tar(marker="x"), no_overwrite=True)
    assert Path(root, "etc", "marker").read_text() == "x"


def test_extract_refuses_entries_that_climb(root: str) -> None:
    with pytest.raises(InvalidParameter):
        extract_tar(root, "/tmp", _tar(**{"../../evil": "x"}), no_overwrite=True)
    assert not Path(root).parent.joinpath("evil").exists()


def test_extract_errors(root: str) -> None:
    with pytest.raises(NotFound):
        extract_tar(root, "/nope", _tar(a="x"), no_overwrite=True)
    with pytest.raises(InvalidParameter, match="extraction point is not a directory"):
        extract_tar(root, "/etc/passwd", _tar(a="x"), no_overwrite=True)
    with pytest.raises(MoorError, match='cannot overwrite directory "etc"'):
        extract_tar(root, "/", _tar(etc="x"), no_overwrite=True)


def test_write_tar_names_entries_under_the_base(root: str) -> None:
    out = io.BytesIO()
    write_tar(root, "/tmp/esc/", out)  # a trailing slash follows the link
    out.seek(0)
    names = tarfile.open(fileobj=out).getnames()
    assert names == ["esc", "esc/passwd"]


def test_helper_error_rebuilds_the_class() -> None:
    err = helper_error(b'noise\n{"status": 404, "message": "Could not find"}\n')
    assert isinstance(err, NotFound) and err.message == "Could not find"
    assert helper_error(b"Traceback...\n").status == 500


def _ctr(cid: str, created: int, *, running: bool = False,
         labels: dict[str, str] | None = None) -> Container:
    return Container(id=cid, name=cid[:4], image="busybox", image_id="sha256:" + "1" * 64,
                     config=ContainerConfig(image="busybox", labels=labels or {}),
                     host_config=HostConfig(), created=created, running=running)


def test_prune_selects_stopped_containers_under_filters() -> None:
    world = World(containers={c.id: c for c in (
        _ctr("a" * 64, 10 * S), _ctr("b" * 64, 20 * S, running=True),
        _ctr("c" * 64, 30 * S, labels={"keep": "1"}),
        _ctr("d" * 64, 40 * S, labels={"x": "y"}))})
    ids = [c.id[0] for c in prune_candidates(world, {}, 100 * S)]
    assert ids == ["a", "c", "d"]
    assert [c.id[0] for c in prune_candidates(world, {"label!": ["keep"]}, 100 * S)] \
        == ["a", "d"]
    assert [c.id[0] for c in prune_candidates(world, {"label": ["x=y"]}, 100 * S)] == ["d"]
    assert [c.id[0] for c in prune_candidates(world, {"until": ["25"]}, 100 * S)] == ["a"]
    assert [c.id[0] for c in prune_candidates(world, {"until": ["70s"]}, 100 * S)] == ["a", "c"]


def test_prune_filter_errors_are_dockers() -> None:
    with pytest.raises(InvalidParameter, match="invalid filter 'status'"):
        prune_candidates(World(), {"status": ["exited"]}, 0)
    with pytest.raises(InvalidParameter, match="more than one until filter specified"):
        prune_candidates(World(), {"until": ["1", "2"]}, 0)
