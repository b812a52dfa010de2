"""Diff and commit on plain directories: change kinds, whiteouts, layer tar, --change lines.

Overlay's whiteouts are made here by hand (a 0:0 char device needs root; an opaque dir a
trusted xattr), so those cases are skipped when not root.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from engine.errors import InvalidParameter
from events.specs import ContainerConfig
from workers.storage.changes import ADDED, DELETED, MODIFIED, Change, read_changes, write_layer
from workers.storage.commit import apply_changes, merge_config

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts need root")


def _tree(tmp: Path) -> tuple[Path, Path]:
    lower, upper = tmp / "lower", tmp / "upper"
    for d in ("etc", "tmp", "var/old"):
        (lower / d).mkdir(parents=True)
    (lower / "etc" / "motd").write_text("hi\n")
    (lower / "etc" / "passwd").write_text("root\n")
    (lower / "var" / "old" / "f").write_text("x")
    upper.mkdir()
    return lower, upper


def _copy_up(lower: Path, upper: Path, rel: str) -> Path:
    """Make rel in upper as overlay's copy-up would: same mode and mtime as the lower dir."""
    src, dst = lower / rel, upper / rel
    dst.mkdir(parents=True, exist_ok=True)
    os.chmod(dst, src.stat().st_mode & 0o7777)
    st = src.stat()
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    return dst


def test_added_file_records_its_unchanged_parent_as_modified(tmp_path: Path) -> None:
    lower, upper = _tree(tmp_path)
    _copy_up(lower, upper, "var/old")
    (upper / "var" / "old" / "f").write_text("changed")
    (upper / "var" / "old" / "g").write_text("n")
    _copy_up(lower, upper, "var/old")  # restore the mtime: only the children changed
    _copy_up(lower, upper, "var")
    (upper / "opt").mkdir()
    (upper / "opt" / "a").write_text("a")
    assert read_changes(str(upper), [str(lower)]) == [
        Change("/opt", ADDED), Change("/opt/a", ADDED), Change("/var/old/f", MODIFIED),
        Change("/var/old", MODIFIED), Change("/var/old/g", ADDED)]


def test_init_layer_paths_are_not_changes(tmp_path: Path) -> None:
    lower, upper = _tree(tmp_path)
    _copy_up(lower, upper, "etc")
    (upper / "etc" / "hostname").write_text("")
    (upper / "proc").mkdir()
    assert read_changes(str(upper), [str(lower)]) == []


@root_only
def test_whiteouts_and_opaque_dirs_read_as_deletions(tmp_path: Path) -> None:
    lower, upper = _tree(tmp_path)
    _copy_up(lower, upper, "etc")
    os.mknod(upper / "etc" / "motd", 0o600 | 0o020000, os.makedev(0, 0))
    _copy_up(lower, upper, "etc")
    opaque = _copy_up(lower, upper, "var/old")
    os.setxattr(opaque, "trusted.overlay.opaque", b"y")
    (opaque / "g").write_text("g")
    _copy_up(lower, upper, "var")
    _copy_up(lower, upper, "var/old")
    assert read_changes(str(upper), [str(lower)]) == [
        Change("/etc", MODIFIED), Change("/etc/motd", DELETED),
        Change("/var", MODIFIED), Change("/var/old", DELETED), Change("/var/old/g", ADDED)]

    buf = io.BytesIO()
    write_layer(str(upper), buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert names["etc/.wh.motd"].isreg() and names["etc/.wh.motd"].size == 0
    assert "var/old/.wh..wh..opq" in names and names["var/old/g"].isreg()
    assert not any(m.ischr() for m in names.values())


def test_layer_tar_holds_files_links_and_modes(tmp_path: Path) -> None:
    _, upper = _tree(tmp_path)
    (upper / "tmp").mkdir()
    (upper / "tmp" / "x").write_text("data")
    os.chmod(upper / "tmp" / "x", 0o640)
    os.symlink("/tmp/x", upper / "tmp" / "ln")
    os.link(upper / "tmp" / "x", upper / "tmp" / "hard")
    buf = io.BytesIO()
    write_layer(str(upper), buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        members = {m.name: m for m in tar.getmembers()}
        data = {n: tar.extractfile(m).read() for n, m in members.items()  # type: ignore[union-attr]
                if m.isreg()}
    assert members["tmp/ln"].issym() and members["tmp/ln"].linkname == "/tmp/x"
    assert members["tmp/x"].mode == 0o640 and members["tmp"].isdir()
    assert members["tmp/hard"].islnk() or data.get("tmp/hard") == b"data"
    assert b"data" in data.values()


def test_changes_set_cmd_env_label_expose_and_the_rest() -> None:
    out = apply_changes({"Cmd": ["sh"], "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/srv"}, [
        'CMD ["cat", "/tmp/x"]', "ENV A=2 B=\"two words\"", "ENV C 3", 'LABEL k=v "x y"=z',
        "EXPOSE 80 53/udp", "USER nobody", "VOLUME /data /logs", "WORKDIR app",
        "STOPSIGNAL SIGINT", "onbuild RUN true"])
    assert out["Cmd"] == ["cat", "/tmp/x"]
    assert out["Env"] == ["PATH=/bin", "A=2", "B=two words", "C=3"]
    assert out["Labels"] == {"k": "v", "x y": "z"}
    assert out["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert out["Volumes"] == {"/data": {}, "/logs": {}}
    assert (out["User"], out["WorkingDir"], out["StopSignal"]) == ("nobody", "/srv/app", "SIGINT")
    assert out["OnBuild"] == ["RUN true"]


def test_shell_form_and_entrypoint_resets_cmd() -> None:
    assert apply_changes({}, ["CMD echo hi"])["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    out = apply_changes({"Cmd": ["x"]}, ['ENTRYPOINT ["/bin/top"]'])
    assert out["Entrypoint"] == ["/bin/top"] and out["Cmd"] is None


@pytest.mark.parametrize("line,text", [
    ("RUN echo", "RUN is not a valid change command"),
    ("from busybox", "FROM is not a valid change command"),
    ("CMD", "CMD requires at least one argument"),
])
def test_changes_refused_with_dockers_text(line: str, text: str) -> None:
    with pytest.raises(InvalidParameter, match=text):
        apply_changes({}, [line])


def test_merge_takes_the_container_then_the_callers_config() -> None:
    ctr = ContainerConfig(image="busybox", cmd=("sleep", "1"), env=("A=1",), hostname="h")
    out = merge_config({"Cmd": ["sh"], "Volumes": {"/v": {}}}, ctr,
                       {"Env": ["B=2"], "Cmd": None})
    assert out == {"Cmd": ["sleep", "1"], "Env": ["B=2"], "Volumes": {"/v": {}}}
