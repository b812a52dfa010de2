"""`docker cp` and `docker container prune` through the real docker CLI and docker-py.

cp runs both ways on a running and on a stopped container (whose rootfs is mounted only in
the copy helper's private mount namespace), and a symlink aimed above the root lands on
the container's own /etc, never the host's. prune removes what is not running, honours
label filters, and every removal is a recorded destroy.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from events import model as e
from tests.e2e.conftest import Engine, wait_for
from tests.e2e.dockerapi import (
    DockerApi,
    api_fixtures,
    cid_of,
    daemon_error,
)

pytestmark = pytest.mark.privileged

BUSYBOX_PASSWD = "root:x:0:0:root:/root:/bin/sh\n"  # the test image's, not the host's


docker_api, dk, tag = api_fixtures("cp-prune-api", "cp")


def _merged_mounted(engine: Engine, cid: str) -> bool:
    merged = os.path.join(engine.container_dir(cid), "merged")
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == merged for line in f)


def test_cp_both_ways_on_running_and_stopped(dk: DockerApi, tag: str, engine: Engine,
                                             tmp_path: Path) -> None:
    cid = cid_of(dk.docker("run", "-d", tag, "sleep", "300"))
    (tmp_path / "in.txt").write_text("from the host\n")
    dk.docker("cp", str(tmp_path / "in.txt"), f"{cid}:/tmp/")
    assert dk.docker("exec", cid, "cat", "/tmp/in.txt").stdout == "from the host\n"
    dk.docker("exec", cid, "sh", "-c", "mkdir /tmp/d && echo made > /tmp/d/made")
    dk.docker("cp", f"{cid}:/etc/motd", str(tmp_path / "motd"))
    assert (tmp_path / "motd").read_text() == "welcome to the lower layer\n"

    dk.docker("stop", "-t", "1", cid)
    wait_for(lambda: not _merged_mounted(engine, cid), 15, "the teardown to unmount the rootfs")
    dk.docker("cp", f"{cid}:/tmp/d", str(tmp_path))  # the upper dir, seen merged
    assert (tmp_path / "d" / "made").read_text() == "made\n"
    dk.docker("cp", f"{cid}:/etc/motd", str(tmp_path / "motd2"))  # the lower layer
    assert (tmp_path / "motd2").read_text() == "welcome to the lower layer\n"
    dk.docker("cp", f"{cid}:/etc/hostname", str(tmp_path / "hostname"))  # a bound host file
    assert (tmp_path / "hostname").read_text() == cid[:12] + "\n"
    (tmp_path / "stopped.txt").write_text("written while stopped\n")
    dk.docker("cp", str(tmp_path / "stopped.txt"), f"{cid}:/tmp/renamed.txt")
    assert not _merged_mounted(engine, cid), "the helper's mount reached the host"

    dk.docker("start", cid)
    assert dk.docker("exec", cid, "cat", "/tmp/renamed.txt").stdout == "written while stopped\n"
    dk.docker("rm", "-f", cid)


def test_symlink_pointing_outside_stays_inside(dk: DockerApi, tag: str,
                                               tmp_path: Path) -> None:
    cid = cid_of(dk.docker("run", "-d", tag, "sh", "-c",
                           "ln -sfn /../../../../etc /tmp/esc; "
                           "ln -sfn ../../../../../../etc /tmp/rel; sleep 300"))
    marker = f"moor-cp-escape-{os.getpid()}"
    (tmp_path / marker).write_text("inside\n")
    try:
        for running in (True, False):
            for link in ("esc", "rel"):
                out = tmp_path / f"passwd-{link}-{running}"
                dk.docker("cp", f"{cid}:/tmp/{link}/passwd", str(out))
                assert out.read_text() == BUSYBOX_PASSWD
                dk.docker("cp", str(tmp_path / marker), f"{cid}:/tmp/{link}/")
                assert not os.path.exists(f"/etc/{marker}"), "docker cp wrote the host's /etc"
            if running:
                dk.docker("stop", "-t", "1", cid)
        dk.docker("start", cid)
        assert dk.docker("exec", cid, "cat", f"/etc/{marker}").stdout == "inside\n"
    finally:
        if os.path.exists(f"/etc/{marker}"):
            os.unlink(f"/etc/{marker}")
    dk.docker("rm", "-f", cid)


def test_cp_errors_are_dockers(dk: DockerApi, tag: str, tmp_path: Path) -> None:
    cid = cid_of(dk.docker("create", "--name", f"cp-ro-{os.getpid()}", "--read-only", tag))
    done = dk.docker("cp", f"{cid}:/nope", str(tmp_path), check=False)
    assert done.returncode != 0
    assert daemon_error(done) == ("Error response from daemon: Could not find the file /nope "
                                  f"in container {cid}"), done.stderr
    (tmp_path / "f").write_text("x")
    done = dk.docker("cp", str(tmp_path / "f"), f"{cid}:/tmp/", check=False)
    assert daemon_error(done).endswith("container rootfs is marked read-only"), done.stderr
    dk.docker("rm", cid)


def test_container_prune_removes_exited_only(dk: DockerApi, tag: str, engine: Engine) -> None:
    running = cid_of(dk.docker("run", "-d", tag, "sleep", "300"))
    exited = cid_of(dk.docker("run", "-d", tag, "true"))
    kept = cid_of(dk.docker("run", "-d", "--label", "keep=1", tag, "true"))
    created = cid_of(dk.docker("create", tag))
    for cid in (exited, kept):
        dk.docker("wait", cid)
    before = engine.last_event_id()
    out = dk.docker("container", "prune", "-f", "--filter", "label!=keep").stdout
    assert out.startswith("Deleted Containers:\n"), out
    assert set(out.split()) >= {exited, created} and kept not in out and running not in out
    left = set(dk.docker("ps", "-aq", "--no-trunc").stdout.split())
    assert {running, kept} <= left and not {exited, created} & left
    destroyed = {r.meta.container_id for i, r in engine.events()
                 if i > before and isinstance(r.event, e.ContainerDestroyed)}
    assert destroyed == {exited, created}
    done = dk.docker("container", "prune", "-f", "--filter", "status=exited", check=False)
    assert daemon_error(done) == "Error response from daemon: invalid filter 'status'"
    dk.docker("container", "prune", "-f")
    assert set(dk.docker("ps", "-aq", "--no-trunc").stdout.split()) == {running}
    dk.docker("rm", "-f", running)


def _tar_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_moor_cp_and_container_prune(dk: DockerApi, tag: str, engine: Engine,
                                     tmp_path: Path) -> None:
    cid = cid_of(dk.docker("run", "-d", tag, "sleep", "300"))
    (tmp_path / "a").write_text("moor cp\n")
    engine.moor("cp", str(tmp_path / "a"), f"{cid}:/tmp/b")
    dk.docker("stop", "-t", "1", cid)
    engine.moor("cp", f"{cid}:/tmp/b", str(tmp_path / "c"))
    assert (tmp_path / "c").read_text() == "moor cp\n"
    tar = engine.moor("cp", f"{cid}:/etc/motd", "-").stdout
    assert "welcome to the lower layer" in tar
    done = subprocess.run([sys.executable, "-m", "moor.cli", "cp", "-", f"{cid}:/tmp"],
                          env=engine.env, input=_tar_of("piped.txt", b"piped\n"),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    engine.moor("cp", f"{cid}:/tmp/piped.txt", str(tmp_path / "piped"))
    assert (tmp_path / "piped").read_text() == "piped\n"
    out = engine.moor("container", "prune", "-f").stdout
    assert out.startswith(f"Deleted Containers:\n{cid}\n"), out


def test_docker_py_put_and_get_archive(dk: DockerApi, tag: str) -> None:
    docker = pytest.importorskip("docker")
    sdk: Any = docker.DockerClient(base_url=f"unix://{dk.socket}", version="auto", timeout=60)
    try:
        ctr = sdk.containers.run(tag, ["sleep", "300"], detach=True)
        assert ctr.put_archive("/tmp", _tar_of("hello.txt", b"hello\n")) is True
        bits, stat = ctr.get_archive("/tmp/hello.txt")
        assert stat["name"] == "hello.txt" and stat["size"] == 6 and stat["linkTarget"] == ""
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
            member = tar.extractfile("hello.txt")
            assert member is not None and member.read() == b"hello\n"
        with pytest.raises(docker.errors.NotFound):
            ctr.get_archive("/nope")
        ctr.remove(force=True)
    finally:
        sdk.close()
