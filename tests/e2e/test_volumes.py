"""Volumes, bind mounts and tmpfs through the real docker CLI against moorage's socket.

Binds round-trip files with the host (and `:ro` refuses writes), `--mount` refuses a
missing source with dockerd's text, a named volume keeps data across containers and is
refused removal while used, an empty new volume gets the image's content copied up,
anonymous volumes go with `rm -v`, `--volumes-from` shares the mounts, tmpfs is a tmpfs;
`docker volume` ls, inspect, rm and prune, Docker's volume events, and the replay check.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Engine, wait_for
from tests.e2e.dockerapi import (
    DockerApi,
    api_fixtures,
    cid_of,
)

pytestmark = pytest.mark.privileged


docker_api, dk, tag = api_fixtures("volumes-api", "vol")


@pytest.fixture
def vol(engine: Engine, dk: DockerApi) -> Iterator[str]:
    """A unique volume name, removed afterwards if the test left it."""
    name = f"moorvol-{engine.token}"
    yield name
    dk.docker("volume", "rm", "-f", name, check=False)


def _run(dk: DockerApi, *args: str, check: bool = True) -> str:
    return dk.docker("run", "--rm", *args, check=check).stdout


def test_bind_mounts_round_trip_and_ro_refuses_writes(dk: DockerApi, tag: str,
                                                      tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from host\n")
    out = _run(dk, "-v", f"{tmp_path}:/data", tag, "sh", "-c",
               "cat /data/in.txt; echo from container > /data/out.txt")
    assert out == "from host\n"
    assert (tmp_path / "out.txt").read_text() == "from container\n"
    done = dk.docker("run", "--rm", "-v", f"{tmp_path}:/data:ro", tag, "sh", "-c",
                     "echo x > /data/nope", check=False)
    assert done.returncode != 0 and "Read-only file system" in done.stderr
    assert not (tmp_path / "nope").exists()
    # -v creates a missing host path; --mount refuses it with dockerd's text.
    made = tmp_path / "made" / "here"
    _run(dk, "-v", f"{made}:/m", tag, "true")
    assert made.is_dir()
    out = _run(dk, "--mount", f"type=bind,source={tmp_path},target=/b,readonly", tag,
               "cat", "/b/in.txt")
    assert out == "from host\n"
    missing = dk.docker("run", "--rm", "--mount", f"type=bind,src={tmp_path}/absent,dst=/b",
                        tag, "true", check=False)
    assert missing.returncode != 0
    assert ('invalid mount config for type "bind": bind source path does not exist: '
            f"{tmp_path}/absent") in missing.stderr


def test_named_volume_persists_is_refused_removal_in_use_and_copies_up(
        dk: DockerApi, tag: str, vol: str, engine: Engine) -> None:
    _run(dk, "-v", f"{vol}:/etc", tag, "sh", "-c", "echo kept > /etc/mine")
    # copy-up: the new empty volume got the image's /etc before the first write
    assert "root:x:0:0" in _run(dk, "-v", f"{vol}:/data", tag, "cat", "/data/passwd")
    assert _run(dk, "-v", f"{vol}:/data", tag, "cat", "/data/mine") == "kept\n"
    holder = cid_of(dk.docker("run", "-d", "-v", f"{vol}:/data", tag, "sleep", "300"))
    busy = dk.docker("volume", "rm", vol, check=False)
    assert busy.returncode != 0
    assert f"remove {vol}: volume is in use - [{holder}]" in busy.stderr
    doc = json.loads(dk.docker("inspect", holder).stdout)[0]
    mountpoint = os.path.join(os.path.realpath(engine.data_root), "volumes", vol, "_data")
    assert doc["Mounts"] == [{"Type": "volume", "Name": vol, "Source": mountpoint,
                              "Destination": "/data", "Driver": "local", "Mode": "z",
                              "RW": True, "Propagation": ""}]
    assert doc["HostConfig"]["Binds"] == [f"{vol}:/data"]
    info = json.loads(dk.docker("volume", "inspect", vol).stdout)[0]
    assert (info["Name"], info["Driver"], info["Mountpoint"], info["Scope"]) == \
        (vol, "local", mountpoint, "local")
    assert os.path.isfile(os.path.join(mountpoint, "mine"))
    dk.docker("rm", "-f", holder)
    assert vol in dk.docker("volume", "ls", "-q").stdout.split()
    dk.docker("volume", "rm", vol)
    wait_for(lambda: not os.path.exists(os.path.dirname(mountpoint)), 10,
             "the volume's directory to go")
    gone = dk.docker("volume", "inspect", vol, check=False)
    assert gone.returncode != 0 and f"get {vol}: no such volume" in gone.stderr


def test_anonymous_volumes_go_with_rm_v_and_volumes_from_shares(dk: DockerApi, tag: str,
                                                                engine: Engine) -> None:
    src = cid_of(dk.docker("create", "-v", "/anon", tag, "sh", "-c",
                           "echo shared > /anon/f"))
    dk.docker("start", "-a", src)
    doc = json.loads(dk.docker("inspect", src).stdout)[0]
    (mount,) = doc["Mounts"]
    name = mount["Name"]
    assert len(name) == 64 and mount["Destination"] == "/anon"
    assert doc["Config"]["Volumes"] == {"/anon": {}}
    assert _run(dk, "--volumes-from", f"{src}:ro", tag, "cat", "/anon/f") == "shared\n"
    done = dk.docker("run", "--rm", "--volumes-from", f"{src}:ro", tag, "sh", "-c",
                     "echo x > /anon/g", check=False)
    assert done.returncode != 0 and "Read-only file system" in done.stderr
    labels = json.loads(dk.docker("volume", "inspect", name).stdout)[0]["Labels"]
    assert labels == {"com.docker.volume.anonymous": ""}
    dk.docker("rm", "-v", src)
    wait_for(lambda: name not in dk.docker("volume", "ls", "-q").stdout.split(), 10,
             "rm -v to remove the anonymous volume")


def test_tmpfs_is_a_tmpfs(dk: DockerApi, tag: str) -> None:
    out = _run(dk, "--mount", "type=tmpfs,target=/scratch,tmpfs-size=1m", "--tmpfs", "/other",
               tag, "grep", "-E", " /(scratch|other) ", "/proc/mounts")
    lines = sorted(out.splitlines())
    assert [line.split()[1:3] for line in lines] == [["/other", "tmpfs"],
                                                      ["/scratch", "tmpfs"]]
    assert "size=1024k" in lines[1]
    dup = dk.docker("run", "--rm", "--tmpfs", "/x", "-v", "/tmp:/x", tag, "true", check=False)
    assert dup.returncode != 0 and "Duplicate mount point: /x" in dup.stderr


def test_volume_api_prune_and_events(dk: DockerApi, tag: str, engine: Engine) -> None:
    since = str(int(engine.redis.time()[0]) - 1)
    named = f"moorprune-{engine.token}"
    dk.docker("volume", "create", "--label", f"run={engine.token}", named)
    anon = dk.docker("volume", "create").stdout.strip()
    assert len(anon) == 64
    listed = dk.docker("volume", "ls", "-q", "--filter", f"label=run={engine.token}").stdout
    assert listed.split() == [named]
    # API >= 1.42: prune takes only anonymous volumes unless --all.
    out = dk.docker("volume", "prune", "-f").stdout
    assert anon in out and named not in out
    out = dk.docker("volume", "prune", "-f", "--all", "--filter",
                    f"label=run={engine.token}").stdout
    assert named in out
    status, _, body = dk.http("DELETE", "/volumes/nope-" + engine.token)
    assert (status, json.loads(body)["message"]) == (404,
                                                      f"get nope-{engine.token}: no such volume")
    cid = cid_of(dk.docker("run", "-d", "-v", f"{named}:/d", tag, "true"))
    dk.docker("wait", cid)
    dk.docker("rm", cid)
    dk.docker("volume", "rm", named)

    def seen() -> list[str]:
        lines = dk.docker("events", "--since", since, "--until", "0s", "--filter",
                          "type=volume", "--format",
                          "{{.Action}} {{.Actor.ID}}").stdout.splitlines()
        return [line.split()[0] for line in lines if named in line]

    wait_for(lambda: seen() == ["create", "destroy", "create", "mount", "unmount",
                                "destroy"], 15, "Docker's volume events", lambda: repr(seen()))
    engine.moor("replay", "--verify")
